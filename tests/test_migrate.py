"""Migrations: a blank ledger has exactly the expected schema; each step is named and atomic.

And the ledgers already on users' disks (tests/ledgers/: dumps of ledgers
written by earlier code, never regenerated) open, migrate and read as before.
"""

from __future__ import annotations

import re
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest
import sqlite_utils

from mvbatch.ledger import SqliteLedger, migrations, open_ledger
from mvbatch.ledger.connection import FILE_NAME
from mvbatch.ledger.migrations import MIGRATIONS

OLD_LEDGERS = Path(__file__).parent / "ledgers"

# The schema a blank ledger must have (compared with white space collapsed).
# A change here is a change of the ledger format: it needs a new
# named migration (never an edit of a released one) and this snapshot updated.
EXPECTED = """
CREATE TABLE migrations (
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    applied_at TEXT NOT NULL
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    env TEXT NOT NULL,
    manifest TEXT NOT NULL,
    base_url TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    outcome TEXT,
    max_usd TEXT,
    concurrency INTEGER,
    pid INTEGER
);
CREATE TABLE tasks (
    env TEXT NOT NULL,
    key TEXT NOT NULL,
    manifest TEXT NOT NULL,
    shot TEXT NOT NULL,
    shots TEXT NOT NULL,
    variant TEXT NOT NULL,
    take INTEGER NOT NULL,
    model TEXT NOT NULL,
    input TEXT NOT NULL,
    price_class TEXT NOT NULL,
    seconds TEXT,
    upper_bound INTEGER NOT NULL DEFAULT 0,
    estimate_local TEXT NOT NULL,
    estimate_source TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    submit_key TEXT NOT NULL,
    task_id TEXT,
    request_id TEXT,
    cost_estimate TEXT,
    cost_actual TEXT,
    cost_prior TEXT NOT NULL DEFAULT '0',
    error TEXT,
    server_events TEXT,
    submissions INTEGER NOT NULL DEFAULT 0,
    polls INTEGER NOT NULL DEFAULT 0,
    run_id INTEGER REFERENCES runs (id),
    created_at TEXT NOT NULL,
    submitted_at TEXT,
    started_at TEXT,
    finished_at TEXT,
    updated_at TEXT NOT NULL, cost_reserved TEXT, rerolled_from TEXT, claimed_by TEXT,
    lease_until REAL,
    PRIMARY KEY (env, key)
);
CREATE INDEX tasks_manifest ON tasks (env, manifest, status);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    env TEXT NOT NULL,
    key TEXT NOT NULL,
    run_id INTEGER,
    at TEXT NOT NULL,
    previous TEXT,
    status TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX events_task ON events (env, key);
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TABLE outputs (
    env TEXT NOT NULL,
    key TEXT NOT NULL,
    idx INTEGER NOT NULL,
    url TEXT NOT NULL,
    path TEXT,
    sha256 TEXT,
    bytes INTEGER,
    downloaded_at TEXT, file_stat TEXT, verified_at TEXT,
    PRIMARY KEY (env, key, idx)
);
CREATE TABLE rates (
    env TEXT NOT NULL,
    price_class TEXT NOT NULL,
    usd_per_second TEXT NOT NULL,
    learned_at TEXT NOT NULL,
    samples INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (env, price_class)
);
CREATE TABLE latencies (
    id INTEGER PRIMARY KEY,
    env TEXT NOT NULL,
    latency_class TEXT NOT NULL,
    seconds REAL NOT NULL,
    observed_at TEXT NOT NULL
);
CREATE INDEX latencies_class ON latencies (env, latency_class);
CREATE INDEX tasks_committed ON tasks (
    env, manifest, status, estimate_local, cost_reserved, cost_estimate,
    cost_actual, cost_prior
);
CREATE TABLE verdicts (
    id INTEGER PRIMARY KEY,
    env TEXT NOT NULL,
    key TEXT NOT NULL,
    at TEXT NOT NULL,
    verdict TEXT,
    note TEXT
);
CREATE INDEX verdicts_task ON verdicts (env, key, id);
CREATE TRIGGER verdicts_no_update BEFORE UPDATE ON verdicts
BEGIN SELECT RAISE(ABORT, 'verdicts are append-only'); END;
CREATE TRIGGER verdicts_no_delete BEFORE DELETE ON verdicts
BEGIN SELECT RAISE(ABORT, 'verdicts are append-only'); END;
"""


