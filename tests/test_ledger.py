"""The ledger: every step in one transaction, every transition in an append-only log.

Also: `SqliteLedger` is a `Ledger` (the protocol the other stages use), and
every statement it runs is a named query of `queries.sql`.
"""

from __future__ import annotations

import inspect
import re
import sqlite3
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from mvbatch.ledger import (
    Ledger,
    SqliteLedger,
    committed_cost,
    learned_rates,
    migrations,
    open_ledger,
    plan_states,
    queries,
)
from mvbatch.ledger import sqlite as sqlite_module
from mvbatch.ledger import steps as steps_module

ENV = "sim"


def row(key: str = "mvb1-a", **extra: Any) -> dict[str, Any]:
    return {
        "key": key,
        "manifest": "demo",
        "shot": "car",
        "shots": ["car"],
        "variant": {"mode": "std"},
        "take": 1,
        "model": "kling-v2-6",
        "input": {"prompt": "p", "mode": "std"},
        "price_class": 'kling-v2-6 {"audio":false,"mode":"std"}',
        "seconds": Decimal(5),
        "estimate_local": Decimal("0.0414"),
        "estimate_source": "documented",
        **extra,
    }


@pytest.fixture
def ledger(tmp_path: Path) -> SqliteLedger:
    opened = SqliteLedger(tmp_path / "state")
    opened.ensure_tasks(ENV, [row()])
    return opened


def test_a_task_walks_its_lifecycle_and_every_step_is_an_event(ledger: SqliteLedger) -> None:
    assert ledger.task(ENV, "mvb1-a").status == "planned"  # type: ignore[union-attr]
    ledger.record_intent(
        ENV, "mvb1-a", previous="planned", submit_key="mvb1-a", attempt=0, run_id=None
    )
    intent = ledger.task(ENV, "mvb1-a")
    assert intent is not None
    assert intent.status == "submitting"
    assert intent.task_id is None
    assert intent.submissions == 1
    ledger.record_submitted(
        ENV,
        "mvb1-a",
        task_id="task_1",
        request_id="req_1",
        status="queued",
        cost_estimate=Decimal("0.0414"),
        run_id=None,
    )
    ledger.record_progress(
        ENV, "mvb1-a", previous="queued", status="processing", polls=1, run_id=None
    )
    ledger.record_finished(
        ENV,
        "mvb1-a",
        previous="processing",
        status="succeeded",
        cost_estimate=Decimal("0.0414"),
        cost_actual=Decimal("0.0414"),
        error=None,
        urls=["https://cdn/a.mp4", "https://cdn/b.mp4"],
        polls=3,
        latency=("c 5s", 4.2),
        run_id=None,
    )
    done = ledger.task(ENV, "mvb1-a")
    assert done is not None
    assert (done.status, done.task_id, done.request_id, done.polls) == (
        "succeeded",
        "task_1",
        "req_1",
        3,
    )
    assert done.cost_actual == Decimal("0.0414")
    assert done.plan_state == "done"
    assert done.submitted_at
    assert done.started_at
    assert done.finished_at
    assert [(e["previous"], e["status"]) for e in ledger.events(ENV, "mvb1-a")] == [
        ("planned", "submitting"),
        ("submitting", "queued"),
        ("queued", "processing"),
        ("processing", "succeeded"),
    ]
    assert [o.url for o in ledger.outputs(ENV, "mvb1-a")] == [
        "https://cdn/a.mp4",
        "https://cdn/b.mp4",
    ]
    assert ledger.latencies(ENV) == {"c 5s": [4.2]}


