"""The report of a manifest as data: its tasks, the totals people ask about, report.json.

Owns: `TaskEntry` (one task as the report shows it, planned or in the
ledger), `Report` and what it adds up (cost by model, tier and shot as
`Bucket`s; estimate against actual as `Variance`; failures grouped by the
server's message; time per task; downloads), and `Report.document()`, the
report.json document of SPEC §6 (fields may be added, never renamed), with
each task's `verdict` and `note` from `mvbatch review` (SPEC §9).

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

Must not: read the ledger, the plan or any file (`build.py` turns them into a
`Report`), write or render anything (`formats.py`, `html.py`, `command.py`),
or print.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from typing import Any

from mvbatch.downloads.fetch import DownloadStats
from mvbatch.downloads.naming import value_text
from mvbatch.ledger import committed_cost
from mvbatch.ledger.charges import Charge, charge_of, failures_by_charge, status_words
from mvbatch.money import json_number, normalize, usd

PENDING = ("planned", "submitting", "queued", "processing")
FAILED = ("failed", "rejected")


class StoredInput(Mapping[str, Any]):
    """A task's input as the ledger stores it (compact JSON text), read as a mapping.

    Decoded on each read, never kept decoded: a report of 100,000 tasks holds
    each input as the one string its ledger row already holds, not as a dict of
    fresh strings (about 65 MB at 100,000 tasks). A report reads one field of
    an input (its prompt, its aspect ratio) or writes it whole (`as_dict`).
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def as_dict(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.text)
        return decoded

    def __getitem__(self, name: str) -> Any:
        return self.as_dict()[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.as_dict().get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())

    def __eq__(self, other: object) -> bool:
        return self.as_dict() == (other.as_dict() if isinstance(other, StoredInput) else other)

    __hash__ = None  # type: ignore[assignment]  # a mapping: unhashable, as a dict is

    def __repr__(self) -> str:
        return f"StoredInput({self.text})"


