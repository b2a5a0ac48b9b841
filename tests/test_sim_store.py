"""The simulator's SQLite state: migrations, atomic create-or-replay, surviving a restart."""

from __future__ import annotations

import sqlite3
import threading
from decimal import Decimal
from pathlib import Path

import pytest
from sim_helpers import FakeClock, sim_client

from mvbatch.sim.config import SimConfig
from mvbatch.sim.store import DB_NAME, MIGRATIONS, Conflict, Store, TaskRecord

KLING = {"model": "kling-v2-6", "input": {"prompt": "A car", "duration": 10, "mode": "pro"}}


def record(seq: int, **changes: object) -> TaskRecord:
    values: dict[str, object] = {
        "seq": seq,
        "task_id": f"task_{seq}",
        "owner": "sha256:owner",
        "idempotency_key": "k",
        "payload_hash": "sha256:p",
        "request_id": "req_1",
        "model": "kling-v2-6",
        "input_json": "{}",
        "tier": "std",
        "output_seconds": Decimal(5),
        "aspect_ratio": "16:9",
        "cost": Decimal("0.0414"),
        "created_at": 1.0,
        "queued_seconds": 1.0,
        "run_seconds": 2.0,
        "failure_message": None,
        "cancelled_at": None,
    }
    values.update(changes)
    return TaskRecord(**values)  # type: ignore[arg-type]


def test_a_blank_database_gets_every_migration(tmp_path: Path) -> None:
    Store(tmp_path).close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    applied = [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY name")]
    assert applied == [name for name, _ in MIGRATIONS]
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "tasks", "billing", "counters", "_migrations"} <= tables
    columns = [row[1] for row in db.execute("PRAGMA table_info(tasks)")]
    assert columns == list(TaskRecord.__dataclass_fields__)
    db.close()
    Store(tmp_path).close()  # reopening applies nothing twice


def test_threads_racing_on_one_new_key_create_one_task() -> None:
    store = Store(None)
    barrier = threading.Barrier(8)
    results: list[tuple[TaskRecord, bool] | Conflict] = []

    def submit() -> None:
        barrier.wait()
        results.append(
            store.create_or_replay(
                owner="sha256:owner", idempotency_key="k", payload_hash="sha256:p", build=record
            )
        )

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    created = [r for r in results if isinstance(r, tuple) and r[1]]
    assert len(created) == 1
    assert {r[0].task_id for r in results if isinstance(r, tuple)} == {"task_1"}
    assert [e["kind"] for e in store.billing()] == ["charge"]


def test_a_different_payload_under_the_same_key_is_a_conflict() -> None:
    store = Store(None)
    store.create_or_replay(
        owner="sha256:owner", idempotency_key="k", payload_hash="a", build=record
    )
    result = store.create_or_replay(
        owner="sha256:owner", idempotency_key="k", payload_hash="b", build=record
    )
    assert isinstance(result, Conflict)
    assert result.existing.task_id == "task_1"


def test_a_refund_is_recorded_once() -> None:
    store = Store(None)
    created = store.create_or_replay(
        owner="sha256:owner", idempotency_key=None, payload_hash="a", build=record
    )
    assert isinstance(created, tuple)
    store.refund(created[0], 5.0)
    store.refund(created[0], 6.0)
    assert [e["kind"] for e in store.billing()] == ["charge", "refund"]


@pytest.mark.anyio
async def test_state_survives_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    config = SimConfig(state_dir=tmp_path, clock=clock, seed=7)
    headers = {"Idempotency-Key": "resume-me"}
    async with sim_client(config) as client:
        first = (await client.post("/api/v1/tasks", json=KLING, headers=headers)).json()
        assert first["status"] == "queued"

    clock.advance(3600)
    async with sim_client(config) as client:  # a new app on the same folder: a restart
        again = await client.post("/api/v1/tasks", json=KLING, headers=headers)
        assert again.json()["task_id"] == first["task_id"]
        assert again.headers["Idempotent-Replayed"] == "true"
        body = (await client.get(f"/api/v1/tasks/{first['task_id']}")).json()
        assert body["status"] == "succeeded"
        url = body["output"]["videos"][0]["url"]
        video = (await client.get(url)).content
        stats = (await client.get("/_sim/stats")).json()
        assert stats["billing"]["charges"] == 1
        assert stats["billing"]["by_idempotency_key"]["resume-me"]["charges"] == 1

    async with sim_client(config) as client:  # URLs and bytes survive the restart too
        response = await client.get(url)
        assert response.status_code == 200
        assert response.content == video


@pytest.mark.anyio
async def test_a_restart_keeps_the_schedule(tmp_path: Path) -> None:
    clock = FakeClock()
    config = SimConfig(state_dir=tmp_path, clock=clock)
    async with sim_client(config) as client:
        task_id = (await client.post("/api/v1/tasks", json=KLING)).json()["task_id"]
        statuses = []
        for _ in range(40):
            statuses.append((await client.get(f"/api/v1/tasks/{task_id}")).json()["status"])
            clock.advance(0.5)
    clock.advance(-20)
    async with sim_client(config) as client:
        replayed = []
        for _ in range(40):
            replayed.append((await client.get(f"/api/v1/tasks/{task_id}")).json()["status"])
            clock.advance(0.5)
    assert replayed == statuses
    assert statuses[0] == "queued"
    assert statuses[-1] == "succeeded"
