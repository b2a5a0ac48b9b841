"""The cap is the ledger's, not a process's: runs at once on one state folder share it.

Four real `mvbatch run` processes, each with its own manifest file but the
same `name` (so the same tasks' spend in the ledger), start together against
one simulator process. Each plan fits the cap alone; together they do not.
The simulator's billing is the judge: what it charged stays within the cap,
every key charged once, and the ledger's committed spend within the cap too.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from run_helpers import charges_by_key, cli_env, cli_popen, shots, sim_stats, write_manifest
from sim_helpers import running_sim

from mvbatch.ledger import open_ledger

CAP = Decimal("0.5")
PROCESSES = 4
TASKS = 7  # 7 x 0.0414 = 0.2898 fits the cap alone; 28 x 0.0414 = 1.1592 does not


@pytest.mark.slow
def test_four_runs_at_once_on_one_ledger_stay_within_one_cap(tmp_path: Path) -> None:
    manifests = [
        write_manifest(tmp_path / f"m{n}", "shared", shots(TASKS, f"p{n}-"), max_usd=float(CAP))
        for n in range(PROCESSES)
    ]
    # speed 4: a task runs for about a second, so the runs' tasks overlap.
    with running_sim(tmp_path, speed=4) as base:
        env = cli_env(tmp_path, base, key="mv_test_x")
        runs = [
            cli_popen(
                ["run", str(path), "--yes", "--no-download"],
                env,
                tmp_path,
                tmp_path / f"run-{n}.out",
            )
            for n, path in enumerate(manifests)
        ]
        codes = [run.wait(timeout=180) for run in runs]
        stats = sim_stats(base)
    outputs = [(tmp_path / f"run-{n}.out").read_text() for n in range(PROCESSES)]
    for code, text in zip(codes, outputs, strict=True):
        assert code in (0, 3), text
        assert "Traceback" not in text, text
    charges = charges_by_key(stats)
    assert all(n == 1 for n in charges.values()), charges
    assert Decimal(str(stats["billing"]["net"])) <= CAP, outputs
    with open_ledger(tmp_path / "state") as ledger:
        rows = ledger.tasks("live", "shared")
    # A run that started once the others had filled the cap was refused before
    # its first request, and recorded nothing.
    assert TASKS <= len(rows) <= PROCESSES * TASKS
    committed = sum((r.committed for r in rows), Decimal(0))
    assert committed <= CAP, outputs
    # The cap was reached: some run held tasks, and said why.
    assert 3 in codes, outputs
    held = [text for code, text in zip(codes, outputs, strict=True) if code == 3]
    assert all("other processes" in text for text in held), held
