"""The reports of a manifest: report.json, report.csv, report.md and the contact sheet.

Owns: reading the ledger (and the plan, so tasks never submitted still have
their shot and variant) into a `Report`, the totals people ask about (cost by
model, tier and shot; estimate against actual; failures grouped by the
server's message; time per task), and writing the four files atomically into
`MVBATCH_OUTPUT_DIR/<name>/` next to the videos. `report.json` is the SPEC §6
contract. The two entry points the CLI calls are `report_command` (the
`report` command) and `finish_run` (the end of `run`).

Money adds up: every total is the exact (Decimal) sum of the same figure over
the task rows, so a user who sums a column of report.json, report.csv or
report.md gets the total printed beside it. The figures (also written into
report.json under `definitions`):

- `cost_estimate` (contract): the estimate mvbatch held against the budget,
  the server's `cost_estimate` once the task was submitted, the plan's before
  (and for a task the server rejected, which never got one);
- `cost_estimate_plan`: the plan's own estimate (rate per second times seconds),
  also written as `estimate_local`; the estimate-vs-actual variance uses it;
- `cost_estimate_server`: the server's estimate, null until submitted;
- `cost_actual` (contract): what the server charged, null until it said;
- `cost_committed`: what the task counts for against the cap now (as the
  budget guard counts it, `ledger.committed_cost`), earlier attempts included;
- `cost_prior`: what earlier attempts of a task (`--retry-failed`) committed,
  kept out of `cost_actual`, which is the current attempt's.

Must not: print (the CLI does), change a task (it only reads the ledger, and
the downloader records files), or write the API key anywhere: nothing here
receives it except through `Endpoint`, whose API client it hands to the
client for URL refreshes.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from mvbatch import logs
from mvbatch.downloads.fetch import (
    Downloader,
    DownloadStats,
    Fetched,
    report_folder,
    value_text,
    variant_pairs,
)
from mvbatch.ledger.store import Ledger, Output, TaskRow, committed_cost
from mvbatch.plan.planner import Plan, PlannedTask
from mvbatch.plan.pricing import normalize, total
from mvbatch.settings import Settings
from mvbatch.ui.render import Charge, charge_of, failures_by_charge, json_number, status_words, usd

PENDING = ("planned", "submitting", "queued", "processing")
FAILED = ("failed", "rejected")
FILES = {"json": "report.json", "csv": "report.csv", "md": "report.md", "html": "report.html"}

log = logs.get("mvbatch.report.model")


# ------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class OutputEntry:
    idx: int
    url: str
    path: str | None  # relative to the report folder; None until downloaded
    sha256: str | None
    bytes: int | None
    video_seconds: Decimal | None = None  # read from the file's own header
    download_error: str | None = None  # why this run could not fetch it


@dataclass(frozen=True, slots=True)
class TaskEntry:
    """One task as the report shows it, whether or not it ever reached the ledger."""

    key: str
    shot: str
    shots: tuple[str, ...]
    variant: tuple[tuple[str, Any], ...]
    take: int
    model: str
    input: Mapping[str, Any]
    status: str
    estimate_local: Decimal  # our plan's estimate: what the budget was held against
    price_class: str
    price_source: str
    upper_bound: bool
    task_id: str | None = None
    cost_estimate_server: Decimal | None = None
    cost_actual: Decimal | None = None
    error: str | None = None
    submitted_at: str | None = None
    finished_at: str | None = None
    billed_seconds: Decimal | None = None
    outputs: tuple[OutputEntry, ...] = ()
    in_plan: bool = True
    cost_prior: Decimal = Decimal(0)  # committed by earlier attempts (--retry-failed)

    @property
    def cost_estimate(self) -> Decimal:
        """The estimate held against the budget: the server's once it gave one, else the plan's."""
        if self.cost_estimate_server is not None:
            return self.cost_estimate_server
        return self.estimate_local

    @property
    def cost_committed(self) -> Decimal:
        """What this task counts for against the cap, as the budget guard counts it."""
        return self.cost_prior + committed_cost(
            self.status, self.estimate_local, self.cost_estimate_server, self.cost_actual
        )

    @property
    def charge(self) -> Charge | None:
        """For a failed, cancelled or rejected task: charged, not charged, or unknown."""
        return charge_of(self.status, self.cost_actual, self.cost_estimate_server)

    @property
    def status_text(self) -> str:
        """The status in words that say what it cost: `failed (charged $0.0414)`."""
        return status_words(self.status, self.charge)

    @property
    def variant_label(self) -> str:
        return " · ".join(f"{k}={value_text(v)}" for k, v in self.variant) or "default"

    @property
    def elapsed(self) -> float | None:
        """Seconds from submission to the terminal status: the time this task took."""
        start, end = _instant(self.submitted_at), _instant(self.finished_at)
        if start is None or end is None:
            return None
        return max(0.0, round(end - start, 3))

    @property
    def group(self) -> str:
        if self.status in PENDING:
            return "pending"
        if self.status in FAILED:
            return "failed"
        return self.status  # succeeded, cancelled

    @property
    def video_seconds(self) -> Decimal | None:
        for output in self.outputs:
            if output.video_seconds is not None:
                return output.video_seconds
        return self.billed_seconds

    @property
    def downloaded(self) -> bool:
        return bool(self.outputs) and all(o.path for o in self.outputs)

    @property
    def aspect_ratio(self) -> str:
        for name in ("aspect_ratio", "size"):
            value = self.input.get(name)
            if isinstance(value, str) and value in ("16:9", "9:16", "1:1"):
                return value
        return "16:9"


@dataclass(frozen=True, slots=True)
class Bucket:
    """Counts and money of a group of tasks (a model, a tier, a shot); sums of the task rows."""

    tasks: int = 0
    succeeded: int = 0
    cost_estimate: Decimal = Decimal(0)
    cost_actual: Decimal = Decimal(0)

    def add(self, task: TaskEntry) -> Bucket:
        return Bucket(
            self.tasks + 1,
            self.succeeded + (task.status == "succeeded"),
            self.cost_estimate + task.cost_estimate,
            self.cost_actual + (task.cost_actual or Decimal(0)),
        )

    def document(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "succeeded": self.succeeded,
            "cost_estimate": json_number(normalize(self.cost_estimate)),
            "cost_actual": json_number(normalize(self.cost_actual)),
        }


@dataclass(frozen=True, slots=True)
class FailureGroup:
    reason: str  # the server's message, as the ledger recorded it
    status: str
    keys: tuple[str, ...]
    shots: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Variance:
    """Our plan's estimate against what the server charged, for tasks with both."""

    tasks: int
    estimate: Decimal
    actual: Decimal
    off: tuple[TaskEntry, ...]  # tasks whose actual differs from the estimate

    @property
    def difference(self) -> Decimal:
        return normalize(self.actual - self.estimate)

    @property
    def percent(self) -> Decimal | None:
        if self.estimate == 0:
            return None
        return (self.difference / self.estimate * 100).quantize(Decimal("0.1"))