def normal(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).replace("( ", "(").replace(" )", ")").strip()


def schema_of(db: sqlite_utils.Database) -> str:
    statements = db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid")
    return normal(" ".join(f"{sql};" for (sql,) in statements))


def user_version(db: sqlite_utils.Database) -> int:
    """The schema version any SQLite tool sees: the number of migrations applied."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_a_blank_ledger_has_exactly_the_expected_schema(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path) as ledger:
        assert schema_of(ledger.db) == normal(EXPECTED)


def test_migrations_are_named_recorded_and_versioned(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path) as ledger:
        names = [name for name, _ in MIGRATIONS]
        assert migrations.applied(ledger.db) == names
        assert migrations.pending(ledger.db) == []
        assert user_version(ledger.db) == len(names)
        assert all(re.fullmatch(r"m\d{3}_[a-z0-9_]+", name) for name in names)
        assert len(set(names)) == len(names)


def test_reopening_applies_nothing_twice(tmp_path: Path) -> None:
    SqliteLedger(tmp_path).close()
    with SqliteLedger(tmp_path) as ledger:
        assert ledger.db.execute("SELECT count(*) FROM migrations").fetchone()[0] == len(MIGRATIONS)
        assert schema_of(ledger.db) == normal(EXPECTED)


def test_a_new_migration_is_applied_once_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    SqliteLedger(tmp_path).close()

    def m999_add_note(db: sqlite_utils.Database) -> None:
        db.execute("ALTER TABLE runs ADD COLUMN note TEXT")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, ("m999_add_note", m999_add_note)])
    with SqliteLedger(tmp_path) as ledger:
        assert migrations.applied(ledger.db)[-1] == "m999_add_note"
        assert "note" in ledger.db["runs"].columns_dict
        assert user_version(ledger.db) == len(MIGRATIONS) + 1
    SqliteLedger(tmp_path).close()  # opening again does not run it again (it would fail)


def test_a_failing_migration_leaves_the_previous_schema_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    SqliteLedger(tmp_path).close()

    def m999_broken(db: sqlite_utils.Database) -> None:
        db.execute("ALTER TABLE runs ADD COLUMN half_done TEXT")
        raise RuntimeError("interrupted half-way")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, ("m999_broken", m999_broken)])
    with pytest.raises(RuntimeError, match="half-way"):
        SqliteLedger(tmp_path)
    db = sqlite3.connect(tmp_path / FILE_NAME)
    columns = [r[1] for r in db.execute("PRAGMA table_info(runs)")]
    assert "half_done" not in columns
    assert [r[0] for r in db.execute("SELECT name FROM migrations")] == [
        name for name, _ in MIGRATIONS
    ]
    db.close()


def test_pending_is_readable_without_applying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = SqliteLedger(tmp_path)
    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, ("m999_later", lambda db: None)])
    assert migrations.pending(ledger.db) == ["m999_later"]
    assert "m999_later" not in migrations.applied(ledger.db)
    ledger.close()


def test_pending_reads_an_old_file_without_migrating_it(tmp_path: Path) -> None:
    db = restore(OLD_LEDGERS / "m001_initial.sql", tmp_path)
    before = schema_of(db)
    assert migrations.applied(db) == ["m001_initial"]
    assert migrations.pending(db) == [
        "m002_output_file_stat",
        "m003_cost_reserved",
        "m004_review",
        "m005_claims",
    ]
    assert schema_of(db) == before
    assert migrations.pending(sqlite_utils.Database(memory=True)) == [n for n, _ in MIGRATIONS]


# ------------------------------------------------ ledgers written by earlier code


def restore(dump: Path, state_dir: Path) -> sqlite_utils.Database:
    """The dumped ledger as a file under `state_dir`, as its user left it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(state_dir / FILE_NAME)
    conn.executescript(dump.read_text(encoding="utf-8"))
    return sqlite_utils.Database(conn)


