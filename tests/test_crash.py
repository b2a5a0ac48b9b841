"""kill -9 at any instant loses nothing and charges nothing twice.

The real `mvbatch run` is killed again and again: at named points (right
after a POST returns and before its answer is committed; right after an
intent is committed and before its POST) and at random instants (during
start-up, planning, submission, polling or downloads). Then it runs to the
end. The simulator's billing must show every key charged exactly once, the
ledger must hold every task as succeeded with its outputs, and SQLite must
find the file intact.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from run_helpers import charges_by_key, cli, cli_env, cli_popen, shots, sim_stats, write_manifest
from sim_helpers import running_sim

from mvbatch.ledger.store import FILE_NAME, Ledger

PRO = {"mode": "pro", "duration": 5, "size": "16:9"}
SEED = 20260101


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
            crashed = cli(args, {**env, "MVBATCH_TEST_CRASH_POINT": point}, tmp_path)
            assert crashed.returncode == -signal.SIGKILL, (point, crashed.stderr)
            kills += 1
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
    with Ledger(tmp_path / "state") as ledger:
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
