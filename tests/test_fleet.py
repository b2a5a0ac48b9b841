"""A fleet of workers on one PostgreSQL ledger, and shards of a job array: real processes.

A real PostgreSQL server (tests/pg_server.py), the simulator on loopback with
latency and faults (`mvbatch sim`), and the real CLI (`python -m mvbatch`),
each worker with its own state and output folders as on separate machines.
What must hold is read from the simulator's own billing and from the ledger.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from run_helpers import (
    STARTED,
    TEST_KEY,
    charges_by_key,
    cli,
    cli_env,
    cli_popen,
    sim_stats,
    write_manifest,
)
from sim_helpers import running_sim

from mvbatch.ledger import sqlite_file
from mvbatch.ledger.postgres import PostgresLedger

pytestmark = pytest.mark.slow

STD = {"mode": "std", "duration": 5}  # kling-v2-6 at its documented rate: $0.0414


def fleet_manifest(folder: Path, tasks: int, max_usd: Decimal) -> Path:
    shots = [
        {"id": f"shot-{n:02}", "prompt": f"a car in neon rain, shot {n}", "input": STD}
        for n in range(tasks)
    ]
    return write_manifest(folder, "fleet", shots, max_usd=float(max_usd))


def in_flight_of(url: str, pid: int) -> int:
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('tasks')").fetchone() == (None,):
            return 0  # no worker has opened the ledger yet
        found = conn.execute(
            "SELECT count(*) FROM tasks WHERE claimed_by LIKE %s "
            "AND status IN ('submitting', 'queued', 'processing')",
            (f"%:{pid}:%",),
        ).fetchone()
    return int(found[0]) if found else 0


def held_by(url: str, pid: int) -> set[str]:
    """Keys of the tasks in flight that the worker with this pid holds."""
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT key FROM tasks WHERE claimed_by LIKE %s "
            "AND status IN ('submitting', 'queued', 'processing')",
            (f"%:{pid}:%",),
        ).fetchall()
    return {row[0] for row in found}


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_three_workers_one_killed_finish_the_plan_once_within_one_cap(
    tmp_path: Path, pg_url: str
) -> None:
    tasks = 30
    cap = Decimal("1.30")  # the plan asks $1.242 of it: nearly full
    manifest = fleet_manifest(tmp_path, tasks, cap)
    with running_sim(
        tmp_path,
        speed=2,
        latency_median=6,
        fault_server_error=0.05,
        fault_rate_limit=0.05,
        fault_drop_after_create=0.05,
        retry_after=0.2,
        seed=7,
    ) as base_url:
        workers = []
        for n in range(3):
            folder = tmp_path / f"machine-{n}"
            env = cli_env(folder, base_url, MVBATCH_LEDGER=pg_url, MVBATCH_LEASE_SECONDS="4")
            folder.mkdir()
            args = ["run", str(manifest), "--yes", "--concurrency", "4"]
            workers.append(cli_popen(args, env, folder, folder / "run.out"))
        victim = workers[1]
        wait_for(lambda: in_flight_of(pg_url, victim.pid) >= 1, 60, "worker 2 to hold a task")
        held = held_by(pg_url, victim.pid)
        victim.send_signal(signal.SIGKILL)  # not restarted
        victim.wait(10)
        held |= held_by(pg_url, victim.pid)  # what it held when it died
        for n in (0, 2):
            output = tmp_path / f"machine-{n}" / "run.out"
            assert workers[n].wait(240) == 0, output.read_text()[-3000:]
        stats = sim_stats(base_url)

        with PostgresLedger(pg_url) as ledger:
            rows = ledger.tasks("live", "fleet")
        assert len(rows) == tasks
        assert {r.status for r in rows} == {"succeeded"}
        charged = charges_by_key(stats)
        assert sorted(charged) == sorted(r.key for r in rows)
        assert set(charged.values()) == {1}  # each task charged exactly once
        assert stats["billing"]["without_idempotency_key"]["charges"] == 0
        assert sum((r.committed for r in rows), Decimal(0)) <= cap
        assert Decimal(str(stats["billing"]["net"])) <= cap
        assert stats["tasks"]["max_in_flight"] <= 4  # --concurrency held across the fleet
        # What the dead worker held was finished by the others (their runs' events).
        with PostgresLedger(pg_url) as ledger:
            victim_runs = {
                r["id"]
                for r in ledger.conn.execute("SELECT id FROM runs WHERE pid = %s", (victim.pid,))
            }
            assert held
            for key in held:
                (end,) = [e for e in ledger.events("live", key) if e["status"] == "succeeded"]
                assert end["run_id"] not in victim_runs, key

        # `report` from a fourth machine: every video downloaded there and verified.
        fourth = tmp_path / "machine-3"
        fourth.mkdir()
        env = cli_env(fourth, base_url, MVBATCH_LEDGER=pg_url)
        done = cli(["report", str(manifest)], env, fourth, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads((fourth / "outputs" / "fleet" / "report.json").read_text())
        assert len(report["tasks"]) == tasks
        for task in report["tasks"]:
            (output,) = task["outputs"]
            assert output["path"]
            assert output["sha256"]
        with psycopg.connect(pg_url) as conn:
            tables = [
                r[0]
                for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ]
            for table in tables:
                for (text,) in conn.execute(f"SELECT row_to_json(t)::text FROM {table} t"):
                    assert TEST_KEY not in text, table  # the API key never enters the database
        password = psycopg.conninfo.conninfo_to_dict(pg_url)["password"]
        for folder in tmp_path.glob("machine-*"):
            for path in folder.rglob("*"):
                if path.is_file() and path.suffix in {".json", ".jsonl", ".out", ".md", ".csv"}:
                    assert str(password) not in path.read_text(errors="replace"), path


def test_shards_cover_the_plan_once_and_merge_into_the_single_runs_totals(
    tmp_path: Path,
) -> None:
    manifest = fleet_manifest(tmp_path, 12, Decimal("3.00"))
    with running_sim(tmp_path, speed=0) as base_url:
        keys_by_shard: list[set[str]] = []
        ledgers = []
        for k in (1, 2, 3):
            folder = tmp_path / f"shard-{k}"
            folder.mkdir()
            env = cli_env(folder, base_url)
            done = cli(["run", str(manifest), "--yes", "--shard", f"{k}/3"], env, folder)
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"shard {k}/3" in done.stdout
            assert "an even share of $3.00 over 3 shards" in done.stdout
            ledger_file = sqlite_file(folder / "state")
            ledgers.append(str(ledger_file))
            with _sqlite(ledger_file) as ledger:
                keys_by_shard.append({r.key for r in ledger.tasks("live", "fleet")})
        single = tmp_path / "single"
        single.mkdir()
        done = cli(["run", str(manifest), "--yes"], cli_env(single, base_url), single)
        assert done.returncode == 0, done.stdout + done.stderr
        with _sqlite(sqlite_file(single / "state")) as ledger:
            all_keys = {r.key for r in ledger.tasks("live", "fleet")}

        assert sum(len(keys) for keys in keys_by_shard) == len(all_keys) == 12
        assert set().union(*keys_by_shard) == all_keys  # disjoint and complete

        merged = tmp_path / "merged"
        merged.mkdir()
        env = cli_env(merged, base_url)
        done = cli(["report", str(manifest), "--merge", *ledgers], env, merged)
        assert done.returncode in (0, 1), done.stdout + done.stderr
        both = [
            json.loads((where / "outputs" / "fleet" / "report.json").read_text())
            for where in (merged, single)
        ]
        assert both[0]["totals"] == both[1]["totals"] | {
            k: v for k, v in both[0]["totals"].items() if "download" in k
        }
        assert sorted(t["key"] for t in both[0]["tasks"]) == sorted(all_keys)

        other = write_manifest(tmp_path / "other", "another", [{"id": "x", "input": STD}])
        other_folder = tmp_path / "other-run"
        other_folder.mkdir()
        done = cli(["run", str(other), "--yes"], cli_env(other_folder, base_url), other_folder)
        assert done.returncode == 0
        refused = cli(
            [
                "report",
                str(manifest),
                "--merge",
                ledgers[0],
                str(sqlite_file(other_folder / "state")),
            ],
            env,
            merged,
        )
        assert refused.returncode == 4, refused.stdout + refused.stderr
        assert "no task of manifest 'fleet'" in refused.stderr
        assert "Traceback" not in refused.stderr


def _sqlite(path: Path) -> Any:
    from mvbatch.ledger import open_ledger

    return open_ledger(path)


def test_plan_run_status_and_report_take_the_ledger_from_any_folder(
    tmp_path: Path, pg_url: str
) -> None:
    manifest = fleet_manifest(tmp_path, 3, Decimal("1.00"))
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    sim = {"MVBATCH_SIM_SPEED": "0"}
    done = cli(["run", str(manifest), "--ledger", pg_url], cli_env(first, key=None, **sim), first)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (first / "state" / "ledger.sqlite").exists()  # the URL was the ledger
    env = cli_env(second, key=None, MVBATCH_LEDGER=pg_url, **sim)
    status = cli(["status", str(manifest), "--json"], env, second)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"]["succeeded"] == 3
    plan = cli(["plan", str(manifest), "--json"], env, second)
    assert {t["state"] for t in json.loads(plan.stdout)["tasks"]} == {"done"}
    report = cli(["report", str(manifest), "--no-download"], env, second)
    assert report.returncode == 1  # the videos are on the first machine, not this one
    document = json.loads((second / "outputs" / "fleet" / "report.json").read_text())
    assert document["totals"]["tasks"] == 3
    assert document["totals"]["succeeded"] == 3

    password = str(psycopg.conninfo.conninfo_to_dict(pg_url)["password"])
    wrong = pg_url.replace(password, "wrong-" + password)
    refused = cli(["status", str(manifest), "--ledger", wrong], cli_env(second, key=None), second)
    assert refused.returncode == 4
    assert "password authentication failed" in refused.stderr
    assert password not in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_dead_worker_holding_every_slot_does_not_stall_the_others(
    tmp_path: Path, pg_url: str
) -> None:
    """The dead worker held all of --concurrency: the others, with work left to send and
    refused as busy, must still take its tasks over when its lease runs out.

    The dead worker runs under another host name (its own UTS namespace), as on
    another machine: nobody can see its pid is gone, only its lease tells.
    """
    if not shutil.which("unshare") or os.geteuid() != 0:
        pytest.skip("needs root and unshare to give a worker a host name of its own")
    manifest = fleet_manifest(tmp_path, 12, Decimal("1.00"))
    with running_sim(tmp_path, speed=1, latency_median=4, seed=3) as base_url:
        args = ["run", str(manifest), "--yes", "--concurrency", "3"]

        def start(name: str, *, elsewhere: bool = False) -> subprocess.Popen[bytes]:
            folder = tmp_path / name
            folder.mkdir()
            env = cli_env(folder, base_url, MVBATCH_LEDGER=pg_url, MVBATCH_LEASE_SECONDS="3")
            if not elsewhere:
                return cli_popen(args, env, folder, folder / "run.out")
            command = [sys.executable, "-m", "mvbatch", *args]
            script = f"hostname {name}-host && exec {shlex.join(command)}"
            with (folder / "run.out").open("ab") as out:
                process = subprocess.Popen(
                    ["unshare", "--uts", "sh", "-c", script],
                    env=env,
                    cwd=folder,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            STARTED.append(process)
            return process

        victim = start("far", elsewhere=True)
        wait_for(
            lambda: in_flight_of(pg_url, victim.pid) == 3, 60, "the far worker to fill all 3 slots"
        )
        survivors = [start("near-1"), start("near-2")]
        time.sleep(2)  # not a timing assertion: the survivors are refused as busy meanwhile
        held = held_by(pg_url, victim.pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        for n, survivor in enumerate(survivors, 1):
            output = tmp_path / f"near-{n}" / "run.out"
            assert survivor.wait(180) == 0, output.read_text()[-3000:]
        charged = charges_by_key(sim_stats(base_url))
    with PostgresLedger(pg_url) as ledger:
        rows = ledger.tasks("live", "fleet")
    assert {r.status for r in rows} == {"succeeded"}
    assert len(held) == 3
    assert all(r.claimed_by is None or "far-host" not in r.claimed_by for r in rows)
    assert set(charged.values()) == {1}
    assert len(charged) == 12
