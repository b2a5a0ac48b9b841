"""Nothing a server, a disk or a second process does can overspend, leak the key, hang or crash.

Each test drives the real CLI (`python -m mvbatch run MANIFEST --yes`, a
subprocess with a hard timeout) against `hostile_server.HostileServer` with
one named misbehaviour, or against a broken configuration, and checks what a
user cares about, the same way for every behaviour (`check`):

    (a) no traceback and no "internal error" in stdout or stderr, no crash log;
    (b) the run ended: the subprocess timeout (RUN_TIMEOUT) was not hit;
    (c) no double charge: the server charged each idempotency key, and each
        payload, at most once;
    (d) the API key (a distinctive `sk-hostile-<hex>`) is nowhere: not in
        stdout or stderr, nor in any file under the state folder (the ledger
        and its WAL, the logs) or the output folder (reports, videos);
    (e) what the server charged stays within the cap, where one is set;
    (f) the exit code is the one the test documents for that behaviour.

Every problem found is listed in one failure, with the tail of the output, so
one run says everything that is wrong with a behaviour. Durations are not
asserted: only that the run ends within RUN_TIMEOUT, which a correct client
clears by far.

The manifest is 7 tasks of kling-v2-6 std 5 s 16:9 ($0.0414 each, the seeds'
example) under `max_usd = 0.50`: $0.2898 planned, so one task billed at 10x
($0.414) fits under the cap and a second would not.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from hostile_server import JSON_ERROR_BODY, VIDEO, HostileServer, new_key
from run_helpers import REPO, cli, cli_env, shots, write_manifest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

RUN_TIMEOUT = 120.0  # seconds; a correct client ends every case here far sooner
CAP = Decimal("0.50")
TASKS = 7
MAX_WAIT = "0.2"  # minutes (--max-wait): a task that never ends is let go after 12 s
CONFIG_CODES = (2, 4)  # a settings or state problem: a message, nothing submitted


# ------------------------------------------------------------------ running


@dataclass
class Outcome:
    """One finished CLI run and where it kept its files."""

    code: int | None  # None: the run did not end within RUN_TIMEOUT
    stdout: str
    stderr: str
    state: Path
    outputs: Path

    @property
    def text(self) -> str:
        return self.stdout + self.stderr

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text.splitlines()[-lines:])


@pytest.fixture
def key() -> str:
    return new_key()


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "manifest", "t", shots(TASKS), max_usd=float(CAP))


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[HostileServer]:
    """The hostile server named by `@pytest.mark.parametrize("server", [...], indirect=True)`."""
    with HostileServer(request.param) as running:
        yield running


@pytest.fixture
def normal_server() -> Iterator[HostileServer]:
    """A well-behaved server, for the cases where nothing should reach it."""
    with HostileServer("well_behaved") as running:
        yield running


def run(
    tmp_path: Path,
    manifest: Path,
    key: str | None,
    base_url: str | None,
    *options: str,
    **environment: str,
) -> Outcome:
    """`mvbatch run MANIFEST --yes OPTIONS`, live against `base_url`, in its own folders."""
    env = cli_env(tmp_path, key=key, **environment)
    if base_url is not None:
        env["MINDVIDEO_BASE_URL"] = base_url
    state = Path(env["MVBATCH_STATE_DIR"])
    outputs = Path(env["MVBATCH_OUTPUT_DIR"])
    args = ["run", str(manifest), "--yes", *options]
    try:
        result = cli(args, env, cwd=tmp_path, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as expired:
        return Outcome(None, _text(expired.stdout), _text(expired.stderr), state, outputs)
    return Outcome(result.returncode, result.stdout, result.stderr, state, outputs)


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


# ------------------------------------------------------------------ checking


def check(
    outcome: Outcome,
    key: str,
    expected: Iterable[int],
    server: HostileServer | None = None,
    *,
    cap: Decimal | None = CAP,
    more: Iterable[str] = (),
) -> None:
    """(a) to (f) of the module docstring, plus the test's own `more` problems, all at once."""
    found = problems(outcome, key, expected, server, cap=cap, more=more)
    assert not found, "\n".join(found) + "\n--- output (tail) ---\n" + outcome.tail()


