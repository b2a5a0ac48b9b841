"""report.html, the contact sheet, and the same page served by `mvbatch review`.

Owns: laying a `Report` out for people, as one grid.

- Rows are shots, in manifest order. Columns are matrix variants: each
  distinct combination of axis values, ordered by axis, then by value in the
  order the manifest first gives it (so `mode = ["std", "pro"]` by
  `duration = [5, 10]` reads std·5, std·10, pro·5, pro·10).
- Shots with different matrices still share the grid. Columns are grouped by
  axis set (the names of the axes a variant sets): a header band names each
  group (its axes joined by a multiplication sign, or "no matrix") over its
  columns. A shot fills only the columns of its own variants; every other
  cell is an empty cell, marked as such, never a card moved over to fill the
  gap. Shots with the same axes but fewer values leave those cells empty. We
  chose one table over one table per axis set because rows stay in manifest
  order and a column always means one variant; the price is width when
  matrices are disjoint, which the sticky shot column and horizontal scroll
  carry. Several takes of one variant stack inside their cell.
- Each take is a card (`.take`, `data-key`, `data-verdict`, and the model,
  status group and cost the filters read): a `<video preload="none">` over
  its poster (`posters.py`; an `<img loading="lazy">`), or the reason there
  is no video. The video has no `src` in the HTML (`data-src`): the script
  gives it one, and its controls, when the card nears the visible part of
  the grid, and takes it back when the card leaves paused, so 500 takes
  open fast and only the takes near the screen hold a media player. Without
  a poster, it asks for `preload="metadata"` there, so the browser paints
  the first frame.
- One inline script filters and sorts (model, status, verdict, cost; all in
  the page, so it works from file://), moves through the takes with the
  keyboard (j/k, arrows), and plays a shot's row in sync (space, or the row's
  button): every video of the row seeks to one timecode, and they start
  together once all can play.
- `ReviewMode`: the page as `mvbatch review` serves it. Media come from
  `files/<relative path>`, each card has approve/reject buttons and a note,
  the server's token is in `<meta name="mvbatch-token">`, and a second script
  posts verdicts and polls `/api/cards` every 2 s, replacing only the cards
  whose HTML changed (`card_fragments`, rendered by the same macro as the
  page) and fetching the grid again when `layout_signature` changes. The
  static report.html shows verdicts and notes read-only and has no controls.
- The scripts are templates/sheet.js and templates/review.js, inlined; the
  Content Security Policy allows each by its sha256 and nothing else.
- At most `SHEET_TAKES` takes: past them the grid stops at the last whole
  shot row that fits, and a note above it says how many shots and takes are
  shown and where the rest are (report.csv, report.json). A page of 100,000
  players is not a contact sheet anyone can open, and writing it took most
  of a large report's time and memory. The summary above the grid, the
  filters' choices and the failures below it still count every task. The
  review page is the same page (`layout_signature` and `card_fragments`
  speak of the takes it shows). The page is written as Jinja generates it
  (`contact_sheet_chunks`).

Must not: let the static page reach the network (styles and scripts are
inline, media are relative paths to local files, and a Content Security
Policy forbids anything else; the review page may connect to its own origin
only), or let anything a prompt, a shot id, a note or a server message
contains become markup: Jinja2 autoescape is on, media URLs are
percent-encoded paths we built ourselves, and the scripts never build HTML
from data (the one `innerHTML` takes the review server's own card fragments).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from markupsafe import Markup

from mvbatch.downloads.naming import value_text
from mvbatch.money import usd
from mvbatch.report.formats import templates
from mvbatch.report.model import Report, TaskEntry
from mvbatch.report.posters import poster_relpath

ASSETS = Path(__file__).parent / "templates"
ASPECTS = {"16:9": "16 / 9", "9:16": "9 / 16", "1:1": "1 / 1"}
# The most takes one page shows (whole shot rows; at least the first row).
SHEET_TAKES = 2000

VariantKey = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ReviewMode:
    """The page as `mvbatch review` serves it, with the token its API wants."""

    token: str


@dataclass(frozen=True, slots=True)
class Column:
    key: VariantKey  # (axis, value text) in its group's axis order

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return list(self.key) or [("", "default")]


@dataclass(frozen=True, slots=True)
class AxisGroup:
    axes: tuple[str, ...]
    columns: tuple[Column, ...]

    @property
    def label(self) -> str:
        return " × ".join(self.axes) or "no matrix"


@dataclass(frozen=True, slots=True)
class ShotRow:
    shot: str
    order: int  # position in the manifest
    prompt: str | None
    models: tuple[str, ...]
    cells: tuple[tuple[TaskEntry, ...], ...]  # one per column of the grid, takes in order
    cost_actual: Decimal
    cost_estimate: Decimal


@dataclass(frozen=True, slots=True)
class Grid:
    groups: tuple[AxisGroup, ...]
    rows: tuple[ShotRow, ...]  # the rows shown: the first ones, up to `SHEET_TAKES` takes
    shots: int = 0  # rows of the whole report
    takes: int = 0  # takes of the whole report (a task of several shots counts in each row)

    @property
    def collapsed(self) -> bool:
        """Some shots are not shown: the report has more than `SHEET_TAKES` takes."""
        return len(self.rows) < self.shots

    @property
    def takes_shown(self) -> int:
        return sum(len(cell) for row in self.rows for cell in row.cells)

    @property
    def columns(self) -> tuple[Column, ...]:
        return tuple(column for group in self.groups for column in group.columns)

    @property
    def group_starts(self) -> frozenset[int]:
        """The index of each group's first column (drawn with a rule before it)."""
        starts, n = set(), 0
        for group in self.groups:
            starts.add(n)
            n += len(group.columns)
        return frozenset(starts)


