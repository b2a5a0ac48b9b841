"""How a run looks while it runs and when it ends: live display, plain lines, summaries.

Owns: the Rich live panel on a terminal (queued, processing, succeeded, failed,
spend against the cap, ETA), one plain line every few seconds otherwise, and
the renderables of the preflight check, the run's outcome and `status`. It
reads `executor.Snapshot`s and `RunResult`s and never changes them; it is part
of the CLI layer, the only one allowed to print.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mvbatch.executor import Preflight, RunResult, Snapshot

PLAIN_INTERVAL = 5.0


def money(value: Decimal | None) -> str:
    return "—" if value is None else f"${value:,.4f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(seconds + 0.5))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


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
    spend = f"spent {money(snapshot.spent)}, committed {money(snapshot.committed)}"
    if snapshot.cap is not None:
        spend += f" of {money(snapshot.cap)}"
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
    spend = Text(f"spent {money(snapshot.spent)}, committed {money(snapshot.committed)}")
    if snapshot.cap is not None:
        share = float(snapshot.committed / snapshot.cap) if snapshot.cap else 1.0
        spend.append(f" of {money(snapshot.cap)} ({share:.0%})", "yellow" if share > 0.9 else "")
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


class _Renderable:
    def __init__(self, take: Callable[[], Snapshot]) -> None:
        self.take = take

    def __rich__(self) -> RenderableType:
        return panel(self.take())


class Display:
    """The progress of one run: a live panel on a terminal, plain lines otherwise."""

    def __init__(
        self,
        console: Console,
        take: Callable[[], Snapshot],
        live: bool | None = None,
        interval: float = PLAIN_INTERVAL,
    ) -> None:
        self.console = console
        self.take = take
        self.live_mode = console.is_terminal if live is None else live
        self.interval = interval
        self._live: Live | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._last = ""

    async def __aenter__(self) -> Display:
        if self.live_mode:
            self._live = Live(
                _Renderable(self.take), console=self.console, refresh_per_second=4, transient=False
            )
            self._live.start()
        else:
            self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
            self._plain(force=True)

    def note(self, message: str, style: str = "yellow") -> None:
        """A message above the live panel (or a plain line)."""
        self.console.print(Text(message, style=style))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._plain()

    def _plain(self, force: bool = False) -> None:
        with contextlib.suppress(Exception):
            text = line(self.take())
            # Skip lines that would only repeat the last one (but for the clock).
            body = text.split("] ", 1)[-1]
            if force or body != self._last:
                self._last = body
                self.console.print(text, highlight=False, markup=False)


# ---------------------------------------------------------------- before and after


def preflight_view(check: Preflight, simulated: bool) -> RenderableType:
    lines = Text()
    todo = []
    if check.new:
        todo.append(f"{check.new} to submit ({money(check.new_cost)})")
    if check.retry:
        todo.append(
            f"{check.retry} failed to retry under new keys ({money(check.retry_cost)}, "
            "charged again)"
        )
    if check.resume:
        todo.append(f"{check.resume} to re-send under their keys (no new charge)")
    if check.poll:
        todo.append(f"{check.poll} in flight to follow")
    if check.done:
        todo.append(f"{check.done} done")
    if check.failed:
        todo.append(f"{check.failed} failed (re-run with --retry-failed to try again)")
    lines.append("run: " + ("; ".join(todo) or "nothing to do"))
    lines.append(f"\ncommitted so far {money(check.committed)}, projected {money(check.projected)}")
    if check.cap is not None:
        lines.append(f", cap {money(check.cap)}")
    if simulated:
        lines.append("  (simulated: nothing is charged)", "cyan")
    if check.uncertain:
        lines.append(
            f"\nthe projection exceeds the cap only at assumed prices "
            f"({', '.join(check.assumed_classes)}): one task of each is sent first to learn "
            "the real rate, and nothing is submitted past the cap",
            style="yellow",
        )
    return lines


def result_view(result: RunResult, command: str) -> RenderableType:
    counts = result.counts
    text = Text()
    text.append(f"{result.manifest}: ", "bold")
    text.append(f"{counts.get('succeeded', 0)} succeeded", "green")
    if result.failed:
        text.append(f", {result.failed} failed", "red")
    if result.pending:
        text.append(f", {result.pending} not finished")
    text.append(f" of {result.total}; spent {money(result.spent)}")
    if result.cap is not None:
        text.append(f", committed {money(result.committed)} of {money(result.cap)}")
    if result.simulated:
        text.append(" (simulated)", "cyan")
    text.append(f"; {result.submitted} submitted in {duration(result.elapsed)}")
    for shot, key, message in result.failures[:10]:
        text.append(f"\nfailed: {shot} {key}: {message}", "red")
    if len(result.failures) > 10:
        text.append(f"\n... and {len(result.failures) - 10} more (see `mvbatch report`)", "red")
    if result.unfollowed_message:
        text.append(f"\nwarning: {result.unfollowed_message}", "bold yellow")
    if result.overdue_message:
        text.append(f"\nwarning: {result.overdue_message}", "bold yellow")
    if result.held:
        text.append(
            f"\nbudget: {result.held_reason or f'{result.held} task(s) held'}; "
            "nothing was submitted over the cap",
            "yellow",
        )
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
        text.append(
            f"\nto try the failed tasks again (charged again): {command} --retry-failed", "dim"
        )
    return text


def status_view(doc: Mapping[str, Any]) -> RenderableType:
    counts: Mapping[str, int] = doc["counts"]
    table = Table(
        title=f"{doc['manifest']} ({'simulated' if doc['simulated'] else 'live'})",
        title_justify="left",
    )
    table.add_column("status")
    table.add_column("tasks", justify="right")
    for name, value in counts.items():
        if value:
            table.add_row(name, str(value))
    table.add_row(Text("total", style="bold"), Text(str(doc["tasks"]), style="bold"))
    spend = doc["spend"]
    text = Text()
    text.append(f"spent {_usd(spend['actual'])}, committed {_usd(spend['committed'])}")
    if doc.get("max_usd") is not None:
        text.append(f" of {_usd(doc['max_usd'])} (left {_usd(doc['budget_left'])})")
    left = doc["left"]
    text.append(
        f"\nleft: {left['tasks']} task(s) not finished, estimated {_usd(left['cost_estimate'])}"
    )
    run = doc.get("last_run")
    if run:
        text.append(
            f"\nlast run #{run['id']} started {run['started_at']}: "
            f"{run['outcome'] or 'did not finish (crashed or still running)'}"
        )
    return Group(table, text)


def _usd(value: float | None) -> str:
    return "—" if value is None else f"${value:,.4f}"
