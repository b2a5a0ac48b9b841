"""The contact sheet's grid and page, without a browser (mvbatch/report/html.py).

Shots with different matrices share one grid: columns grouped by axis set,
empty cells where a shot has no such variant, takes of one variant stacked
in their cell. The page and the review API render each card with the same
macro; the static page is read-only and its scripts are allowed by hash.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import replace
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from mvbatch.report import html as html_module
from mvbatch.report.html import (
    ReviewMode,
    card_fragments,
    contact_sheet,
    grid,
    layout_signature,
)
from mvbatch.report.model import OutputEntry, Report, TaskEntry


def take(
    shot: str,
    variant: dict[str, Any] | None = None,
    *,
    n: int = 1,
    status: str = "succeeded",
    model: str = "kling-v2-6",
    cost: str = "0.25",
    verdict: str | None = None,
    note: str | None = None,
) -> TaskEntry:
    pairs = tuple((variant or {}).items())
    key = "mvb1-" + hashlib.sha256(repr((shot, pairs, n, model)).encode()).hexdigest()[:32]
    outputs: tuple[OutputEntry, ...] = ()
    if status == "succeeded":
        outputs = (
            OutputEntry(0, "https://cdn.test/v.mp4", f"videos/{shot}/{key[-8:]}.mp4", None, 1),
        )
    return TaskEntry(
        key=key,
        shot=shot,
        shots=(shot,),
        variant=pairs,
        take=n,
        model=model,
        input={"prompt": f"prompt of {shot}"},
        status=status,
        estimate_local=Decimal(cost),
        price_class=model,
        price_source="documented",
        upper_bound=False,
        cost_actual=Decimal(cost) if status == "succeeded" else None,
        outputs=outputs,
        verdict=verdict,
        note=note,
    )


def report(*tasks: TaskEntry, shots: tuple[str, ...] | None = None) -> Report:
    order = shots or tuple(dict.fromkeys(t.shot for t in tasks))
    return Report("demo", "sim", tuple(tasks), order, {}, "2026-01-01T00:00:00Z")


def mixed() -> Report:
    """Four shots: a 2x2 matrix, another axis only, a sparse 2x2 and none at all."""
    return report(
        *(take("car", {"mode": m, "duration": d}) for m in ("std", "pro") for d in (5, 10)),
        take("dog", {"aspect_ratio": "16:9"}),
        take("dog", {"aspect_ratio": "9:16"}),
        take("cat", {"mode": "std", "duration": 5}),
        take("cat", {"mode": "pro", "duration": 10}),
        take("sky"),
    )


def keys(cells: tuple[tuple[TaskEntry, ...], ...]) -> list[list[int]]:
    return [[t.take for t in cell] for cell in cells]


def test_columns_are_variants_grouped_by_axis_set_in_manifest_order() -> None:
    g = grid(mixed())
    assert [group.label for group in g.groups] == ["mode × duration", "aspect_ratio", "no matrix"]
    assert [c.pairs for c in g.columns] == [
        [("mode", "std"), ("duration", "5")],
        [("mode", "std"), ("duration", "10")],
        [("mode", "pro"), ("duration", "5")],
        [("mode", "pro"), ("duration", "10")],
        [("aspect_ratio", "16:9")],
        [("aspect_ratio", "9:16")],
        [("", "default")],
    ]
    assert g.group_starts == {0, 4, 6}
    assert [row.shot for row in g.rows] == ["car", "dog", "cat", "sky"]


def test_a_shot_without_a_variant_gets_an_empty_cell_never_a_moved_card() -> None:
    rows = {row.shot: row for row in grid(mixed()).rows}
    assert [bool(cell) for cell in rows["car"].cells] == [1, 1, 1, 1, 0, 0, 0]
    assert [bool(cell) for cell in rows["dog"].cells] == [0, 0, 0, 0, 1, 1, 0]
    # cat has std·5 and pro·10 only: std·10 and pro·5 stay empty, in place.
    assert [bool(cell) for cell in rows["cat"].cells] == [1, 0, 0, 1, 0, 0, 0]
    assert [bool(cell) for cell in rows["sky"].cells] == [0, 0, 0, 0, 0, 0, 1]
    for row in rows.values():
        for cell, column in zip(row.cells, grid(mixed()).columns, strict=True):
            for t in cell:
                assert sorted((k, str(v)) for k, v in t.variant) == sorted(column.key)


def test_axes_in_another_order_share_the_same_columns() -> None:
    g = grid(
        report(
            take("a", {"mode": "std", "duration": 5}),
            take("b", {"duration": 5, "mode": "std"}),
        )
    )
    assert len(g.columns) == 1
    assert keys(g.rows[0].cells) == keys(g.rows[1].cells) == [[1]]


def test_takes_of_one_variant_stack_in_their_cell_in_take_order() -> None:
    g = grid(
        report(
            take("a", {"mode": "std"}, n=3),
            take("a", {"mode": "std"}, n=1),
            take("a", {"mode": "pro"}, n=1),
            take("a", {"mode": "std"}, n=2),
        )
    )
    assert keys(g.rows[0].cells) == [[1, 2, 3], [1]]


def test_a_shot_without_tasks_has_no_row() -> None:
    g = grid(report(take("a"), shots=("a", "planned-but-empty")))
    assert [row.shot for row in g.rows] == ["a"]


class Sheet(HTMLParser):
    """Rows of the grid body: per row, the classes of its cells' first child."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.takes: list[dict[str, str | None]] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_body = False
        self._script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        classes = (a.get("class") or "").split()
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag == "td" and self._in_body:
            self.rows[-1].append("")
        elif (
            self._in_body
            and self.rows
            and self.rows[-1]
            and self.rows[-1][-1] == ""
            and ("take" in classes or "empty" in classes)
        ):
            self.rows[-1][-1] = "take" if "take" in classes else "empty"
        if "take" in classes:
            self.takes.append(a)
        self._script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False
        self._script = False

    def handle_data(self, data: str) -> None:
        if self._script:
            self.scripts.append(data)


