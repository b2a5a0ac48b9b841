"""The run: each planned task submitted exactly once, followed to its end, within the budget.

Owns: everything between a plan and its finished tasks in the ledger: the
budget before and during the run, the order of submissions, concurrency,
the POSTs and the polls, stopping cleanly and resuming after a crash. The
rules that keep money and work safe are numbered in `executor.py`.

Must not: print (the CLI renders the `Snapshot`s and the `RunResult`), see
the API key (the `ApiClient` carries it), download anything (the downloads
come in through the `on_succeeded` hook), or import a later stage.

    executor.py     Executor: loads the jobs, sends them in order, stops; the overview
    jobs.py         TaskJob, the job record, and JobBoard, the tallies all parts share
    budget.py       the cap: preflight before the run, Budget during it, learned rates
    probes.py       the first POST of each price class goes alone
    concurrency.py  AdaptiveLimit: tasks in flight, halved on 429
    submit.py       Submitter: intent, POST, answer committed
    follow.py       Follower: polls a task to its end, --max-wait
    polling.py      LatencyBook: when to poll again, learned from latencies
    finish.py       Finisher: a task's end recorded once
    hooks.py        SuccessHooks: the on_succeeded calls (downloads)
    results.py      Snapshot and RunResult
"""
