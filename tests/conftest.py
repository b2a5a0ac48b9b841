"""Shared fixtures: no test ever writes into the working tree or sees a real key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import stamina
from hypothesis import settings

# A stalled VM (garbage collection, a neighbour's burst) can hold one example
# for longer than Hypothesis's 200 ms deadline: that is not a failure of ours.
settings.register_profile("mvbatch", deadline=None)
settings.load_profile("mvbatch")


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MVBATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MVBATCH_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.delenv("MINDVIDEO_API_KEY", raising=False)
    monkeypatch.delenv("MINDVIDEO_BASE_URL", raising=False)
    # A `.env` in the working tree must not leak into tests.
    monkeypatch.chdir(tmp_path)
    return


@pytest.fixture(autouse=True)
def retries_without_waits() -> Iterator[None]:
    """stamina's testing mode: every retry happens at once; each loop keeps its attempts.

    `cap=True`: a retry policy's own number of attempts holds (at most 100,
    which also bounds a loop without a limit). The waits are still computed
    (and logged as `api.retry`), only not slept. A test that needs real waits
    says `with stamina.set_testing(False):`, one that needs another number of
    attempts `with stamina.set_testing(True, attempts=n):`. Processes started
    by a test (the real CLI) retry for real.
    """
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    import run_helpers

    yield
    while run_helpers.STARTED:
        process = run_helpers.STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """A PostgreSQL server of this test process's own (tests/pg_server.py)."""
    import pg_server

    with pg_server.running_server() as server:
        yield server


@pytest.fixture
def pg_url(postgres_server: object) -> str:
    """The URL (password included) of a new, empty database for this test."""
    import pg_server

    assert isinstance(postgres_server, pg_server.Server)
    return pg_server.fresh_database(postgres_server)