@dataclass(frozen=True, slots=True)
class Card:
    task: TaskEntry
    state: str  # video, missing, failed, cancelled, pending
    src: str | None  # URL of the local file: percent-encoded, relative
    poster: str | None  # URL of its poster frame, when one was made
    reason: str | None  # the reason it failed, or why there is no video

    @property
    def cost(self) -> str:
        if self.task.cost_actual is not None:
            return usd(self.task.cost_actual)
        return f"est. {usd(self.task.cost_estimate)}"

    @property
    def cost_value(self) -> str:
        """The figure the cost filter and sort read: charged, else the estimate."""
        value = self.task.cost_actual
        return str(self.task.cost_estimate if value is None else value)


@dataclass(frozen=True, slots=True)
class View:
    """What a card's look depends on besides its task."""

    review: bool
    many_models: bool
    aspect_css: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ChartBar:
    label: str
    actual: Decimal
    estimate: Decimal
    actual_width: float
    estimate_width: float


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8").strip()


def _sha(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


# -------------------------------------------------------------------- the grid


def grid(report: Report) -> Grid:
    """The grid of `report`, shots by variants, cut after `SHEET_TAKES` takes (pure: no files)."""
    by_shot: dict[str, list[TaskEntry]] = defaultdict(list)
    for task in report.tasks:
        # A task asked for by several shots appears in each of their rows.
        for shot in dict.fromkeys(task.shots or (task.shot,)):
            by_shot[shot].append(task)
    ordered = [(order, shot) for order, shot in enumerate(report.shot_order) if by_shot.get(shot)]
    takes = sum(len(by_shot[shot]) for _, shot in ordered)
    shown: list[tuple[int, str]] = []
    room = SHEET_TAKES
    for order, shot in ordered:
        if shown and len(by_shot[shot]) > room:
            break
        shown.append((order, shot))
        room -= len(by_shot[shot])
    # Columns from every task, as before, unless rows were cut: then from those shown.
    tasks = (
        report.tasks
        if len(shown) == len(ordered)
        else [t for _, shot in shown for t in by_shot[shot]]
    )
    groups = _groups(tasks)
    columns = [column for group in groups for column in group.columns]
    where = {tuple(sorted(column.key)): n for n, column in enumerate(columns)}
    rows = []
    for order, shot in shown:
        in_row = by_shot[shot]
        cells: list[list[TaskEntry]] = [[] for _ in columns]
        for task in in_row:
            cells[where[_column_key(task.variant)]].append(task)
        own = [t for t in in_row if t.shot == shot]
        rows.append(
            ShotRow(
                shot,
                order,
                report.prompts.get(shot),
                tuple(dict.fromkeys(t.model for t in in_row)),
                tuple(tuple(sorted(cell, key=lambda t: t.take)) for cell in cells),
                sum((t.cost_actual or Decimal(0) for t in own), Decimal(0)),
                sum((t.cost_estimate for t in own), Decimal(0)),
            )
        )
    return Grid(tuple(groups), tuple(rows), len(ordered), takes)


def _column_key(variant: Sequence[tuple[str, Any]]) -> VariantKey:
    # Axis order within a group is by name, so two shots that list the same
    # axes in another order share columns.
    return tuple(sorted((k, value_text(v)) for k, v in variant))


def _groups(tasks: Sequence[TaskEntry]) -> list[AxisGroup]:
    """Columns grouped by axis set, groups and axes in order of first appearance."""
    value_rank: dict[str, dict[str, int]] = defaultdict(dict)
    axes_of: dict[frozenset[str], tuple[str, ...]] = {}
    members: dict[frozenset[str], dict[VariantKey, None]] = defaultdict(dict)
    for task in tasks:
        pairs = [(k, value_text(v)) for k, v in task.variant]
        for axis, value in pairs:
            value_rank[axis].setdefault(value, len(value_rank[axis]))
        names = frozenset(axis for axis, _ in pairs)
        axes_of.setdefault(names, tuple(axis for axis, _ in pairs))
        members[names][_column_key(task.variant)] = None
    groups = []
    for names, axes in axes_of.items():

        def order(key: VariantKey, axes: tuple[str, ...] = axes) -> tuple[int, ...]:
            values = dict(key)
            return tuple(value_rank[axis][values[axis]] for axis in axes)

        keys = sorted(members[names], key=order)
        groups.append(
            AxisGroup(
                axes,
                tuple(Column(tuple((axis, dict(key)[axis]) for axis in axes)) for key in keys),
            )
        )
    return groups


def layout_signature(report: Report) -> str:
    """Changes when the grid's rows, columns or the takes in a cell change (a re-roll adds one)."""
    return _signature(grid(report))


def _signature(g: Grid) -> str:
    shape = {
        "columns": [[group.axes, [c.key for c in group.columns]] for group in g.groups],
        "rows": [[row.shot, [[t.key for t in cell] for cell in row.cells]] for row in g.rows],
    }
    return hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:16]


