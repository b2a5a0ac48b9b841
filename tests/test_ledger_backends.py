"""Every ledger backend keeps the same promises: SQLite and a real PostgreSQL, side by side.

Each test here runs once per backend through the `Ledger` protocol alone;
what only one backend has (SQLite's file, PostgreSQL's URL and locks) is
tested at the end. The PostgreSQL server is a real one started for this test
process (tests/pg_server.py).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mvbatch.errors import ConfigError
from mvbatch.ledger import Intent, Ledger, SqliteLedger
from mvbatch.ledger.postgres import PostgresLedger, applied, shown

ENV = "sim"


def row(key: str, **extra: Any) -> dict[str, Any]:
    return {
        "key": key,
        "manifest": "demo",
        "shot": "car",
        "shots": ["car"],
        "variant": {"mode": "std"},
        "take": 1,
        "model": "kling-v2-6",
        "input": {"prompt": "p", "mode": "std"},
        "price_class": "kling-v2-6 std",
        "seconds": Decimal(5),
        "estimate_local": Decimal("0.0414"),
        "estimate_source": "documented",
        **extra,
    }


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "state")
    return str(request.getfixturevalue("pg_url"))


def open_at(location: str) -> Ledger:
    if location.startswith("postgresql://"):
        return PostgresLedger(location)
    return SqliteLedger(Path(location))


@pytest.fixture
def ledger(location: str) -> Iterator[Ledger]:
    with open_at(location) as opened:
        yield opened


def walk(ledger: Ledger, key: str, *, actual: str = "0.0414", cap: Decimal | None = None) -> None:
    granted = ledger.record_intent(
        ENV, key, previous="planned", submit_key=key, attempt=0, run_id=None, cap=cap
    )
    assert granted.granted
    ledger.record_submitted(
        ENV,
        key,
        task_id=f"task-{key}",
        request_id="req",
        status="queued",
        cost_estimate=Decimal("0.0414"),
        run_id=None,
    )
    ledger.record_progress(ENV, key, previous="queued", status="processing", polls=1, run_id=None)
    ledger.record_finished(
        ENV,
        key,
        previous="processing",
        status="succeeded",
        cost_estimate=None,
        cost_actual=Decimal(actual),
        error=None,
        urls=[f"https://files.example/{key}.mp4"],
        polls=2,
        latency=("kling-v2-6 std", 12.5),
        run_id=None,
    )


def test_a_task_walks_its_lifecycle_with_an_event_per_step(ledger: Ledger) -> None:
    ledger.ensure_tasks(ENV, [row("mvb1-a"), row("mvb1-b")])
    ledger.ensure_tasks(ENV, [row("mvb1-a", shot="other")])  # known: never touched
    walk(ledger, "mvb1-a")
    done = ledger.task(ENV, "mvb1-a")
    assert done is not None
    assert (done.status, done.task_id, done.cost_actual, done.shot) == (
        "succeeded",
        "task-mvb1-a",
        Decimal("0.0414"),
        "car",
    )
    assert done.variant == {"mode": "std"}
    assert done.seconds == Decimal(5)
    assert [e["status"] for e in ledger.events(ENV, "mvb1-a")] == [
        "submitting",
        "queued",
        "processing",
        "succeeded",
    ]
    assert [t.key for t in ledger.tasks(ENV, "demo")] == ["mvb1-a", "mvb1-b"]  # planned order
    assert ledger.tasks("live", "demo") == []
    assert ledger.undownloaded(ENV, "demo") == {"mvb1-a"}
    ledger.record_download(ENV, "mvb1-a", 0, "demo/car/a.mp4", "ab" * 32, 1234, "stat")
    assert ledger.undownloaded(ENV, "demo") == set()
    (output,) = ledger.outputs(ENV, "mvb1-a")
    assert (output.path, output.bytes, output.file_stat) == ("demo/car/a.mp4", 1234, "stat")
    ledger.record_output_url(ENV, "mvb1-a", 0, "https://files.example/fresh.mp4")
    (output,) = ledger.outputs(ENV, "mvb1-a")
    assert output.url.endswith("fresh.mp4")
    assert output.path == "demo/car/a.mp4"
    assert ledger.latencies(ENV) == {"kling-v2-6 std": [12.5]}


def test_the_reads_for_large_ledgers_say_what_the_whole_rows_say(ledger: Ledger) -> None:
    """`each_task`, `task_states`, `rerolls` and `manifest_outputs` agree with the
    row-by-row reads, in planned order, and see only the manifest's tasks."""
    ledger.ensure_tasks(ENV, [row("mvb1-b"), row("mvb1-a"), row("mvb1-c", rerolled_from="mvb1-b")])
    ledger.ensure_tasks(ENV, [row("mvb1-x", manifest="other")])
    walk(ledger, "mvb1-a")
    walk(ledger, "mvb1-x")
    ledger.record_download(ENV, "mvb1-a", 0, "demo/car/a.mp4", "ab" * 32, 1234, "stat")
    whole = ledger.tasks(ENV, "demo")
    assert [t.key for t in whole] == ["mvb1-b", "mvb1-a", "mvb1-c"]
    assert list(ledger.each_task(ENV, "demo")) == whole
    assert [t.key for t in ledger.each_task(ENV)] == ["mvb1-b", "mvb1-a", "mvb1-c", "mvb1-x"]
    assert list(ledger.task_states(ENV, "demo").items()) == [
        ("mvb1-b", "planned"),
        ("mvb1-a", "succeeded"),
        ("mvb1-c", "planned"),
    ]
    (reroll,) = ledger.rerolls(ENV, "demo")
    assert (reroll.key, reroll.rerolled_from) == ("mvb1-c", "mvb1-b")
    assert ledger.manifest_outputs(ENV, "demo") == {"mvb1-a": ledger.outputs(ENV, "mvb1-a")}
    assert ledger.manifest_outputs(ENV, "other") == {"mvb1-x": ledger.outputs(ENV, "mvb1-x")}
    # The rows share their repeated values, and decode their JSON on each read.
    b, a, _c = whole
    assert b.manifest is a.manifest
    assert b.estimate_local is a.estimate_local
    assert a.input == {"prompt": "p", "mode": "std"}
    assert a.shots == ["car"]
    assert a.server_events is None