def plain_input(value: Mapping[str, Any]) -> dict[str, Any]:
    """A task's input as a dict, decoded once if it is a `StoredInput`."""
    return value.as_dict() if isinstance(value, StoredInput) else dict(value)


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
    cost_reserved: Decimal | None = None  # what its intent was held at against the cap
    verdict: str | None = None  # a person's latest word (`mvbatch review`): approved, rejected
    note: str | None = None
    rerolled_from: str | None = None  # the rejected take this one re-rolls
    # Seconds from submission to the terminal status: the time this task took.
    # Worked out once here: every total, table and card reads it.
    elapsed: float | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "elapsed", _seconds_between(self.submitted_at, self.finished_at))

    @property
    def cost_estimate(self) -> Decimal:
        """The estimate held against the budget: the server's once it gave one, else the plan's."""
        if self.cost_estimate_server is not None:
            return self.cost_estimate_server
        return self.estimate_local

    @property
    def cost_committed(self) -> Decimal:
        """What this task counts for against the cap, as the ledger counts it (`TaskRow.committed`):
        an unanswered intent at what it was reserved at."""
        ours = self.estimate_local if self.cost_reserved is None else self.cost_reserved
        return self.cost_prior + committed_cost(
            self.status, ours, self.cost_estimate_server, self.cost_actual
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

    @cached_property
    def counts(self) -> Counter[str]:
        """Tasks by group: succeeded, failed, cancelled, pending."""
        return Counter(t.group for t in self.tasks)

    @cached_property
    def statuses(self) -> Counter[str]:
        """Tasks by status, as the ledger has it."""
        return Counter(t.status for t in self.tasks)

    @cached_property
    def cost_estimate(self) -> Decimal:
        """The sum of the tasks' `cost_estimate`: what was held against the budget."""
        return _total(t.cost_estimate for t in self.tasks)

    @cached_property
    def cost_estimate_plan(self) -> Decimal:
        return _total(t.estimate_local for t in self.tasks)

    @cached_property
    def cost_estimate_server(self) -> Decimal:
        return _total(t.cost_estimate_server for t in self.tasks if t.cost_estimate_server)

    @cached_property
    def cost_actual(self) -> Decimal:
        return _total(t.cost_actual for t in self.tasks if t.cost_actual is not None)

    @cached_property
    def cost_committed(self) -> Decimal:
        return _total(t.cost_committed for t in self.tasks)

    @cached_property
    def cost_prior(self) -> Decimal:
        return _total(t.cost_prior for t in self.tasks)

    @cached_property
    def overbilled(self) -> tuple[TaskEntry, ...]:
        """Tasks the server charged more than the estimate they were held at."""
        return tuple(
            t for t in self.tasks if t.cost_actual is not None and t.cost_actual > t.cost_estimate
        )

    @cached_property
    def over_cap(self) -> bool:
        """What the tasks count for is past the manifest's cap (the server billed more)."""
        return self.max_usd is not None and self.cost_committed > self.max_usd

    @cached_property
    def overrun(self) -> Decimal | None:
        """How far committed is past the cap; None within it (or with no cap)."""
        if self.max_usd is None or not self.over_cap:
            return None
        return normalize(self.cost_committed - self.max_usd)

    @cached_property
    def overrun_text(self) -> str | None:
        """One sentence on the bills above their estimates and the cap they broke; or None."""
        over = self.overbilled
        if not over and not self.over_cap:
            return None
        parts = []
        if over:
            worst = max(over, key=lambda t: (t.cost_actual or Decimal(0)) - t.cost_estimate)
            parts.append(
                f"the server billed {len(over)} task(s) more than their estimate (the most: "
                f"{usd(worst.cost_actual)} for {worst.shot} ({worst.key}), estimated at "
                f"{usd(worst.cost_estimate)})"
            )
        if self.over_cap:
            parts.append(
                f"committed {usd(self.cost_committed)} is over the cap {usd(self.max_usd)}"
            )
        return "; ".join(parts)

    @cached_property
    def failures_by_charge(self) -> list[dict[str, Any]]:
        """Failed, cancelled and rejected tasks by what they cost (`charges.failures_by_charge`)."""
        return failures_by_charge((t.status, t.charge) for t in self.tasks)

    def by(self, attribute: str) -> dict[str, Bucket]:
        """Tasks grouped by an attribute's value, in order of first appearance."""
        groups: dict[str, list[TaskEntry]] = {}
        for task in self.tasks:
            groups.setdefault(str(getattr(task, attribute)), []).append(task)
        return {
            name: Bucket(
                len(tasks),
                sum(1 for t in tasks if t.status == "succeeded"),
                sum((t.cost_estimate for t in tasks), Decimal(0)),
                sum((t.cost_actual for t in tasks if t.cost_actual is not None), Decimal(0)),
            )
            for name, tasks in groups.items()
        }

    @cached_property
    def by_model(self) -> dict[str, Bucket]:
        return self.by("model")

    @cached_property
    def by_tier(self) -> dict[str, Bucket]:
        return self.by("price_class")

    @cached_property
    def by_shot(self) -> dict[str, Bucket]:
        found = self.by("shot")
        return {shot: found[shot] for shot in self.shot_order if shot in found}

    @cached_property
    def variance(self) -> Variance:
        known = [t for t in self.tasks if t.cost_actual is not None and t.status == "succeeded"]
        return Variance(
            len(known),
            _total(t.estimate_local for t in known),
            _total(t.cost_actual for t in known if t.cost_actual is not None),
            tuple(t for t in known if t.cost_actual != t.estimate_local),
        )

    @cached_property
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

    @cached_property
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

    @cached_property
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

    @cached_property
    def verdicts(self) -> dict[str, int]:
        """How many tasks were approved, rejected or not reviewed (`mvbatch review`)."""
        found = Counter(t.verdict for t in self.tasks)
        return {
            "approved": found.get("approved", 0),
            "rejected": found.get("rejected", 0),
            "not_reviewed": len(self.tasks) - found.get("approved", 0) - found.get("rejected", 0),
        }

    @cached_property
    def complete(self) -> bool:
        """Every task succeeded and every output is on disk."""
        return all(t.status == "succeeded" and t.downloaded for t in self.tasks)

    # -- report.json

    def document(self) -> dict[str, Any]:
        """report.json as one dict; `formats.json_chunks` writes the same document as a stream."""
        return {**self.document_head(), "tasks": [task_document(t) for t in self.tasks]}

    def document_head(self) -> dict[str, Any]:
        """report.json without its last field, `tasks` (one `task_document` per task)."""
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
                "rejected": self.statuses.get("rejected", 0),
                "cost_estimate": json_number(self.cost_estimate),
                "cost_actual": json_number(self.cost_actual),
                "cost_estimate_plan": json_number(self.cost_estimate_plan),
                "cost_estimate_server": json_number(self.cost_estimate_server),
                "cost_committed": json_number(self.cost_committed),
                "cost_prior": json_number(self.cost_prior),
                "failures_by_charge": self.failures_by_charge,
                "max_usd": json_number(self.max_usd),
                "over_cap": self.over_cap,
                "overrun": json_number(self.overrun),
                "overbilled": [
                    {
                        "key": t.key,
                        "shot": t.shot,
                        "cost_estimate": json_number(t.cost_estimate),
                        "cost_actual": json_number(t.cost_actual),
                    }
                    for t in self.overbilled
                ],
                "overrun_text": self.overrun_text,
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
                "verdicts": self.verdicts,
            },
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
    "over_cap": "cost_committed is past max_usd: the server billed more than it estimated",
    "overrun": "cost_committed minus max_usd when over_cap, else null",
    "overbilled": "tasks whose cost_actual is above their cost_estimate",
    "verdict": "a person's latest word on the task's take in `mvbatch review`: approved, "
    "rejected, or null (not reviewed, or the verdict was cleared); totals.verdicts counts them",
    "note": "the note given with that verdict, exactly as typed; null without one",
}


def task_document(task: TaskEntry) -> dict[str, Any]:
    """One task of report.json's `tasks`."""
    charge = task.charge
    return {
        "shot": task.shot,
        "key": task.key,
        "task_id": task.task_id,
        "model": task.model,
        "input": plain_input(task.input),
        "status": task.status,
        "cost_estimate": json_number(task.cost_estimate),
        "cost_actual": json_number(task.cost_actual),
        "error": task.error,
        "cost_estimate_plan": json_number(task.estimate_local),
        "cost_estimate_server": json_number(task.cost_estimate_server),
        "cost_committed": json_number(normalize(task.cost_committed)),
        "cost_prior": json_number(normalize(task.cost_prior)),
        "charge": None if charge is None else charge.kind,
        "status_text": status_words(task.status, charge),
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
        "verdict": task.verdict,
        "note": task.note,
        "rerolled_from": task.rerolled_from,
    }


def _total(values: Iterable[Decimal]) -> Decimal:
    """`money.total` over a generator: no list of one figure per task is ever built."""
    return normalize(sum(values, Decimal(0)))


def _seconds_between(start_stamp: str | None, end_stamp: str | None) -> float | None:
    start, end = _instant(start_stamp), _instant(end_stamp)
    if start is None or end is None:
        return None
    return max(0.0, round(end - start, 3))


def _instant(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None