# -------------------------------------------------------------------- cards


def _card(task: TaskEntry, folder: Path, media: str) -> Card:
    if task.status == "succeeded":
        local = next((o for o in task.outputs if o.path), None)
        if local is not None and local.path is not None:
            poster = None
            if local.sha256 and (folder / poster_relpath(local.sha256)).is_file():
                poster = media + _href(str(poster_relpath(local.sha256)))
            return Card(task, "video", media + _href(local.path), poster, None)
        reason = next((o.download_error for o in task.outputs if o.download_error), None)
        if not task.outputs:
            reason = "the server returned no video URL"
        return Card(
            task,
            "missing",
            None,
            None,
            reason or "not downloaded yet: run `mvbatch report` to fetch it",
        )
    if task.group == "failed":
        return Card(task, "failed", None, None, task.error or f"{task.status} (no message)")
    if task.status == "cancelled":
        return Card(task, "cancelled", None, None, task.error or "cancelled")
    waiting = {"planned": "not submitted yet", "submitting": "being submitted"}
    return Card(task, "pending", None, None, waiting.get(task.status, task.status))


def _href(path: str) -> str:
    # Our own relative path, percent-encoded per component: no scheme, no
    # "..", nothing for the browser to reinterpret.
    return "/".join(quote(part, safe="") for part in PurePosixPath(path).parts)


def _view(report: Report, review: ReviewMode | None) -> View:
    return View(review is not None, len({t.model for t in report.tasks}) > 1, ASPECTS)


def _fragments(report: Report, g: Grid, folder: Path, view: View) -> dict[str, Markup]:
    """Each take's card, by task key; `data-rev` is a hash of the rest of its HTML."""
    macro = templates().get_template("take.html.j2").module.card_view  # type: ignore[attr-defined]
    media = "files/" if view.review else ""
    fragments: dict[str, Markup] = {}
    for row in g.rows:
        for cell in row.cells:
            for task in cell:
                if task.key in fragments:
                    continue
                html = str(macro(_card(task, folder, media), view)).strip()
                rev = hashlib.sha256(html.encode()).hexdigest()[:12]
                # Our own template's output, autoescaped; the rev is hex.
                revised = html.replace('data-rev=""', f'data-rev="{rev}"', 1)
                fragments[task.key] = Markup(revised)  # noqa: S704 - rendered by Jinja above
    return fragments


def card_fragments(report: Report, folder: Path, review: ReviewMode) -> dict[str, str]:
    """Each take's card HTML by task key, exactly as `contact_sheet` renders it in review mode."""
    view = _view(report, review)
    return {key: str(html) for key, html in _fragments(report, grid(report), folder, view).items()}


# -------------------------------------------------------------------- the page


def contact_sheet(report: Report, folder: Path, review: ReviewMode | None = None) -> str:
    return "".join(contact_sheet_chunks(report, folder, review))


def contact_sheet_chunks(
    report: Report, folder: Path, review: ReviewMode | None = None
) -> Iterator[str]:
    """The page as Jinja generates it: only the cards shown are ever held at once."""
    g = grid(report)
    view = _view(report, review)
    scripts = [_asset("sheet.js")]
    if review is not None:
        scripts.append(_asset("review.js"))
    models = sorted({t.model for row in g.rows for cell in row.cells for t in cell})
    groups_present = {t.group for row in g.rows for cell in row.cells for t in cell}
    return (
        templates()
        .get_template("contact_sheet.html.j2")
        .generate(
            r=report,
            grid=g,
            cards=_fragments(report, g, folder, view),
            view=view,
            review=review,
            layout=_signature(g),
            models=models,
            statuses=[
                s for s in ("succeeded", "failed", "cancelled", "pending") if s in groups_present
            ],
            chart=_chart(report),
            scripts=scripts,
            script_hashes=[_sha(s) for s in scripts],
            variance=report.variance,
            counts=report.counts,
            downloads=report.download_totals,
            takes=g.takes_shown,
        )
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
