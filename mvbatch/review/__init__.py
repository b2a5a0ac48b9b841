"""The review stage: the contact sheet as a local web app where a person judges each take.

Owns: `mvbatch review`'s server: the contact sheet in review mode (the
templates of report.html, with verdict controls), the small JSON endpoints
that record a verdict and hand out the cards as takes land, the report
folder's files, and who may ask for any of it (a random token, the Host we
bound, the page's own origin).

Must not: decide anything about tasks (a verdict is a person's word, recorded
in the ledger as an event; nothing here submits, downloads or re-rolls),
write anything but verdicts (through `Ledger.record_verdict`), serve a file
outside the manifest's report folder, read the environment or settings (the
caller, `commands.reviewing`, passes everything in), or print.

    access.py   the token, the Host and Origin checks: `Access`, and `Guard`, the ASGI
                middleware that refuses every request without them (403)
    sheet.py    `Sheet`: the report read from the ledger under one lock, the cards by key
                cached on a fingerprint of the ledger, verdicts recorded
    app.py      `create_app`: the Starlette routes (the page, /api/cards, /api/verdict,
                /api/report.json, /files/...)
    server.py   `bind` (port 0: a free one; a busy port is a `UsageError`) and `serve`:
                the app under uvicorn on that socket

May import the stages before it (plan, ledger, downloads, report), never
`mvbatch.commands`, `mvbatch.ui` or `mvbatch.cli`, which call into it.
"""
