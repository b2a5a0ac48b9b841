"""Crash injection for tests/test_crash.py: `kill -9` at a named instant of a real run.

tests/test_crash.py puts this folder first on PYTHONPATH for the one
subprocess that must crash, so that Python imports this module at start-up
(`site` imports the first `sitecustomize` on sys.path). With
`MVBATCH_CRASH_AT=<point>[:<n>]` set, it wraps one method so that the n-th
time (the first by default) the process passes the point, it sends itself
SIGKILL, exactly like `kill -9`: no handler, no cleanup, no flush.

- `after_post`: `ApiClient.submit` has the answer to a POST (the server
  created and charged the task) and has not returned it yet: the executor has
  not committed the task id.
- `after_intent`: the SQLite ledger's `record_intents` has committed a step
  of intents (the intents of every task that reached its POST in one turn of
  the event loop; `record_intent` is a step of one) and returned: none of
  their POSTs has been sent.

Without the variable it does nothing and imports nothing. Nothing in
`mvbatch` knows about it.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable
from typing import Any

VARIABLE = "MVBATCH_CRASH_AT"
Passed = Callable[[], None]  # called at each pass of the point


def _die_at(nth: int) -> Passed:
    """A counter that SIGKILLs this process the `nth` time it is called."""
    passes = 0

    def passed() -> None:
        nonlocal passes
        passes += 1
        if passes >= nth:
            os.kill(os.getpid(), signal.SIGKILL)

    return passed


def _after_post(passed: Passed) -> None:
    from mvbatch.api.client import ApiClient

    submit = ApiClient.submit

    @functools.wraps(submit)
    async def submit_then_die(self: ApiClient, *args: Any, **kwargs: Any) -> Any:
        state = await submit(self, *args, **kwargs)
        passed()
        return state

    ApiClient.submit = submit_then_die  # type: ignore[method-assign]


def _after_intent(passed: Passed) -> None:
    from mvbatch.ledger import SqliteLedger

    SqliteLedger.record_intents = _then(SqliteLedger.record_intents, passed)  # type: ignore[method-assign]


def _then(method: Any, passed: Passed) -> Any:
    """`method`, then `passed()` once it has returned."""

    @functools.wraps(method)
    def method_then_die(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        passed()
        return result

    return method_then_die


def _install(spec: str) -> None:
    point, _, nth = spec.partition(":")
    points = {"after_post": _after_post, "after_intent": _after_intent}
    if point not in points:
        raise RuntimeError(f"{VARIABLE}={spec!r}: the points are {', '.join(points)}")
    points[point](_die_at(int(nth or 1)))


if os.environ.get(VARIABLE):
    _install(os.environ[VARIABLE])
