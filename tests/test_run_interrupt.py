"""One Ctrl-C stops a run cleanly in either phase: the executor, or the downloads after it."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from run_helpers import write_manifest

from mvbatch.commands import running
from mvbatch.ledger import open_ledger
from mvbatch.report import command as report
from mvbatch.settings import Settings
from mvbatch.ui import progress


def prepared_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> running.PreparedRun:
    monkeypatch.setenv("MVBATCH_SIM_SPEED", "0")  # tasks end as soon as created
    path = write_manifest(
        tmp_path, "ctrlc", [{"id": "a", "prompt": "a fox"}, {"id": "b", "prompt": "a crow"}]
    )
    settings = Settings(MVBATCH_STATE_DIR=tmp_path / "state", MVBATCH_OUTPUT_DIR=tmp_path / "out")
    return running.prepare_run(
        path, settings, simulate=True, max_cost=None, concurrency=2, retry_failed=False
    )


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")
def test_one_ctrl_c_during_the_final_downloads_stops_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reached: list[str] = []

    async def downloads_that_never_end(*args: Any, **kwargs: Any) -> Any:
        reached.append("downloads")
        os.kill(os.getpid(), signal.SIGINT)  # a real signal, to the loop's handler
        await asyncio.sleep(30)
        raise AssertionError("one Ctrl-C did not stop the downloads")

    monkeypatch.setattr(report, "finish_run", downloads_that_never_end)
    phases: list[str] = []
    seconds: list[bool] = []
    stopper = running.Stopper(on_first=phases.append, on_second=lambda: seconds.append(True))
    prepared = prepared_run(tmp_path, monkeypatch)
    try:
        outcome = asyncio.run(running.execute(prepared, download=True, stopper=stopper))
    finally:
        prepared.close()

    assert reached == ["downloads"]
    assert phases == ["downloads"]
    assert not seconds
    assert outcome.result.interrupted
    assert outcome.report is None
    assert outcome.result.counts == {"succeeded": 2}  # the tasks themselves were done
    assert outcome.result.downloads_interrupted
    said = progress.result_view(outcome.result, "mvbatch run ctrlc.toml").plain
    assert "interrupted during the downloads" in said
    assert "Resume with: mvbatch run ctrlc.toml" in said
    with open_ledger(tmp_path / "state") as ledger:
        run = ledger.last_run("ctrlc")
    assert run is not None
    assert run["outcome"] == "interrupted"
    # The handlers are gone with the run: Ctrl-C is Python's again.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_downloads_cancelled_from_outside_propagate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the stopper's cancel reads as Ctrl-C; a caller cancelling the run still cancels it."""
    reached = threading.Event()

    async def downloads_that_never_end(*args: Any, **kwargs: Any) -> Any:
        reached.set()
        await asyncio.sleep(30)
        raise AssertionError("the cancel never arrived")

    monkeypatch.setattr(report, "finish_run", downloads_that_never_end)
    prepared = prepared_run(tmp_path, monkeypatch)

    async def main() -> None:
        run = asyncio.ensure_future(running.execute(prepared, download=True))
        assert await asyncio.to_thread(reached.wait, 30)  # the executor is done
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    try:
        asyncio.run(main())
    finally:
        prepared.close()
    with open_ledger(tmp_path / "state") as ledger:
        last = ledger.last_run("ctrlc")
        assert last is not None
        assert last["outcome"] == "interrupted"  # not "succeeded": the downloads never ended
