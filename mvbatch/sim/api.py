"""The documented task API: POST /api/v1/tasks, GET a task, GET its events.

Order of checks for every call: Bearer auth (401), injected faults (slow,
429, 5xx), then the call itself. Creating a task: JSON body, envelope and
model (404 for an unknown model), schema and prose rules (422), the
reference-video probe of motion control (422), then the Idempotency-Key
check-and-create in one transaction (409 on a different payload). The
task is billed in that same transaction.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any, cast

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mvbatch.sim import pricing, probe
from mvbatch.sim.faults import ApiRoll
from mvbatch.sim.lifecycle import CANCELLED, FAILED, SUCCEEDED, Timeline, draw_schedule, iso
from mvbatch.sim.responses import DroppedResponse, error, new_request_id, ok
from mvbatch.sim.service import Service, key_owner
from mvbatch.sim.store import Conflict, TaskRecord
from mvbatch.sim.validation import (
    check_envelope,
    check_input,
    check_reference_duration,
    schemas,
    with_defaults,
)

MAX_IDEMPOTENCY_KEY = 255
MOTION_CONTROL = "kling-v3-motion-control"


def service_of(request: Request) -> Service:
    return cast(Service, request.app.state.service)


def authenticate(service: Service, request: Request) -> str | None:
    """The owner hash of a valid Bearer key, or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    accepted = service.config.accepted_keys
    valid = (
        token in accepted if accepted is not None else token.startswith("mv_") and len(token) > 3
    )
    return key_owner(token) if valid else None


def unauthorized(request_id: str) -> JSONResponse:
    return error(
        401,
        "unauthorized",
        "A valid API key is required: send 'Authorization: Bearer <key>'.",
        request_id,
        headers={"WWW-Authenticate": 'Bearer realm="mindvideo"'},
    )


async def injected_fault(
    service: Service, roll: ApiRoll, request_id: str, *, creating: bool
) -> Response | None:
    """Apply one API call's dice; a response means the call fails here."""
    rates = service.faults.rates
    if roll.slow:
        service.count("fault:slow_response")
        await anyio.sleep(service.config.scaled(rates.slow_seconds))
    if roll.rate_limited:
        service.count("fault:rate_limit")
        wait = service.config.scaled(rates.retry_after_seconds)
        return error(
            429,
            "rate_limited",
            f"Too many requests; retry after {wait:g} s.",
            request_id,
            headers={"Retry-After": str(int(wait + 0.5))},
            retry_after=wait,
        )
    if roll.server_error is not None:
        service.count("fault:server_error")
        return error(roll.server_error, "server_error", "The service had a problem.", request_id)
    if creating and roll.drop_before_create:
        service.count("fault:drop_before_create")
        return DroppedResponse("before the task was created")
    return None


def files_origin(service: Service, request: Request) -> str:
    config = service.config
    return (
        config.files_base_url
        or config.public_base_url
        or f"{request.url.scheme}://{request.url.netloc}"
    )


def task_body(service: Service, record: TaskRecord, request: Request) -> dict[str, Any]:
    now = service.now()
    status = service.settle(record, now)
    timeline = service.timeline(record)
    cost_actual = service.cost_actual(record, status)
    body: dict[str, Any] = {
        "request_id": record.request_id,
        "task_id": record.task_id,
        "model": record.model,
        "status": status,
        "cost_estimate": pricing.as_json_number(record.cost),
        "cost_actual": None if cost_actual is None else pricing.as_json_number(cost_actual),
        "created_at": iso(record.created_at),
        "updated_at": iso(timeline.updated_at(now)),
        "output": None,
        "error": None,
    }
    if status == SUCCEEDED:
        url, expires = service.output_url(files_origin(service, request), record, now)
        body["output"] = {"videos": [{"url": url, "expires_at": iso(expires)}]}
    elif status == FAILED:
        body["error"] = {"code": "generation_failed", "message": record.failure_message}
    elif status == CANCELLED:
        body["error"] = {"code": "cancelled", "message": "The task was cancelled."}
    return body


