"""A stand-in for the MindVideo task API, faithful to its documentation.

`create_app(SimConfig(...))` returns the ASGI app (run it in-process through
`httpx.ASGITransport`, or under uvicorn with `serve()` / `python -m
mvbatch.sim`). This package is "someone else's service": it imports nothing
from the mvbatch client and shares only the data in `mvbatch.schemas`.
"""
