"""The simulator's own endpoints under /_sim: health, billing stats and test levers.

Not part of the MindVideo API. No API key, but only loopback (or in-process)
clients may call them:

- `GET /_sim/health`: ready probe, with the speed and fault rates in force.
- `GET /_sim/stats`: the billing ledger and counters, so a test can prove
  "charged exactly once".
- `POST /_sim/reset`: forget all tasks, charges and counters.
- `POST /_sim/faults`: `{"profile": "flaky", "server_error": 0.5, ...}` swaps
  the fault rates while running.
- `POST /_sim/clock`: `{"advance": 30}` moves the simulated clock forward.
- `POST /_sim/tasks/{task_id}/cancel`: cancel a task, as from the dashboard.
"""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from dataclasses import asdict, fields, replace
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mvbatch.sim.api import service_of
from mvbatch.sim.config import PROFILES, RATE_NAMES, FaultRates
from mvbatch.sim.lifecycle import CANCELLED, FAILED, PROCESSING, QUEUED, SUCCEEDED
from mvbatch.sim.pricing import as_json_number
from mvbatch.sim.responses import error, new_request_id
from mvbatch.sim.service import Service


def _is_local(request: Request) -> bool:
    host = request.client.host if request.client else None
    if host in {None, "testclient", "localhost"}:
        return True
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return False


def _forbidden() -> JSONResponse:
    return error(
        403, "forbidden", "/_sim endpoints answer loopback clients only.", new_request_id()
    )


async def health(request: Request) -> Response:
    if not _is_local(request):
        return _forbidden()
    service = service_of(request)
    _ = service.store  # open (or create) the database before saying "ready"
    return JSONResponse(
        {"ok": True, "speed": service.config.speed, "faults": asdict(service.faults.rates)}
    )


def max_in_flight(service: Service) -> int:
    """The most tasks that were ever queued or processing at one instant (all clients').

    A client that holds a concurrency limit never has more of its tasks alive
    here than its limit: this is how a test proves a fleet of workers held one.
    """
    edges: list[tuple[float, int]] = []
    for record in service.store.all_tasks():
        timeline = service.timeline(record)
        end = timeline.finished_at
        if timeline.cancelled_before_finish() and timeline.cancelled_at is not None:
            end = timeline.cancelled_at
        edges += [(timeline.created_at, 1), (end, -1)]
    most = alive = 0
    for _, change in sorted(edges):  # at one instant, an end (-1) sorts before a start
        alive += change
        most = max(most, alive)
    return most


def stats_body(service: Service) -> dict[str, Any]:
    """Billing by Idempotency-Key, task statuses, request, response and fault counters."""
    statuses = service.settle_all()
    by_status = dict.fromkeys((QUEUED, PROCESSING, SUCCEEDED, FAILED, CANCELLED), 0)
    by_status.update(Counter(statuses.values()))

    keyed: dict[str, dict[str, Any]] = {}
    unkeyed: dict[str, Any] = {
        "charges": 0,
        "refunds": 0,
        "charged": Decimal(0),
        "refunded": Decimal(0),
    }
    charged = refunded = Decimal(0)
    charges = refunds = 0
    for entry in service.store.billing():
        key = entry["idempotency_key"]
        bucket = (
            unkeyed
            if key is None
            else keyed.setdefault(
                key,
                {
                    "charges": 0,
                    "refunds": 0,
                    "charged": Decimal(0),
                    "refunded": Decimal(0),
                    "task_ids": [],
                },
            )
        )
        if entry["kind"] == "charge":
            charges += 1
            charged += entry["amount"]
            bucket["charges"] += 1
            bucket["charged"] += entry["amount"]
            if key is not None:
                bucket["task_ids"].append(entry["task_id"])
        else:
            refunds += 1
            refunded += entry["amount"]
            bucket["refunds"] += 1
            bucket["refunded"] += entry["amount"]

    def money(bucket: dict[str, Any]) -> dict[str, Any]:
        return {k: as_json_number(v) if isinstance(v, Decimal) else v for k, v in bucket.items()}

    counters = service.store.counters()

    def group(prefix: str) -> dict[str, int]:
        return {k.removeprefix(prefix): v for k, v in counters.items() if k.startswith(prefix)}

    faults = dict.fromkeys(RATE_NAMES, 0) | group("fault:")
    return {
        "tasks": {
            "total": len(statuses),
            "by_status": by_status,
            "max_in_flight": max_in_flight(service),
        },
        "billing": {
            "charges": charges,
            "refunds": refunds,
            "total_charged": as_json_number(charged),
            "total_refunded": as_json_number(refunded),
            "net": as_json_number(charged - refunded),
            "by_idempotency_key": {k: money(v) for k, v in keyed.items()},
            "without_idempotency_key": money(unkeyed),
        },
        "requests": group("request:"),
        "responses": group("status:"),
        "faults": faults,
        "downloads_with_authorization": counters.get("download:with_authorization", 0),
    }


async def stats(request: Request) -> Response:
    if not _is_local(request):
        return _forbidden()
    return JSONResponse(stats_body(service_of(request)))


async def reset(request: Request) -> Response:
    if not _is_local(request):
        return _forbidden()
    service_of(request).reset()
    return JSONResponse({"ok": True})


async def _json_object(request: Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.body() or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return body if isinstance(body, dict) else None


async def set_faults(request: Request) -> Response:
    if not _is_local(request):
        return _forbidden()
    service = service_of(request)
    body = await _json_object(request)
    request_id = new_request_id()
    if body is None:
        return error(400, "invalid_json", "Send a JSON object.", request_id)
    known = {f.name for f in fields(FaultRates)}
    profile = body.pop("profile", None)
    if profile is not None and profile not in PROFILES:
        return error(422, "validation_error", f"Unknown profile {profile!r}.", request_id)
    if unknown := sorted(set(body) - known):
        return error(
            422, "validation_error", f"Unknown fault rates: {', '.join(unknown)}.", request_id
        )
    base = PROFILES[profile] if profile is not None else service.faults.rates
    try:
        service.faults.rates = replace(base, **{k: float(v) for k, v in body.items()})
    except (TypeError, ValueError) as exc:
        return error(422, "validation_error", str(exc), request_id)
    return JSONResponse({"faults": asdict(service.faults.rates)})


async def advance_clock(request: Request) -> Response:
    if not _is_local(request):
        return _forbidden()
    service = service_of(request)
    body = await _json_object(request)
    seconds = body.get("advance") if body is not None else None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        return error(422, "validation_error", 'Send {"advance": <seconds >= 0>}.', new_request_id())
    service.clock_offset += float(seconds)
    return JSONResponse({"now": service.now(), "offset": service.clock_offset})


async def cancel_task(request: Request) -> Response:
    if not _is_local(request):
        return _forbidden()
    service = service_of(request)
    task_id = request.path_params["task_id"]
    if service.store.get(task_id) is None:
        return error(404, "task_not_found", f"No task {task_id!r}.", new_request_id())
    service.store.cancel(task_id, service.now())
    record = service.store.get(task_id)
    assert record is not None
    return JSONResponse({"task_id": task_id, "status": service.settle(record, service.now())})