@dataclass(frozen=True)
class Report:
    manifest: str
    env: str
    tasks: tuple[TaskEntry, ...]
    shot_order: tuple[str, ...]
    prompts: Mapping[str, str]
    generated_at: str
    downloads: DownloadStats | None = None
    max_usd: Decimal | None = None

    @property
    def simulated(self) -> bool:
        return self.env == "sim"

    # -- totals

    @property
    def counts(self) -> Counter[str]:
        return Counter(t.group for t in self.tasks)

    @property
    def cost_estimate(self) -> Decimal:
        """The sum of the tasks' `cost_estimate`: what was held against the budget."""
        return total([t.cost_estimate for t in self.tasks])

    @property
    def cost_estimate_plan(self) -> Decimal:
        return total([t.estimate_local for t in self.tasks])

    @property
    def cost_estimate_server(self) -> Decimal:
        return total([t.cost_estimate_server for t in self.tasks if t.cost_estimate_server])

    @property
    def cost_actual(self) -> Decimal:
        return total([t.cost_actual for t in self.tasks if t.cost_actual is not None])

    @property
    def cost_committed(self) -> Decimal:
        return total([t.cost_committed for t in self.tasks])

    @property
    def cost_prior(self) -> Decimal:
        return total([t.cost_prior for t in self.tasks])

    @property
    def failures_by_charge(self) -> list[dict[str, Any]]:
        """Failed, cancelled and rejected tasks by what they cost (`render.failures_by_charge`)."""
        return failures_by_charge((t.status, t.charge) for t in self.tasks)

    def by(self, attribute: str) -> dict[str, Bucket]:
        buckets: dict[str, Bucket] = {}
        for task in self.tasks:
            name = str(getattr(task, attribute))
            buckets[name] = buckets.get(name, Bucket()).add(task)
        return buckets

    @property
    def by_model(self) -> dict[str, Bucket]:
        return self.by("model")

    @property
    def by_tier(self) -> dict[str, Bucket]:
        return self.by("price_class")

    @property
    def by_shot(self) -> dict[str, Bucket]:
        found = self.by("shot")
        return {shot: found[shot] for shot in self.shot_order if shot in found}

    @property
    def variance(self) -> Variance:
        known = [t for t in self.tasks if t.cost_actual is not None and t.status == "succeeded"]
        return Variance(
            len(known),
            total([t.estimate_local for t in known]),
            total([t.cost_actual for t in known if t.cost_actual is not None]),
            tuple(t for t in known if t.cost_actual != t.estimate_local),
        )

    @property
    def failures(self) -> list[FailureGroup]:
        groups: dict[tuple[str, str], list[TaskEntry]] = defaultdict(list)
        for task in self.tasks:
            if task.group in ("failed", "cancelled"):
                reason = (task.error or "").strip() or f"{task.status} (no message from the server)"
                groups[(reason, task.status)].append(task)
        ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
        return [
            FailureGroup(
                reason,
                status,
                tuple(t.key for t in tasks),
                tuple(dict.fromkeys(t.shot for t in tasks)),
            )
            for (reason, status), tasks in ordered
        ]

    @property
    def elapsed(self) -> dict[str, float | None]:
        times = sorted(t.elapsed for t in self.tasks if t.elapsed is not None)
        if not times:
            return {"tasks": 0, "mean": None, "median": None, "max": None}
        middle = len(times) // 2
        median = times[middle] if len(times) % 2 else (times[middle - 1] + times[middle]) / 2
        return {
            "tasks": len(times),
            "mean": round(sum(times) / len(times), 3),
            "median": round(median, 3),
            "max": times[-1],
        }

    @property
    def download_totals(self) -> dict[str, int]:
        outputs = [o for t in self.tasks if t.status == "succeeded" for o in t.outputs]
        return {
            "outputs": len(outputs),
            "downloaded": sum(1 for o in outputs if o.path),
            "missing": sum(1 for o in outputs if not o.path),
            "bytes": sum(o.bytes or 0 for o in outputs if o.path),
            "succeeded_without_outputs": sum(
                1 for t in self.tasks if t.status == "succeeded" and not t.outputs
            ),
        }

    @property
    def complete(self) -> bool:
        """Every task succeeded and every output is on disk."""
        return all(t.status == "succeeded" and t.downloaded for t in self.tasks)

    # -- report.json

    def document(self) -> dict[str, Any]:
        counts = self.counts
        variance = self.variance
        return {
            "manifest": self.manifest,
            "simulated": self.simulated,
            "env": self.env,
            "generated_at": self.generated_at,
            "definitions": DEFINITIONS,
            "totals": {
                "tasks": len(self.tasks),
                "succeeded": counts.get("succeeded", 0),
                "failed": counts.get("failed", 0),
                "cancelled": counts.get("cancelled", 0),
                "pending": counts.get("pending", 0),
                "rejected": sum(1 for t in self.tasks if t.status == "rejected"),
                "cost_estimate": json_number(self.cost_estimate),
                "cost_actual": json_number(self.cost_actual),
                "cost_estimate_plan": json_number(self.cost_estimate_plan),
                "cost_estimate_server": json_number(self.cost_estimate_server),
                "cost_committed": json_number(self.cost_committed),
                "cost_prior": json_number(self.cost_prior),
                "failures_by_charge": self.failures_by_charge,
                "max_usd": json_number(self.max_usd),
                "by_model": {k: v.document() for k, v in self.by_model.items()},
                "by_tier": {k: v.document() for k, v in self.by_tier.items()},
                "by_shot": {k: v.document() for k, v in self.by_shot.items()},
                "variance": {
                    "basis": "plan estimate of succeeded tasks against their actual cost",
                    "tasks": variance.tasks,
                    "estimate": json_number(variance.estimate),
                    "actual": json_number(variance.actual),
                    "difference": json_number(variance.difference),
                    "percent": json_number(variance.percent),
                    "tasks_off": [
                        {
                            "key": t.key,
                            "shot": t.shot,
                            "estimate": json_number(t.estimate_local),
                            "actual": json_number(t.cost_actual),
                        }
                        for t in variance.off
                    ],
                },
                "failures": [
                    {
                        "reason": g.reason,
                        "status": g.status,
                        "count": len(g.keys),
                        "keys": list(g.keys),
                        "shots": list(g.shots),
                    }
                    for g in self.failures
                ],
                "seconds": self.elapsed,
                "downloads": self.download_totals,
            },
            "tasks": [_task_document(t) for t in self.tasks],
        }