def test_the_cap_is_held_by_the_ledger(ledger: Ledger) -> None:
    ledger.ensure_tasks(ENV, [row(f"mvb1-{n}") for n in range(3)])
    cap = Decimal("0.09")
    granted = [
        ledger.record_intent(
            ENV,
            f"mvb1-{n}",
            previous="planned",
            submit_key=f"mvb1-{n}",
            attempt=0,
            run_id=None,
            cap=cap,
        )
        for n in range(3)
    ]
    assert [g.granted for g in granted] == [True, True, False]
    assert granted[2].committed == Decimal("0.0828")
    refused = ledger.task(ENV, "mvb1-2")
    assert refused is not None
    assert refused.status == "planned"
    stale = ledger.record_intent(
        ENV, "mvb1-0", previous="planned", submit_key="mvb1-0", attempt=0, run_id=None, cap=cap
    )
    assert stale.stale
    assert not stale.granted


def test_a_retry_keeps_what_the_failed_attempt_cost(ledger: Ledger) -> None:
    ledger.ensure_tasks(ENV, [row("mvb1-a")])
    ledger.record_intent(
        ENV, "mvb1-a", previous="planned", submit_key="mvb1-a", attempt=0, run_id=None
    )
    ledger.record_submitted(
        ENV,
        "mvb1-a",
        task_id="t1",
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
        cost_actual=Decimal("0.05"),
        error="boom",
        urls=[],
        polls=1,
        latency=None,
        run_id=None,
    )
    ledger.record_intent(
        ENV, "mvb1-a", previous="failed", submit_key="mvb1-a-r1", attempt=1, run_id=None
    )
    retried = ledger.task(ENV, "mvb1-a")
    assert retried is not None
    assert (retried.status, retried.task_id, retried.cost_prior, retried.submit_key) == (
        "submitting",
        None,
        Decimal("0.05"),
        "mvb1-a-r1",
    )


