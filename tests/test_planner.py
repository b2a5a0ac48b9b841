"""The planner: documented costs, keys, dedupe, portable aspect ratio, local files."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from mp4_fixtures import write_mp4
from typer.testing import CliRunner

from mvbatch.cli import app
from mvbatch.errors import ManifestError
from mvbatch.plan import manifest, planfile
from mvbatch.plan.mp4 import ProbeResult
from mvbatch.plan.planner import Plan, plan
from mvbatch.plan.pricing import PriceBook

REPO = Path(__file__).resolve().parent.parent
DOCUMENTED = {
    "kling-v2-6": 0.0414,
    "kling-video-o1": 0.0756,
    "kling-v3-omni": 0.0756,
    "kling-v3-motion-control": 0.11574,
    "wan2-6-i2v-flash": 0.0315,
}


def _plan(tmp_path: Path, text: str, **kwargs: object) -> Plan:
    path = tmp_path / "m.toml"
    path.write_text(text, encoding="utf-8")
    return plan(manifest.load(path), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("slug", sorted(DOCUMENTED))
def test_each_documented_example_costs_exactly_what_the_docs_say(slug: str) -> None:
    result = CliRunner().invoke(app, ["plan", str(REPO / "jobs" / f"{slug}.toml"), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["totals"]["tasks"] == 1
    assert document["totals"]["cost_estimate"] == DOCUMENTED[slug]
    (task,) = document["tasks"]
    assert task["cost_estimate"] == DOCUMENTED[slug]
    assert task["price_source"] == "documented"
    assert task["model"] == slug
    assert task["state"] == "new"
    assert set(document) >= {"manifest", "tasks", "totals"}
    assert set(task) >= {"key", "shot", "model", "input", "cost_estimate", "state"}
    assert set(document["totals"]) >= {
        "tasks",
        "cost_estimate",
        "new",
        "in_flight",
        "done",
        "failed",
    }


def test_example_manifests_carry_the_documented_request_inputs() -> None:
    for slug in DOCUMENTED:
        example = json.loads((REPO / "mvbatch/schemas/examples" / f"{slug}.json").read_text())
        planned = plan(manifest.load(REPO / "jobs" / f"{slug}.toml"))
        (task,) = planned.tasks
        sent = task.payload()
        expected = dict(example["request"]["input"])
        if slug == "kling-v3-motion-control":
            # The documented URL is replaced by a local 8 s clip, sent as a data: URI.
            assert sent["input"].pop("video_url").startswith("data:video/mp4;base64,")
            expected.pop("video_url")
        assert sent == {"model": slug, "input": expected}


def test_real_console_script_prints_plan_json() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mvbatch", "plan", str(REPO / "jobs/kling-v2-6.toml"), "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["totals"]["cost_estimate"] == 0.0414


def test_demo_plan_is_consistent() -> None:
    planned = plan(manifest.load(REPO / "jobs/demo.toml"))
    assert len(planned.tasks) == 9
    assert planned.cost_estimate == sum(t.estimate.cost for t in planned.tasks)
    assert len({t.key for t in planned.tasks}) == 9


MATRIX = """
name = "m"
[defaults]
model = "kling-v3-omni"
[defaults.input]
duration = 5
[[shots]]
id = "car"
prompt = "A car"
takes = 2
[shots.matrix]
model = ["kling-v2-6", "kling-v3-omni", "wan2-6-i2v-flash"]
aspect_ratio = ["16:9", "9:16"]
[[shots.matrix.exclude]]
model = "wan2-6-i2v-flash"
aspect_ratio = "9:16"
[[shots.matrix.include]]
model = "wan2-6-i2v-flash"
image_urls = ["https://example.com/car.jpg"]
"""


def test_aspect_ratio_is_portable_across_models(tmp_path: Path) -> None:
    planned = _plan(tmp_path, MATRIX)
    by_model: dict[str, list[dict[str, object]]] = {}
    for task in planned.tasks:
        by_model.setdefault(task.model, []).append(dict(task.input))
    assert {i["size"] for i in by_model["kling-v2-6"]} == {"16:9", "9:16"}
    assert all("aspect_ratio" not in i for i in by_model["kling-v2-6"])
    assert {i["aspect_ratio"] for i in by_model["kling-v3-omni"]} == {"16:9", "9:16"}
    # wan has no aspect setting: dropped with a warning, not sent.
    assert all("aspect_ratio" not in i and "size" not in i for i in by_model["wan2-6-i2v-flash"])
    assert any("aspect_ratio ignored" in str(w) for w in planned.warnings)
    # 2 + 2 + 1 variants (one excluded), 2 takes each.
    assert len(planned.tasks) == 10
    assert sorted({t.take for t in planned.tasks}) == [1, 2]


def test_defaults_merge_under_shots_and_shots_override(tmp_path: Path) -> None:
    planned = _plan(
        tmp_path,
        """