DEFINITIONS = {
    "cost_estimate": "the estimate mvbatch held against the budget: the server's estimate "
    "once a task was submitted, the plan's before (and for a task the server rejected); "
    "totals.cost_estimate is the sum of the tasks'",
    "cost_estimate_plan": "mvbatch's own estimate from its price table (rate x seconds), "
    "as planned; the same as estimate_local",
    "cost_estimate_server": "the server's cost_estimate, given when the task was submitted; "
    "null before",
    "cost_actual": "what the server charged (its cost_actual); null until it said",
    "cost_committed": "what the task counts for against the cap now: its charge if known, "
    "else the server's estimate, else ours while its submission is unanswered; 0 if never "
    "submitted or rejected; plus cost_prior",
    "cost_prior": "what earlier attempts of the task (--retry-failed) committed; not in "
    "cost_actual, which is the current attempt's",
    "charge": "for a failed, cancelled or rejected task: charged (cost_actual above 0), "
    "not_charged (rejected before a task existed, or cost_actual 0) or unknown (no "
    "cost_actual: the server's estimate stays counted against the cap)",
    "variance": "the plan's estimate of succeeded tasks against what they were charged",
}


def _task_document(task: TaskEntry) -> dict[str, Any]:
    return {
        "shot": task.shot,
        "key": task.key,
        "task_id": task.task_id,
        "model": task.model,
        "input": dict(task.input),
        "status": task.status,
        "cost_estimate": json_number(task.cost_estimate),
        "cost_actual": json_number(task.cost_actual),
        "error": task.error,
        "cost_estimate_plan": json_number(task.estimate_local),
        "cost_estimate_server": json_number(task.cost_estimate_server),
        "cost_committed": json_number(normalize(task.cost_committed)),
        "cost_prior": json_number(normalize(task.cost_prior)),
        "charge": None if task.charge is None else task.charge.kind,
        "status_text": task.status_text,
        "outputs": [
            {
                "url": o.url,
                "path": o.path,
                "sha256": o.sha256,
                "bytes": o.bytes,
                "video_seconds": json_number(o.video_seconds),
                "download_error": o.download_error,
            }
            for o in task.outputs
        ],
        "shots": list(task.shots),
        "variant": dict(task.variant),
        "variant_label": task.variant_label,
        "take": task.take,
        "price_class": task.price_class,
        "price_source": task.price_source,
        "estimate_local": json_number(task.estimate_local),
        "upper_bound": task.upper_bound,
        "seconds": task.elapsed,
        "video_seconds": json_number(task.video_seconds),
        "submitted_at": task.submitted_at,
        "finished_at": task.finished_at,
        "in_plan": task.in_plan,
    }