def test_verdicts_rates_and_runs(ledger: Ledger) -> None:
    ledger.ensure_tasks(ENV, [row("mvb1-a"), row("mvb1-b", take=2, rerolled_from="mvb1-a")])
    ledger.record_verdict(ENV, "mvb1-a", "approved", "first")
    ledger.record_verdict(ENV, "mvb1-a", "rejected", "second thoughts")
    with pytest.raises(KeyError):
        ledger.record_verdict(ENV, "mvb1-zzz", "approved", None)
    latest = ledger.verdicts(ENV, "demo")
    assert {k: v.verdict for k, v in latest.items()} == {"mvb1-a": "rejected"}
    assert len(ledger.verdict_history(ENV, "mvb1-a")) == 2
    rerolled = ledger.task(ENV, "mvb1-b")
    assert rerolled is not None
    assert rerolled.rerolled_from == "mvb1-a"
    ledger.record_learned_rate(ENV, "kling-v2-6 std", Decimal("0.01"))
    ledger.record_learned_rate(ENV, "kling-v2-6 std", Decimal("0.0083"))
    assert ledger.learned_rates(ENV) == {"kling-v2-6 std": Decimal("0.0083")}
    run_id = ledger.start_run(ENV, "demo", "http://127.0.0.1:1/api/v1", Decimal(2), 8)
    ledger.finish_run(run_id, "succeeded")
    last = ledger.last_run("demo")
    assert last is not None
    assert (last["outcome"], last["max_usd"]) == ("succeeded", "2")


# -- PostgreSQL only


def _reserve_all(url: str, keys: list[str], cap: str, results: Any, start: Any) -> None:
    with PostgresLedger(url) as ledger:
        start.wait(30)  # every worker connected: they race from the same moment
        granted = 0
        for key in keys:
            reservation = ledger.record_intent(
                ENV,
                key,
                previous="planned",
                submit_key=key,
                attempt=0,
                run_id=None,
                cap=Decimal(cap),
            )
            granted += reservation.granted
        results.put(granted)


def test_workers_on_one_database_share_one_cap_and_take_each_task_once(pg_url: str) -> None:
    keys = [f"mvb1-{n:03}" for n in range(200)]
    with PostgresLedger(pg_url) as ledger:
        ledger.ensure_tasks(ENV, [row(k) for k in keys])
    cap = "5.00"  # room for 120 tasks of $0.0414
    context = multiprocessing.get_context("spawn")
    results, start = context.Queue(), context.Event()
    # Four workers race over the same keys: two in one order (every step
    # contended), two in others (each worker's view of the spend goes stale).
    orders = [keys, keys, keys[::-1], keys[100:] + keys[:100]]
    workers = [
        context.Process(target=_reserve_all, args=(pg_url, order, cap, results, start))
        for order in orders
    ]
    for worker in workers:
        worker.start()
    time.sleep(2)  # not a timing assertion: lets the workers connect before they race
    start.set()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    granted = sum(results.get(timeout=5) for _ in workers)
    with PostgresLedger(pg_url) as ledger:
        rows = ledger.tasks(ENV, "demo")
        intents = [r for r in rows if r.status == "submitting"]
        assert granted == len(intents) == 120  # each task taken by one worker only
        assert sum(r.committed for r in rows) <= Decimal(cap)
        for r in intents:
            assert len(ledger.events(ENV, r.key)) == 1