name = "m"
[defaults]
model = "kling-v2-6"
prompt = "default prompt"
[defaults.input]
duration = 10
mode = "std"
[[shots]]
id = "a"
[[shots]]
id = "b"
prompt = "own prompt"
model = "kling-v3-omni"
[shots.input]
duration = 5
""",
    )
    a, b = planned.tasks
    assert (a.model, dict(a.input)) == (
        "kling-v2-6",
        {"duration": 10, "mode": "std", "prompt": "default prompt"},
    )
    assert (b.model, dict(b.input)) == (
        "kling-v3-omni",
        {"duration": 5, "mode": "std", "prompt": "own prompt"},
    )


def test_identical_tasks_in_two_shots_are_planned_once(tmp_path: Path) -> None:
    planned = _plan(
        tmp_path,
        """
name = "m"
[[shots]]
id = "first"
model = "kling-v2-6"
prompt = "Same"
[[shots]]
id = "second"
model = "kling-v2-6"
input = { prompt = "Same" }
""",
    )
    (task,) = planned.tasks
    assert task.shots == ("first", "second")
    assert planned.duplicates == 1


def test_key_depends_on_file_content_not_its_name(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8 image one")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 image one")
    text = """
name = "m"
[[shots]]
id = "s"
model = "wan2-6-i2v-flash"
input = {{ image_urls = ["@{name}"] }}
"""
    key_a = _plan(tmp_path, text.format(name="a.jpg")).tasks[0].key
    key_b = _plan(tmp_path, text.format(name="b.jpg")).tasks[0].key
    assert key_a == key_b
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 image two")
    assert _plan(tmp_path, text.format(name="b.jpg")).tasks[0].key != key_a
    task = _plan(tmp_path, text.format(name="a.jpg")).tasks[0]
    assert task.payload()["input"]["image_urls"][0].startswith("data:image/jpeg;base64,")
    assert task.public_input()["image_urls"][0].startswith("@a.jpg#sha256=")


def test_at_sign_in_a_prompt_is_text(tmp_path: Path) -> None:
    planned = _plan(
        tmp_path,
        """
