"""Building a `Report` from what the ledger recorded and what the plan asks for.

Owns: `build_report`: every task of the plan (a task never submitted as the
plan says of it now), then the ledger's tasks from earlier versions of the
manifest; shots in manifest order; each shot's prompt; whether each recorded
video is on disk as recorded (a report never claims a file it has not seen:
a stat, and the file's bytes when the stat changed, through the part file's
rule `partfile.check_recorded_now`), each video's length, read from its own
MP4 header; and why an output is not on disk. Every string a server gave
(its task id, error message and output URLs) is redacted here, where it
enters the report (`logs.redact_text`): `api.responses` redacts what it
reads, and this holds for ledgers written before it did, so the files the
report writes need no pass over every byte.

Must not: write to the ledger or the output folder, reach the network, or
format anything (`formats.py`, `html.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

from mvbatch import logs
from mvbatch.downloads import partfile
from mvbatch.downloads.fetch import DownloadStats, Fetched
from mvbatch.downloads.naming import contained, variant_pairs
from mvbatch.ledger import Output, TaskRow, Verdict
from mvbatch.plan import mp4_probe
from mvbatch.plan.planner import Plan, PlannedTask
from mvbatch.report.model import OutputEntry, Report, StoredInput, TaskEntry


def build_report(
    name: str,
    env: str,
    rows: Iterable[TaskRow],
    outputs: MutableMapping[str, list[Output]],
    folder: Path,
    *,
    plan: Plan | None = None,
    fetched: Iterable[Fetched] = (),
    downloads: DownloadStats | None = None,
    verdicts: Mapping[str, Verdict] | None = None,
) -> Report:
    """The report of one manifest from its ledger rows and (optionally) its plan.

    Tasks come in plan order (shots as in the manifest, then variants and
    takes), then tasks the ledger has from earlier versions of the manifest.
    `verdicts` are the latest ones given in `mvbatch review`, by key. `rows`
    are read once, in order, and each becomes its entry as it is read: a
    stream of them (`Ledger.each_task`) is never held whole. Each task's
    `outputs` are taken out of the mapping as its entry is made: what the
    entries keep of them is all that stays.
    """
    fetched = list(fetched)
    failed_now = {(f.key, f.idx): f.error for f in fetched if not f.ok and f.error}
    # Verified or written by this process's downloader moments ago: a stat will do.
    seen = {(f.key, f.idx) for f in fetched if f.ok}
    planned = {t.key for t in plan.tasks} if plan is not None else set()
    shared = _Shared()
    recorded: dict[str, TaskEntry] = {}  # rows the ledger took further than planned
    rerolled_from: dict[str, str | None] = {}  # the plan's tasks the ledger has as planned
    for row in rows:
        if row.key in planned and row.status == "planned":
            # A task never submitted is what the plan says of it now (its estimate
            # may use a rate learned since the ledger first saw it).
            rerolled_from[row.key] = row.rerolled_from
            continue
        in_plan = plan is None or row.key in planned
        recorded[row.key] = _from_row(
            row, outputs, folder, failed_now, seen, shared=shared, in_plan=in_plan
        )
    entries: list[TaskEntry] = [
        recorded.pop(task.key)
        if task.key in recorded
        else _from_plan(task, rerolled_from.get(task.key))
        for task in (plan.tasks if plan is not None else ())
    ]
    entries.extend(recorded.values())  # from earlier versions of the manifest
    shot_order = list(
        dict.fromkeys([s.id for s in plan.manifest.manifest.shots] if plan is not None else [])
    )
    shot_order = list(dict.fromkeys([*shot_order, *(e.shot for e in entries)]))
    rank = {shot: n for n, shot in enumerate(shot_order)}
    entries.sort(key=lambda e: rank[e.shot])  # stable: plan order within a shot
    if verdicts:
        entries = [_with_verdict(e, verdicts.get(e.key)) for e in entries]
    prompts: dict[str, str] = {}
    if plan is not None:
        for shot in plan.manifest.manifest.shots:
            text = shot.prompt or shot.input.get("prompt") or plan.manifest.manifest.defaults.prompt
            if isinstance(text, str):
                prompts[shot.id] = text
    for entry in entries:
        if entry.shot in prompts:
            continue
        prompt = entry.input.get("prompt")
        if isinstance(prompt, str):
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


def _with_verdict(entry: TaskEntry, verdict: Verdict | None) -> TaskEntry:
    if verdict is None:
        return entry
    return replace(entry, verdict=verdict.verdict, note=verdict.note)


def _from_plan(task: PlannedTask, rerolled_from: str | None = None) -> TaskEntry:
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
        rerolled_from=rerolled_from,
    )


class _Shared:
    """One tuple for each shot list and variant the rows of one report repeat
    (every shot's matrix names the same variants): one object each, not one per task."""

    def __init__(self) -> None:
        self.shots: dict[str, tuple[str, ...]] = {}
        self.variants: dict[str, tuple[tuple[str, Any], ...]] = {}

    def of(self, row: TaskRow) -> tuple[tuple[str, ...], tuple[tuple[str, Any], ...]]:
        shots = self.shots.get(row.shots_json)
        if shots is None:
            shots = self.shots[row.shots_json] = tuple(row.shots)
        variant = self.variants.get(row.variant_json)
        if variant is None:
            variant = self.variants[row.variant_json] = tuple(variant_pairs(row.variant))
        return shots, variant


def _from_row(
    row: TaskRow,
    outputs: MutableMapping[str, list[Output]],
    folder: Path,
    failed_now: Mapping[tuple[str, int], str | None],
    seen: set[tuple[str, int]],
    *,
    shared: _Shared,
    in_plan: bool,
) -> TaskEntry:
    entries = []
    for output in outputs.pop(row.key, ()):
        where = (row.key, output.idx)
        gone = _not_on_disk(folder, output, seen=where in seen) if output.path else None
        if output.path and gone is None:
            seconds = mp4_probe.local_duration(folder / output.path)
            entries.append(
                OutputEntry(
                    output.idx,
                    _redacted(output.url),
                    output.path,
                    output.sha256,
                    output.bytes,
                    seconds,
                )
            )
        else:
            why = _redacted(failed_now.get(where) or gone)
            entries.append(
                OutputEntry(output.idx, _redacted(output.url), None, None, None, None, why)
            )
    shots, variant = shared.of(row)
    return TaskEntry(
        row.key,
        row.shot,
        shots,
        variant,
        row.take,
        row.model,
        StoredInput(row.input_json),
        row.status,
        row.estimate_local,
        row.price_class,
        row.estimate_source,
        row.upper_bound,
        _redacted(row.task_id),
        row.cost_estimate,
        row.cost_actual,
        _redacted(row.error),
        row.submitted_at,
        row.finished_at,
        row.seconds,
        tuple(entries),
        in_plan,
        row.cost_prior,
        row.cost_reserved,
        rerolled_from=row.rerolled_from,
    )


@overload
def _redacted(text: str) -> str: ...
@overload
def _redacted(text: str | None) -> str | None: ...
def _redacted(text: str | None) -> str | None:
    """A server's string with any secret taken out (`logs.redact_text`)."""
    return None if text is None else logs.redact_text(text)


def _not_on_disk(folder: Path, output: Output, *, seen: bool) -> str | None:
    """None when the recorded file is on disk with the bytes recorded; else why it is missing."""
    assert output.path is not None
    path = contained(folder, output.path)
    if path is None:
        return f"{output.path} is not inside {folder}"
    found = partfile.check_recorded_now(
        path,
        output.bytes or 0,
        output.sha256 or "",
        output.file_stat,
        output.verified_at,
        seen=seen,
    )
    if found.intact:
        return None
    if found.size is None:
        return f"{output.path} is gone (deleted or moved since it was downloaded)"
    return f"{output.path} changed on disk since it was downloaded (not the bytes recorded)"