def test_the_event_log_is_append_only(ledger: SqliteLedger) -> None:
    ledger.record_intent(
        ENV, "mvb1-a", previous="planned", submit_key="mvb1-a", attempt=0, run_id=None
    )
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ledger.db.execute("UPDATE events SET status = 'succeeded'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ledger.db.execute("DELETE FROM events")


def test_ensure_tasks_never_touches_a_known_task(ledger: SqliteLedger) -> None:
    ledger.record_intent(
        ENV, "mvb1-a", previous="planned", submit_key="mvb1-a", attempt=0, run_id=None
    )
    ledger.ensure_tasks(ENV, [row(shot="renamed"), row("mvb1-b")])
    assert ledger.task(ENV, "mvb1-a").status == "submitting"  # type: ignore[union-attr]
    assert ledger.task(ENV, "mvb1-a").shot == "car"  # type: ignore[union-attr]
    assert [t.key for t in ledger.tasks(ENV, "demo")] == ["mvb1-a", "mvb1-b"]
    assert ledger.tasks("live", "demo") == []  # simulated and live never mix
    ledger.ensure_tasks(ENV, [row("mvb1-c", manifest="other")])
    assert [t.key for t in ledger.tasks(ENV, "demo")] == ["mvb1-a", "mvb1-b"]
    assert [t.key for t in ledger.tasks(ENV)] == ["mvb1-a", "mvb1-b", "mvb1-c"]
    assert ledger.task(ENV, "mvb1-unknown") is None


def test_a_retry_is_a_new_attempt_with_a_new_key_and_a_clean_row(ledger: SqliteLedger) -> None:
    ledger.record_intent(
        ENV, "mvb1-a", previous="planned", submit_key="mvb1-a", attempt=0, run_id=None
    )
    ledger.record_submitted(
        ENV,
        "mvb1-a",
        task_id="task_1",
        request_id=None,
        status="queued",
        cost_estimate=Decimal("0.0414"),
        run_id=None,
    )
    ledger.record_finished(
        ENV,
        "mvb1-a",
        previous="queued",
        status="failed",
        cost_estimate=None,
        cost_actual=Decimal(0),
        error="moderation",
        urls=[],
        polls=2,
        latency=None,
        run_id=None,
    )
    ledger.record_server_events(ENV, "mvb1-a", [{"type": "task.failed"}])
    failed = ledger.task(ENV, "mvb1-a")
    assert failed is not None
    assert failed.server_events == [{"type": "task.failed"}]
    ledger.record_intent(
        ENV, "mvb1-a", previous="failed", submit_key="mvb1-retry", attempt=1, run_id=None
    )
    retried = ledger.task(ENV, "mvb1-a")
    assert retried is not None
    assert (retried.status, retried.attempt, retried.submit_key) == ("submitting", 1, "mvb1-retry")
    assert retried.task_id is None
    assert retried.error is None
    assert retried.cost_actual is None
    assert retried.submissions == 2
    assert [e["status"] for e in ledger.events(ENV, "mvb1-a")] == [
        "submitting",
        "queued",
        "failed",
        "submitting",
    ]


def test_a_rejected_task_costs_nothing_and_keeps_the_servers_message(ledger: SqliteLedger) -> None:
    ledger.record_intent(
        ENV, "mvb1-a", previous="planned", submit_key="mvb1-a", attempt=0, run_id=None
    )
    ledger.record_rejected(
        ENV, "mvb1-a", error="input.duration: 7 is not one of [5, 10]", http_status=422, run_id=None
    )
    rejected = ledger.task(ENV, "mvb1-a")
    assert rejected is not None
    assert rejected.status == "rejected"
    assert rejected.plan_state == "failed"
    assert rejected.committed == 0
    assert "input.duration" in (rejected.error or "")


@pytest.mark.parametrize(
    ("status", "local", "server", "actual", "expected"),
    [
        ("planned", "1", None, None, "0"),
        ("submitting", "1", None, None, "1"),  # the POST may have reached the server
        ("queued", "1", "0.9", None, "0.9"),  # the server's estimate wins over ours
        ("succeeded", "1", "0.9", "0.8", "0.8"),  # and the actual cost over both
        ("failed", "1", "0.9", "0", "0"),  # refunded
        ("failed", "1", "0.9", None, "0.9"),  # not known to be refunded
        ("failed", "1", None, None, "0"),
        ("rejected", "1", None, None, "0"),
    ],
)
def test_committed_cost(
    status: str, local: str, server: str | None, actual: str | None, expected: str
) -> None:
    assert committed_cost(
        status,
        Decimal(local),
        None if server is None else Decimal(server),
        None if actual is None else Decimal(actual),
    ) == Decimal(expected)


def test_outputs_urls_and_downloads(ledger: SqliteLedger) -> None:
    ledger.record_output_url(ENV, "mvb1-a", 0, "https://cdn/old.mp4")
    ledger.record_output_url(ENV, "mvb1-a", 0, "https://cdn/fresh.mp4")
    ledger.record_download(ENV, "mvb1-a", 0, "videos/a.mp4", "ab" * 32, 1234)
    [output] = ledger.outputs(ENV, "mvb1-a")
    assert (output.url, output.path, output.bytes) == (
        "https://cdn/fresh.mp4",
        "videos/a.mp4",
        1234,
    )
    assert output.downloaded_at is not None


def test_undownloaded_lists_succeeded_tasks_with_missing_files(ledger: SqliteLedger) -> None:
    ledger.record_intent(
        ENV, "mvb1-a", previous="planned", submit_key="mvb1-a", attempt=0, run_id=None
    )
    ledger.record_finished(
        ENV,
        "mvb1-a",
        previous="submitting",
        status="succeeded",
        cost_estimate=None,
        cost_actual=Decimal("0.0414"),
        error=None,
        urls=["https://cdn/a.mp4"],
        polls=0,
        latency=None,
        run_id=None,
        task_id="task_1",
    )
    assert ledger.undownloaded(ENV, "demo") == {"mvb1-a"}
    ledger.record_download(ENV, "mvb1-a", 0, "videos/a.mp4", "ab" * 32, 10)
    assert ledger.undownloaded(ENV, "demo") == set()


def test_learned_rates_and_latencies_persist(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path) as ledger:
        ledger.record_learned_rate(ENV, "kling-v2-6 pro", Decimal("0.0116"))
        ledger.record_learned_rate(ENV, "kling-v2-6 pro", Decimal("0.0117"))
        for seconds in (3.0, 4.0, 5.0):
            ledger.db.execute(
                "INSERT INTO latencies (env, latency_class, seconds, observed_at) "
                "VALUES (?, ?, ?, ?)",
                [ENV, "c", seconds, "now"],
            )
    assert learned_rates(tmp_path, ENV) == {"kling-v2-6 pro": Decimal("0.0117")}
    assert learned_rates(tmp_path, "live") == {}
    with open_ledger(tmp_path) as ledger:
        assert ledger.learned_rates(ENV) == {"kling-v2-6 pro": Decimal("0.0117")}
        assert sorted(ledger.latencies(ENV)["c"]) == [3.0, 4.0, 5.0]
        assert ledger.latencies(ENV, limit_per_class=2)["c"] == [5.0, 4.0]  # newest first


def test_runs_are_recorded(ledger: SqliteLedger) -> None:
    run_id = ledger.start_run(ENV, "demo", "http://sim/api/v1", Decimal(2), 16)
    started = ledger.last_run("demo")
    assert started is not None
    assert (started["id"], started["env"], started["outcome"]) == (run_id, "sim", None)
    ledger.finish_run(run_id, "succeeded")
    last = ledger.last_run("demo")
    assert last is not None
    assert last["outcome"] == "succeeded"
    assert last["max_usd"] == "2"
    assert last["finished_at"] is not None
    assert ledger.last_run("other") is None


def test_pragmas_wal_and_busy_timeout(ledger: SqliteLedger) -> None:
    assert ledger.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger.db.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    assert ledger.integrity_check() == "ok"


def test_write_transactions_start_immediate_so_two_writers_wait_not_fail(tmp_path: Path) -> None:
    first = SqliteLedger(tmp_path)
    first.ensure_tasks(ENV, [row()])
    second = SqliteLedger(tmp_path)
    order: list[str] = []
    with first.transaction():
        # The write lock is taken at BEGIN: a second writer waits for it.
        thread = threading.Thread(
            target=lambda: (
                second.record_intent(
                    ENV, "mvb1-a", previous="planned", submit_key="mvb1-a", attempt=0, run_id=None
                ),
                order.append("second"),
            )
        )
        thread.start()
        time.sleep(0.2)
        order.append("first")
    thread.join(timeout=10)
    assert order == ["first", "second"]
    assert first.task(ENV, "mvb1-a").status == "submitting"  # type: ignore[union-attr]


def test_a_failed_step_leaves_nothing_behind(ledger: SqliteLedger) -> None:
    def half_done() -> None:
        with ledger.transaction() as db:
            db.execute("UPDATE tasks SET status = 'succeeded'")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        half_done()
    assert ledger.task(ENV, "mvb1-a").status == "planned"  # type: ignore[union-attr]


def test_plan_states_read_without_a_ledger_file(tmp_path: Path) -> None:
    assert plan_states(tmp_path / "none", "demo", ["k"], ENV) == {}
    assert learned_rates(tmp_path / "none", ENV) == {}
    assert not (tmp_path / "none").exists()


def test_plan_states_of_the_keys_asked_for(ledger: SqliteLedger, tmp_path: Path) -> None:
    ledger.ensure_tasks(ENV, [row("mvb1-b")])
    ledger.record_intent(
        ENV, "mvb1-a", previous="planned", submit_key="mvb1-a", attempt=0, run_id=None
    )
    states = plan_states(tmp_path / "state", "demo", ["mvb1-a", "mvb1-b", "mvb1-unknown"], ENV)
    assert states == {"mvb1-a": "in_flight", "mvb1-b": "new"}
    assert plan_states(tmp_path / "state", "demo", ["mvb1-a"], "live") == {}


def test_a_retry_keeps_what_the_failed_attempt_cost_in_cost_prior(ledger: SqliteLedger) -> None:
    ledger.record_intent(
        ENV, "mvb1-a", previous="planned", submit_key="mvb1-a", attempt=0, run_id=None
    )
    ledger.record_submitted(
        ENV,
        "mvb1-a",
        task_id="task_1",
        request_id=None,
        status="queued",
        cost_estimate=Decimal("0.05"),
        run_id=None,
    )
    ledger.record_finished(
        ENV,
        "mvb1-a",
        previous="queued",
        status="failed",
        cost_estimate=None,
        cost_actual=None,  # not refunded as far as we know: the estimate stands
        error="boom",
        urls=[],
        polls=1,
        latency=None,
        run_id=None,
    )
    ledger.record_intent(
        ENV, "mvb1-a", previous="failed", submit_key="mvb1-r1", attempt=1, run_id=None
    )
    retried = ledger.task(ENV, "mvb1-a")
    assert retried is not None
    assert retried.cost_prior == Decimal("0.05")
    assert retried.committed == Decimal("0.05") + retried.estimate_local
    ledger.record_rejected(ENV, "mvb1-a", error="no", http_status=422, run_id=None)
    ledger.record_intent(
        ENV, "mvb1-a", previous="rejected", submit_key="mvb1-r2", attempt=2, run_id=None
    )
    again = ledger.task(ENV, "mvb1-a")
    assert again is not None
    assert again.cost_prior == Decimal("0.05")  # a rejection added nothing, lost nothing


def test_a_refused_resend_is_failed_and_keeps_the_estimate(ledger: SqliteLedger) -> None:
    ledger.record_intent(
        ENV, "mvb1-a", previous="planned", submit_key="mvb1-a", attempt=0, run_id=None
    )
    ledger.record_refused_resend(
        ENV, "mvb1-a", error="refused", http_status=409, estimate=Decimal("0.2"), run_id=None
    )
    task = ledger.task(ENV, "mvb1-a")
    assert task is not None
    assert (task.status, task.committed) == ("failed", Decimal("0.2"))


# ------------------------------------------------------------- the protocol


def protocol_operations() -> list[str]:
    return [
        name
        for name, value in vars(Ledger).items()
        if inspect.isfunction(value)
        and name != "__init__"  # typing.Protocol's own
        and (not name.startswith("_") or name in ("__enter__", "__exit__"))
    ]


def test_the_protocol_lists_the_operations_the_stages_use() -> None:
    assert len(protocol_operations()) > 20
    assert {"record_intent", "record_submitted", "record_finished", "__enter__"} <= set(
        protocol_operations()
    )


@pytest.mark.parametrize("name", protocol_operations())
def test_sqlite_ledger_has_every_operation_with_the_same_parameters(name: str) -> None:
    implemented = getattr(SqliteLedger, name, None)
    assert implemented is not None, f"SqliteLedger has no {name}"
    assert inspect.signature(implemented) == inspect.signature(getattr(Ledger, name))


def test_every_operation_says_what_it_guarantees() -> None:
    undocumented = [
        name
        for name in protocol_operations()
        if not name.startswith("_") and name != "close" and not getattr(Ledger, name).__doc__
    ]
    assert not undocumented


def test_open_ledger_is_a_context_manager_that_closes(tmp_path: Path) -> None:
    with open_ledger(tmp_path / "state") as ledger:
        assert isinstance(ledger, SqliteLedger)
        ledger.ensure_tasks(ENV, [row()])
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        ledger.task(ENV, "mvb1-a")
    with open_ledger(tmp_path / "state") as again:
        assert again.task(ENV, "mvb1-a") is not None


# ---------------------------------------------------------- the named queries


def used_query_names() -> set[str]:
    used: set[str] = set()
    for module in (sqlite_module, steps_module, migrations):
        source = Path(module.__file__ or "").read_text(encoding="utf-8")
        used |= set(re.findall(r'Q\["([a-z0-9_]+)"\]', source))
        used |= set(re.findall(r"_transition\(\s*db,\s*\"([a-z0-9_]+)\"", source))
        # The shared steps name their statements to the backend's primitives.
        used |= set(re.findall(r"self\._(?:run|all|many)\(\s*\w+,\s*\"([a-z0-9_]+)\"", source))
        used |= set(re.findall(r"self\._each\(\s*\"([a-z0-9_]+)\"", source))
    return used


def test_every_named_query_is_used_and_every_name_used_exists() -> None:
    assert used_query_names() == set(queries.QUERIES)


def test_no_sql_outside_the_query_file_but_the_frozen_schema_and_pragmas() -> None:
    for module in (sqlite_module, steps_module):
        source = Path(module.__file__ or "").read_text(encoding="utf-8")
        assert not re.search(r"\b(SELECT|INSERT|UPDATE|DELETE|PRAGMA)\b", source)


def test_queries_are_parsed_by_name_without_their_comments() -> None:
    parsed = queries.parse(
        "-- header\n\n-- name: one\n-- what it does\nSELECT 1;\n\n-- name: two\nSELECT\n  2;\n"
    )
    assert parsed == {"one": "SELECT 1;", "two": "SELECT\n  2;"}
    with pytest.raises(ValueError, match="'one' is named twice"):
        queries.parse("-- name: one\nSELECT 1;\n-- name: one\nSELECT 2;\n")
    with pytest.raises(ValueError, match="'empty' has no statement"):
        queries.parse("-- name: empty\n-- nothing here\n")


def test_verdicts_are_appended_and_the_latest_counts(ledger: SqliteLedger) -> None:
    ledger.ensure_tasks("sim", [row("mvb1-a"), row("mvb1-b")])
    ledger.record_verdict("sim", "mvb1-a", "approved", "the keeper")
    ledger.record_verdict("sim", "mvb1-a", "rejected", "hands look wrong")
    ledger.record_verdict("sim", "mvb1-b", "approved", "")
    latest = ledger.verdicts("sim", "demo")
    assert {k: (v.verdict, v.note) for k, v in latest.items()} == {
        "mvb1-a": ("rejected", "hands look wrong"),
        "mvb1-b": ("approved", None),
    }
    assert [v.verdict for v in ledger.verdict_history("sim", "mvb1-a")] == ["approved", "rejected"]
    ledger.record_verdict("sim", "mvb1-a", None, None)  # cleared
    assert ledger.verdicts("sim", "demo")["mvb1-a"].verdict is None
    assert ledger.verdicts("live", "demo") == {}
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ledger.db.execute("UPDATE verdicts SET verdict = 'approved'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ledger.db.execute("DELETE FROM verdicts")


def test_a_verdict_on_an_unknown_task_or_of_an_unknown_kind_writes_nothing(
    ledger: SqliteLedger,
) -> None:
    ledger.ensure_tasks("sim", [row("mvb1-a")])
    with pytest.raises(KeyError):
        ledger.record_verdict("sim", "mvb1-nope", "approved", None)
    with pytest.raises(KeyError):
        ledger.record_verdict("live", "mvb1-a", "approved", None)
    with pytest.raises(ValueError, match="approved, rejected"):
        ledger.record_verdict("sim", "mvb1-a", "maybe", None)
    assert ledger.db.execute("SELECT count(*) FROM verdicts").fetchone()[0] == 0


def test_a_rerolled_take_names_the_take_it_replaces(ledger: SqliteLedger) -> None:
    ledger.ensure_tasks("sim", [row("mvb1-a"), row("mvb1-a2", take=2, rerolled_from="mvb1-a")])
    rows = {r.key: r for r in ledger.tasks("sim", "demo")}
    assert rows["mvb1-a"].rerolled_from is None
    assert rows["mvb1-a2"].rerolled_from == "mvb1-a"
