"""A corpus of bad manifests: every user mistake exits 2 with a located message, never a traceback.

Each file in tests/manifests/bad/ starts with comment lines that say what its message must hold:

    # expect: <substring>   the output must contain it (file, shot, field, expected value)
    # reject: <substring>   the output must not contain it
    # xfail: <reason>       mvbatch prints a wanting message today; the test states the right one

The manifests run through the real command line (`mvbatch plan FILE`), in-process with typer's
CliRunner, from a scratch folder holding a copy of the manifest and its media: the static files
of tests/manifests/bad/media/ plus the ones made here (MP4 reference clips of a given length, and
a sparse 11 MB image). Three of them also run through `python -m mvbatch` in a real process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from mp4_fixtures import make_mp4
from typer.testing import CliRunner

from mvbatch.cli import app
from mvbatch.errors import ManifestError

BAD = Path(__file__).parent / "manifests" / "bad"
RUNTIME_MP4_SECONDS = {"ref-2s.mp4": 2, "ref-5s.mp4": 5, "ref-12s.mp4": 12}
HUGE_IMAGE = ("huge.png", 11 * 1024 * 1024)  # over the 10 MB data: URI cap for images
NEVER = ("Traceback", "internal error", "this is a bug in mvbatch")
_DIRECTIVE = re.compile(r"^# (expect|reject|xfail): (.*)$")


@dataclass(frozen=True)
class Case:
    name: str  # the manifest's file name, as given on the command line
    kind: str  # "file" (from the corpus), "absent" or "directory"
    expect: tuple[str, ...]
    reject: tuple[str, ...] = ()
    xfail: str | None = None

    def param(self) -> object:
        marks = [pytest.mark.xfail(strict=True, reason=self.xfail)] if self.xfail else []
        return pytest.param(self, id=self.name, marks=marks)


def _read_case(path: Path) -> Case:
    # Decoded leniently: not-utf8.toml is not UTF-8 on purpose; its directives are ASCII.
    text = path.read_bytes().decode("utf-8", errors="replace")
    found: dict[str, list[str]] = {"expect": [], "reject": [], "xfail": []}
    for line in text.splitlines():
        match = _DIRECTIVE.match(line)
        if match:
            found[match.group(1)].append(match.group(2))
    return Case(
        path.name,
        "file",
        tuple(found["expect"]),
        tuple(found["reject"]),
        "; ".join(found["xfail"]) or None,
    )


CORPUS = [_read_case(path) for path in sorted(BAD.glob("*.toml"))]
SPECIAL = [
    Case("missing-manifest.toml", "absent", ("missing-manifest.toml", "file not found")),
    Case(
        "a-directory.toml",
        "directory",
        ("a-directory.toml", "cannot read the file", "Is a directory"),
    ),
]
CASES = CORPUS + SPECIAL
BY_NAME = {case.name: case for case in CASES}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch folder as the working directory, with state and outputs beside it."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("MVBATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MVBATCH_OUTPUT_DIR", str(tmp_path / "outputs"))
    for name in ("MINDVIDEO_API_KEY", "MINDVIDEO_BASE_URL", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(work)  # also keeps a developer's .env out of the settings
    return work


def _stage(case: Case, work: Path) -> str:
    """Put the case's manifest (and the media it may name) in `work`; return the argument."""
    media = work / "media"
    shutil.copytree(BAD / "media", media)
    for name, seconds in RUNTIME_MP4_SECONDS.items():
        (media / name).write_bytes(make_mp4(seconds))
    with (media / HUGE_IMAGE[0]).open("wb") as handle:
        handle.truncate(HUGE_IMAGE[1])  # sparse: costs no disk and no time
    if case.kind == "file":
        shutil.copyfile(BAD / case.name, work / case.name)
    elif case.kind == "directory":
        (work / case.name).mkdir()
    return case.name


def _check_message(case: Case, output: str) -> None:
    for never in NEVER:
        assert never not in output, f"{case.name}: {never!r} in the output:\n{output}"
    assert case.name in output, f"{case.name}: the message does not name the file:\n{output}"
    missing = [text for text in case.expect if text not in output]
    assert not missing, f"{case.name}: missing {missing} in the output:\n{output}"
    present = [text for text in case.reject if text in output]
    assert not present, f"{case.name}: unwanted {present} in the output:\n{output}"