def payload_hash(model: str, params: dict[str, Any]) -> str:
    canonical = json.dumps(
        {"model": model, "input": params}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


async def create_task(request: Request) -> Response:
    service = service_of(request)
    request_id = new_request_id()
    service.count("request:POST /api/v1/tasks")
    owner = authenticate(service, request)
    if owner is None:
        return unauthorized(request_id)
    roll = service.faults.roll_api()
    if (failure := await injected_fault(service, roll, request_id, creating=True)) is not None:
        return failure

    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        message = f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters."
        return error(400, "invalid_idempotency_key", message, request_id)

    raw = await request.body()
    if len(raw) > service.config.max_body_bytes:
        return error(413, "payload_too_large", "The request body is too large.", request_id)
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return error(400, "invalid_json", f"The request body is not valid JSON: {exc}", request_id)

    if problems := check_envelope(body):
        return error(
            422, "validation_error", "The request is invalid.", request_id, details=problems
        )
    model: str = body["model"]
    params: dict[str, Any] = body["input"]
    if model not in schemas():
        message = f"Unknown model {model!r}. Known models: {', '.join(sorted(schemas()))}."
        return error(404, "model_not_found", message, request_id)
    if problems := check_input(model, params):
        return error(422, "validation_error", "The input is invalid.", request_id, details=problems)

    full = with_defaults(model, params)
    if model == MOTION_CONTROL:
        seconds = await probe.reference_seconds(str(params["video_url"]), service.own_file_seconds)
        if problems := check_reference_duration(full, seconds):
            return error(
                422, "validation_error", "The input is invalid.", request_id, details=problems
            )
        assert seconds is not None
        seconds = seconds.quantize(Decimal("0.001"))
    else:
        seconds = Decimal(int(full.get("duration", 5)))
    quote = pricing.quote(model, full, seconds)
    aspect_ratio = str(full.get("aspect_ratio") or full.get("size") or "16:9")
    now = service.now()

    def build(seq: int) -> TaskRecord:
        schedule = draw_schedule(
            service.task_rng(seq),
            model=model,
            tier=quote.tier,
            seconds=seconds,
            failure_rate=service.faults.failure_rate(),
            scale=service.scale(),
            median_seconds=service.config.latency_median_seconds,
            spread=service.config.latency_spread,
        )
        return TaskRecord(
            seq=seq,
            task_id=service.new_task_id(seq),
            owner=owner,
            idempotency_key=idempotency_key,
            payload_hash=payload_hash(model, params),
            request_id=request_id,
            model=model,
            input_json=json.dumps(params, sort_keys=True, ensure_ascii=False),
            tier=quote.tier,
            output_seconds=seconds,
            aspect_ratio=aspect_ratio,
            cost=quote.cost,
            created_at=now,
            queued_seconds=schedule.queued_seconds,
            run_seconds=schedule.run_seconds,
            failure_message=schedule.failure_message,
            cancelled_at=None,
        )

    result = service.store.create_or_replay(
        owner=owner,
        idempotency_key=idempotency_key,
        payload_hash=payload_hash(model, params),
        build=build,
    )
    if isinstance(result, Conflict):
        message = (
            "This Idempotency-Key was already used with a different payload; "
            "use a new key for a new request."
        )
        return error(409, "idempotency_conflict", message, request_id)
    record, created = result
    if created:
        if record.failure_message is not None:
            service.count("fault:generation_failure")
        if roll.drop_after_create:
            service.count("fault:drop_after_create")
            return DroppedResponse("after the task was created")
    headers = {} if created else {"Idempotent-Replayed": "true"}
    return ok(task_body(service, record, request), request_id, headers)


async def _owned_task(request: Request, name: str) -> tuple[Service, str, TaskRecord | Response]:
    service = service_of(request)
    request_id = new_request_id()
    service.count(f"request:GET /api/v1/tasks/{{task_id}}{name}")
    owner = authenticate(service, request)
    if owner is None:
        return service, request_id, unauthorized(request_id)
    roll = service.faults.roll_api()
    if (failure := await injected_fault(service, roll, request_id, creating=False)) is not None:
        return service, request_id, failure
    task_id = request.path_params["task_id"]
    record = service.store.get(task_id)
    # Another key's task is indistinguishable from a missing one.
    if record is None or record.owner != owner:
        return (
            service,
            request_id,
            error(404, "task_not_found", f"No task {task_id!r}.", request_id),
        )
    return service, request_id, record


async def get_task(request: Request) -> Response:
    service, request_id, found = await _owned_task(request, "")
    if isinstance(found, Response):
        return found
    return ok(task_body(service, found, request), request_id)


async def task_events(request: Request) -> Response:
    service, request_id, found = await _owned_task(request, "/events")
    if isinstance(found, Response):
        return found
    now = service.now()
    status = service.settle(found, now)
    timeline: Timeline = service.timeline(found)
    body = {
        "request_id": found.request_id,
        "task_id": found.task_id,
        "status": status,
        "events": timeline.events(now),
    }
    return ok(body, request_id)
