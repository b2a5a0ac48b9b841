"""report.html, the contact sheet: every video of a manifest side by side with its cost.

Owns: laying a `Report` out for people. Rows are shots (in manifest order),
columns are the matrix variants; each cell holds one card per take: a
playable `<video>` of the local file with its cost, status and duration, or
the reason it failed. A header carries the totals and a small cost-by-model
chart.

Must not: reach the network when the page is opened (styles and the one
script are inline, videos are relative paths to local files, and a Content
Security Policy forbids anything else), or let anything a prompt, a shot id
or a server message contains become markup: Jinja2 autoescape is on, and
video sources are percent-encoded paths we built ourselves.
"""

from __future__ import annotations

import base64
import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from mvbatch.downloads.naming import value_text
from mvbatch.money import usd
from mvbatch.report.formats import templates
from mvbatch.report.model import Report, TaskEntry

# Below this share of filled cells, one shared column header would leave the
# page mostly empty (shots with unrelated matrices): each shot gets its own
# strip of labelled cards instead.
GRID_DENSITY = 0.6

# The page's only script: hovering a clip previews it muted, leaving stops
# the preview (not a clip the user started), and the header button plays or
# pauses every clip. Its hash goes into the page's Content Security Policy.
SCRIPT = """
document.querySelectorAll('video').forEach(function (v) {
  v.addEventListener('mouseenter', function () {
    if (v.paused) { v.dataset.preview = '1'; v.muted = true; v.play().catch(function () {}); }
  });
  v.addEventListener('mouseleave', function () {
    if (v.dataset.preview === '1') { v.pause(); delete v.dataset.preview; }
  });
  v.addEventListener('click', function () { delete v.dataset.preview; });
});
var all = document.getElementById('play-all');
if (all) {
  all.addEventListener('click', function () {
    var playing = all.dataset.playing === '1';
    document.querySelectorAll('video').forEach(function (v) {
      delete v.dataset.preview;
      if (playing) { v.pause(); } else { v.muted = true; v.play().catch(function () {}); }
    });
    all.dataset.playing = playing ? '0' : '1';
    all.textContent = playing ? 'Play all' : 'Pause all';
  });
}
""".strip()


@dataclass(frozen=True, slots=True)
class Card:
    task: TaskEntry
    state: str  # video, missing, failed, cancelled, pending
    src: str | None  # percent-encoded relative path of the local file
    note: str | None  # the reason it failed, or why there is no video

    @property
    def cost(self) -> str:
        if self.task.cost_actual is not None:
            return usd(self.task.cost_actual)
        return f"est. {usd(self.task.cost_estimate)}"


@dataclass(frozen=True, slots=True)
class Column:
    variant: tuple[tuple[str, Any], ...]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(k, value_text(v)) for k, v in self.variant] or [("", "default")]


@dataclass(frozen=True, slots=True)
class ShotRow:
    shot: str
    prompt: str | None
    models: tuple[str, ...]
    cells: tuple[tuple[Card, ...], ...]  # one per column (grid) or one per variant (strips)
    columns: tuple[Column, ...]
    cost_actual: Decimal
    cost_estimate: Decimal


@dataclass(frozen=True, slots=True)
class ChartBar:
    label: str
    actual: Decimal
    estimate: Decimal
    actual_width: float
    estimate_width: float


def contact_sheet(report: Report, folder: Path) -> str:
    columns = _columns(report.tasks)
    by_shot: dict[str, list[TaskEntry]] = defaultdict(list)
    for task in report.tasks:
        # A task asked for by several shots appears in each of their rows.
        for shot in dict.fromkeys(task.shots or (task.shot,)):
            by_shot[shot].append(task)
    rows = [
        _shot_row(shot, by_shot.get(shot, []), columns, report.prompts.get(shot))
        for shot in report.shot_order
    ]
    rows = [row for row in rows if any(row.cells)]
    filled = sum(1 for row in rows for cell in row.cells if cell)
    grid = bool(rows) and filled / (len(rows) * max(1, len(columns))) >= GRID_DENSITY
    if not grid:
        rows = [_strip(row) for row in rows]
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    return (
        templates()
        .get_template("contact_sheet.html.j2")
        .render(
            r=report,
            rows=rows,
            columns=columns,
            grid=grid,
            chart=_chart(report),
            script=SCRIPT,
            script_hash=script_hash,
            variance=report.variance,
            counts=report.counts,
            downloads=report.download_totals,
            many_models=len({t.model for t in report.tasks}) > 1,
            aspect_css={"16:9": "16 / 9", "9:16": "9 / 16", "1:1": "1 / 1"},
        )
    )


