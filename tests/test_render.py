"""How a plan looks: `plan --json` written as a stream, and the table of a large plan."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console, RenderableType
from run_helpers import invoke

from mvbatch.commands.planning import build_plan
from mvbatch.settings import Settings
from mvbatch.ui import render
from mvbatch.ui.terminal import RedactingStream

SHOT = """
[[shots]]
id = "shot-{n:04d}"
model = "kling-v2-6"
prompt = "Shot {n}: a silver car drives through neon rain"
takes = {takes}
[shots.matrix]
mode = ["std", "pro"]
duration = [5, 10]
"""

PLAN_KEYS = ["manifest", "tasks", "totals", "warnings"]
TASK_KEYS = [
    "key",
    "shot",
    "model",
    "input",
    "cost_estimate",
    "state",
    "shots",
    "variant",
    "take",
    "price_source",
    "price_class",
    "upper_bound",
    "rerolled_from",
]
TOTALS_KEYS = [
    "tasks",
    "cost_estimate",
    "new",
    "in_flight",
    "done",
    "failed",
    "max_usd",
    "price_sources",
    "duplicates",
]


def write_manifest(folder: Path, shots: int, *, takes: int = 1) -> Path:
    """`shots` shots of 4 variants; every 7th shot has 3 takes, so some cost more."""
    text = 'name = "wide"\n[budget]\nmax_usd = 100000\n' + "".join(
        SHOT.format(n=n, takes=3 if n % 7 == 3 else takes) for n in range(shots)
    )
    path = folder / "wide.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MVBATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MVBATCH_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.delenv("MINDVIDEO_API_KEY", raising=False)
    return Settings(MVBATCH_STATE_DIR=tmp_path / "state", MVBATCH_OUTPUT_DIR=tmp_path / "outputs")


def text_of(renderable: RenderableType) -> str:
    console = Console(file=io.StringIO(), width=200, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_plan_json_is_written_as_a_stream_of_the_documented_shape(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`plan --json` writes its document as it is produced, in many small writes, and the
    writes parse to exactly the document (`render.plan_document`), keys in contract order."""
    manifest = write_manifest(tmp_path, 300)  # 1,544 tasks
    writes: list[int] = []
    write = RedactingStream.write

    def recording(self: RedactingStream, text: str) -> int:
        writes.append(len(text))
        return write(self, text)

    monkeypatch.setattr(RedactingStream, "write", recording)
    result = invoke(["plan", str(manifest), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    expected = render.plan_document(build_plan(manifest, settings, "sim"), {})
    assert document == json.loads(json.dumps(expected))
    assert list(document) == PLAN_KEYS
    assert list(document["tasks"][0]) == TASK_KEYS
    assert list(document["totals"]) == TOTALS_KEYS
    assert document["totals"]["tasks"] == len(document["tasks"]) == 1_544
    # Streamed: many writes, none of them near the whole document.
    assert len(writes) >= 1_544 // render.CHUNK_TASKS
    assert max(writes) < sum(writes) / 4


def test_a_plan_without_tasks_is_still_whole_json(settings: Settings) -> None:
    plan = build_plan(write_manifest(settings.state_dir.parent, 1), settings, "sim")
    empty = replace(plan, tasks=())
    text = "".join(render.plan_json_chunks(empty, {}))
    assert json.loads(text) == json.loads(json.dumps(render.plan_document(empty, {})))
    assert json.loads(text)["tasks"] == []


def test_a_plan_of_many_shots_shows_the_most_expensive_and_where_the_rest_are(
    tmp_path: Path, settings: Settings
) -> None:
    plan = build_plan(write_manifest(tmp_path, render.PLAN_SHOTS + 50), settings, "sim")
    text = text_of(render.plan_view(plan, {}))
    rows = [line for line in text.splitlines() if "shot-" in line]
    assert len(rows) == render.TOP_SHOTS
    # Shots with 3 takes cost the most: they are the ones listed, in manifest order.
    expensive = [f"shot-{n:04d}" for n in range(render.PLAN_SHOTS + 50) if n % 7 == 3]
    assert [row.split()[1] for row in rows] == expensive[: render.TOP_SHOTS]
    assert f"the {render.TOP_SHOTS} most expensive of {render.PLAN_SHOTS + 50} shots" in text
    hidden = render.PLAN_SHOTS + 50 - render.TOP_SHOTS
    assert f"… {hidden} other shots" in text
    assert f"{hidden} shots are not listed above" in text
    assert "--json" in text
    # The totals still count every task.
    assert f"{len(plan.tasks)} tasks, estimated" in text
