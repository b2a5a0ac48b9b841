"""Handing the takes to an editor: `mvbatch export MANIFEST DEST [--approved]` (SPEC §9).

Owns: which takes go (every succeeded take, or with `--approved` those whose
latest verdict is approved); their names in DEST (`take_names`:
`<shot>_<variant>_v<take>.mp4`, `_<n>` after the take for each output of a
task with several, the short key after the take when two tasks would share a
name); copying each one verified (`copy_verified`); the shot list
(`shots.csv`) and the timeline of the approved takes (`timeline.otio`, drawn
by `timeline.py`); `ExportResult`, what the CLI says afterwards.

A name is made from the task alone (its shot, model, matrix values and
take), sanitized to one safe path component, and worked out over every task
of the report, so that it does not change with `--approved`, a verdict or
another task finishing. Only a task from an earlier version of the manifest
that would take a planned task's name gives way (it gets its short key).

Every file in DEST holds the bytes the ledger recorded: the original is
hashed while it is copied to a temporary file beside the target, and only a
copy whose SHA-256 equals the ledger's is renamed into place. A file already
in DEST with those bytes is left as it is, so that exporting again into the
same DEST copies nothing new and names nothing differently. A take that
cannot be exported (not downloaded yet, deleted or changed since it was
downloaded) is left out and said, with the command that fetches it again.

Must not: move, change or delete an original or anything else already in
DEST (files from an earlier export stay), write in the manifest's report
folder, download anything (`mvbatch report` does), or print.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from mvbatch import logs
from mvbatch.downloads import partfile
from mvbatch.downloads.naming import contained, report_folder, safe_component, short_key
from mvbatch.errors import ConfigError, UsageError
from mvbatch.ledger import Ledger, Output
from mvbatch.money import plain
from mvbatch.plan import mp4_probe
from mvbatch.plan.planner import Plan
from mvbatch.report.build import build_report
from mvbatch.report.formats import csv_cell, write_atomic
from mvbatch.report.model import Report, TaskEntry
from mvbatch.report.timeline import Clip, timeline_text

SHOTS = "shots.csv"
TIMELINE = "timeline.otio"
SHOTS_COLUMNS = (
    "shot",
    "variant",
    "take",
    "model",
    "prompt",
    "cost",
    "verdict",
    "note",
    "sha256",
    "file",
)
_PART_BYTES = 24  # each matrix value in a name: enough to recognise it, short enough for several
_BLOCK = 1 << 20

log = logs.get("mvbatch.report.export")


@dataclass(frozen=True, slots=True)
class Exported:
    """One file in DEST, verified."""

    task: TaskEntry
    idx: int
    name: str
    sha256: str
    seconds: Decimal | None  # read from the copy's own MP4 header
    copied: bool  # False: DEST already held these bytes under this name
    first: bool  # the task's first output: the one its cost is written beside


@dataclass(frozen=True, slots=True)
class Skipped:
    """A take that was asked for and is not in DEST, and why."""

    task: TaskEntry
    name: str
    reason: str


@dataclass(frozen=True)
class ExportResult:
    manifest: str
    dest: Path
    approved_only: bool
    exported: tuple[Exported, ...]
    skipped: tuple[Skipped, ...]
    shots: Path
    timeline: Path
    clips: int  # approved takes on the timeline
    no_video: int  # tasks asked for that have no video (failed, cancelled, not finished)
    off_timeline: tuple[str, ...] = field(default=())  # approved files whose length is unknown

    @property
    def complete(self) -> bool:
        """Every take asked for is in DEST, and there was at least one."""
        return bool(self.exported) and not self.skipped

    def summary(self) -> list[str]:
        """A few lines for a person: how many files, approved or all, where the timeline is."""
        which = "approved take" if self.approved_only else "take (approved or not)"
        copied = sum(1 for e in self.exported if e.copied)
        lines = [
            f"{self.manifest}: {len(self.exported)} {which} file(s) exported to {self.dest}, "
            f"each checked against the ledger's SHA-256 ({copied} copied, "
            f"{len(self.exported) - copied} already there); timeline: {self.timeline} "
            f"({self.clips} approved clip(s) in shot order)",
            f"shot list: {self.shots}",
        ]
        if self.exported and not self.clips:
            lines.append(
                "the timeline is empty: no exported take is approved (approve takes with "
                "`mvbatch review MANIFEST`)"
            )
        for name in self.off_timeline:
            lines.append(f"not on the timeline: {name} (its length could not be read)")
        if self.no_video:
            lines.append(
                f"{self.no_video} task(s) asked for have no video (failed, cancelled or not "
                "finished): nothing to export for them"
            )
        if not self.exported and not self.skipped and not self.no_video:
            lines.append(
                "nothing to export: "
                + ("no take is approved yet" if self.approved_only else "no task has a video yet")
            )
        shown = self.skipped[:10]
        for skipped in shown:
            lines.append(f"not exported: {skipped.name}: {skipped.reason}")
        if len(self.skipped) > len(shown):
            lines.append(f"... and {len(self.skipped) - len(shown)} more not exported")
        return lines


# ------------------------------------------------------------------- names


def variant_text(task: TaskEntry) -> str:
    """The model and the matrix values, short and safe: `kling-v2-6_pro_5s`."""
    names = [name for name, _ in task.variant]
    parts = [] if "model" in names else [task.model]
    parts += [_value_part(name, value) for name, value in task.variant]
    cut = [safe_component(p, "x").encode()[:_PART_BYTES].decode(errors="ignore") for p in parts]
    return safe_component("_".join(p.strip("-_") or "x" for p in cut), "default")


def _value_part(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return name if value else f"no-{name}"
    if isinstance(value, (int, float)):
        return f"{value}s" if name == "duration" else f"{name}{value}"
    if isinstance(value, str):
        return value.replace(":", "x") if name in ("aspect_ratio", "size") else value
    return name


def take_names(tasks: Sequence[TaskEntry]) -> dict[str, str]:
    """Each task's name in DEST without the extension, by key; unique, ignoring case."""
    names = {
        t.key: f"{safe_component(t.shot, 'shot')}_{variant_text(t)}_v{int(t.take)}" for t in tasks
    }
    groups: dict[str, list[TaskEntry]] = defaultdict(list)
    for task in tasks:
        groups[names[task.key].casefold()].append(task)
    for group in groups.values():
        if len(group) < 2:
            continue
        planned = [t for t in group if t.in_plan]
        keeps = planned[0].key if len(planned) == 1 else None
        for task in group:
            if task.key != keeps:
                names[task.key] += f"_{short_key(task.key)}"
    taken: set[str] = set()
    for task in tasks:  # two short keys alike: the whole key, which is unique
        if names[task.key].casefold() in taken:
            names[task.key] += f"_{safe_component(task.key, 'task')}"
        taken.add(names[task.key].casefold())
    return names