# ---------------------------------------------------------------- building


def build_report(
    name: str,
    env: str,
    rows: Sequence[TaskRow],
    outputs: Mapping[str, Sequence[Output]],
    folder: Path,
    *,
    plan: Plan | None = None,
    fetched: Iterable[Fetched] = (),
    downloads: DownloadStats | None = None,
) -> Report:
    """The report of one manifest from its ledger rows and (optionally) its plan.

    Tasks come in plan order (shots as in the manifest, then variants and
    takes), then tasks the ledger has from earlier versions of the manifest.
    """
    failed_now = {(f.key, f.idx): f.error for f in fetched if not f.ok and f.error}
    by_key = {row.key: row for row in rows}
    entries: list[TaskEntry] = []
    for task in plan.tasks if plan is not None else ():
        row = by_key.pop(task.key, None)
        # A task never submitted is what the plan says of it now (its estimate
        # may use a rate learned since the ledger first saw it).
        entries.append(
            _from_row(row, outputs, folder, failed_now)
            if row is not None and row.status != "planned"
            else _from_plan(task)
        )
    entries.extend(
        _from_row(row, outputs, folder, failed_now, in_plan=plan is None) for row in by_key.values()
    )
    shot_order = list(
        dict.fromkeys([s.id for s in plan.manifest.manifest.shots] if plan is not None else [])
    )
    shot_order = list(dict.fromkeys([*shot_order, *(e.shot for e in entries)]))
    rank = {shot: n for n, shot in enumerate(shot_order)}
    entries.sort(key=lambda e: rank[e.shot])  # stable: plan order within a shot
    prompts: dict[str, str] = {}
    if plan is not None:
        for shot in plan.manifest.manifest.shots:
            text = shot.prompt or shot.input.get("prompt") or plan.manifest.manifest.defaults.prompt
            if isinstance(text, str):
                prompts[shot.id] = text
    for entry in entries:
        prompt = entry.input.get("prompt")
        if entry.shot not in prompts and isinstance(prompt, str):
            prompts[entry.shot] = prompt
    return Report(
        name,
        env,
        tuple(entries),
        tuple(shot_order),
        prompts,
        datetime.now(UTC).isoformat(timespec="seconds"),
        downloads,
        plan.max_usd if plan is not None else None,
    )