def parse(html: str) -> Sheet:
    sheet = Sheet()
    sheet.feed(html)
    return sheet


def test_the_page_draws_the_grid_with_empty_cells(tmp_path: Path) -> None:
    sheet = parse(contact_sheet(mixed(), tmp_path))
    assert sheet.rows == [
        ["take"] * 4 + ["empty"] * 3,
        ["empty"] * 4 + ["take"] * 2 + ["empty"],
        ["take", "empty", "empty", "take", "empty", "empty", "empty"],
        ["empty"] * 6 + ["take"],
    ]
    groups = [
        (a.get("colspan"), tag)
        for tag, a in sheet.tags
        if "group" in (a.get("class") or "").split()
    ]
    assert groups == [("4", "th"), ("2", "th"), ("1", "th")]


def test_every_take_carries_what_filters_and_review_read(tmp_path: Path) -> None:
    r = report(
        take("a", {"mode": "std"}, verdict="approved", note="keep <b>this</b>"),
        take("a", {"mode": "pro"}, status="failed", model="veo-3", cost="0.5"),
    )
    sheet = parse(contact_sheet(r, tmp_path))
    assert [
        (t["data-verdict"], t["data-group"], t["data-model"], t["data-cost"]) for t in sheet.takes
    ] == [
        ("approved", "succeeded", "kling-v2-6", "0.25"),
        ("", "failed", "veo-3", "0.5"),
    ]
    assert {t["data-key"] for t in sheet.takes} == {t.key for t in r.tasks}


def test_the_static_page_is_read_only_and_offline(tmp_path: Path) -> None:
    r = report(take("a", {"mode": "std"}, verdict="rejected", note="<script>alert(1)</script>"))
    html = contact_sheet(r, tmp_path)
    sheet = parse(html)
    assert not [a for _, a in sheet.tags if a.get("data-action") in ("approve", "reject")]
    assert not [tag for tag, _ in sheet.tags if tag == "textarea"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)" not in html
    assert 'name="mvbatch-token"' not in html
    csp = re.search(r'Content-Security-Policy" content="([^"]*)"', html)
    assert csp is not None
    assert "connect-src" not in csp.group(1)  # default-src 'none': no network at all
    assert "default-src 'none'" in csp.group(1)
    # One <script> per allowed hash, and no other script.
    hashes = re.findall(r"'sha256-([^']+)'", csp.group(1))
    assert sorted(hashes) == sorted(
        base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() for s in sheet.scripts
    )
    video = next(a for tag, a in sheet.tags if tag == "video")
    assert video["preload"] == "none"
    assert (video["data-src"] or "").startswith("videos/")
    assert "src" not in video  # the page's script sets it when the card nears the viewport