def statements(db: sqlite_utils.Database) -> list[str]:
    # A dump restores tables in name order: compare the statements, not their order.
    return sorted(
        normal(f"{sql};")
        for (sql,) in db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")
    )


def test_the_old_ledgers_are_what_their_migrations_made() -> None:
    dumps = sorted(p.name for p in OLD_LEDGERS.glob("*.sql"))
    assert dumps == [f"{name}.sql" for name, _ in MIGRATIONS]  # one per released schema


@pytest.mark.parametrize("dump", sorted(OLD_LEDGERS.glob("*.sql")), ids=lambda p: p.stem)
def test_a_ledger_written_by_earlier_code_opens_migrates_and_reads(
    dump: Path, tmp_path: Path
) -> None:
    restore(dump, tmp_path).close()
    with open_ledger(tmp_path) as ledger:
        assert isinstance(ledger, SqliteLedger)
        assert migrations.applied(ledger.db) == [name for name, _ in MIGRATIONS]
        assert user_version(ledger.db) == len(MIGRATIONS)
        with SqliteLedger(tmp_path / "blank") as blank:  # EXPECTED, as tested above
            assert statements(ledger.db) == statements(blank.db)
        assert ledger.integrity_check() == "ok"

        run = ledger.last_run("demo")
        assert run is not None
        assert (run["env"], run["outcome"], run["max_usd"]) == ("sim", "interrupted", "5")
        rows = {row.key: row for row in ledger.tasks("sim", "demo")}
        assert {key: row.status for key, row in rows.items()} == {
            "mvb1-done": "succeeded",
            "mvb1-failed": "queued",  # failed, then retried under a new key
            "mvb1-rejected": "rejected",
            "mvb1-flight": "processing",
            "mvb1-intent": "submitting",
            "mvb1-new": "planned",
        }
        done, retried = rows["mvb1-done"], rows["mvb1-failed"]
        assert (done.task_id, done.cost_actual, done.shots) == (
            "task_1",
            Decimal("0.0414"),
            ["car"],
        )
        assert done.input == {"prompt": "car at dusk", "mode": "std", "duration": 5}
        assert (retried.attempt, retried.submit_key) == (1, "mvb1-retry1")
        assert retried.cost_prior == Decimal("0.0828")
        assert rows["mvb1-intent"].committed == rows["mvb1-intent"].estimate_local
        assert rows["mvb1-rejected"].committed == 0
        [output] = ledger.outputs("sim", "mvb1-done")
        assert (output.path, output.bytes) == ("videos/car/mode-std_take1_mvb1-done.mp4", 1234)
        assert ledger.undownloaded("sim", "demo") == set()
        assert [e["status"] for e in ledger.events("sim", "mvb1-failed")] == [
            "submitting",
            "queued",
            "failed",
            "submitting",
            "queued",
        ]
        assert ledger.learned_rates("sim") == {
            'kling-v2-6 {"audio":false,"mode":"pro"}': Decimal("0.0116")
        }
        assert ledger.latencies("sim") == {'kling-v2-6 {"audio":false,"mode":"std"} 5s': [42.5]}

        # and the next run carries on where the old one stopped
        ledger.record_submitted(
            "sim",
            "mvb1-intent",
            task_id="task_5",
            request_id=None,
            status="queued",
            cost_estimate=None,
            run_id=None,
        )
        ledger.record_verified("sim", "mvb1-done", 0, '{"ino":2}')
        assert ledger.task("sim", "mvb1-intent").task_id == "task_5"  # type: ignore[union-attr]
        assert ledger.outputs("sim", "mvb1-done")[0].file_stat == '{"ino":2}'
