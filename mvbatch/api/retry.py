"""The one retry policy for mvbatch's HTTP calls, on stamina.

Owns: what is worth another attempt, how long to wait before it, how many
attempts a call gets, and the retry budget shared by every call of a run.
stamina runs the loop (counting attempts, sleeping, its testing switch); this
module tells it, through its backoff hook, whether to try again and after how
long, and learns through its instrumentation hook that a retry was
scheduled. It knows nothing about tasks, the ledger or the executor: a caller
says what one attempt is, and turns the last error into its own.

What is retried, exactly (nothing else is):

    RETRY_EXCEPTIONS   httpx.TimeoutException, httpx.NetworkError,
                       httpx.RemoteProtocolError, httpx.DecodingError,
                       MalformedResponse (a 2xx whose body is not JSON)
    RETRY_STATUSES     408, 429 and every 5xx, raised by the caller as
                       `httpx.HTTPStatusError` (see `retryable_status`)

Waits: exponential with full jitter, uniform(0, min(30 s, 0.5 s x 2^(n-1)))
before retry n, unless the answer carried a `Retry-After` (delta-seconds or
an HTTP date): then that, cut to 300 s, plus up to 10 % (at most 1 s) of
jitter so that waiting tasks do not all come back in the same millisecond.

Limits: 8 attempts per call, the first included, and no overall deadline
(stamina's default, 45 s, would give up on a call whose server asked us to
come back later; the attempts and the capped waits bound a call). On top, a
`RetryBudget` shared by all calls of a run: each retry made costs a token,
each success earns two back, so a dead API gets at most `reserve` retries in
all before the run stops instead of hammering it.

Whether a POST may be repeated at all is the caller's call (only with its
Idempotency-Key): it passes `on=never` for a call that must not be. And it
is the caller that remembers whether an unanswered attempt may have reached
the server (`maybe_sent`): see `mvbatch.api.client`.

Tests switch stamina to its testing mode (`stamina.set_testing`, in
`tests/conftest.py`): no sleeping, and the number of attempts a test asks
for. The hooks still run: the wait is still computed (`before_retry` sees
it) and the budget still paid; only stamina's sleep is skipped.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime

import httpx
import stamina
import stamina.instrumentation

from mvbatch.errors import MalformedResponse

ATTEMPTS = 8  # per call, the first one included

RETRY_EXCEPTIONS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.DecodingError,
    MalformedResponse,
)
RETRY_STATUSES = frozenset({408, 429})  # plus every 5xx, see `retryable_status`


def retryable_status(code: int) -> bool:
    """Is an HTTP answer with this status worth another attempt? 408, 429 and every 5xx."""
    return code in RETRY_STATUSES or 500 <= code <= 599


def transient(error: Exception) -> bool:
    """Is this failed attempt worth another? A retryable status or one of RETRY_EXCEPTIONS."""
    if isinstance(error, httpx.HTTPStatusError):
        return retryable_status(error.response.status_code)
    return isinstance(error, RETRY_EXCEPTIONS)


def never(_error: Exception) -> bool:
    """For a call that must not be repeated (a POST without an idempotency key)."""
    return False


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds to wait: delta-seconds or an HTTP date; None if unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def retry_after(error: Exception) -> float | None:
    """The wait the server asked for with a failed answer, if it asked."""
    if isinstance(error, httpx.HTTPStatusError):
        return parse_retry_after(error.response.headers.get("retry-after"))
    return None


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before retry `n`: full jitter under an exponential ceiling."""

    base: float = 0.5  # the first ceiling, doubled per retry
    cap: float = 30.0  # no ceiling above this
    # The longest Retry-After honoured. A longer one (a billion seconds, from
    # a broken or hostile server) is not slept on: the usual backoff applies,
    # so a run never sits silent for minutes, and a server that keeps saying
    # it runs out of attempts and stops the run, resumable (exit 4).
    max_retry_after: float = 120.0

    def ceiling(self, attempt: int) -> float:
        """min(cap, base x 2^(attempt-1)): the longest wait after failed attempt `attempt`."""
        return min(self.cap, self.base * 2.0 ** min(attempt - 1, 64))

    def wait(self, attempt: int, retry_after: float | None = None) -> float:
        """Uniform(0, ceiling(attempt)), or the server's `Retry-After` with a little jitter."""
        if retry_after is not None and retry_after <= self.max_retry_after:
            return retry_after + random.uniform(0, min(1.0, 0.1 * retry_after))
        return random.uniform(0, self.ceiling(attempt))


