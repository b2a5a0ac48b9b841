"""Shared fixtures: no test ever writes into the working tree or sees a real key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MVBATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MVBATCH_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.delenv("MINDVIDEO_API_KEY", raising=False)
    monkeypatch.delenv("MINDVIDEO_BASE_URL", raising=False)
    # A `.env` in the working tree must not leak into tests.
    monkeypatch.chdir(tmp_path)
    return


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo() -> Path:
    return REPO