def problems(
    outcome: Outcome,
    key: str,
    expected: Iterable[int],
    server: HostileServer | None = None,
    *,
    cap: Decimal | None = CAP,
    more: Iterable[str] = (),
) -> list[str]:
    """What `check` would complain about: (a) to (f), then `more`."""
    expected = tuple(expected)
    problems = list(more)
    if outcome.code is None:
        problems.append(f"(b) the run did not end within {RUN_TIMEOUT:g}s (killed)")
    if "Traceback" in outcome.text:
        problems.append("(a) a traceback in stdout/stderr")
    if "internal error" in outcome.text.lower():
        problems.append("(a) 'internal error' in stdout/stderr")
    crashes = sorted((outcome.state / "logs").glob("crash-*.log"))
    if crashes:
        first = crashes[0].read_text(errors="replace").strip().splitlines()[-1:]
        problems.append(f"(a) crash log {crashes[0].name}: {first}")
    if server is not None:
        stats = server.stats()
        twice = {k: n for k, n in stats["charges_by_key"].items() if n > 1}
        if twice:
            problems.append(f"(c) keys charged more than once: {twice}")
        again = [n for n in stats["charges_by_payload"].values() if n > 1]
        if again:
            problems.append(f"(c) the same payload charged under {max(again)} keys")
        if cap is not None and stats["charged_usd"] > cap:
            problems.append(f"(e) the server charged ${stats['charged_usd']} over the ${cap} cap")
    problems += [f"(d) {where}" for where in key_leaks(outcome, key)]
    if outcome.code not in expected:
        problems.append(f"(f) exit code {outcome.code}, expected {' or '.join(map(str, expected))}")
    return problems


def key_leaks(outcome: Outcome, key: str) -> list[str]:
    """Every place the key (or its random part alone) was found."""
    needles = (key.encode(), key.rsplit("-", 1)[-1].encode())
    found = []
    if any(n.decode() in outcome.stdout for n in needles):
        found.append("the key is in stdout")
    if any(n.decode() in outcome.stderr for n in needles):
        found.append("the key is in stderr")
    for folder in (outcome.state, outcome.outputs):
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_file() and any(n in path.read_bytes() for n in needles):
                found.append(f"the key is in {path.relative_to(folder.parent)}")
    return found


def report(outcome: Outcome, name: str = "t") -> dict[str, Any]:
    path = outcome.outputs / name / "report.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def videos_on_disk(outcome: Outcome, name: str = "t") -> list[Path]:
    """Every output the report says is downloaded, whose file is there with the server's bytes."""
    folder = outcome.outputs / name
    found = []
    for task in report(outcome, name).get("tasks", []):
        for output in task.get("outputs") or []:
            path = output.get("path")
            if path and (folder / path).is_file() and (folder / path).read_bytes() == VIDEO:
                found.append(folder / path)
    return found


def reported_as_downloaded(outcome: Outcome, name: str = "t") -> list[str]:
    """Outputs the report gives a path (that is: counts as downloaded)."""
    return [
        output["path"]
        for task in report(outcome, name).get("tasks", [])
        for output in task.get("outputs") or []
        if output.get("path")
    ]


def all_videos(outcome: Outcome, server: HostileServer) -> list[str]:
    """Problems, if not every task succeeded with its video on disk."""
    on_disk = len(videos_on_disk(outcome))
    charged = len(server.stats()["charges_by_key"])
    problems = []
    if charged != TASKS:
        problems.append(f"{charged} of {TASKS} tasks were created at the server")
    if on_disk != TASKS:
        problems.append(f"{on_disk} of {TASKS} videos are on disk as the report says")
    return problems


