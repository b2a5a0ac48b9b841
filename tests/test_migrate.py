"""Migrations: a blank ledger has exactly the expected schema; each step is named and atomic."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from mvbatch.ledger import store as ledger_module
from mvbatch.ledger.store import MIGRATIONS, Ledger

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
    updated_at TEXT NOT NULL,
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
"""


def normal(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).replace("( ", "(").replace(" )", ")").strip()


def schema_of(db: sqlite_utils.Database) -> str:
    statements = db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid")
    return normal(" ".join(f"{sql};" for (sql,) in statements))


def test_a_blank_ledger_has_exactly_the_expected_schema(tmp_path: Path) -> None:
    with Ledger(tmp_path) as ledger:
        assert schema_of(ledger.db) == normal(EXPECTED)


def test_migrations_are_named_recorded_and_versioned(tmp_path: Path) -> None:
    with Ledger(tmp_path) as ledger:
        names = [name for name, _ in MIGRATIONS]
        assert ledger.applied() == names
        assert ledger.pending() == []
        assert ledger.schema_version == len(names)
        assert all(re.fullmatch(r"m\d{3}_[a-z0-9_]+", name) for name in names)
        assert len(set(names)) == len(names)


def test_reopening_applies_nothing_twice(tmp_path: Path) -> None:
    Ledger(tmp_path).close()
    with Ledger(tmp_path) as ledger:
        assert ledger.db.execute("SELECT count(*) FROM migrations").fetchone()[0] == len(MIGRATIONS)
        assert schema_of(ledger.db) == normal(EXPECTED)


def test_a_new_migration_is_applied_once_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Ledger(tmp_path).close()

    def m999_add_note(db: sqlite_utils.Database) -> None:
        db.execute("ALTER TABLE runs ADD COLUMN note TEXT")

    monkeypatch.setattr(
        ledger_module, "MIGRATIONS", [*MIGRATIONS, ("m999_add_note", m999_add_note)]
    )
    with Ledger(tmp_path) as ledger:
        assert ledger.applied()[-1] == "m999_add_note"
        assert "note" in ledger.db["runs"].columns_dict
        assert ledger.schema_version == len(MIGRATIONS) + 1
    Ledger(tmp_path).close()  # opening again does not run it again (it would fail)


def test_a_failing_migration_leaves_the_previous_schema_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Ledger(tmp_path).close()

    def m999_broken(db: sqlite_utils.Database) -> None:
        db.execute("ALTER TABLE runs ADD COLUMN half_done TEXT")
        raise RuntimeError("interrupted half-way")

    monkeypatch.setattr(ledger_module, "MIGRATIONS", [*MIGRATIONS, ("m999_broken", m999_broken)])
    with pytest.raises(RuntimeError, match="half-way"):
        Ledger(tmp_path)
    db = sqlite3.connect(tmp_path / ledger_module.FILE_NAME)
    columns = [r[1] for r in db.execute("PRAGMA table_info(runs)")]
    assert "half_done" not in columns
    assert [r[0] for r in db.execute("SELECT name FROM migrations")] == [
        name for name, _ in MIGRATIONS
    ]
    db.close()


def test_pending_is_readable_without_applying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger(tmp_path)
    monkeypatch.setattr(ledger_module, "MIGRATIONS", [*MIGRATIONS, ("m999_later", lambda db: None)])
    assert ledger.pending() == ["m999_later"]
    assert "m999_later" not in ledger.applied()
    ledger.close()
