"""The task API: which one this process talks to, the calls it makes, and when it tries again.

Owns: every request to the MindVideo task API (or the built-in simulator
standing in for it), what each answer becomes (a `TaskState`, or one of the
API's errors in `mvbatch.errors`), and the one retry policy for HTTP calls.

Must not: know about plans, the ledger, budgets or the executor's decisions
(it answers, the run decides), import a later stage (run, downloads, report,
ui), or share code with `mvbatch.sim`, which stands in for a service written
by someone else. The API key lives only in the HTTP client `endpoint` builds.

    endpoint.py    live or simulated; the API client (with the key) and the
                   files client (without)
    client.py      ApiClient: POST /tasks, GET /tasks/{id}, GET .../events;
                   what each HTTP answer becomes, `maybe_sent`, `on_throttle`
    responses.py   reading answers: TaskState, error messages, answers that
                   come from something other than the API
    retry.py       RetryPolicy on stamina: what is retried, the waits
                   (Retry-After first), the attempts, the shared RetryBudget
"""
