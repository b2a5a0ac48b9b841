"""`mvbatch export MANIFEST DEST [--approved]` (SPEC §9): the takes, verified, for an editor.

One real simulated run (`mvbatch run`, in a subprocess, the simulator at
speed 0) per module; verdicts are given through the ledger, as `mvbatch
review` gives them; each test exports from its own copy of that run's
folders, with the real CLI.
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
from decimal import Decimal
from pathlib import Path
from urllib.parse import unquote, urlparse

import opentimelineio as otio
import pytest
from run_helpers import cli, cli_env

from mvbatch.downloads.naming import report_folder
from mvbatch.ledger import Output, open_ledger
from mvbatch.report.export import SHOTS_COLUMNS, file_names, take_names
from mvbatch.report.model import TaskEntry

pytestmark = pytest.mark.slow

# Shots not in alphabetical order: the timeline must follow the manifest.
MANIFEST = """
name = "cut"

[[shots]]
id = "zoom"
model = "kling-v2-6"
prompt = "A slow zoom through neon rain"
[shots.input]
duration = 5
aspect_ratio = "16:9"
[shots.matrix]
mode = ["std", "pro"]

[[shots]]
id = "alley"
model = "kling-v2-6"
prompt = "An alley at night, steam rising"
takes = 2
[shots.input]
duration = 10
mode = "std"
"""
NOTE = 'Use this, "really", the end\nsecond line | <b onclick=alert(1)>bold</b>'
ZOOM_STD = "zoom_kling-v2-6_std_v1.mp4"
ZOOM_PRO = "zoom_kling-v2-6_pro_v1.mp4"
ALLEY_1 = "alley_kling-v2-6_v1.mp4"
ALLEY_2 = "alley_kling-v2-6_v2.mp4"
APPROVED = [ZOOM_PRO, ALLEY_2]  # in shot order
ALL = {ZOOM_STD, ZOOM_PRO, ALLEY_1, ALLEY_2}


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with cut.toml, run on the simulator, and verdicts given on three takes."""
    folder = tmp_path_factory.mktemp("ran")
    (folder / "cut.toml").write_text(MANIFEST, encoding="utf-8")
    run = cli(["run", "cut.toml"], env(folder), folder)
    assert run.returncode == 0, run.stdout + run.stderr
    with open_ledger(folder / "state") as ledger:
        rows = {(r.shot, r.variant.get("mode"), r.take): r.key for r in ledger.tasks("sim", "cut")}
        assert len(rows) == 4
        ledger.record_verdict("sim", rows[("zoom", "pro", 1)], "approved", NOTE)
        ledger.record_verdict("sim", rows[("zoom", "std", 1)], "approved", None)
        ledger.record_verdict("sim", rows[("zoom", "std", 1)], "rejected", "too dark")
        ledger.record_verdict("sim", rows[("alley", None, 2)], "approved", None)
    return folder


@pytest.fixture
def work(ran: Path, tmp_path: Path) -> Path:
    """This test's own copy of the run's folders."""
    copy = tmp_path / "work"
    shutil.copytree(ran, copy)
    return copy


def env(folder: Path) -> dict[str, str]:
    return cli_env(folder, key=None, MVBATCH_SIM_SPEED="0")


def export(work: Path, *args: str) -> tuple[int, str]:
    result = cli(["export", "cut.toml", *args], env(work), work)
    return result.returncode, result.stdout + result.stderr


def recorded(work: Path) -> dict[str, tuple[str, Output]]:
    """The ledger's outputs by export name: (task key, output)."""
    names = {
        (("zoom", "std"), 1): ZOOM_STD,
        (("zoom", "pro"), 1): ZOOM_PRO,
        (("alley", None), 1): ALLEY_1,
        (("alley", None), 2): ALLEY_2,
    }
    found = {}
    with open_ledger(work / "state") as ledger:
        for row in ledger.tasks("sim", "cut"):
            [output] = ledger.outputs("sim", row.key)
            found[names[((row.shot, row.variant.get("mode")), row.take)]] = (row.key, output)
    return found


def originals(work: Path) -> Path:
    return report_folder(work / "outputs", "cut")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def videos(dest: Path) -> set[str]:
    return {p.name for p in dest.iterdir() if p.suffix == ".mp4"}


def shot_list(dest: Path) -> list[dict[str, str]]:
    text = (dest / "shots.csv").read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    assert tuple(reader.fieldnames or ()) == SHOTS_COLUMNS
    return list(reader)


def clips(dest: Path) -> list[otio.schema.Clip]:
    timeline = otio.adapters.read_from_file(str(dest / "timeline.otio"))
    [track] = timeline.video_tracks()
    return list(track.find_clips())


# ------------------------------------------------------------ --approved