def file_names(base: str, outputs: int) -> list[str]:
    if outputs <= 1:
        return [f"{base}.mp4"]
    return [f"{base}_{n + 1}.mp4" for n in range(outputs)]


# --------------------------------------------------------------- the export


def export_takes(
    ledger: Ledger,
    plan: Plan,
    env: str,
    output_dir: Path,
    dest: Path,
    *,
    approved_only: bool,
    fetch_hint: str,
) -> ExportResult:
    """Copy the takes of `plan`'s manifest into `dest`, verified; write shots.csv and the timeline.

    `fetch_hint` is the command that downloads what is missing (`mvbatch
    report MANIFEST`), quoted in the reasons a take was left out.
    """
    folder = report_folder(output_dir, plan.name)
    dest = _usable_dest(dest, folder)
    rows = ledger.tasks(env, plan.name)
    outputs = ledger.manifest_outputs(env, plan.name)
    report = build_report(
        plan.name,
        env,
        rows,
        dict(outputs),  # build_report takes each task's out; they are read again below
        folder,
        plan=plan,
        verdicts=ledger.verdicts(env, plan.name),
    )
    names = take_names(report.tasks)
    exported: list[Exported] = []
    skipped: list[Skipped] = []
    no_video = 0
    for task in report.tasks:
        if approved_only and task.verdict != "approved":
            continue
        recorded = sorted(outputs.get(task.key, ()), key=lambda o: o.idx)
        if task.status != "succeeded" or not recorded:
            if task.status == "succeeded":
                skipped.append(Skipped(task, names[task.key], "succeeded without a video URL"))
            elif approved_only:
                skipped.append(Skipped(task, names[task.key], f"approved, but {task.status_text}"))
            else:
                no_video += 1
            continue
        for n, (output, name) in enumerate(
            zip(recorded, file_names(names[task.key], len(recorded)), strict=True)
        ):
            done = _export_one(
                task, output, name, folder=folder, dest=dest, fetch_hint=fetch_hint, first=n == 0
            )
            if isinstance(done, Exported):
                exported.append(done)
            else:
                skipped.append(done)
    shots = dest / SHOTS
    timeline = dest / TIMELINE
    clips, off = _clips(exported, dest)
    _write(shots, shots_text(report, exported))
    _write(timeline, timeline_text(plan.name, clips))
    log.info(
        "export.written",
        manifest=plan.name,
        env=env,
        dest=str(dest),
        exported=len(exported),
        copied=sum(1 for e in exported if e.copied),
        skipped=len(skipped),
        clips=len(clips),
    )
    return ExportResult(
        plan.name,
        dest,
        approved_only,
        tuple(exported),
        tuple(skipped),
        shots,
        timeline,
        len(clips),
        no_video,
        tuple(off),
    )