def _plan(case: Case, work: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["plan", _stage(case, work)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{case.name}: the CLI raised {result.exception!r}")
    return result.exit_code, result.stdout, result.stderr


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 35
    without = [case.name for case in CORPUS if not case.expect]
    assert not without, f"corpus files without an '# expect:' line: {without}"


@pytest.mark.parametrize("case", [case.param() for case in CASES])
def test_bad_manifest_exits_2_with_a_located_message(case: Case, workdir: Path) -> None:
    code, stdout, stderr = _plan(case, workdir)
    output = stdout + stderr
    assert code == 2, f"{case.name}: exit code {code}, expected 2:\n{output}"
    assert stderr.startswith("error: "), f"{case.name}: the error is not on stderr:\n{output}"
    assert not stdout.strip(), f"{case.name}: a failed plan printed on stdout:\n{stdout}"
    _check_message(case, output)
    crash_logs = list((workdir.parent / "state").glob("logs/crash-*"))
    assert not crash_logs, f"{case.name}: a crash log was written: {crash_logs}"


@pytest.mark.parametrize(
    ("name", "count"), [("many-problems-structure.toml", 3), ("many-problems-planning.toml", 3)]
)
def test_every_problem_is_reported(name: str, count: int, workdir: Path) -> None:
    code, _, stderr = _plan(BY_NAME[name], workdir)
    assert code == 2
    assert stderr.splitlines()[0] == f"error: {count} problems in the manifest:"
    lines = [line for line in stderr.splitlines()[1:] if line.strip()]
    assert len(lines) == count, stderr
    assert all(line.startswith(f"  {name}") for line in lines), stderr
    assert len(set(lines)) == count, stderr


@pytest.mark.parametrize(
    "name",
    [
        "toml-unclosed-string.toml",
        "model-unknown.toml",
        "motion-reference-too-long.toml",
        "nesting-too-deep-tables.toml",
    ],
)
def test_real_process_exits_2_without_traceback(name: str, workdir: Path) -> None:
    case = BY_NAME[name]
    argument = _stage(case, workdir)
    done = subprocess.run(
        [sys.executable, "-m", "mvbatch", "plan", argument],
        cwd=workdir,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert done.stderr.startswith("error: "), output
    _check_message(case, output)


# ------------------------------------------------------------------ too big, too deep
#
# Generated here rather than kept in the corpus: each is hundreds of kilobytes.

SHOT = 'name = "deep"\n\n[[shots]]\nid = "deep"\nmodel = "kling-v2-6"\nprompt = "p"\n'
DEPTH_LIMIT = (
    "arrays and tables nested more than 32 levels deep, counted from the top of the file "
    "(the most a manifest may hold)"
)
GENERATED = {
    # tomllib recurses once per level: these are too deep for it to read at all.
    "arrays-100k-deep.toml": SHOT + "[shots.input]\nx = " + "[" * 100_000 + "]" * 100_000 + "\n",
    "inline-tables-100k-deep.toml": SHOT
    + "[shots.input]\nx = "
    + "{a = " * 100_000
    + "1"
    + "}" * 100_000
    + "\n",
    # Dotted keys are read without recursion: the depth limit itself refuses these.
    "table-header-5000-keys.toml": SHOT + "[shots.input." + ".".join(["k"] * 5000) + "]\nv = 1\n",
    "dotted-key-5000-keys.toml": SHOT + "[shots.input]\n" + ".".join(["k"] * 5000) + " = 1\n",
}
GENERATED_ERRORS = {
    "arrays-100k-deep.toml": f"error: 1 problem in the manifest:\n  arrays-100k-deep.toml:8: "
    f"{DEPTH_LIMIT}\n",
    "inline-tables-100k-deep.toml": "error: 1 problem in the manifest:\n  "
    f"inline-tables-100k-deep.toml:8: {DEPTH_LIMIT}\n",
    "table-header-5000-keys.toml": "error: 1 problem in the manifest:\n  "
    f"table-header-5000-keys.toml, shot 'deep', field 'input.k': {DEPTH_LIMIT}\n",
    "dotted-key-5000-keys.toml": "error: 1 problem in the manifest:\n  "
    f"dotted-key-5000-keys.toml, shot 'deep', field 'input.k': {DEPTH_LIMIT}\n",
}


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_a_manifest_nested_too_deep_is_a_located_error(name: str, workdir: Path) -> None:
    (workdir / name).write_text(GENERATED[name], encoding="utf-8")
    result = CliRunner().invoke(app, ["plan", name])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{name}: the CLI raised {result.exception!r}")
    assert result.exit_code == 2, result.output
    assert result.stderr == GENERATED_ERRORS[name]
    assert not result.stdout


def test_a_reviewed_plan_file_nested_too_deep_is_a_located_error(workdir: Path) -> None:
    # `run PLAN.toml` reads the plan file through the same reader.
    (workdir / "plan.toml").write_text(
        'format = "mvbatch-plan/1"\ntasks = ' + "[" * 100_000 + "]" * 100_000 + "\n"
    )
    result = CliRunner().invoke(app, ["status", "plan.toml"])
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: 1 problem in the manifest:\n  plan.toml:2: {DEPTH_LIMIT}\n"


def test_ten_million_combinations_are_refused_with_the_count_in_a_real_process(
    workdir: Path,
) -> None:
    case = BY_NAME["matrix-too-large.toml"]
    done = subprocess.run(
        [sys.executable, "-m", "mvbatch", "run", _stage(case, workdir)],
        cwd=workdir,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "error: 1 problem in the manifest:\n  matrix-too-large.toml, shot 'everything', field "
        "'matrix': the matrix expands to 10,000,000 combinations × 1 take = 10,000,000 tasks, "
        "more than the 200,000 one manifest may plan; split it into several manifests\n"
    )
    assert not (workdir.parent / "state" / "ledger.sqlite").exists()


def test_the_task_limit_counts_every_shot_before_any_is_expanded(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mvbatch.plan import manifest, matrix, planner

    monkeypatch.setattr(planner, "MAX_TASKS", 12)
    expanded: list[int] = []
    real_expand = matrix.expand
    monkeypatch.setattr(
        matrix, "expand", lambda *a, **k: expanded.append(1) or real_expand(*a, **k)
    )
    text = (
        'name = "limit"\n[defaults]\nmodel = "kling-v2-6"\nprompt = "p"\ntakes = 2\n'
        '[defaults.input]\nmode = "std"\nsize = "16:9"\n'
        '[[shots]]\nid = "a"\n[shots.matrix]\nduration = [5, 10]\ncfg_scale = [0.1, 0.2, 0.3]\n'
        '[[shots]]\nid = "b"\n[shots.input]\nduration = 5\n'
    )
    (workdir / "limit.toml").write_text(text)
    loaded = manifest.load(workdir / "limit.toml")
    with pytest.raises(ManifestError) as refused:
        planner.plan(loaded)
    assert str(refused.value) == (
        "1 problem in the manifest:\n  limit.toml: the shots ask for 14 tasks in all, more "
        "than the 12 one manifest may plan; the largest, shot 'a', asks for 12 (6 combinations "
        "× 2 takes); split it into several manifests"
    )
    assert not expanded
    monkeypatch.setattr(planner, "MAX_TASKS", 14)
    assert len(planner.plan(loaded).tasks) == 14


def test_a_matrix_too_intricate_to_count_is_refused_by_its_upper_bound(workdir: Path) -> None:
    lines = [
        'name = "intricate"',
        "[[shots]]",
        'id = "knot"',
        'model = "kling-v2-6"',
        'prompt = "p"',
        "[shots.matrix]",
        *(f"x{i} = [0, 1]" for i in range(30)),
    ]
    for i in range(29):
        lines += ["[[shots.matrix.exclude]]", f"x{i} = 0", "x29 = 1"]
    (workdir / "intricate.toml").write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["plan", "intricate.toml"])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "error: 1 problem in the manifest:\n  intricate.toml, shot 'knot', field 'matrix': the "
        "matrix expands to up to 1,073,741,824 combinations (too intricate to count) × 1 take "
        "= 1,073,741,824 tasks, more than the 200,000 one manifest may plan; split it into "
        "several manifests\n"
    )