@dataclass
class RetryBudget:
    """Retries are paid from a bucket that successful calls refill.

    With `ratio` tokens earned per success, the client sustains a failure
    rate up to ratio/(1+ratio) (2/3 for the default) indefinitely, and a dead
    API gets at most `reserve` retries in all before the run stops.
    """

    reserve: float = 40.0
    ratio: float = 2.0
    tokens: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.reserve

    @property
    def dry(self) -> bool:
        return self.tokens < 1

    def earn(self) -> None:
        self.tokens = min(self.reserve, self.tokens + self.ratio)

    def spend(self) -> bool:
        if self.dry:
            return False
        self.tokens -= 1
        return True


# Which failures are worth another attempt, with stamina's own contract for
# its `on` hook: False (give up), True (retry after the policy's wait), or a
# number of seconds (retry after exactly that, e.g. from the caller's own
# count of failures in a row).
RetryOn = Callable[[Exception], bool | float]
# Told of each retry once stamina has scheduled it, before its wait:
# (the error, the number of the attempt that failed, the wait in seconds).
BeforeRetry = Callable[[Exception, int, float], None]


@dataclass
class RetryPolicy:
    """Attempts, waits and budget for one kind of call; `retrying()` runs one call."""

    attempts: int | None = ATTEMPTS
    backoff: Backoff = field(default_factory=Backoff)
    budget: RetryBudget | None = field(default_factory=RetryBudget)
    timeout: float | None = None  # seconds for all attempts of a call; None: no deadline

    def retrying(
        self, on: RetryOn = transient, before_retry: BeforeRetry | None = None
    ) -> Retrying:
        """The attempts of one call: `async for attempt in ...: with attempt: ...`.

        `on` says which errors are worth another attempt (`transient`, or
        `never`); the policy adds the budget and, unless `on` named one, the wait.
        """
        return Retrying(self, on, before_retry)

    def wait(self, error: Exception, attempt: int) -> float:
        """Seconds before retrying after `error` ended attempt number `attempt`.

        The server's `Retry-After` if the answer carried one, else backoff.
        """
        return self.backoff.wait(attempt, retry_after(error))


class Retrying:
    """One call's attempts: stamina's `retry_context`, with our wait and our budget.

    Two stamina hooks do the work. Its backoff hook (`on`) decides: not
    retryable, or the budget is dry, is False (give up); otherwise the wait.
    Its instrumentation hook then says the retry was scheduled (stamina did
    not stop on attempts or its deadline): only then is a token spent and
    the caller told. When the loop gives up, the last error is raised as it
    was; `attempt` is the number of attempts made, and `out_of_budget` says
    whether the budget stopped it.
    """

    def __init__(self, policy: RetryPolicy, on: RetryOn, before_retry: BeforeRetry | None) -> None:
        self.policy = policy
        self.on = on
        self.before_retry = before_retry
        self.attempt = 0
        self.out_of_budget = False
        self._error: Exception | None = None  # the failure `backoff_hook` chose to retry
        self._wait = 0.0
        self._context = stamina.retry_context(
            on=self.backoff_hook, attempts=policy.attempts, timeout=policy.timeout
        )

    def __aiter__(self) -> Retrying:
        self._attempts = self._context.__aiter__()
        return self

    async def __anext__(self) -> stamina.Attempt:
        # stamina schedules the retry (and calls `_retry_scheduled`) inside
        # this very step, in this task: point the hook at this call.
        _call.set(self)
        attempt = await self._attempts.__anext__()
        self.attempt = attempt.num
        return attempt

    def backoff_hook(self, error: Exception) -> bool | float:
        """stamina's `on`: False to give up, else the seconds to wait before the next attempt."""
        verdict = self.on(error)
        if verdict is False:
            return False
        if self.policy.budget is not None and self.policy.budget.dry:
            self.out_of_budget = True
            return False
        self._error = error
        self._wait = self.policy.wait(error, self.attempt) if verdict is True else float(verdict)
        return self._wait

    def _scheduled(self, error: Exception) -> None:
        """stamina scheduled the retry `backoff_hook` asked for: pay for it, tell the caller."""
        if self.policy.budget is not None:
            # Cannot fail: the hook saw a token, and nothing ran in between.
            self.policy.budget.spend()
        if self.before_retry is not None:
            self.before_retry(error, self.attempt, self._wait)


_call: ContextVar[Retrying | None] = ContextVar("mvbatch_retrying", default=None)


def _retry_scheduled(details: stamina.instrumentation.RetryDetails) -> None:
    call = _call.get()
    # The same error object: this is the retry that call's hook asked for
    # (not one of another stamina loop, after that call ended).
    if call is not None and call._error is details.caused_by:
        call._scheduled(details.caused_by)


# stamina's instrumentation is process-wide; mvbatch is the application, so
# it chooses: every retry is logged by its caller as one named event with
# what was called and why (`api.retry`), where stamina's default would log
# it again at warning level, on the console, without those fields.
stamina.instrumentation.set_on_retry_hooks((_retry_scheduled,))