def _usable_dest(dest: Path, folder: Path) -> Path:
    """DEST, absolute and made if need be; never the report folder or inside it."""
    where = dest.expanduser().resolve()
    if where.is_relative_to(folder.resolve()):
        raise UsageError(
            f"DEST {dest} is inside the report folder {folder}, where mvbatch keeps the "
            "reports and the original videos: export into a folder of its own"
        )
    if where.exists() and not where.is_dir():
        raise UsageError(f"DEST {dest} is a file, not a folder")
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=where, prefix=".mvbatch-probe-"):
            pass
    except OSError as error:
        raise UsageError(
            f"DEST {dest} cannot be used: {error.strerror or error}; give a folder mvbatch "
            "can write in"
        ) from None
    return where


def _export_one(
    task: TaskEntry,
    output: Output,
    name: str,
    *,
    folder: Path,
    dest: Path,
    fetch_hint: str,
    first: bool,
) -> Exported | Skipped:
    if output.path is None or output.sha256 is None:
        return Skipped(task, name, f"not downloaded yet: `{fetch_hint}` downloads it")
    source = contained(folder, output.path)
    if source is None:
        return Skipped(task, name, f"its recorded path {output.path} is not inside {folder}")
    if not source.is_file():
        return Skipped(
            task,
            name,
            f"{folder / output.path} is gone (deleted or moved since it was downloaded): "
            f"`{fetch_hint}` downloads it again",
        )
    try:
        found, copied = copy_verified(source, dest / name, output.sha256)
    except OSError as error:  # reading the original; writing DEST raises on its own
        return Skipped(task, name, f"{source} cannot be read ({error.strerror or error})")
    if found != output.sha256:
        return Skipped(
            task,
            name,
            f"{source} changed since it was downloaded (its SHA-256 is {found[:12]}…, the "
            f"ledger recorded {output.sha256[:12]}…); `{fetch_hint}` fetches "
            "it again",
        )
    seconds = mp4_probe.local_duration(dest / name)
    return Exported(task, output.idx, name, found, seconds, copied, first)