def test_review_mode_adds_controls_token_and_server_urls(tmp_path: Path) -> None:
    r = report(take("a", {"mode": "std"}, verdict="approved", note="fine"))
    html = contact_sheet(r, tmp_path, ReviewMode(token='t"<k>'))
    sheet = parse(html)
    actions = [a.get("data-action") for tag, a in sheet.tags if tag == "button"]
    assert "approve" in actions
    assert "reject" in actions
    assert [a for tag, a in sheet.tags if tag == "textarea" and a.get("name") == "note"]
    token = next(a for tag, a in sheet.tags if tag == "meta" and a.get("name") == "mvbatch-token")
    assert token["content"] == 't"<k>'
    assert "connect-src 'self'" in html
    video = next(a for tag, a in sheet.tags if tag == "video")
    assert (video["data-src"] or "").startswith("files/videos/")
    assert len(sheet.scripts) == 2


def test_card_fragments_are_the_cards_of_the_page(tmp_path: Path) -> None:
    r = mixed()
    review = ReviewMode("token")
    html = contact_sheet(r, tmp_path, review)
    fragments = card_fragments(r, tmp_path, review)
    assert set(fragments) == {t.key for t in r.tasks}
    for fragment in fragments.values():
        assert fragment in html
        assert fragment.startswith('<figure class="take')
    # A verdict changes the card's HTML and its revision, not the layout.
    first = r.tasks[0]
    judged = replace(r, tasks=(replace(first, verdict="rejected"), *r.tasks[1:]))
    again = card_fragments(judged, tmp_path, review)
    assert again[first.key] != fragments[first.key]
    rev = re.compile(r'data-rev="([0-9a-f]{12})"')
    old_rev, new_rev = rev.search(fragments[first.key]), rev.search(again[first.key])
    assert old_rev is not None
    assert new_rev is not None
    assert old_rev.group(1) != new_rev.group(1)
    assert all(again[k] == fragments[k] for k in fragments if k != first.key)
    assert layout_signature(judged) == layout_signature(r)


def test_the_layout_signature_changes_with_rows_columns_and_takes() -> None:
    base = mixed()
    signature = layout_signature(base)
    assert layout_signature(mixed()) == signature
    assert layout_signature(report(*base.tasks, take("new-shot"))) != signature
    assert (
        layout_signature(report(*base.tasks, take("car", {"mode": "max", "duration": 5})))
        != signature
    )
    # A re-rolled take lands in an existing cell.
    assert (
        layout_signature(report(*base.tasks, take("car", {"mode": "std", "duration": 5}, n=2)))
        != signature
    )


def test_a_sheet_past_its_take_limit_shows_whole_first_rows_and_says_where_the_rest_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `SHEET_TAKES` takes the page stops after the last whole row that fits, says
    so, and still counts every task above the grid; review speaks of the same cards."""
    monkeypatch.setattr(html_module, "SHEET_TAKES", 10)
    shots = [f"shot-{n}" for n in range(6)]
    r = report(*(take(s, {"mode": m}) for s in shots for m in ("std", "pro", "max", "min")))
    page = contact_sheet(r, tmp_path)
    sheet = parse(page)
    assert len(sheet.rows) == 2  # 4 takes a row: a third would make 12
    assert len(sheet.takes) == 8
    assert "Showing the first 2 of 6 shots (8 of 24 takes)" in page
    assert "report.csv" in page
    assert '<div class="v">24</div>' in page  # the Tasks tile counts every task
    g = grid(r)
    assert (g.collapsed, g.shots, g.takes, g.takes_shown) == (True, 6, 24, 8)
    review = ReviewMode("token")
    reviewed = contact_sheet(r, tmp_path, review)
    assert f'data-layout="{layout_signature(r)}"' in reviewed
    fragments = card_fragments(r, tmp_path, review)
    assert set(fragments) == {t.key for t in r.tasks if t.shot in shots[:2]}
    # A first row larger than the limit is still shown, alone.
    monkeypatch.setattr(html_module, "SHEET_TAKES", 3)
    assert len(parse(contact_sheet(r, tmp_path)).rows) == 1
    # Within the limit, nothing is said.
    monkeypatch.setattr(html_module, "SHEET_TAKES", 24)
    assert "Showing the first" not in contact_sheet(r, tmp_path)