def test_approved_takes_are_exported_verified_with_a_shot_list_and_a_timeline(
    work: Path,
) -> None:
    dest = work / "edit" / "day1"  # does not exist yet
    code, output = export(work, "edit/day1", "--approved")
    assert code == 0, output
    assert "2 approved take file(s) exported" in output
    assert str(dest.resolve() / "timeline.otio") in output
    assert videos(dest) == set(APPROVED)
    ledger = recorded(work)
    for name in APPROVED:
        assert sha256(dest / name) == ledger[name][1].sha256

    rows = shot_list(dest)
    assert [r["file"] for r in rows] == APPROVED
    zoom, alley = rows
    assert (zoom["shot"], zoom["variant"], zoom["take"], zoom["model"]) == (
        "zoom",
        "mode=pro",
        "1",
        "kling-v2-6",
    )
    assert zoom["prompt"] == "A slow zoom through neon rain"
    assert (zoom["verdict"], zoom["note"]) == ("approved", NOTE)  # commas, quotes, newline
    assert zoom["sha256"] == ledger[ZOOM_PRO][1].sha256
    assert Decimal(zoom["cost"]) > 0
    assert (alley["shot"], alley["take"], alley["verdict"], alley["note"]) == (
        "alley",
        "2",
        "approved",
        "",
    )

    found = clips(dest)
    assert [c.name for c in found] == [Path(n).stem for n in APPROVED]  # shot order
    assert [c.source_range.duration.to_frames() for c in found] == [5 * 24, 10 * 24]
    assert all(c.source_range.duration.rate == 24 for c in found)
    for clip, name in zip(found, APPROVED, strict=True):
        url = urlparse(clip.media_reference.target_url)
        assert url.scheme == "file"
        assert Path(unquote(url.path)) == dest.resolve() / name
        assert clip.media_reference.available_range.duration.to_frames() > 0
        assert clip.metadata["mvbatch"]["sha256"] == ledger[name][1].sha256
    assert found[0].metadata["mvbatch"]["note"] == NOTE


def test_without_approved_every_downloaded_take_and_the_timeline_keeps_the_approved(
    work: Path,
) -> None:
    code, output = export(work, "all")
    assert code == 0, output
    dest = work / "all"
    assert videos(dest) == ALL
    ledger = recorded(work)
    for name in ALL:
        assert sha256(dest / name) == ledger[name][1].sha256
    rows = shot_list(dest)
    assert [r["file"] for r in rows] == [ZOOM_STD, ZOOM_PRO, ALLEY_1, ALLEY_2]
    assert [r["verdict"] for r in rows] == ["rejected", "approved", "", "approved"]
    assert rows[0]["note"] == "too dark"
    assert [c.name for c in clips(dest)] == [Path(n).stem for n in APPROVED]
    # Exporting copies: the originals are where they were, as they were.
    for name, (_, output_row) in ledger.items():
        assert output_row.path is not None
        original = originals(work) / output_row.path
        assert sha256(original) == output_row.sha256, name


# ---------------------------------------------------- what is not exported