def copy_verified(source: Path, target: Path, sha256: str) -> tuple[str, bool]:
    """Make `target` hold `source`'s bytes if their SHA-256 is `sha256`.

    Returns the SHA-256 found and whether a copy was made. A `target` that
    already holds those bytes is kept (nothing copied). Otherwise the bytes
    are hashed as they are copied into a temporary file beside `target`, which
    replaces it (atomically, by rename) only when the hash is `sha256`; on a
    mismatch the temporary file is removed and `target` is left as it was.
    An error reading `source` is an `OSError`; writing, a `ConfigError` (or
    `DiskFull`).
    """
    if target.is_file() and not target.is_symlink() and partfile.sha256_file(target) == sha256:
        return sha256, False
    digest = hashlib.sha256()
    size = source.stat().st_size
    with source.open("rb") as reader:
        with _writing(target, size):
            handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below
                "wb", dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False
            )
        temporary = Path(handle.name)
        try:
            with handle:
                while block := reader.read(_BLOCK):
                    digest.update(block)
                    with _writing(target, size):
                        handle.write(block)
                with _writing(target, size):
                    handle.flush()
                    os.fsync(handle.fileno())
            if digest.hexdigest() != sha256:
                temporary.unlink()
                return digest.hexdigest(), False
            with _writing(target, size):
                temporary.chmod(0o644)  # mkstemp makes it 0600
                temporary.replace(target)  # a symlink there is replaced, never written through
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    return sha256, True


@contextlib.contextmanager
def _writing(target: Path, needed: int | None) -> Iterator[None]:
    """An error writing `target` as what it means: `DiskFull`, else a `ConfigError`."""
    try:
        yield
    except OSError as error:
        full = partfile.disk_full(error, target.parent, target.name, needed)
        if full is not None:
            raise full from None
        raise ConfigError(f"cannot write {target} ({error.strerror or error})") from None


def _write(path: Path, text: str) -> None:
    text = logs.redact_text(text)
    with _writing(path, len(text.encode())):
        write_atomic(path, text)


# ------------------------------------------------------- shots.csv, timeline


def shots_text(report: Report, exported: Sequence[Exported]) -> str:
    """shots.csv: one row per exported file; a task's cost once, beside its first file."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SHOTS_COLUMNS)
    for item in exported:
        task = item.task
        cost = task.cost_actual if task.cost_actual is not None else task.cost_estimate
        writer.writerow(
            [
                csv_cell(task.shot),
                csv_cell(task.variant_label),
                task.take,
                task.model,
                csv_cell(_prompt(report, task)),
                plain(cost) if item.first else "",
                task.verdict or "",
                csv_cell(task.note),
                item.sha256,
                csv_cell(item.name),
            ]
        )
    return buffer.getvalue()


def _prompt(report: Report, task: TaskEntry) -> str:
    prompt = task.input.get("prompt")
    return prompt if isinstance(prompt, str) else report.prompts.get(task.shot, "")


def _clips(exported: Sequence[Exported], dest: Path) -> tuple[list[Clip], list[str]]:
    """The approved files in shot order, and those left off for want of a length."""
    clips: list[Clip] = []
    off: list[str] = []
    for item in exported:
        if item.task.verdict != "approved":
            continue
        seconds = item.seconds if item.seconds is not None else item.task.billed_seconds
        if seconds is None or seconds <= 0:
            off.append(item.name)
            continue
        clips.append(Clip(Path(item.name).stem, dest / item.name, seconds, _metadata(item)))
    return clips, off


def _metadata(item: Exported) -> Mapping[str, Any]:
    task = item.task
    return {
        "key": task.key,
        "shot": task.shot,
        "variant": task.variant_label,
        "take": task.take,
        "model": task.model,
        "output": item.idx,
        "verdict": task.verdict,
        "note": task.note,
        "sha256": item.sha256,
        "cost": None if task.cost_actual is None else str(task.cost_actual),
    }