def _from_plan(task: PlannedTask) -> TaskEntry:
    return TaskEntry(
        task.key,
        task.shot,
        tuple(task.shots),
        tuple(task.variant),
        task.take,
        task.model,
        task.public_input(),
        "planned",
        task.estimate.cost,
        task.estimate.price_class,
        task.estimate.source,
        task.estimate.upper_bound,
        billed_seconds=task.estimate.seconds,
    )


def _from_row(
    row: TaskRow,
    outputs: Mapping[str, Sequence[Output]],
    folder: Path,
    failed_now: Mapping[tuple[str, int], str | None],
    *,
    in_plan: bool = True,
) -> TaskEntry:
    entries = []
    for output in outputs.get(row.key, ()):
        seconds = None
        if output.path:
            from mvbatch.plan import mp4

            seconds = mp4.local_duration(folder / output.path)
        entries.append(
            OutputEntry(
                output.idx,
                output.url,
                output.path,
                output.sha256,
                output.bytes,
                seconds,
                None if output.path else failed_now.get((row.key, output.idx)),
            )
        )
    return TaskEntry(
        row.key,
        row.shot,
        tuple(row.shots),
        tuple(variant_pairs(row.variant)),
        row.take,
        row.model,
        row.input,
        row.status,
        row.estimate_local,
        row.price_class,
        row.estimate_source,
        row.upper_bound,
        row.task_id,
        row.cost_estimate,
        row.cost_actual,
        row.error,
        row.submitted_at,
        row.finished_at,
        row.seconds,
        tuple(entries),
        in_plan,
        row.cost_prior,
    )