def test_a_changed_or_missing_original_is_not_exported_and_is_said(work: Path) -> None:
    ledger = recorded(work)
    tampered = originals(work) / str(ledger[ZOOM_PRO][1].path)
    data = bytearray(tampered.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte different
    tampered.write_bytes(bytes(data))
    gone = originals(work) / str(ledger[ALLEY_2][1].path)
    gone.unlink()

    code, output = export(work, "dest", "--approved")
    assert code == 1, output  # a partial result
    dest = work / "dest"
    assert videos(dest) == set()
    assert not [p for p in dest.iterdir() if p.name.endswith(".tmp")]  # nothing half-copied
    assert f"not exported: {ZOOM_PRO}" in output
    assert "changed since it was downloaded" in output
    assert f"not exported: {ALLEY_2}" in output
    assert "is gone" in output
    assert "mvbatch report cut.toml" in output
    assert shot_list(dest) == []
    assert clips(dest) == []

    code, output = export(work, "dest")
    assert code == 1, output
    assert videos(dest) == {ZOOM_STD, ALLEY_1}  # the intact ones still go
    assert tampered.read_bytes() == bytes(data)  # the original is not touched


def test_takes_not_downloaded_yet_are_said_with_the_command_that_fetches_them(
    tmp_path: Path,
) -> None:
    (tmp_path / "cut.toml").write_text(MANIFEST, encoding="utf-8")
    run = cli(["run", "cut.toml", "--no-download"], env(tmp_path), tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    code, output = export(tmp_path, "dest")
    assert code == 1, output
    assert output.count("not downloaded yet: `mvbatch report cut.toml` downloads it") == 4
    report = cli(["report", "cut.toml"], env(tmp_path), tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    code, output = export(tmp_path, "dest")
    assert code == 0, output
    assert videos(tmp_path / "dest") == ALL


def test_nothing_approved_exports_nothing_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "cut.toml").write_text(MANIFEST, encoding="utf-8")
    run = cli(["run", "cut.toml"], env(tmp_path), tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    code, output = export(tmp_path, "dest", "--approved")
    assert code == 1, output
    assert "no take is approved yet" in output
    assert videos(tmp_path / "dest") == set()


# ------------------------------------------------------- idempotent, safe


def test_exporting_again_copies_nothing_new_and_repairs_a_changed_copy(work: Path) -> None:
    code, output = export(work, "dest")
    assert code == 0, output
    dest = work / "dest"
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dest.iterdir()}
    listing = (dest / "shots.csv").read_text()

    code, output = export(work, "dest")
    assert code == 0, output
    assert "(0 copied, 4 already there" in output
    for name in ALL:
        info = (dest / name).stat()
        assert (info.st_ino, info.st_mtime_ns) == before[name], name
    assert (dest / "shots.csv").read_text() == listing
    assert {p.name for p in dest.iterdir()} == set(before)

    (dest / ALLEY_1).write_bytes(b"edited by someone")
    code, output = export(work, "dest")
    assert code == 0, output
    assert "(1 copied, 3 already there" in output
    assert sha256(dest / ALLEY_1) == recorded(work)[ALLEY_1][1].sha256


def test_dest_inside_the_report_folder_is_refused(work: Path) -> None:
    for inside in ("outputs/cut", "outputs/cut/videos", "outputs/cut/edit"):
        code, output = export(work, inside)
        assert code == 2, output
        assert "inside the report folder" in output
    assert not (originals(work) / "edit").exists()
    assert not (originals(work) / "shots.csv").exists()


# ------------------------------------------------------------------ names


def entry(
    key: str, shot: str, variant: dict[str, object], take: int = 1, **more: object
) -> TaskEntry:
    return TaskEntry(
        key,
        shot,
        (shot,),
        tuple(variant.items()),
        take,
        str(more.pop("model", "kling-v2-6")),
        {"prompt": "p"},
        "succeeded",
        Decimal("0.1"),
        "class",
        "documented",
        False,
        **more,
    )


def test_names_are_safe_unique_and_stable() -> None:
    tasks = [
        entry("mvb1-" + "a" * 32, "car-rain", {"mode": "pro", "duration": 5}),
        entry("mvb1-" + "b" * 32, "car-rain", {"mode": "pro", "duration": 5}, in_plan=False),
        entry("mvb1-" + "c" * 32, "../../etc/passwd", {"aspect_ratio": "9:16"}),
        entry("mvb1-" + "d" * 32, "Shot", {"audio": True, "seed": 7}),
        entry("mvb1-" + "e" * 32, "shot", {"audio": False, "seed": 7}),
        entry("mvb1-" + "f" * 32, "SHOT", {"audio": False, "seed": 7}, take=1),
        entry("mvb1-" + "1" * 32, "sky", {"model": "kling-video-o1", "mode": "pro"}),
        entry("mvb1-" + "2" * 32, "con", {"prompt": "x" * 300 + "<|>\n"}),
    ]
    names = take_names(tasks)
    assert names[tasks[0].key] == "car-rain_kling-v2-6_pro_5s_v1"  # the planned one keeps it
    assert names[tasks[1].key] == "car-rain_kling-v2-6_pro_5s_v1_bbbbbbbb"
    assert names[tasks[2].key] == "etc-passwd_kling-v2-6_9x16_v1"
    assert names[tasks[3].key] == "Shot_kling-v2-6_audio_seed7_v1"
    # "shot" and "SHOT" would be one file on a case-insensitive disk: both get their key.
    assert names[tasks[4].key] == "shot_kling-v2-6_no-audio_seed7_v1_eeeeeeee"
    assert names[tasks[5].key] == "SHOT_kling-v2-6_no-audio_seed7_v1_ffffffff"
    assert names[tasks[6].key] == "sky_kling-video-o1_pro_v1"  # the model axis, once
    long = names[tasks[7].key]
    assert long.startswith("_con_kling-v2-6_xxxx")  # CON is a device name on Windows
    assert long.endswith("_v1")
    assert len(long.encode()) < 120
    assert len({n.casefold() for n in names.values()}) == len(tasks)
    for name in names.values():
        assert not {"/", "\\", ".", ":", "<", "|", "\n"} & set(name)
    assert take_names(list(reversed(tasks))) == names  # not an artefact of the order
    # A task with several outputs: one file each, numbered after the take.
    assert file_names("sky_kling-video-o1_pro_v1", 2) == [
        "sky_kling-video-o1_pro_v1_1.mp4",
        "sky_kling-video-o1_pro_v1_2.mp4",
    ]
    assert file_names("sky_kling-video-o1_pro_v1", 1) == ["sky_kling-video-o1_pro_v1.mp4"]