def no_video(outcome: Outcome) -> list[str]:
    """Problems, if any output counts as downloaded or any file holds something else."""
    problems = []
    if reported := reported_as_downloaded(outcome):
        problems.append(f"the report counts {len(reported)} video(s) as downloaded: {reported[:2]}")
    videos = outcome.outputs / "t" / "videos"
    for path in sorted(videos.rglob("*.mp4")) if videos.is_dir() else []:
        problems.append(f"a final video file exists: {path.name} ({path.stat().st_size} bytes)")
    if not report(outcome):
        problems.append("no report.json was written")
    return problems


# ------------------------------------------------------------------ a normal run


def test_fixture_speaks_the_documented_shapes(key: str) -> None:
    """The fixture against the seeds' example (kling-v2-6, $0.0414), without the CLI: the
    same fields, a replay charged once, 409 for another payload, a real MP4 to download."""
    example = json.loads((REPO / "mvbatch/schemas/examples/kling-v2-6.json").read_text())
    documented = example["response"]
    auth = {"Authorization": f"Bearer {key}"}
    with (
        HostileServer("well_behaved", latency=0) as server,
        httpx.Client(base_url=server.base_url + "/", headers=auth) as api,
    ):
        sent = api.post("tasks", json=example["request"], headers={"Idempotency-Key": "k"})
        again = api.post("tasks", json=example["request"], headers={"Idempotency-Key": "k"})
        other = {**example["request"], "input": {**example["request"]["input"], "mode": "pro"}}
        conflict = api.post("tasks", json=other, headers={"Idempotency-Key": "k"})
        task = api.get(f"tasks/{sent.json()['task_id']}").json()
        video = httpx.get(task["output"]["videos"][0]["url"])
        stats = server.stats()
    assert sent.json().keys() == {"request_id", "task_id", "status", "cost_estimate"}
    assert sent.json()["cost_estimate"] == documented["cost_estimate"]
    assert again.json()["task_id"] == sent.json()["task_id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert conflict.status_code == 409
    assert task.keys() == documented.keys()
    assert task["status"] == "succeeded"
    assert task["cost_actual"] == documented["cost_actual"]
    assert video.content == VIDEO
    assert VIDEO[4:8] == b"ftyp"
    assert stats["charges_by_key"] == {"k": 1}
    assert stats["posts_by_key"] == {"k": 3}


@pytest.mark.parametrize("server", ["well_behaved"], indirect=True)
def test_well_behaved(tmp_path: Path, manifest: Path, key: str, server: HostileServer) -> None:
    """The fixture itself: a normal run against it succeeds (exit 0), every video on disk."""
    outcome = run(tmp_path, manifest, key, server.base_url)
    stats = server.stats()
    more = all_videos(outcome, server)
    if stats["tokens"] != {key}:
        more.append(f"the server saw other tokens than the key: {len(stats['tokens'])}")
    if stats["files_with_authorization"]:
        more.append("a video request carried Authorization")
    check(outcome, key, [0], server, more=more)


# ------------------------------------------------------------------ the key


@pytest.mark.parametrize("server", ["echo_key_in_request_id"], indirect=True)
def test_echo_key_in_request_id(
    tmp_path: Path, manifest: Path, key: str, server: HostileServer
) -> None:
    """The server's request_id is our key: the run succeeds (0) and stores/prints no key."""
    outcome = run(tmp_path, manifest, key, server.base_url)
    check(outcome, key, [0], server, more=all_videos(outcome, server))


@pytest.mark.parametrize("server", ["echo_key_in_output_url"], indirect=True)
def test_echo_key_in_output_url(
    tmp_path: Path, manifest: Path, key: str, server: HostileServer
) -> None:
    """The video URL carries our key in its query.

    Expected: the key is in no ledger, log, report or output. The videos are
    fine (0); a client that refuses to fetch a URL carrying its key, and says
    the videos were not downloaded (1), is as safe, so either code passes.
    """
    outcome = run(tmp_path, manifest, key, server.base_url)
    check(outcome, key, [0, 1], server)


# ------------------------------------------------------------------ money


@pytest.mark.parametrize("server", ["bill_10x"], indirect=True)
def test_bill_10x(tmp_path: Path, manifest: Path, key: str, server: HostileServer) -> None:
    """Every task quoted and billed at 10x ($0.414): the first task teaches the rate, the
    rest would go over the cap and are held: exit 3, $0.414 charged, under the $0.50 cap."""
    outcome = run(tmp_path, manifest, key, server.base_url)
    created = len(server.stats()["charges_by_key"])
    more = [] if created == 1 else [f"{created} tasks created; only the first fits the cap"]
    check(outcome, key, [3], server, more=more)


@pytest.mark.parametrize("server", ["bill_huge"], indirect=True)
def test_bill_huge(tmp_path: Path, manifest: Path, key: str, server: HostileServer) -> None:
    """Every task quoted and billed at $1e12: exit 3 after the first task, nothing else sent.

    The cap cannot hold the first POST of a price class (the documented rate is
    all a client knows before it): (e) is replaced by "only the probe was sent".
    """
    outcome = run(tmp_path, manifest, key, server.base_url)
    posted = len(server.stats()["posts_by_key"])
    more = [] if posted == 1 else [f"{posted} tasks POSTed after a $1e12 quote; expected 1"]
    check(outcome, key, [3], server, cap=None, more=more)


@pytest.mark.parametrize("server", ["negative_cost"], indirect=True)
def test_negative_cost(tmp_path: Path, manifest: Path, key: str, server: HostileServer) -> None:
    """cost_estimate -1, cost_actual -5: the videos are fine (0); no negative money is
    recorded (the cap cannot be widened by a server's negative charge)."""
    outcome = run(tmp_path, manifest, key, server.base_url)
    more = all_videos(outcome, server)
    document = report(outcome)
    totals = document.get("totals", {})
    for name in ("cost_actual", "cost_estimate", "cost_committed"):
        if isinstance(totals.get(name), int | float) and totals[name] < 0:
            more.append(f"report.json totals.{name} is negative: {totals[name]}")
    for task in document.get("tasks", []):
        for name in ("cost_actual", "cost_estimate", "cost_committed"):
            if isinstance(task.get(name), int | float) and task[name] < 0:
                more.append(f"report.json task {task.get('shot')} {name} = {task[name]}")
                break
    check(outcome, key, [0], server, more=more)


# ------------------------------------------------------------------ answers the docs never show


@pytest.mark.parametrize("server", ["post_200_without_task_id"], indirect=True)
def test_post_200_without_task_id(
    tmp_path: Path, manifest: Path, key: str, server: HostileServer
) -> None:
    """Every POST answers 200 without a task_id: the API is broken, the run stops (4).

    The first POST's retries run out without one usable answer, so no other
    task may be sent (each would be charged, its id unknowable).
    """
    outcome = run(tmp_path, manifest, key, server.base_url)
    posted = len(server.stats()["posts_by_key"])
    more = [] if posted <= 1 else [f"{posted} tasks POSTed though no answer had a task_id"]
    check(outcome, key, [4], server, more=more)


@pytest.mark.parametrize("server", ["get_200_without_task_id"], indirect=True)
def test_get_200_without_task_id(
    tmp_path: Path, manifest: Path, key: str, server: HostileServer
) -> None:
    """Every GET of a task answers 200 without a task_id: no task can be followed.

    Expected: 4 (the API keeps answering garbage) or 1 (the tasks did not
    finish, let go after --max-wait); never a task recorded as succeeded.
    """
    outcome = run(tmp_path, manifest, key, server.base_url, "--max-wait", MAX_WAIT)
    succeeded = report(outcome).get("totals", {}).get("succeeded", 0)
    more = [f"{succeeded} tasks reported succeeded"] if succeeded else []
    check(outcome, key, [1, 4], server, more=more)


@pytest.mark.parametrize("server", ["deep_json"], indirect=True)
def test_deep_json(tmp_path: Path, manifest: Path, key: str, server: HostileServer) -> None:
    """Every 200 of the task API is JSON nested 100 000 levels: a garbled answer, retried,
    then the run stops (4); no second task is sent while no answer could be read."""
    outcome = run(tmp_path, manifest, key, server.base_url)
    posted = len(server.stats()["posts_by_key"])
    more = [] if posted <= 1 else [f"{posted} tasks POSTed though no answer could be read"]
    check(outcome, key, [4], server, more=more)


@pytest.mark.parametrize("server", ["unknown_status"], indirect=True)
def test_unknown_status(tmp_path: Path, manifest: Path, key: str, server: HostileServer) -> None:
    """Status "expired" forever: read as still running, let go after --max-wait (1)."""
    outcome = run(tmp_path, manifest, key, server.base_url, "--max-wait", MAX_WAIT)
    succeeded = report(outcome).get("totals", {}).get("succeeded", 0)
    more = [f"{succeeded} tasks reported succeeded"] if succeeded else []
    check(outcome, key, [1], server, more=more)


@pytest.mark.parametrize("server", ["non_json_200"], indirect=True)
def test_non_json_200(tmp_path: Path, manifest: Path, key: str, server: HostileServer) -> None:
    """The first 2 answers of every POST and every task's GETs are 200 with HTML: retried
    (the POSTs under their keys, charged once), then all goes well (0)."""
    outcome = run(tmp_path, manifest, key, server.base_url)
    check(outcome, key, [0], server, more=all_videos(outcome, server))


@pytest.mark.parametrize("server", ["html_502"], indirect=True)
def test_html_502_then_recovers(
    tmp_path: Path, manifest: Path, key: str, server: HostileServer
) -> None:
    """The first 2 answers of every POST (after it created the task) and every task's GETs
    are nginx's HTML 502: retried, charged once, then all goes well (0)."""
    outcome = run(tmp_path, manifest, key, server.base_url)
    check(outcome, key, [0], server, more=all_videos(outcome, server))


@pytest.mark.parametrize("server", ["retry_after_billion"], indirect=True)
def test_retry_after_billion(
    tmp_path: Path, manifest: Path, key: str, server: HostileServer
) -> None:
    """The first POST is a 429 with Retry-After: 1000000000 (31 years), then all is normal.

    Expected: the run neither sleeps for the server's billion seconds nor
    gives up on the tasks: it ends with every video (0), within RUN_TIMEOUT.
    (docs/internals.md cuts a Retry-After to 300 s: a run that sleeps that
    long on one 429, saying nothing, goes past RUN_TIMEOUT.)
    """
    outcome = run(tmp_path, manifest, key, server.base_url)
    check(outcome, key, [0], server, more=all_videos(outcome, server))


# ------------------------------------------------------------------ time


@pytest.mark.parametrize("server", ["slow_answers"], indirect=True)
def test_slow_answers(tmp_path: Path, manifest: Path, key: str, server: HostileServer) -> None:
    """Every GET of a task sleeps an hour, far past the client's read timeout.

    Expected: the run ends well within RUN_TIMEOUT, the tasks let go after
    --max-wait (1) or the API given up on (4); never a hang.
    """
    outcome = run(tmp_path, manifest, key, server.base_url, "--max-wait", MAX_WAIT)
    check(outcome, key, [1, 4], server)


@pytest.mark.parametrize("server", ["slow_download"], indirect=True)
def test_slow_download(tmp_path: Path, manifest: Path, key: str, server: HostileServer) -> None:
    """The videos trickle at 1 byte/s under a valid Content-Length (24 000 bytes: 7 hours).

    Expected: the run gives up on them and ends (1), each video reported not
    downloaded (the part files may stay for a later run to resume).
    """
    outcome = run(tmp_path, manifest, key, server.base_url)
    check(outcome, key, [1], server, more=no_video(outcome) if outcome.code is not None else [])


# ------------------------------------------------------------------ files


@pytest.mark.parametrize("server", ["huge_content_length"], indirect=True)
def test_huge_content_length(
    tmp_path: Path, manifest: Path, key: str, server: HostileServer
) -> None:
    """The video says Content-Length 10^15, sends 4 KiB and hangs up: not downloaded (1),
    and nothing near that size written."""
    outcome = run(tmp_path, manifest, key, server.base_url)
    more = no_video(outcome)
    for path in outcome.outputs.rglob("*"):
        if path.name.startswith("report."):
            continue  # the reports themselves (the contact sheet outgrew a video)
        if path.is_file() and path.stat().st_size > len(VIDEO):
            more.append(f"{path.name} is {path.stat().st_size} bytes")
    check(outcome, key, [1], server, more=more)


@pytest.mark.parametrize("server", ["json_body_as_video"], indirect=True)
def test_json_body_as_video(
    tmp_path: Path, manifest: Path, key: str, server: HostileServer
) -> None:
    """The video URL answers 200 with a JSON error body: that is no video. Expected: not
    counted as downloaded, no .mp4 holding it, exit 1."""
    outcome = run(tmp_path, manifest, key, server.base_url)
    more = no_video(outcome)
    for path in outcome.outputs.rglob("*.mp4"):
        if path.read_bytes() == JSON_ERROR_BODY:
            more.append(f"{path.name} holds the JSON error body")
    check(outcome, key, [1], server, more=more)


@pytest.mark.parametrize("server", ["redirect_files_to_other_host"], indirect=True)
def test_redirect_files_to_other_host(
    tmp_path: Path, manifest: Path, key: str, server: HostileServer
) -> None:
    """The video URL redirects (307) to another host: followed, with no Authorization and
    no key in any header or URL there; every video on disk (0)."""
    outcome = run(tmp_path, manifest, key, server.base_url)
    seen = server.stats()["other_host"]
    more = all_videos(outcome, server)
    if not seen:
        more.append("the other host got no request: the redirect was not followed")
    if with_auth := [r for r in seen if r["authorization"]]:
        more.append(f"{len(with_auth)} request(s) to the other host carried Authorization")
    if [r for r in seen if key in json.dumps(r)]:
        more.append("the key reached the other host")
    check(outcome, key, [0], server, more=more)


# ------------------------------------------------------------------ settings and state


def test_base_url_not_a_url(tmp_path: Path, manifest: Path, key: str) -> None:
    """MINDVIDEO_BASE_URL=notaurl: a configuration error (2 or 4), nothing sent."""
    outcome = run(tmp_path, manifest, key, "notaurl")
    check(outcome, key, CONFIG_CODES)


def test_base_url_unclosed_ipv6(tmp_path: Path, manifest: Path, key: str) -> None:
    """MINDVIDEO_BASE_URL=http://[::1 (no closing bracket): a configuration error (2 or 4)."""
    outcome = run(tmp_path, manifest, key, "http://[::1")
    check(outcome, key, CONFIG_CODES)


def nothing_sent(server: HostileServer) -> list[str]:
    requests = server.stats()["requests"]
    return [f"requests were sent: {requests}"] if requests else []


def test_state_dir_is_a_file(
    tmp_path: Path, manifest: Path, key: str, normal_server: HostileServer
) -> None:
    """MVBATCH_STATE_DIR names a regular file: a configuration error (2 or 4), nothing sent."""
    state = tmp_path / "state-file"
    state.write_text("not a folder\n")
    outcome = run(tmp_path, manifest, key, normal_server.base_url, MVBATCH_STATE_DIR=str(state))
    check(outcome, key, CONFIG_CODES, normal_server, more=nothing_sent(normal_server))


def test_output_dir_is_a_file(
    tmp_path: Path, manifest: Path, key: str, normal_server: HostileServer
) -> None:
    """MVBATCH_OUTPUT_DIR names a regular file: refused before anything is spent (2 or 4)."""
    outputs = tmp_path / "outputs-file"
    outputs.write_text("not a folder\n")
    outcome = run(tmp_path, manifest, key, normal_server.base_url, MVBATCH_OUTPUT_DIR=str(outputs))
    check(outcome, key, CONFIG_CODES, normal_server, more=nothing_sent(normal_server))


def test_corrupt_ledger(
    tmp_path: Path, manifest: Path, key: str, normal_server: HostileServer
) -> None:
    """ledger.sqlite is not a database: a message (2 or 4), nothing sent, no traceback."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "ledger.sqlite").write_bytes(b"this is not an SQLite database\n" * 512)
    outcome = run(tmp_path, manifest, key, normal_server.base_url)
    check(outcome, key, CONFIG_CODES, normal_server, more=nothing_sent(normal_server))


def test_matrix_of_ten_million(tmp_path: Path, key: str, normal_server: HostileServer) -> None:
    """A matrix of 10^4 seeds x 10^3 cfg_scales (10^7 tasks): a manifest error (2), at once."""
    seeds = ", ".join(str(n) for n in range(10_000))
    scales = ", ".join(f"{n / 1000:.3f}" for n in range(1000))
    manifest = tmp_path / "huge.toml"
    manifest.write_text(
        'name = "t"\n\n[[shots]]\nid = "s"\nmodel = "kling-v2-6"\nprompt = "a car"\n'
        f'[shots.input]\nmode = "std"\nduration = 5\nsize = "16:9"\n'
        f"[shots.matrix]\nseed = [{seeds}]\ncfg_scale = [{scales}]\n"
    )
    outcome = run(tmp_path, manifest, key, normal_server.base_url)
    check(outcome, key, [2], normal_server, more=nothing_sent(normal_server))


def test_deeply_nested_toml(tmp_path: Path, key: str, normal_server: HostileServer) -> None:
    """A value nested 100 000 arrays deep: a manifest error (2), never a RecursionError."""
    depth = 100_000
    manifest = tmp_path / "deep.toml"
    manifest.write_text(
        'name = "t"\n\n[[shots]]\nid = "s"\nmodel = "kling-v2-6"\nprompt = "a car"\n'
        f"[shots.input]\nnegative_prompt = {'[' * depth}1{']' * depth}\n"
    )
    outcome = run(tmp_path, manifest, key, normal_server.base_url)
    check(outcome, key, [2], normal_server, more=nothing_sent(normal_server))


# ------------------------------------------------------------------ a second process


def test_two_runs_at_once_share_the_cap(tmp_path: Path, key: str) -> None:
    """Two runs at once, one state folder, one manifest name "t", max_usd 0.50.

    The two manifest files ask for 7 different tasks each ($0.2898 each, so
    either alone passes the preflight; together $0.5796 is over the cap; the
    same tasks twice would be safe anyway, through their keys). The cap covers
    the manifest across all its runs, so the server may charge at most $0.50
    (12 tasks), and the run that could not send all of its tasks says so (3).
    The other ends 0, or 1 when its report, which covers the whole manifest,
    still misses the videos the other run is fetching.
    """
    first = write_manifest(tmp_path / "a", "t", shots(TASKS, "a"), max_usd=float(CAP))
    second = write_manifest(tmp_path / "b", "t", shots(TASKS, "b"), max_usd=float(CAP))
    with HostileServer("well_behaved", latency=3.0) as server, ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(run, tmp_path, path, key, server.base_url) for path in (first, second)]
        outcomes = [future.result() for future in runs]
        found = []
        if all(o.code != 3 for o in outcomes):
            codes = [o.code for o in outcomes]
            charged = server.stats()["charged_usd"]
            found.append(f"no run was held by the cap (exit codes {codes}, ${charged} charged)")
        for n, outcome in enumerate(outcomes, 1):
            found += [f"run {n}: {p}" for p in problems(outcome, key, [0, 1, 3], server)]
    tails = "\n".join(f"--- run {n} (tail) ---\n{o.tail(12)}" for n, o in enumerate(outcomes, 1))
    assert not found, "\n".join(found) + "\n" + tails
