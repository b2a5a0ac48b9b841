"""Logging: named events, JSON off a terminal, and no secret ever written."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import structlog

from mvbatch import logs

SECRET = "mv_live_s3cr3t_value_123"


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    logs.shutdown()
    structlog.reset_defaults()
    logs._secrets.clear()


def test_json_lines_off_a_terminal_and_secrets_redacted(tmp_path: Path) -> None:
    logs.register_secret(SECRET)
    stream = io.StringIO()
    log_file = tmp_path / "logs" / "mvbatch.jsonl"
    logs.configure("auto", "info", log_file=log_file, stream=stream)
    log = logs.get()
    log.info(
        "task.submitted",
        key="mvb1-abc",
        authorization=f"Bearer {SECRET}",
        url=f"https://api.example/?k={SECRET}",
        nested={"api_key": "x", "ok": SECRET},
    )
    line = json.loads(stream.getvalue().strip())
    assert line["event"] == "task.submitted"
    assert line["key"] == "mvb1-abc"  # the idempotency key is not a secret
    assert line["authorization"] == logs.REDACTED
    assert SECRET not in stream.getvalue()
    assert line["nested"] == {"api_key": logs.REDACTED, "ok": logs.REDACTED}
    assert SECRET not in log_file.read_text()
    assert json.loads(log_file.read_text())["event"] == "task.submitted"


def test_console_level_filters_but_file_keeps_info(tmp_path: Path) -> None:
    stream = io.StringIO()
    log_file = tmp_path / "mvbatch.jsonl"
    logs.configure("json", "warning", log_file=log_file, stream=stream)
    logs.get().info("task.polled", polls=1)
    logs.get().warning("budget.refused", over=0.5)
    assert "task.polled" not in stream.getvalue()
    assert "budget.refused" in stream.getvalue()
    events = [json.loads(x)["event"] for x in log_file.read_text().splitlines()]
    assert events == ["task.polled", "budget.refused"]


def test_exceptions_in_fields_are_redacted() -> None:
    logs.register_secret(SECRET)
    stream = io.StringIO()
    logs.configure("json", "info", stream=stream)
    logs.get().error("api.failed", error=RuntimeError(f"401 for key {SECRET}"))
    assert SECRET not in stream.getvalue()
    assert "401 for key" in stream.getvalue()


# Keys of the shapes people paste; only the last is caught by a pattern too.
KEY_SHAPES = [
    "sk-proj-4fT9xQ2mZ7vL1cB8nR3kW6yH0aJ5",
    "3f2a9c1e-7b4d-4e8a-9c6f-1d2e3f4a5b6c",
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "k3y.+*?^$()[]{}|\\/=&%",  # regex metacharacters, taken literally
    "mv_live_Q7x2Lk9PzR4mN8vB",
]


@pytest.mark.parametrize("key", KEY_SHAPES)
def test_a_registered_key_of_any_shape_is_redacted_as_it_is_and_as_echoed(key: str) -> None:
    logs.register_secret(key)
    echoes = [
        f"request {key} failed",
        f"https://cdn.test/v.mp4?token={quote(key, safe='')}&x=1",
        f"https://cdn.test/v.mp4?token={quote_plus(key)}",
        json.dumps({"echo": key}),
    ]
    for text in echoes:
        redacted = logs.redact_text(text)
        assert logs.REDACTED in redacted, text
        assert key not in redacted
        assert quote(key, safe="") not in redacted
        assert json.dumps(key)[1:-1] not in redacted
    assert logs.redact_text("nothing secret here") == "nothing secret here"


def test_a_short_key_is_redacted_where_it_stands_alone_and_kept_inside_words() -> None:
    """A key under 6 characters would blank ordinary words wherever it appears; skipping
    it would leak it. It is replaced where it is a token of its own."""
    logs.register_secret("abc")
    assert logs.redact_text("https://cdn.test/v?key=abc&x=1") == (
        f"https://cdn.test/v?key={logs.REDACTED}&x=1"
    )
    assert logs.redact_text("Bearer: abc") == f"Bearer: {logs.REDACTED}"
    assert logs.redact_text("abcdef xabc abc1") == "abcdef xabc abc1"


def test_credentials_are_redacted_even_when_not_registered() -> None:
    text = "proxy said: Authorization=Bearer abc.def-123456 for mv_live_Zx9_q and mv_test_1"
    redacted = logs.redact_text(text)
    assert "abc.def-123456" not in redacted
    assert "mv_live_Zx9_q" not in redacted
    assert "mv_test_1" not in redacted
    assert "mv_sim_local" in logs.redact_text("mv_sim_local")  # the simulator's key is public


def test_logged_tracebacks_are_plain_and_redacted() -> None:
    logs.register_secret(SECRET)
    stream = io.StringIO()
    logs.configure("console", "info", stream=stream)
    headers = {"authorization": f"Bearer {SECRET}"}
    try:
        raise RuntimeError(f"failed with {headers}")
    except RuntimeError:
        logs.get().exception("task.crashed", key="mvb1-x")
    output = stream.getvalue()
    assert "task.crashed" in output
    assert "RuntimeError" in output
    assert SECRET not in output
