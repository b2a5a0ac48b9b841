"""mvbatch: plan, run and report batches of MindVideo generation tasks.

The data flows down one folder per stage: plan -> ledger -> api -> run ->
downloads -> report, put to work by `commands` and shown by `ui` and `cli`
(docs/architecture.md draws it; tests/test_layout.py keeps it so). `sim` is a
stand-in for the remote service and shares nothing with the client but the
data in `mvbatch.schemas`.
"""

__version__ = "0.1.0"