def test_the_schema_is_migrated_once_and_the_logs_are_append_only(pg_url: str) -> None:
    with PostgresLedger(pg_url) as first, PostgresLedger(pg_url) as second:
        assert applied(first.conn) == applied(second.conn) == ["pg001_initial", "pg002_claims"]
        first.ensure_tasks(ENV, [row("mvb1-a")])
        walk(first, "mvb1-a")
        first.record_verdict(ENV, "mvb1-a", "approved", None)
        for table in ("events", "verdicts"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                second.conn.execute(f"UPDATE {table} SET at = 'x'")
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                second.conn.execute(f"DELETE FROM {table}")


def test_the_password_never_shows(pg_url: str) -> None:
    password = psycopg.conninfo.conninfo_to_dict(pg_url)["password"]
    assert isinstance(password, str)
    assert password
    assert password not in shown(pg_url)
    assert "***" in shown(pg_url)
    with PostgresLedger(pg_url) as ledger:
        assert password not in repr(ledger)
    wrong = pg_url.replace(password, password + "-wrong")
    with pytest.raises(ConfigError) as refused:
        PostgresLedger(wrong)
    assert password not in str(refused.value)
    assert "password authentication failed" in str(refused.value)
    unreachable = pg_url.rsplit(":", 1)[0] + ":1/nowhere"
    with pytest.raises(ConfigError, match="cannot open the ledger") as unreached:
        PostgresLedger(unreachable)
    assert password not in str(unreached.value)


def test_a_worker_holds_what_it_sends_until_its_lease_is_over(ledger: Ledger) -> None:
    ledger.ensure_tasks(ENV, [row("mvb1-a"), row("mvb1-b")])
    mine = ledger.record_intent(
        ENV,
        "mvb1-a",
        previous="planned",
        submit_key="mvb1-a",
        attempt=0,
        run_id=None,
        worker="w1",
        lease=60.0,
    )
    assert mine.granted
    held = ledger.task(ENV, "mvb1-a")
    assert held is not None
    assert held.claimed_by == "w1"
    assert ledger.claim(ENV, "mvb1-a", "w2", 60.0) is None  # w1 is alive
    assert ledger.claim(ENV, "mvb1-b", "w2", 60.0) is None  # not in flight: nothing to hold
    # A re-send by another worker while w1 holds it is refused as stale.
    resend = ledger.record_intent(
        ENV,
        "mvb1-a",
        previous="submitting",
        submit_key="mvb1-a",
        attempt=0,
        run_id=None,
        worker="w2",
        lease=60.0,
    )
    assert resend.stale
    assert ledger.renew(ENV, "w1", 0.0) == 1  # w1 stops beating: its lease is over now
    taken = ledger.claim(ENV, "mvb1-a", "w2", 60.0)
    assert taken is not None
    assert (taken.claimed_by, taken.status) == ("w2", "submitting")
    assert ledger.claim(ENV, "mvb1-a", "w1", 60.0) is None  # w2 holds it now
    assert ledger.release(ENV, "w2") == 1
    assert ledger.claim(ENV, "mvb1-a", "w1", 60.0) is not None  # let go: free at once


def test_the_fleets_concurrency_is_held_by_the_ledger(ledger: Ledger) -> None:
    ledger.ensure_tasks(ENV, [row(f"mvb1-{n}") for n in range(4)])

    def intent(n: int, worker: str) -> Any:
        return ledger.record_intent(
            ENV,
            f"mvb1-{n}",
            previous="planned",
            submit_key=f"mvb1-{n}",
            attempt=0,
            run_id=None,
            worker=worker,
            lease=60.0,
            in_flight_limit=2,
        )

    assert intent(0, "w1").granted
    assert intent(1, "w2").granted
    refused = intent(2, "w1")
    assert refused.busy
    assert not refused.granted
    still = ledger.task(ENV, "mvb1-2")
    assert still is not None
    assert still.status == "planned"
    ledger.record_rejected(ENV, "mvb1-0", error="no", http_status=400, run_id=None)
    assert intent(2, "w1").granted  # one ended: a slot is free, for any worker


def answers_of(reservations: list[Any]) -> list[tuple[Any, ...]]:
    return [(r.granted, r.estimate, r.committed, r.cap, r.stale, r.busy) for r in reservations]


def test_a_step_of_intents_answers_each_as_one_by_one_would(ledger: Ledger) -> None:
    """The cap exact across the step, a task that does not fit refused on its own (a
    smaller one after it still fits), stale tasks refused task by task."""
    for manifest in ("step", "alone"):
        ledger.ensure_tasks(ENV, [row(f"{manifest}-{n}", manifest=manifest) for n in "abcde"])
        ledger.record_intent(
            ENV, f"{manifest}-e", previous="planned", submit_key="e", attempt=0, run_id=None
        )
    cap = Decimal("0.15")

    def intents(manifest: str) -> list[Intent]:
        return [
            Intent(f"{manifest}-a", "planned", f"{manifest}-a", 0),  # 0.0414: fits
            Intent(f"{manifest}-b", "planned", f"{manifest}-b", 0, Decimal("0.05")),  # fits
            Intent(f"{manifest}-c", "planned", f"{manifest}-c", 0),  # 0.0414: over
            Intent(f"{manifest}-d", "planned", f"{manifest}-d", 0, Decimal("0.0001")),  # fits
            Intent(f"{manifest}-e", "planned", f"{manifest}-e", 0),  # submitting now: stale
        ]

    step = ledger.record_intents(ENV, intents("step"), run_id=None, cap=cap)
    alone = [
        ledger.record_intents(ENV, [intent], run_id=None, cap=cap)[0] for intent in intents("alone")
    ]
    assert answers_of(step) == answers_of(alone)
    e = Decimal("0.0414")  # the intent of task e, from before, counts
    assert answers_of(step) == [
        (True, Decimal("0.0414"), e, cap, False, False),
        (True, Decimal("0.05"), e + Decimal("0.0414"), cap, False, False),
        (False, Decimal("0.0414"), e + Decimal("0.0914"), cap, False, False),  # 0.1742
        (True, Decimal("0.0001"), e + Decimal("0.0914"), cap, False, False),
        (False, Decimal("0.0414"), None, cap, True, False),
    ]
    for manifest in ("step", "alone"):
        statuses = {r.key[-1]: r.status for r in ledger.tasks(ENV, manifest)}
        assert statuses == {
            "a": "submitting",
            "b": "submitting",
            "c": "planned",
            "d": "submitting",
            "e": "submitting",
        }
        reserved = ledger.task(ENV, f"{manifest}-b")
        assert reserved is not None
        assert reserved.cost_reserved == Decimal("0.05")
        # The evidence of each granted reservation is in its event, as when alone.
        (event,) = [e for e in ledger.events(ENV, f"{manifest}-d") if e["status"] == "submitting"]
        assert '"committed":"0.1328"' in event["detail"]


def test_a_step_of_intents_holds_the_fleets_in_flight_limit_and_claims(ledger: Ledger) -> None:
    ledger.ensure_tasks(ENV, [row(f"mvb1-{n}") for n in range(5)])
    assert ledger.claim(ENV, "mvb1-0", "w2", 60.0) is None  # not in flight: nothing to hold
    held = ledger.record_intent(
        ENV,
        "mvb1-0",
        previous="planned",
        submit_key="mvb1-0",
        attempt=0,
        run_id=None,
        worker="w2",
        lease=60.0,
    )
    assert held.granted
    ledger.record_rejected(ENV, "mvb1-0", error="no", http_status=400, run_id=None)
    step = ledger.record_intents(
        ENV,
        [Intent(f"mvb1-{n}", "planned", f"mvb1-{n}", 0, in_flight_limit=2) for n in (1, 2, 3)],
        run_id=None,
        worker="w1",
        lease=60.0,
    )
    assert [(r.granted, r.busy) for r in step] == [(True, False), (True, False), (False, True)]
    assert [t.status for t in ledger.tasks(ENV, "demo")] == [
        "rejected",
        "submitting",
        "submitting",
        "planned",
        "planned",
    ]
    # Another worker's live claim is refused as stale, in a step like alone.
    ledger.record_intent(
        ENV,
        "mvb1-4",
        previous="planned",
        submit_key="mvb1-4",
        attempt=0,
        run_id=None,
        worker="w2",
        lease=60.0,
    )
    (resend,) = ledger.record_intents(
        ENV, [Intent("mvb1-4", "submitting", "mvb1-4", 0)], run_id=None, worker="w1", lease=60.0
    )
    assert resend.stale


def test_a_step_with_a_key_twice_records_nothing(ledger: Ledger) -> None:
    ledger.ensure_tasks(ENV, [row("mvb1-a"), row("mvb1-b")])
    twice = [Intent(k, "planned", k, 0) for k in ("mvb1-a", "mvb1-b", "mvb1-a")]
    with pytest.raises(ValueError, match="at most once per step"):
        ledger.record_intents(ENV, twice, run_id=None)
    assert {t.status for t in ledger.tasks(ENV, "demo")} == {"planned"}
    assert ledger.record_intents(ENV, [], run_id=None) == []


def test_both_backends_have_the_same_tables_and_columns(tmp_path: Path, pg_url: str) -> None:
    """The schema test on both: a column added to one backend's migrations only fails here."""
    with SqliteLedger(tmp_path / "state") as lite:
        tables = [
            name
            for (name,) in lite.db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        sqlite_columns = {
            table: [c[1] for c in lite.db.execute(f"PRAGMA table_info({table})")]
            for table in tables
        }
    with PostgresLedger(pg_url) as pg:
        pg_columns: dict[str, list[str]] = {}
        for found in pg.conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        ):
            pg_columns.setdefault(found["table_name"], []).append(found["column_name"])
    # PostgreSQL has no rowid: `seq` keeps the tasks in the order they were planned.
    pg_columns["tasks"].remove("seq")
    assert pg_columns == sqlite_columns


def test_a_ledger_location_is_a_folder_a_file_or_a_url(tmp_path: Path, pg_url: str) -> None:
    from mvbatch.ledger import describe, open_ledger

    with open_ledger(tmp_path / "state") as in_folder:
        in_folder.ensure_tasks(ENV, [row("mvb1-a")])
    assert (tmp_path / "state" / "ledger.sqlite").is_file()
    with open_ledger(tmp_path / "team" / "shared.sqlite") as in_file:
        in_file.ensure_tasks(ENV, [row("mvb1-b")])
    assert (tmp_path / "team" / "shared.sqlite").is_file()
    with open_ledger(pg_url) as shared:
        shared.ensure_tasks(ENV, [row("mvb1-c")])
        assert [t.key for t in shared.tasks(ENV)] == ["mvb1-c"]
    password = psycopg.conninfo.conninfo_to_dict(pg_url)["password"]
    assert str(password) not in describe(pg_url)
    with pytest.raises(ConfigError, match="SQLite file or a postgresql:// URL"):
        open_ledger("mysql://user:pw@host/db")


def test_a_lost_database_is_said_plainly_without_the_password(pg_url: str) -> None:
    password = str(psycopg.conninfo.conninfo_to_dict(pg_url)["password"])
    with PostgresLedger(pg_url) as ledger:
        ledger.ensure_tasks(ENV, [row("mvb1-a")])
        pid = ledger.conn.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(ConfigError, match="lost the ledger") as lost:
            ledger.tasks(ENV, "demo")
        assert password not in str(lost.value)
        with pytest.raises(ConfigError, match="lost the ledger"):
            ledger.record_verdict(ENV, "mvb1-a", "approved", None)
