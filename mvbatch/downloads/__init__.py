"""Downloads: each succeeded task's videos, verified, into the manifest's output folder.

    GET url ──► .name.mp4.part (locked) ──► a video? ──► fsync ──► rename ──► fsync dir ──► ledger
       │  206: append after a Range request      200: restart cleanly from 0
       │  broken or too slow: resume with Range  401/403/404/410, not a video: refresh the URL
       └─ SHA-256 computed while streaming, length checked against Content-Length

Six modules, in the order a byte meets them:

- `naming`: where each video goes (our names, never the server's), and the
  check that a path stays inside its folder; the report reads it too.
- `fetch`: the `Downloader`: which outputs, retries (the one retry policy,
  `DOWNLOAD_RETRIES`), fresh URLs from the API, a full disk, the ledger row
  once a file is final.
- `request`: one GET and what its answer means, the body into the part.
- `pace`: how slow a transfer may be (a minimum rate, a deadline), on the
  event loop's clock.
- `verify`: what arrived is a video (its type, its first box), or the words
  that say what it was instead.
- `partfile`: the part file: lock, writes, fsync, rename; knowing a file
  again without reading it; telling a full disk.

Must not: send credentials to a file host (the files client carries none, and
the Downloader refuses one that does), write outside the manifest's output
folder, or import the stages after it (report, commands, ui). Bytes come over
httpx's own transport: no HTTP code of our own, no patched library.
"""