def _instant(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


# ----------------------------------------------------------------- writing


@cache
def templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("mvbatch.report", "templates"),
        # On for every template, Markdown included: a prompt is data, and
        # escaped HTML is harmless in a Markdown viewer while raw HTML is not.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters.update(
        usd=usd,
        md=md_cell,
        tier=tier_label,
        seconds=seconds_text,
        size=size_text,
        percent=percent_text,
    )
    return environment


def percent_text(value: Decimal | None) -> str:
    if value is None:
        return "—"
    return f"{'+' if value > 0 else ''}{value}%"


def seconds_text(value: float | Decimal | None) -> str:
    if value is None:
        return "—"
    number = float(value)
    if number >= 90:
        minutes, rest = divmod(round(number), 60)
        return f"{minutes} min {rest:02d} s"
    rounded = round(number, 1)
    if rounded == int(rounded) or number >= 10:
        return f"{number:.0f} s"
    return f"{rounded:.1f} s"


def size_text(value: int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def md_cell(value: Any) -> Markup:
    """Text safe in Markdown, table cells included: one line, markup characters escaped.

    `<`, `>` and `&` become entities (a Markdown viewer passes raw HTML
    through, so a prompt must not carry any); quotes stay readable, as they
    are harmless outside HTML tags. The result is marked safe so that
    autoescape does not escape it twice.
    """
    text = "" if value is None else str(value)
    text = " ".join(text.split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for special in ("\\", "|", "`", "*", "_", "[", "]"):
        text = text.replace(special, "\\" + special)
    return Markup(text)  # noqa: S704 - escaped just above


def tier_label(price_class: str) -> str:
    """`kling-v2-6 {"audio":false,"mode":"std"}` as `kling-v2-6 · audio=false · mode=std`."""
    model, _, tier = price_class.partition(" ")
    try:
        fields = json.loads(tier) if tier else {}
    except ValueError:
        return price_class
    if not isinstance(fields, dict):
        return price_class
    return " · ".join([model, *(f"{k}={value_text(v)}" for k, v in fields.items())])


def csv_text(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "shot",
            "variant",
            "take",
            "key",
            "task_id",
            "model",
            "status",
            "cost_estimate",
            "cost_actual",
            "estimate_local",
            "price_source",
            "seconds",
            "video_seconds",
            "error",
            "path",
            "sha256",
            "bytes",
            "url",
            "simulated",
            "cost_estimate_server",
            "cost_committed",
            "charge",
            "status_text",
        ]
    )
    for t in report.tasks:
        writer.writerow(
            [
                _cell(t.shot),
                _cell(t.variant_label),
                t.take,
                t.key,
                _cell(t.task_id),
                t.model,
                t.status,
                _money(t.cost_estimate),
                _money(t.cost_actual),
                _money(t.estimate_local),
                t.price_source,
                "" if t.elapsed is None else t.elapsed,
                "" if t.video_seconds is None else str(t.video_seconds),
                _cell(t.error),
                _cell(" ".join(o.path or "" for o in t.outputs).strip()),
                " ".join(o.sha256 or "" for o in t.outputs).strip(),
                " ".join(str(o.bytes or "") for o in t.outputs).strip(),
                _cell(" ".join(o.url for o in t.outputs)),
                report.simulated,
                _money(t.cost_estimate_server),
                _money(t.cost_committed),
                "" if t.charge is None else t.charge.kind,
                t.status_text,
            ]
        )
    return buffer.getvalue()


def _money(value: Decimal | None) -> str:
    return "" if value is None else str(normalize(value))


def _cell(value: str | None) -> str:
    # A spreadsheet runs a cell that starts with = + - @ as a formula: a
    # prompt or a server message must stay text.
    text = "" if value is None else value
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def markdown_text(report: Report) -> str:
    return templates().get_template("report.md.j2").render(r=report)


def write_atomic(path: Path, text: str) -> None:
    """Temp file in the same folder, fsync, rename: a reader sees the old or the new file."""
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed before the rename
        "w",
        encoding="utf-8",
        dir=path.parent,
        prefix=f".{path.name}.",
        suffix=".tmp",
        delete=False,
        newline="",
    )
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o644)  # noqa: PTH101 - mkstemp makes it 0600
        Path(handle.name).replace(path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def write_reports(report: Report, folder: Path) -> dict[str, Path]:
    from mvbatch.report.html import contact_sheet

    folder.mkdir(parents=True, exist_ok=True)
    texts = {
        "json": json.dumps(report.document(), ensure_ascii=False, indent=2) + "\n",
        "csv": csv_text(report),
        "md": markdown_text(report),
        "html": contact_sheet(report, folder),
    }
    written = {}
    for kind, text in texts.items():
        path = folder / FILES[kind]
        write_atomic(path, logs.redact_text(text))
        written[kind] = path
    return written


# ---------------------------------------------------------- entry points


@dataclass(frozen=True)
class ReportResult:
    """What the CLI shows after a report: where the files are and how it went."""

    report: Report
    folder: Path
    files: dict[str, Path]
    downloads: DownloadStats | None = None
    fetched: list[Fetched] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.report.complete

    def summary(self) -> list[str]:
        """A few lines for a person: counts, money, downloads, where the sheet is."""
        r = self.report
        counts = r.counts
        failures = r.failures_by_charge
        failed = ", ".join(f"{g['tasks']} {g['text']}" for g in failures) or "0 failed"
        lines = [
            f"{r.manifest}{' (simulated: no money was spent)' if r.simulated else ''}: "
            f"{len(r.tasks)} tasks, {counts.get('succeeded', 0)} succeeded, {failed}, "
            f"{counts.get('pending', 0)} pending",
            f"cost: {usd(r.cost_actual)} charged (the server's cost_actual), "
            f"{usd(r.cost_estimate)} estimated (the server's estimate for submitted tasks, "
            "the plan's for the rest)"
            + (
                f"; the plan alone estimated {usd(r.cost_estimate_plan)}"
                if r.cost_estimate_plan != r.cost_estimate
                else ""
            ),
        ]
        variance = r.variance
        if variance.tasks and variance.difference != 0:
            lines.append(
                f"variance: {usd(variance.difference)} ({percent_text(variance.percent)})"
                f" on {len(variance.off)} of {variance.tasks} finished tasks (charged against "
                "the plan's estimate)"
            )
        downloads = r.download_totals
        lines.append(
            f"videos: {downloads['downloaded']} of {downloads['outputs']} on disk"
            + (f", {downloads['missing']} missing" if downloads["missing"] else "")
        )
        if self.downloads is not None and self.downloads.failed:
            first = self.downloads.errors[0]
            lines.append(f"downloads failed: {self.downloads.failed} (first: {first.error})")
        lines.append(f"contact sheet: {self.files['html']}")
        return lines


def report_folder_of(settings: Settings, name: str) -> Path:
    return report_folder(settings.output_dir, name)


def write_report(
    settings: Settings,
    ledger: Ledger,
    name: str,
    env: str,
    *,
    plan: Plan | None = None,
    fetched: Sequence[Fetched] = (),
    downloads: DownloadStats | None = None,
) -> ReportResult:
    """Read the ledger and write the four report files; no network."""
    folder = report_folder_of(settings, name)
    rows = ledger.tasks(env, name)
    outputs = {row.key: ledger.outputs(env, row.key) for row in rows}
    report = build_report(
        name, env, rows, outputs, folder, plan=plan, fetched=fetched, downloads=downloads
    )
    files = write_reports(report, folder)
    log.info(
        "report.written",
        manifest=name,
        env=env,
        folder=str(folder),
        tasks=len(report.tasks),
        complete=report.complete,
    )
    return ReportResult(report, folder, files, downloads, list(fetched))


async def finish_run(
    downloader: Downloader | None, settings: Settings, ledger: Ledger, plan: Plan, env: str
) -> ReportResult:
    """The end of `mvbatch run`: catch up on downloads, then write the reports.

    `downloader` is the one whose `on_succeeded` the executor called (None
    with `--no-download`); the executor has awaited those calls before it
    returns. Catching up verifies every succeeded task of the manifest and
    fetches what is still missing (a verified file costs one `stat`).
    """
    fetched: list[Fetched] = []
    stats = None
    if downloader is not None:
        fetched = downloader.results
        done = {f.key for f in fetched if f.ok}
        rows = [r for r in ledger.tasks(env, plan.name) if r.key not in done]
        fetched += await downloader.fetch(rows)
        stats = downloader.stats
    return write_report(
        settings, ledger, plan.name, env, plan=plan, fetched=fetched, downloads=stats
    )


def report_env(settings: Settings, ledger: Ledger, name: str) -> str:
    """The ledger side to report: that of the manifest's last run, else the default."""
    from mvbatch.workflow import default_env

    run = ledger.last_run(name)
    return str(run["env"]) if run is not None else default_env(settings)


def report_command(settings: Settings, manifest_path: Path, download: bool) -> ReportResult:
    """`mvbatch report MANIFEST [--no-download]`: verify or fetch the videos, write the reports."""
    from mvbatch.plan import manifest
    from mvbatch.workflow import build_plan

    name = manifest.load(manifest_path).manifest.name
    with Ledger(settings.state_dir) as ledger:
        env = report_env(settings, ledger, name)
        plan = build_plan(manifest_path, settings, env)
        if not download:
            return write_report(settings, ledger, name, env, plan=plan)
        rows = [r for r in ledger.tasks(env, name) if r.status == "succeeded"]
        fetched, stats = asyncio.run(_download(settings, ledger, env, rows))
        return write_report(
            settings, ledger, name, env, plan=plan, fetched=fetched, downloads=stats
        )


async def _download(
    settings: Settings, ledger: Ledger, env: str, rows: list[TaskRow]
) -> tuple[list[Fetched], DownloadStats]:
    from mvbatch.api.client import ApiClient
    from mvbatch.api.endpoint import Endpoint, choose

    if env == "sim":
        endpoint = choose(settings, simulate=True)
    elif settings.api_key_value() is not None:
        endpoint = choose(settings, simulate=False)
    else:
        # Downloads need no key; only refreshing an expired URL does.
        log.warning(
            "download.no_refresh",
            reason="MINDVIDEO_API_KEY is unset: an expired "
            "output URL cannot be refreshed from the API",
        )
        endpoint = Endpoint("live", settings.base_url, "", None)
    refresh = None
    api = None
    if endpoint.api_key:
        api = ApiClient(endpoint.api_client())
        refresh = api.refresh_outputs
    try:
        async with endpoint.files_client() as files:
            downloader = Downloader(ledger, files, settings.output_dir, refresh=refresh)
            fetched = await downloader.fetch(rows)
            return fetched, downloader.stats
    finally:
        if api is not None:
            await api.aclose()
