"""mvbatch: plan, run and report batches of MindVideo generation tasks.

The data flows manifest -> plan -> ledger -> execute -> report; each step has
its own module, named after it. `mvbatch.sim` is a stand-in for the remote
service and shares nothing with the client but the data in `mvbatch.schemas`.
"""

__version__ = "0.1.0"