def _columns(tasks: Sequence[TaskEntry]) -> list[Column]:
    seen: dict[tuple[tuple[str, str], ...], Column] = {}
    for task in tasks:
        seen.setdefault(_variant_key(task.variant), Column(task.variant))
    return list(seen.values())


def _card(task: TaskEntry) -> Card:
    if task.status == "succeeded":
        local = next((o for o in task.outputs if o.path), None)
        if local is not None and local.path is not None:
            return Card(task, "video", _href(local.path), None)
        reason = next((o.download_error for o in task.outputs if o.download_error), None)
        if not task.outputs:
            reason = "the server returned no video URL"
        return Card(
            task, "missing", None, reason or "not downloaded yet: run `mvbatch report` to fetch it"
        )
    if task.group == "failed":
        return Card(task, "failed", None, task.error or f"{task.status} (no message)")
    if task.status == "cancelled":
        return Card(task, "cancelled", None, task.error or "cancelled")
    return Card(
        task,
        "pending",
        None,
        {"planned": "not submitted yet", "submitting": "being submitted"}.get(
            task.status, task.status
        ),
    )


def _href(path: str) -> str:
    # Our own relative path, percent-encoded per component: no scheme, no
    # "..", nothing for the browser to reinterpret.
    return "/".join(quote(part, safe="") for part in PurePosixPath(path).parts)


def _shot_row(
    shot: str, tasks: list[TaskEntry], columns: list[Column], prompt: str | None
) -> ShotRow:
    by_variant: dict[tuple[tuple[str, str], ...], list[Card]] = defaultdict(list)
    for task in tasks:
        by_variant[_variant_key(task.variant)].append(_card(task))
    cells = tuple(
        tuple(sorted(by_variant.get(_variant_key(c.variant), []), key=lambda c: c.task.take))
        for c in columns
    )
    own = [t for t in tasks if t.shot == shot]
    return ShotRow(
        shot,
        prompt,
        tuple(dict.fromkeys(t.model for t in tasks)),
        cells,
        tuple(columns),
        sum((t.cost_actual or Decimal(0) for t in own), Decimal(0)),
        sum((t.cost_estimate for t in own), Decimal(0)),
    )


def _variant_key(variant: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, str], ...]:
    return tuple((k, value_text(v)) for k, v in variant)


def _strip(row: ShotRow) -> ShotRow:
    """Only this shot's variants, each card labelled with its own variant."""
    kept = [(cell, column) for cell, column in zip(row.cells, row.columns, strict=True) if cell]
    return ShotRow(
        row.shot,
        row.prompt,
        row.models,
        tuple(c for c, _ in kept),
        tuple(col for _, col in kept),
        row.cost_actual,
        row.cost_estimate,
    )


def _chart(report: Report) -> list[ChartBar]:
    buckets = report.by_model
    largest = max([max(b.cost_actual, b.cost_estimate) for b in buckets.values()] or [Decimal(0)])
    bars = []
    for model, bucket in sorted(
        buckets.items(), key=lambda kv: -max(kv[1].cost_actual, kv[1].cost_estimate)
    ):

        def width(value: Decimal) -> float:
            return 0.0 if largest == 0 else round(float(value / largest) * 100, 1)

        bars.append(
            ChartBar(
                model,
                bucket.cost_actual,
                bucket.cost_estimate,
                width(bucket.cost_actual),
                width(bucket.cost_estimate),
            )
        )
    return bars
