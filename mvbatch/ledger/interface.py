"""What the rest of mvbatch may ask of the ledger: the `Ledger` protocol.

Owns: the list of operations the executor, the downloader, the reporter,
`status` and the commands use, each with the guarantee it makes. Every
backend implements all of them (`SqliteLedger`, and `PostgresLedger` for a
fleet of workers). Must not: name a backend, a table or a query.

The guarantees every backend keeps:

- Each write is one step, all of it or none of it, committed when the call
  returns: a crash (even `kill -9`) right after a call keeps it, a crash
  during one leaves the ledger as it was before.
- A task is identified by `(env, key)`; simulated (`sim`) and live work never
  mix. `key` is the plan's key; `submit_key` the idempotency key of the
  current attempt.
- Every status change appends an event; events are never changed or deleted.
- Money is exact (`Decimal`), never a float. The API key is never stored.
- The cap is the ledger's: an intent is recorded only if the manifest's
  committed spend, every process's, stays within the cap it is given
  (`record_intent`), so runs at once on one ledger share one cap.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol, Self

from mvbatch.ledger.rows import Intent, Output, Reservation, TaskRow, Verdict


class Ledger(Protocol):
    """The ledger, opened for one process. Close it, or use it as a context manager."""

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...

    # -- runs

    def start_run(
        self,
        env: str,
        manifest: str,
        base_url: str,
        max_usd: Decimal | None,
        concurrency: int | None = None,
    ) -> int:
        """Record that a run of `manifest` starts now (with this process's pid); its id."""
        ...

    def finish_run(self, run_id: int, outcome: str) -> None:
        """Record how the run ended (`succeeded`, `pending`, `interrupted`...) and when."""
        ...

    def last_run(self, manifest: str) -> dict[str, Any] | None:
        """The manifest's most recent run on either side (its columns), or None."""
        ...

    # -- tasks: reading

    def task(self, env: str, key: str) -> TaskRow | None:
        """The task as last committed, or None if the ledger never saw it."""
        ...

    def tasks(self, env: str, manifest: str | None = None) -> list[TaskRow]:
        """The manifest's tasks (every manifest's when None), in the order first planned."""
        ...

    def each_task(self, env: str, manifest: str | None = None) -> Iterator[TaskRow]:
        """`tasks`, one row at a time: a reader that keeps less than every row holds less.

        Read it to its end before the next call on this ledger.
        """
        ...

    def task_states(self, env: str, manifest: str) -> dict[str, str]:
        """Each of the manifest's tasks' status by key, in the order first planned: all
        `plan` needs of a ledger of 100,000 tasks."""
        ...

    def rerolls(self, env: str, manifest: str) -> list[TaskRow]:
        """The manifest's re-rolled takes (`rerolled_from` set), in the order first planned."""
        ...

    def events(self, env: str, key: str) -> list[dict[str, Any]]:
        """The task's status changes, oldest first: `at`, `previous`, `status`, `detail`, `run_id`.

        `detail` is JSON text (or None) as it was written: the log is evidence.
        """
        ...

    # -- tasks: writing, one step each (the event included)

    def ensure_tasks(self, env: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add the planned tasks the ledger does not know yet, as `planned`; all or none.

        A task it knows is never touched, whatever the row says: its status,
        shot and estimate stay as recorded. Each row has the planned task's
        `key`, `manifest`, `shot`, `shots`, `variant`, `take`, `model`,
        `input`, `price_class`, `seconds`, `upper_bound`, `estimate_local` and
        `estimate_source`, and may have `rerolled_from` (the rejected take a
        re-rolled one replaces).
        """
        ...

    def record_intent(
        self,
        env: str,
        key: str,
        *,
        previous: str,
        submit_key: str,
        attempt: int,
        run_id: int | None,
        estimate: Decimal | None = None,
        cap: Decimal | None = None,
        worker: str | None = None,
        lease: float | None = None,
        in_flight_limit: int | None = None,
    ) -> Reservation:
        """Committed before the POST is sent: "`submit_key` is about to be submitted".

        The intent is a reservation against `cap` (the run's cap, the lowest
        of max_usd and --max-cost). In the same step, under the write lock, the
        backend sums what the manifest's tasks have committed (`committed_cost`
        of every row, whichever process or machine recorded it), adds
        `estimate` (ours, a learned rate included; None: the plan's), and
        records the intent only if that stays within the cap. Refused, it
        records nothing and says so (`Reservation.granted` is False). With no
        cap, and for a re-send (`previous` is `submitting`: reserved by its
        first intent), the intent is always recorded. Until the POST is
        answered the task counts for the estimate it was reserved at.

        A task found `submitting` after a crash is sent again under the same
        `submit_key`, which the API answers without a new charge. A new
        attempt (`--retry-failed`, `attempt` > 0 after a failure) forgets the
        previous attempt's task id, costs, error and outputs in the same step,
        so the row never mixes two attempts; what the superseded attempt
        committed us to spend moves into `cost_prior`: a retry never erases
        money spent. The events keep the history.

        With `worker`, the intent is also a claim: the task is held by
        `worker` for `lease` seconds (renewed by `renew`), and an intent on a
        task another worker holds on a live lease is refused as stale. With
        `in_flight_limit`, a new submission is refused (`Reservation.busy`)
        while the manifest has that many tasks in flight, every worker's
        counted, in the same step: the fleet's concurrency.
        """
        ...

    def record_intents(
        self,
        env: str,
        intents: Sequence[Intent],
        *,
        run_id: int | None,
        cap: Decimal | None = None,
        worker: str | None = None,
        lease: float | None = None,
    ) -> list[Reservation]:
        """Many tasks' intents in one step: each answered as `record_intent` would answer it.

        The intents are decided in order, under one write lock, each on the
        ledger as it stood plus the intents granted before it in the step: the
        cap reservation stays exact (what was committed + this step's grants +
        this task's estimate ≤ `cap`; a task that does not fit is refused on
        its own and a later, smaller one may still fit), and so do the
        in-flight count (`Intent.in_flight_limit`) and every stale, claimed or
        busy refusal, task by task. The answers come in the intents' order.
        All of it is committed when the call returns, or none of it: every
        granted intent is committed before any of their POSTs may be sent. A
        key given twice raises `ValueError` and records nothing.
        """
        ...

    def record_submitted(
        self,
        env: str,
        key: str,
        *,
        task_id: str,
        request_id: str | None,
        status: str,
        cost_estimate: Decimal | None,
        run_id: int | None,
    ) -> None:
        """Committed right after the POST returns: the task id, never to be lost.

        From then on the task is only polled, never sent again.
        """
        ...

    def record_progress(
        self,
        env: str,
        key: str,
        *,
        previous: str,
        status: str,
        polls: int,
        run_id: int | None,
        server_status: str | None = None,
        error: str | None = None,
    ) -> None:
        """A status change seen while polling that is not the end (queued -> processing).

        With `server_status`: the task was let go in that status, which the API
        docs do not list; it stays in flight (`status`) and `error` keeps the
        server's words, in the row and the event, until a later progress (which
        clears it) or its end.
        """
        ...

    def record_finished(
        self,
        env: str,
        key: str,
        *,
        previous: str,
        status: str,
        cost_estimate: Decimal | None,
        cost_actual: Decimal | None,
        error: str | None,
        urls: Sequence[str],
        polls: int,
        latency: tuple[str, float] | None,
        run_id: int | None,
        task_id: str | None = None,
        request_id: str | None = None,
    ) -> None:
        """A terminal status with everything learned from it, in one step.

        The output URLs are committed with the status, so a task is never
        `succeeded` without them; `latency` is `(latency class, seconds)` to
        learn from. `task_id` is given when the POST itself answered with a
        terminal status: then this is also the "right after the POST" write.
        """
        ...

    def record_rejected(
        self, env: str, key: str, *, error: str, http_status: int | None, run_id: int | None
    ) -> None:
        """The server refused a first POST (a 4xx): nothing created, nothing charged."""
        ...

    def record_refused_resend(
        self,
        env: str,
        key: str,
        *,
        error: str,
        http_status: int | None,
        estimate: Decimal,
        run_id: int | None,
    ) -> None:
        """A 4xx to a POST that may have reached the server before (a re-send).

        The first send may have created and charged the task: it ends
        `failed`, never `rejected`, and keeps `estimate` (ours, when the
        server gave none) as committed spend.
        """
        ...

    def record_server_events(self, env: str, key: str, server_events: Any) -> None:
        """The server's event history of a failed task, fetched once and kept."""
        ...

    # -- outputs

    def record_output_url(self, env: str, key: str, idx: int, url: str) -> None:
        """A fresh URL for an output (the old one expired); a recorded download is kept."""
        ...

    def record_download(  # noqa: PLR0917 - the downloader calls it positionally
        self,
        env: str,
        key: str,
        idx: int,
        path: str,
        sha256: str,
        size: int,
        file_stat: str | None = None,
    ) -> None:
        """Committed only after the file's final rename: it is there, with these bytes.

        `path` is relative to the manifest's output folder; `file_stat` is how
        the file looked when hashed (see `record_verified`).
        """
        ...

    def record_verified(self, env: str, key: str, idx: int, file_stat: str) -> None:
        """A recorded file was hashed again and still matches: remember how it looks now.

        A later run trusts the file unread while it still looks like this.
        """
        ...

    def outputs(self, env: str, key: str) -> list[Output]:
        """The task's outputs in order, with what was downloaded of each."""
        ...

    def manifest_outputs(self, env: str, manifest: str) -> dict[str, list[Output]]:
        """`outputs` of each of the manifest's tasks that has any, by key, in one read."""
        ...

    def undownloaded(self, env: str, manifest: str) -> set[str]:
        """Keys of the manifest's succeeded tasks with an output not downloaded yet."""
        ...

    # -- claims: which worker holds a task in flight (a fleet on one ledger)

    def claim(self, env: str, key: str, worker: str, lease: float) -> TaskRow | None:
        """Hold a task in flight for `lease` seconds; its row as claimed, or None.

        Taken when no worker holds it, `worker` already does, or its holder's
        lease is over (on the ledger's clock); a task not in flight is never
        claimed. One step: two workers never both take it.
        """
        ...

    def abandoned(self, env: str, manifest: str, worker: str) -> list[TaskRow]:
        """The manifest's tasks in flight that no live worker holds (other than `worker`):
        held by none, or by one whose lease is over. What a worker may take over."""
        ...

    def renew(self, env: str, worker: str, lease: float) -> int:
        """The worker's heartbeat: every task it holds in flight, `lease` seconds more."""
        ...

    def release(self, env: str, worker: str) -> int:
        """Let go of every task the worker holds (it stops): others may take them at once."""
        ...

    # -- what a person decided (`mvbatch review`)

    def record_verdict(self, env: str, key: str, verdict: str | None, note: str | None) -> Verdict:
        """Append a verdict on a take (`approved`, `rejected`, None to clear) with a note.

        One step; the latest verdict counts and none is ever changed or
        deleted. A key the ledger does not know raises `KeyError` and writes
        nothing; a verdict outside `VERDICTS` raises `ValueError`.
        """
        ...

    def verdicts(self, env: str, manifest: str) -> dict[str, Verdict]:
        """The latest verdict of each of the manifest's tasks that has one, by key."""
        ...

    def verdict_history(self, env: str, key: str) -> list[Verdict]:
        """Every verdict given on the task, oldest first."""
        ...

    # -- what the server taught us

    def record_learned_rate(self, env: str, price_class: str, usd_per_second: Decimal) -> None:
        """The price class's rate, learned from the server's estimate; replaces the last one."""
        ...

    def learned_rates(self, env: str) -> dict[str, Decimal]:
        """The last rate learned for each price class (USD per second of output)."""
        ...

    def latencies(self, env: str, limit_per_class: int = 200) -> dict[str, list[float]]:
        """The most recent task latencies (seconds) per latency class, newest first."""
        ...
