"""The real CLI (`python -m mvbatch`) against a real simulator process on loopback.

Each fault profile ends with every task done and each idempotency key
charged exactly once, as the simulator's own billing (/_sim/stats) says.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest
from run_helpers import (
    TEST_KEY,
    api_requests,
    charges_by_key,
    cli,
    cli_env,
    cli_popen,
    invoke,
    shots,
    sim_stats,
    write_manifest,
)
from sim_helpers import running_sim

from mvbatch.ledger import SqliteLedger, open_ledger

PRO = {"mode": "pro", "duration": 5, "size": "16:9"}


def manifest(tmp_path: Path) -> Path:
    return write_manifest(
        tmp_path,
        "e2e",
        [
            *shots(5, "std"),
            *shots(3, "pro", input=PRO),  # undocumented price: learned from the first POST
            *shots(
                2,
                "omni",
                model="kling-v3-omni",
                input={"mode": "std", "duration": 5, "aspect_ratio": "9:16"},
            ),
        ],
        max_usd=5,
    )


def keys_of(state: Path, name: str = "e2e", env: str = "live") -> dict[str, str]:
    with open_ledger(state) as ledger:
        return {row.key: row.status for row in ledger.tasks(env, name)}


@pytest.mark.slow
@pytest.mark.parametrize("faults", ["none", "flaky", "hostile"])
def test_every_task_done_and_charged_exactly_once(tmp_path: Path, faults: str) -> None:
    path = manifest(tmp_path)
    with running_sim(tmp_path, speed=20, faults=faults, seed=7) as base:
        env = cli_env(tmp_path, base)
        outputs = []
        result = cli(["run", str(path), "--yes"], env, tmp_path)
        outputs.append(result)
        # Generation failures are outcomes (exit 1); retrying them is a
        # deliberate, paid choice, under new keys.
        for _ in range(6):
            if result.returncode != 1:
                break
            result = cli(["run", str(path), "--yes", "--retry-failed"], env, tmp_path)
            outputs.append(result)
        assert result.returncode == 0, result.stdout + result.stderr
        stats = sim_stats(base)
        posts = stats["requests"]["POST /api/v1/tasks"]
        again = cli(["run", str(path), "--yes"], env, tmp_path)
        outputs.append(again)
        assert again.returncode == 0, again.stdout + again.stderr
        assert sim_stats(base)["requests"]["POST /api/v1/tasks"] == posts  # nothing re-sent

    tasks = keys_of(tmp_path / "state")
    assert len(tasks) == 10
    assert set(tasks.values()) == {"succeeded"}
    charges = charges_by_key(stats)
    assert charges
    assert set(charges.values()) == {1}, charges
    assert stats["billing"]["without_idempotency_key"]["charges"] == 0
    with SqliteLedger(tmp_path / "state") as ledger:
        submit_keys = {row.submit_key for row in ledger.tasks("live", "e2e")}
        assert ledger.integrity_check() == "ok"
    assert submit_keys <= set(charges)  # the final attempt of each task was charged once
    net_keys = [
        k for k, v in stats["billing"]["by_idempotency_key"].items() if v["charges"] > v["refunds"]
    ]
    assert sorted(net_keys) == sorted(submit_keys)  # only failed attempts were refunded
    if faults != "none":
        assert sum(stats["faults"].values()) > 0
    report = json.loads((tmp_path / "outputs" / "e2e" / "report.json").read_text())
    assert report["totals"]["succeeded"] == 10
    assert all(t["outputs"] and t["outputs"][0]["sha256"] for t in report["tasks"])
    assert_key_never_written(tmp_path, [o.stdout + o.stderr for o in outputs])


def assert_key_never_written(tmp_path: Path, texts: list[str]) -> None:
    for text in texts:
        assert TEST_KEY not in text
    checked = 0
    for folder in (tmp_path / "state", tmp_path / "outputs"):
        for file in folder.rglob("*"):
            if file.is_file():
                assert TEST_KEY.encode() not in file.read_bytes(), file
                checked += 1
    assert (tmp_path / "state" / "logs" / "mvbatch.jsonl").stat().st_size > 0
    assert checked >= 4


@pytest.mark.slow
def test_status_and_plan_read_the_ledger_after_a_run(tmp_path: Path) -> None:
    path = manifest(tmp_path)
    with running_sim(tmp_path, speed=0) as base:
        env = cli_env(tmp_path, base)
        assert cli(["run", str(path), "--yes", "--no-download"], env, tmp_path).returncode == 0
        status = cli(["status", str(path), "--json"], env, tmp_path)
        plan = cli(["plan", str(path), "--json"], env, tmp_path)
        human = cli(["status", str(path)], env, tmp_path)
    document = json.loads(status.stdout)
    assert document["manifest"] == "e2e"
    assert document["env"] == "live"
    assert document["counts"]["succeeded"] == 10
    assert document["left"]["tasks"] == 0
    assert document["spend"]["actual"] == pytest.approx(5 * 0.0414 + 3 * 0.058 + 2 * 0.0756)
    assert document["budget_left"] == pytest.approx(5 - document["spend"]["committed"])
    assert json.loads(plan.stdout)["totals"]["done"] == 10
    assert "succeeded" in human.stdout
    assert human.returncode == 0


def test_status_without_a_ledger_says_nothing_ran(tmp_path: Path) -> None:
    result = invoke(["status", str(manifest(tmp_path)), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    # Nothing ran: status plans the manifest, and every task of the plan is left.
    assert (document["tasks"], document["left"]["tasks"]) == (10, 10)
    assert document["spend"] == {"actual": 0, "committed": 0}
    assert document["last_run"] is None


@pytest.mark.slow
def test_without_a_key_the_built_in_simulator_runs_and_says_so_once(tmp_path: Path) -> None:
    path = manifest(tmp_path)
    env = cli_env(tmp_path, key=None, MVBATCH_SIM_SPEED="0")
    result = cli(["run", str(path), "--no-download"], env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    notices = [line for line in result.stderr.splitlines() if "simulator" in line]
    assert len(notices) == 1
    assert "MINDVIDEO_API_KEY" in notices[0]
    assert set(keys_of(tmp_path / "state", env="sim").values()) == {"succeeded"}
    assert keys_of(tmp_path / "state", env="live") == {}  # never mixed with live work


def test_live_without_a_key_is_refused_with_exit_4(tmp_path: Path) -> None:
    result = invoke(["run", str(manifest(tmp_path)), "--live", "--yes"])
    assert result.exit_code == 4, result.output
    assert "MINDVIDEO_API_KEY" in result.output


def test_simulate_and_live_together_are_a_usage_error(tmp_path: Path) -> None:
    result = invoke(["run", str(manifest(tmp_path)), "--live", "--simulate"])
    assert result.exit_code == 2, result.output


@pytest.mark.slow
def test_a_live_run_without_yes_and_without_a_terminal_refuses(tmp_path: Path) -> None:
    path = manifest(tmp_path)
    with running_sim(tmp_path, speed=0) as base:
        result = cli(["run", str(path)], cli_env(tmp_path, base), tmp_path)
        assert api_requests(sim_stats(base)) == 0
    assert result.returncode == 3, result.stderr
    assert "e2e" in result.stdout
    assert "--yes" in result.stderr


@pytest.mark.slow
def test_a_refused_key_stops_the_run_with_exit_4_and_nothing_charged(tmp_path: Path) -> None:
    path = manifest(tmp_path)
    with running_sim(tmp_path, speed=0, accept_key="mv_other_key") as base:
        result = cli(["run", str(path), "--yes"], cli_env(tmp_path, base), tmp_path)
        stats = sim_stats(base)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "refused the key" in result.stderr
    assert stats["billing"]["charges"] == 0
    assert TEST_KEY not in result.stdout + result.stderr


@pytest.mark.slow
def test_a_reviewed_plan_runs_and_a_changed_manifest_is_refused(tmp_path: Path) -> None:
    path = manifest(tmp_path)
    reviewed = tmp_path / "reviewed.toml"
    with running_sim(tmp_path, speed=0) as base:
        env = cli_env(tmp_path, base)
        assert cli(["plan", str(path), "--out", str(reviewed)], env, tmp_path).returncode == 0
        path.write_text(path.read_text().replace("shot std0", "shot std0 (edited)"))
        changed = cli(["run", str(reviewed), "--yes"], env, tmp_path)
        assert changed.returncode == 2
        assert "changed" in changed.stderr
        assert api_requests(sim_stats(base)) == 0
        assert cli(["plan", str(path), "--out", str(reviewed)], env, tmp_path).returncode == 0
        ran = cli(["run", str(reviewed), "--yes", "--no-download"], env, tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr


def wait_for(path: Path, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "e2e", shots(12), max_usd=5)
    log = tmp_path / "state" / "logs" / "mvbatch.jsonl"
    with running_sim(tmp_path, speed=4) as base:
        env = cli_env(tmp_path, base)
        process = cli_popen(
            ["run", str(path), "--yes", "--concurrency", "3", "--no-download"],
            env,
            tmp_path,
            tmp_path / "run.out",
        )
        wait_for(log, '"task.submitted"')
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
        assert "Resume with: mvbatch run" in (tmp_path / "run.out").read_text()
        assert "planned" in keys_of(tmp_path / "state").values()  # it stopped submitting
        resumed = cli(["run", str(path), "--yes", "--no-download"], env, tmp_path)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        stats = sim_stats(base)
    assert set(keys_of(tmp_path / "state").values()) == {"succeeded"}
    assert set(charges_by_key(stats).values()) == {1}
    assert len(charges_by_key(stats)) == 12


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once_and_is_still_safe(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "e2e", shots(6), max_usd=5)
    log = tmp_path / "state" / "logs" / "mvbatch.jsonl"
    # Every answer takes 20 s: the first Ctrl-C would wait for the POSTs on
    # the wire (up to its grace period); the second does not wait.
    with running_sim(tmp_path, speed=4, fault_slow_response=1.0, slow_seconds=80) as base:
        env = cli_env(tmp_path, base)
        process = cli_popen(
            ["run", str(path), "--yes", "--concurrency", "3", "--no-download"],
            env,
            tmp_path,
            tmp_path / "run.out",
        )
        wait_for(log, '"run.started"')
        deadline = time.monotonic() + 30
        while sim_stats(base)["requests"].get("POST /api/v1/tasks", 0) < 1:
            assert time.monotonic() < deadline, "no POST reached the simulator"
            time.sleep(0.05)
        # A POST is on the wire (its answer is 80 s away).
        process.send_signal(signal.SIGINT)
        wait_for(tmp_path / "run.out", "stopping")
        process.send_signal(signal.SIGINT)
        # Well before the POSTs' answers: the second Ctrl-C did not wait for them.
        assert process.wait(timeout=30) == 130
        httpx.post(f"{base}/_sim/faults", json={"profile": "none"}, timeout=10)
        resumed = cli(["run", str(path), "--yes", "--no-download"], env, tmp_path)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        stats = sim_stats(base)
    assert set(keys_of(tmp_path / "state").values()) == {"succeeded"}
    assert set(charges_by_key(stats).values()) == {1}
    assert len(charges_by_key(stats)) == 6
