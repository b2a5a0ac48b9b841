"""Downloads: each succeeded task's videos, verified, into the manifest's output folder.

    GET url ──► .name.mp4.part (locked) ──► fsync ──► rename ──► fsync folder ──► ledger row
       │  206: append after a Range request      200: restart cleanly from 0
       │  broken transfer: resume with Range      401/403/404/410: refresh the URL
       └─ SHA-256 computed while streaming, length checked against Content-Length

Three modules, in the order a byte meets them:

- `naming`: where each video goes (our names, never the server's), and the
  check that a path stays inside its folder; the report reads it too.
- `fetch`: the `Downloader`: requests, what is retried, resuming, fresh URLs
  from the API, the ledger row once a file is final.
- `partfile`: the part file: lock, writes, fsync, rename; knowing a file
  again without reading it.

Must not: send credentials to a file host (the files client carries none, and
the Downloader refuses one that does), write outside the manifest's output
folder, or import the stages after it (report, commands, ui). Bytes come over
httpx's own transport: no HTTP code of our own, no patched library.
"""
