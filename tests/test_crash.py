"""kill -9 at any instant loses nothing and charges nothing twice.

The real `mvbatch run` is killed again and again: at named points (right
after a POST returns and before its answer is committed; right after an
intent is committed and before its POST) and at random instants (during
start-up, planning, submission, polling or downloads). Then it runs to the
end. The simulator's billing must show every key charged exactly once, the
ledger must hold every task as succeeded with its outputs, and SQLite must
find the file intact.

The named points live in the tests, not in mvbatch: `crashpoints/` is put
first on the crashing process's PYTHONPATH, and its `sitecustomize.py` wraps
the method that passes the point (see there).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from run_helpers import charges_by_key, cli, cli_env, cli_popen, shots, sim_stats, write_manifest
from sim_helpers import running_sim

from mvbatch.ledger import open_ledger
from mvbatch.ledger.connection import FILE_NAME

PRO = {"mode": "pro", "duration": 5, "size": "16:9"}
SEED = 20260101
CRASHPOINTS = Path(__file__).resolve().parent / "crashpoints"


def crashing_at(point: str, env: dict[str, str]) -> dict[str, str]:
    """`env` for a run that SIGKILLs itself at `point` (crashpoints/sitecustomize.py)."""
    path = os.pathsep.join([str(CRASHPOINTS), env["PYTHONPATH"]])
    return {**env, "MVBATCH_CRASH_AT": point, "PYTHONPATH": path}


def unanswered(state_dir: Path) -> list[str]:
    """Submit keys of the tasks whose intent the ledger holds without an answer."""
    with open_ledger(state_dir) as ledger:
        return [r.submit_key for r in ledger.tasks("live", "crash") if r.status == "submitting"]


@pytest.mark.slow
def test_kill_9_at_any_instant_loses_nothing_and_charges_nothing_twice(tmp_path: Path) -> None:
    path = write_manifest(
        tmp_path, "crash", [*shots(20, "std"), *shots(6, "pro", input=PRO)], max_usd=5
    )
    rng = random.Random(SEED)
    kills = 0
    args = ["run", str(path), "--yes", "--concurrency", "3"]
    with running_sim(tmp_path, speed=20, faults="flaky", seed=3) as base:
        env = cli_env(tmp_path, base)
        # Named instants: the process SIGKILLs itself there.
        for point in ("after_post:1", "after_intent:2", "after_post:3", "after_post:2"):
            crashed = cli(args, crashing_at(point, env), tmp_path)
            assert crashed.returncode == -signal.SIGKILL, (point, crashed.stderr)
            kills += 1
            # Killed with an intent committed and no answer recorded; after a
            # POST, the server had already charged that key.
            pending = unanswered(tmp_path / "state")
            assert pending, point
            if point.startswith("after_post"):
                charged = charges_by_key(sim_stats(base))
                assert any(charged.get(key) for key in pending), (point, pending)
        # Random instants, from start-up to downloads: a kill counts only if
        # the run was still going.
        for attempt in range(30):
            if kills >= 12:
                break
            process = cli_popen(args, env, tmp_path, tmp_path / f"run-{attempt}.out")
            time.sleep(rng.uniform(0.3, 2.5))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            process.wait(timeout=60)
        assert kills >= 10
        # Then the same command, left alone, finishes the work (failed
        # generations are retried under new keys).
        final = cli(args, env, tmp_path)
        for _ in range(5):
            if final.returncode != 1:
                break
            final = cli([*args, "--retry-failed"], env, tmp_path)
        assert final.returncode == 0, final.stdout + final.stderr
        stats = sim_stats(base)

    charges = charges_by_key(stats)
    assert set(charges.values()) == {1}, {k: v for k, v in charges.items() if v != 1}
    with open_ledger(tmp_path / "state") as ledger:
        rows = ledger.tasks("live", "crash")
        assert len(rows) == 26
        assert {r.status for r in rows} == {"succeeded"}
        assert {r.submit_key for r in rows} <= set(charges)
        assert len({r.task_id for r in rows}) == 26
        # Some intents were found without their answer and sent again under
        # the same key: the path that must not charge twice was taken.
        assert any(r.submissions >= 2 for r in rows)
        for row in rows:
            outputs = ledger.outputs("live", row.key)
            assert outputs, row.key
            assert all(o.path and o.sha256 for o in outputs), row.key
            assert (tmp_path / "outputs" / "crash" / outputs[0].path).is_file()  # type: ignore[operator]
    db = sqlite3.connect(tmp_path / "state" / FILE_NAME)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