name = "m"
[[shots]]
id = "s"
model = "kling-v2-6"
prompt = "@john waves at the camera"
""",
    )
    assert planned.tasks[0].input["prompt"] == "@john waves at the camera"


MOTION = """
name = "m"
[[shots]]
id = "dance"
model = "kling-v3-motion-control"
[shots.input]
image_url = "https://example.com/a.png"
video_url = "{video}"
character_orientation = "{orientation}"
mode = "std"
"""


def test_motion_control_is_priced_by_the_local_reference_length(tmp_path: Path) -> None:
    write_mp4(tmp_path / "ref.mp4", 6)
    from mvbatch.commands.planning import reference_probe, url_client

    with url_client() as client:
        planned = _plan(
            tmp_path,
            MOTION.format(video="@ref.mp4", orientation="image"),
            probe=reference_probe(client),
        )
    assert planned.tasks[0].estimate.cost == Decimal("0.086805")  # 6 s x 0.0144675
    assert not planned.tasks[0].estimate.upper_bound


def test_motion_control_reference_too_long_for_orientation(tmp_path: Path) -> None:
    write_mp4(tmp_path / "ref.mp4", 12)
    from mvbatch.commands.planning import reference_probe, url_client

    with url_client() as client, pytest.raises(ManifestError) as caught:
        _plan(
            tmp_path,
            MOTION.format(video="@ref.mp4", orientation="image"),
            probe=reference_probe(client),
        )
    assert "12.000 s long" in caught.value.message
    assert "3-10 s" in caught.value.message
    with url_client() as client:
        planned = _plan(
            tmp_path,
            MOTION.format(video="@ref.mp4", orientation="video"),
            probe=reference_probe(client),
        )
    assert planned.tasks[0].estimate.seconds == Decimal("12.000")


@pytest.mark.parametrize(("orientation", "seconds"), [("image", 10), ("video", 30)])
def test_unreadable_reference_is_priced_as_an_upper_bound(
    tmp_path: Path, orientation: str, seconds: int
) -> None:
    planned = _plan(
        tmp_path,
        MOTION.format(video="https://example.invalid/v.mp4", orientation=orientation),
        probe=lambda _ref: ProbeResult(None, detail="unreachable"),
    )
    estimate = planned.tasks[0].estimate
    assert estimate.upper_bound
    assert estimate.seconds == seconds
    assert estimate.cost == Decimal("0.0144675") * seconds
    assert any("upper bound" in str(w) and "unreachable" in str(w) for w in planned.warnings)


def test_learned_rates_replace_assumed_ones(tmp_path: Path) -> None:
    text = (
        'name = "m"\n[[shots]]\nid = "s"\nmodel = "kling-v2-6"\nprompt = "p"\n'
        'input = { mode = "pro" }\n'
    )
    assumed = _plan(tmp_path, text).tasks[0].estimate
    assert assumed.source == "assumed"
    learned = (
        _plan(
            tmp_path,
            text,
            prices=PriceBook({'kling-v2-6 {"audio":false,"mode":"pro"}': Decimal("0.0123")}),
        )
        .tasks[0]
        .estimate
    )
    assert (learned.source, learned.cost) == ("learned", Decimal("0.0615"))


def test_plan_file_round_trip_and_staleness(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(MATRIX, encoding="utf-8")
    planned = plan(manifest.load(path))
    out = tmp_path / "reviewed" / "PLAN.toml"
    planfile.write(planned, out)
    assert planfile.is_plan_file(out)
    assert not planfile.is_plan_file(path)
    manifest_path, sha, keys = planfile.read(out)
    assert manifest_path == path.resolve()
    planfile.check_unchanged(out, planned, sha, keys)  # unchanged: no error
    path.write_text(MATRIX.replace("A car", "A red car"), encoding="utf-8")
    with pytest.raises(ManifestError, match="has changed since this plan was written"):
        planfile.check_unchanged(out, plan(manifest.load(path)), sha, keys)


def test_plan_out_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "PLAN.toml"
    result = CliRunner().invoke(app, ["plan", str(REPO / "jobs/demo.toml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "9 tasks" in result.output
    _, _, keys = planfile.read(out)
    assert len(keys) == 9


def test_renaming_a_file_to_another_media_type_changes_the_key(tmp_path: Path) -> None:
    # Same bytes, another type: the data: URI differs, so the key must too.
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8 same bytes")
    (tmp_path / "a.png").write_bytes(b"\xff\xd8 same bytes")
    text = 'name = "m"\n[[shots]]\nid = "s"\nmodel = "wan2-6-i2v-flash"\n'
    jpg = _plan(tmp_path, text + 'input = { image_urls = ["@a.jpg"] }\n').tasks[0]
    png = _plan(tmp_path, text + 'input = { image_urls = ["@a.png"] }\n').tasks[0]
    assert jpg.key != png.key
