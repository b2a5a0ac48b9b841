"""How a run looks while it runs and when it ends: live display, plain lines, summaries.

Owns: the Rich live panel on a terminal (queued, processing, succeeded, failed,
spend against the cap, ETA), one plain or JSON line every few seconds
otherwise, and the renderables of the preflight check, the run's outcome and
`status`. It reads `run.results.Snapshot`s and `RunResult`s and never changes
them; it is part of the CLI layer, the only one allowed to print.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mvbatch.ledger.charges import failures_by_charge
from mvbatch.money import duration, total, usd
from mvbatch.run.budget import Preflight
from mvbatch.run.results import RunResult, Snapshot
from mvbatch.ui.terminal import Terminal

PLAIN_INTERVAL = 5.0  # seconds between progress lines without a terminal
LIVE_INTERVAL = 0.25  # seconds between redraws of the live panel


def _counts(snapshot: Snapshot) -> dict[str, int]:
    c = snapshot.counts
    return {
        "waiting": c.get("planned", 0) - snapshot.held,
        "submitting": c.get("submitting", 0),
        "queued": c.get("queued", 0),
        "processing": c.get("processing", 0),
        "succeeded": c.get("succeeded", 0),
        "failed": sum(c.get(s, 0) for s in ("failed", "cancelled", "rejected")),
        "held": snapshot.held,
    }


def line(snapshot: Snapshot) -> str:
    """One plain progress line (logs, CI, pipes)."""
    counts = _counts(snapshot)
    parts = [
        f"{name} {value}"
        for name, value in counts.items()
        if value or name in ("queued", "processing", "succeeded", "failed")
    ]
    spend = f"spent {usd(snapshot.spent)}, committed {usd(snapshot.committed)}"
    if snapshot.cap is not None:
        spend += f" of {usd(snapshot.cap)}"
    eta = f", eta {duration(snapshot.eta)}" if snapshot.eta else ""
    return (
        f"[{duration(snapshot.elapsed)}] {snapshot.manifest}: "
        f"{', '.join(parts)} / {snapshot.total}; {spend}{eta}"
    )


def panel(snapshot: Snapshot) -> RenderableType:
    counts = _counts(snapshot)
    table = Table.grid(padding=(0, 2))
    for _ in counts:
        table.add_column(justify="right")
    table.add_row(*(Text(name, style="dim") for name in counts))
    styles = {"succeeded": "green", "failed": "red", "held": "yellow"}
    table.add_row(*(Text(str(v), style=styles.get(k, "") if v else "") for k, v in counts.items()))
    done = counts["succeeded"] + counts["failed"]
    title = Text()
    title.append(f"{snapshot.manifest}", "bold")
    title.append(f"  {done}/{snapshot.total} finished", "")
    if snapshot.simulated:
        title.append("  (simulator)", "cyan")
    spend = Text(f"spent {usd(snapshot.spent)}, committed {usd(snapshot.committed)}")
    if snapshot.cap is not None:
        share = float(snapshot.committed / snapshot.cap) if snapshot.cap else 1.0
        spend.append(f" of {usd(snapshot.cap)} ({share:.0%})", "yellow" if share > 0.9 else "")
    spend.append(
        f"   in flight ≤ {snapshot.concurrency}"
        + (
            f" (throttled from {snapshot.max_concurrency})"
            if snapshot.concurrency < snapshot.max_concurrency
            else ""
        )
    )
    spend.append(f"   elapsed {duration(snapshot.elapsed)}")
    if snapshot.eta:
        spend.append(f"   eta {duration(snapshot.eta)}")
    parts: list[RenderableType] = [title, table, spend]
    if snapshot.stopping:
        parts.append(
            Text(
                "stopping: recording what was sent; Ctrl-C again quits at once (still safe)",
                style="yellow",
            )
        )
    return Group(*parts)


class Display:
    """The progress of one run: a live panel for a person, progress lines otherwise.

    On a terminal the panel is redrawn every `LIVE_INTERVAL` seconds from a
    task on the run's own event loop, so the executor's state is read on the
    thread that changes it and no refresh thread competes for the console or
    for Ctrl-C. Without a terminal (pipes, CI) a line is printed every
    `interval` seconds when something changed; under `--log-format json` the
    line is a `run.progress` JSON object.
    """

    def __init__(
        self,
        terminal: Terminal,
        take: Callable[[], Snapshot],
        interval: float = PLAIN_INTERVAL,
    ) -> None:
        self.terminal = terminal
        self.take = take
        self.live_mode = terminal.interactive
        self.interval = LIVE_INTERVAL if self.live_mode else interval
        self._live: Live | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._last = ""

    async def __aenter__(self) -> Display:
        if self.live_mode:
            # auto_refresh=False: no thread of Rich's own; `_tick` redraws.
            self._live = Live(
                panel(self.take()),
                console=self.terminal.err,
                auto_refresh=False,
                transient=False,
                redirect_stdout=False,
            )
            self._live.start(refresh=True)
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._live is not None:
            live, self._live = self._live, None
            with contextlib.suppress(Exception):
                live.update(panel(self.take()), refresh=True)
            live.stop()
        else:
            self._plain(force=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self._live is not None:
                self._live.update(panel(self.take()), refresh=True)
            else:
                self._plain()

    def _plain(self, force: bool = False) -> None:
        snapshot = self.take()
        text = line(snapshot)
        # Skip lines that would only repeat the last one (but for the clock).
        body = text.split("] ", 1)[-1]
        if not force and body == self._last:
            return
        self._last = body
        if self.terminal.json:
            fields: dict[str, Any] = {
                "manifest": snapshot.manifest,
                "total": snapshot.total,
                **_counts(snapshot),
                "spent": str(snapshot.spent),
                "committed": str(snapshot.committed),
                "cap": None if snapshot.cap is None else str(snapshot.cap),
                "elapsed": round(snapshot.elapsed, 1),
                "eta": None if snapshot.eta is None else round(snapshot.eta, 1),
            }
            self.terminal.write_json("run.progress", **fields)
        else:
            self.terminal.err.print(text, highlight=False, markup=False)


# ---------------------------------------------------------------- before and after
#
# Every figure a run or `status` prints is named where a person first meets
# it: the plan view names the estimate and the cap (render.plan_view); the
# preflight names committed, projected, "at least" and the spent/committed of
# the progress lines; the run summary and `status` name what they add. A task
# that did not succeed says what it cost: "rejected (not charged)", "failed
# (charged $0.0414)", "failed (not charged)" (ledger.charges.status_words).

if TYPE_CHECKING:
    from mvbatch.report.model import Report


def preflight_view(check: Preflight, simulated: bool) -> RenderableType:
    lines = Text()
    todo = []
    if check.new:
        todo.append(f"{check.new} to submit (estimated {usd(check.new_cost)})")
    if check.retry:
        todo.append(
            f"{check.retry} failed to submit again as new tasks (--retry-failed: each goes "
            f"under a new key and is charged as a new task; estimated {usd(check.retry_cost)})"
        )
    if check.resume:
        todo.append(f"{check.resume} to re-send under their keys (no new charge)")
    if check.poll:
        todo.append(f"{check.poll} in flight to follow")
    if check.done:
        todo.append(f"{check.done} done")
    if check.failed:
        todo.append(
            f"{check.failed} failed, not retried (--retry-failed submits failed tasks again "
            "as new tasks, each charged as new)"
        )
    lines.append("run: " + ("; ".join(todo) or "nothing to do"))
    lines.append(
        f"\ncommitted so far {usd(check.committed)} (committed = what this manifest's tasks "
        "count for against the cap: the charge of each finished task, the server's estimate "
        "of each one still running, ours until it answers)"
    )
    lines.append(
        f"\nprojected {usd(check.projected)} (committed so far + the estimates of the tasks "
        "to submit)"
    )
    if check.cap is not None:
        lines.append(f", cap {usd(check.cap)}")
    if simulated:
        lines.append("  (simulated: nothing is charged)", "cyan")
    if check.floor != check.projected:
        lines.append(
            f"\nat least {usd(check.floor)} (the least this run commits before it knows the "
            "assumed prices: committed so far + the tasks whose price is documented or learned "
            "+ one task of each assumed-price tier, which goes alone first to learn its real "
            "rate)"
        )
    if check.uncertain:
        lines.append(
            f"\nprojected is over the cap only at assumed prices "
            f"({', '.join(check.assumed_classes)}): one task of each is sent first to learn "
            "the real rate, and nothing is submitted past the cap",
            style="yellow",
        )
    if check.work and not check.over_cap:
        lines.append(
            "\nwhile it runs: spent = what the server charged for the tasks that ended; no task is "
            "submitted that would take committed over the cap",
            style="dim",
        )
    return lines


def result_view(result: RunResult, command: str, *, report: Report | None = None) -> RenderableType:
    """The outcome of a run, with words that say what each task that did not succeed cost.

    `report` is the run's report (`RunOutcome.report.report`) when it wrote one:
    from it each failed task says whether the server charged it and how much.
    Without it (an interrupted run) the words come from the counts alone:
    a rejected task is never charged, a failed one may have been.
    """

    counts = result.counts
    entries = {t.key: t for t in report.tasks} if report is not None else {}
    failed_keys = list(dict.fromkeys(key for _, key, _ in result.failures))
    failed = [entries[k] for k in failed_keys if k in entries]
    known = report is not None and len(failed) == len(failed_keys)
    text = Text()
    text.append(f"{result.manifest}: ", "bold")
    text.append(f"{counts.get('succeeded', 0)} succeeded", "green")
    if known:
        for group in failures_by_charge((t.status, t.charge) for t in failed):
            text.append(f", {group['tasks']} {group['text']}", "red")
    else:
        for status in ("failed", "cancelled"):
            if counts.get(status):
                text.append(f", {counts[status]} {status}", "red")
        if counts.get("rejected"):
            text.append(f", {counts['rejected']} rejected (not charged)", "red")
    if result.pending:
        text.append(f", {result.pending} not finished")
    text.append(f" of {result.total}; spent {usd(result.spent)}")
    if result.cap is not None:
        text.append(f", committed {usd(result.committed)} of the {usd(result.cap)} cap")
    if result.simulated:
        text.append(" (simulated: nothing is charged)", "cyan")
    text.append(f"; {result.submitted} submitted by this run in {duration(result.elapsed)}")
    for shot, key, message in result.failures[:10]:
        entry = entries.get(key)
        words = entry.status_text if entry is not None else "failed"
        text.append(f"\n{words}: {shot} {key}: {message}", "red")
    if len(result.failures) > 10:
        text.append(f"\n... and {len(result.failures) - 10} more (see `mvbatch report`)", "red")
    for warning in (result.unfollowed_message, result.overdue_message, result.unresolved_message):
        if warning:  # tasks this run could not follow to their end
            text.append(f"\nwarning: {warning}", "bold yellow")
    if result.held:
        text.append(
            f"\nbudget: {result.held_reason or f'{result.held} task(s) held'}; "
            "nothing was submitted over the cap",
            "yellow",
        )
    if result.overrun_message:
        over = "over the cap" if result.over_cap else "warning"
        text.append(f"\n{over}: {result.overrun_message}", "bold red")
    if result.downloads_interrupted:
        text.append(
            "\ninterrupted during the downloads: files being fetched are kept in part and "
            f"resume where they stopped. Resume with: {command}",
            "yellow",
        )
    elif result.interrupted:
        text.append(
            f"\ninterrupted: what was sent is recorded; tasks in flight keep running "
            f"on the server. Resume with: {command}",
            "yellow",
        )
    elif result.failed:
        hint = (
            f"\nto try the {result.failed} failed task(s) again: {command} --retry-failed "
            "(each goes as a new task under a new key and is charged as one"
        )
        if known:
            hint += (
                f": about {usd(total([t.estimate_local for t in failed]))} in all at the "
                "plan's estimates"
            )
            if any(t.charge is not None and t.charge.kind == "charged" for t in failed):
                hint += "; what the failed attempts were charged stays spent"
            if any(t.status == "rejected" for t in failed):
                hint += (
                    "; a rejected task is sent unchanged, so a refusal of its input is "
                    "likely to repeat (not charged)"
                )
        text.append(hint + ")", "dim")
    return text


STATUS_WORDS = {
    "planned": "planned (not submitted yet)",
    "submitting": "submitting (sent, no answer yet)",
}


def status_view(doc: Mapping[str, Any]) -> RenderableType:
    counts: Mapping[str, int] = doc["counts"]
    groups: list[Mapping[str, Any]] = doc.get("failures_by_charge") or []
    table = Table(
        title=f"{doc['manifest']} ({'simulated' if doc['simulated'] else 'live'})",
        title_justify="left",
    )
    table.add_column("status")
    table.add_column("tasks", justify="right")
    for name, value in counts.items():
        if not value:
            continue
        mine = [g for g in groups if g["status"] == name]
        if mine:  # failed, cancelled, rejected: one row per charge
            for group in mine:
                table.add_row(group["text"], str(group["tasks"]))
        else:
            table.add_row(STATUS_WORDS.get(name, name), str(value))
    table.add_row(Text("total", style="bold"), Text(str(doc["tasks"]), style="bold"))
    spend = doc["spend"]
    text = Text()
    text.append(
        f"charged {usd(_decimal(spend['actual']))} (by the server, failed tasks included), "
        f"committed {usd(_decimal(spend['committed']))} (charged + the server's estimates of "
        "tasks it has not charged yet, ours until it answers)"
    )
    if doc.get("max_usd") is not None:
        text.append(
            f"\ncap {usd(_decimal(doc['max_usd']))} (the manifest's [budget] max_usd; a run's "
            f"--max-cost can lower it), budget left {usd(_decimal(doc['budget_left']))} "
            "(cap − committed)"
        )
    else:
        text.append("\nno cap (set [budget] max_usd in the manifest, or run with --max-cost)")
    left = doc["left"]
    text.append(
        f"\nleft: {left['tasks']} task(s) not finished (not submitted yet, or in flight), "
        f"estimated {usd(_decimal(left['cost_estimate']))} (the server's estimate once submitted, "
        "the plan's before)"
    )
    unknown = doc.get("unknown_status") or {}
    if unknown.get("tasks"):
        statuses = ", ".join(f"{s} {n}" for s, n in unknown["statuses"].items())
        text.append(
            f"\nwarning: {unknown['tasks']} task(s) in a status the API docs do not list "
            f"({statuses}): let go by the last run, in flight here; `mvbatch run` asks the "
            "server about them again",
            "yellow",
        )
    plan = doc.get("plan")
    if plan and plan["not_in_ledger"] and doc.get("last_run"):
        text.append(f"; {plan['not_in_ledger']} of them added to the manifest since it last ran")
    if doc.get("plan_error"):
        text.append(
            f"\nwarning: the manifest does not plan now ({doc['plan_error']}): "
            "these counts come from the ledger alone",
            "yellow",
        )
    if groups:
        text.append(
            "\n`mvbatch run --retry-failed` submits failed tasks again as new tasks, each "
            "charged as a new one",
            "dim",
        )
    run = doc.get("last_run")
    if run:
        text.append(
            f"\nlast run #{run['id']} started {run['started_at']}: "
            f"{run['outcome'] or 'did not finish (crashed or still running)'}"
        )
    else:
        text.append("\nnothing has run yet: the tasks are the manifest's plan")
    return Group(table, text)


def _decimal(value: float | None) -> Decimal | None:
    """An amount read back from a JSON-ready document (`status --json`)."""
    return None if value is None else Decimal(str(value))
