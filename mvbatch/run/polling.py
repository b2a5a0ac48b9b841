"""When to ask the API about a task again: poll schedules learned from observed latencies.

Owns: the latency history per latency class (model, tier and length, e.g.
`kling-v2-6 {"audio":false,"mode":"std"} 5s`), and turning it into a schedule
of poll times that asks few questions yet notices a finished task soon. It
must not do I/O: the run feeds it observations (from the ledger across runs;
`follow.Follower` and `finish.Finisher` as tasks run and finish) and the
follower asks it for the next poll time.

The schedule minimises, for a task of the class,

    expected GETs  +  DELAY_WEIGHT * expected detection delay / mean latency

over poll times on a grid, by dynamic programming on the survival curve
S(t) = P(latency > t). S is the Kaplan-Meier estimate from finished tasks
(exact observations) and tasks still running (censored at the time they were
last seen alive), so the first fast finishers of a batch do not make us
poll everyone too early; a curve that stops short (tasks still running past
the last finish) is continued by the lognormal that fits it. With a weight of
15, on latencies spread like the simulator's, a task costs about 2.4 GETs and
is noticed within ~13% of its latency; a task polled past the learned
schedule backs off geometrically, so a stuck task is never hammered.

That trade is made in shares of the latency, which suits classes of a few
seconds but leaves a one-minute class ~8 s late: a user waits in seconds,
and a script polling every 2 s is ~1 s late on any task. So past
LONG_LATENCY seconds of mean latency the weight grows with the square of the
mean (`delay_weight_for`), which keeps lateness near 1-2 s however long the
class (a 60 s class: ~14 GETs and ~1.5 s late, where a 2 s poller pays ~32
GETs for ~1 s; 180 s: ~39 GETs, ~2 s late), while classes of a few seconds
keep the trade above.

Without history the schedule is geometric from COLD_FIRST seconds, and only
SCOUTS tasks of a new class follow it closely: the others skip a step and
re-plan (`replan_after`) from what the scouts' class learns meanwhile.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist

DELAY_WEIGHT = 15.0
LONG_LATENCY = 8.0  # mean latency (s) past which lateness is weighed in seconds, not shares
MIN_GAP = 0.25  # never two GETs of one task closer than this
MAX_GAP = 60.0  # never wait longer than this between two GETs of one task
COLD_FIRST = 2.0  # first GET of a task of an unknown class, seconds after submission
COLD_GROWTH = 1.5  # ... and each next gap is this much longer
TAIL_GROWTH = 1.5  # past the learned schedule, gaps grow like this
MIN_EXACT = 3  # finished tasks needed before the history is trusted
GRID = 128
MAX_GRID_FACTOR = 4  # long classes get up to this many times GRID points
HISTORY = 500  # observations kept per class
SCOUTS = 5  # tasks of a class with no history that poll on the cold schedule
REPLAN_EVERY = 1.0  # a sleeping task re-plans at most this often (and every quarter of its age)
PRIOR_SIGMA, MIN_SIGMA, MAX_SIGMA = 0.4, 0.15, 1.2  # spread of log-latency, when extrapolating
PRIOR_WEIGHT = 5  # how many fitted points the prior spread counts as
_NORMAL = NormalDist()


def latency_class(price_class: str, seconds: object) -> str:
    return f"{price_class} {seconds}s"


@dataclass
class _Class:
    exact: list[float] = field(default_factory=list)  # sorted finished latencies
    alive: dict[str, float] = field(default_factory=dict)  # running task -> seen alive at
    schedule: tuple[float, ...] = ()
    computed_at: int = -1  # len(exact) when `schedule` was computed
    sightings: int = 0  # `alive` reports since then
    scouts: set[str] = field(default_factory=set)  # tasks finding out for a new class

    def due(self) -> bool:
        n = len(self.exact)
        if n < MIN_EXACT:
            return False
        if self.computed_at < 0:
            return True
        # Recompute as finished tasks grow by a third (at least every 50),
        # or once every running task has been seen again: early in a run the
        # running tasks say as much as the finished ones.
        grown = n >= min(self.computed_at * 4 // 3 + 1, self.computed_at + 50)
        return grown or (n < HISTORY // 2 and self.sightings >= max(8, len(self.alive)))


class LatencyBook:
    """Observed latencies per class and the poll schedules they imply."""

    def __init__(
        self,
        history: Mapping[str, Iterable[float]] | None = None,
        delay_weight: float = DELAY_WEIGHT,
    ) -> None:
        self.delay_weight = delay_weight
        self._classes: dict[str, _Class] = {}
        for name, values in (history or {}).items():
            entry = self._entry(name)
            entry.exact = sorted(v for v in values if v >= 0)[-HISTORY:]

    def _entry(self, name: str) -> _Class:
        entry = self._classes.get(name)
        if entry is None:
            entry = self._classes[name] = _Class()
        return entry

    def observe(self, name: str, seconds: float, task: str | None = None) -> None:
        """A task of the class finished `seconds` after it was submitted."""
        entry = self._entry(name)
        if task is not None:
            entry.alive.pop(task, None)
            entry.scouts.discard(task)
        bisect.insort(entry.exact, max(0.0, seconds))
        if len(entry.exact) > HISTORY:
            # Keep the spread, drop the oldest information: thin evenly.
            entry.exact = entry.exact[::2]
            entry.computed_at = -1

    def alive(self, name: str, task: str, elapsed: float) -> None:
        """A task of the class was seen still running `elapsed` seconds after submission."""
        entry = self._entry(name)
        entry.alive[task] = elapsed
        entry.sightings += 1

    def median(self, name: str) -> float | None:
        entry = self._classes.get(name)
        if entry is None or not entry.exact:
            return None
        return entry.exact[len(entry.exact) // 2]

    def schedule(self, name: str) -> tuple[float, ...]:
        """Poll times (seconds after submission) for a task of this class; () if unknown."""
        entry = self._entry(name)
        if entry.due():
            entry.schedule = optimal_schedule(
                entry.exact, list(entry.alive.values()), self.delay_weight
            )
            entry.computed_at = len(entry.exact)
            entry.sightings = 0
        return entry.schedule

    def next_poll(
        self, name: str, elapsed: float, last_poll: float | None, task: str | None = None
    ) -> float:
        """When (seconds after submission) to GET a task next, seen alive at `last_poll`.

        The answer may change as the class is learned: a caller waiting for it
        should ask again after `replan_after(elapsed)` seconds (no GET needed).
        """
        earliest = elapsed if last_poll is None else max(elapsed, last_poll + MIN_GAP)
        schedule = self.schedule(name)
        if not schedule:
            step = _cold_after(last_poll)
            if task is not None and not self._scouting(self._entry(name), task):
                # A few tasks of this new class are already finding out when
                # its tasks finish: the others skip a step, and re-plan from
                # what the scouts learn.
                step = _cold_after(step)
            return max(earliest, step)
        index = bisect.bisect_right(schedule, earliest - 1e-9)
        if index < len(schedule):
            return max(earliest, schedule[index])
        # Past everything learned: back off geometrically from the last poll.
        reference = last_poll if last_poll is not None else schedule[-1]
        previous_gap = schedule[-1] - schedule[-2] if len(schedule) > 1 else schedule[-1]
        gap = min(MAX_GAP, max(MIN_GAP, previous_gap * TAIL_GROWTH, reference * 0.25))
        return max(earliest, reference + gap)

    @staticmethod
    def _scouting(entry: _Class, task: str) -> bool:
        if task in entry.scouts:
            return True
        if len(entry.scouts) < SCOUTS:
            entry.scouts.add(task)
            return True
        return False


def replan_after(elapsed: float) -> float:
    """How long a task may sleep before its next poll time is worth recomputing."""
    return max(REPLAN_EVERY, 0.25 * elapsed)


def _cold_after(last_poll: float | None) -> float:
    """The geometric schedule 2, 3.5, 5.75, 9.1, ... used when a class is unknown."""
    t, gap = COLD_FIRST, COLD_FIRST * (COLD_GROWTH - 1) * COLD_GROWTH
    while last_poll is not None and t <= last_poll + 1e-9:
        t += gap
        gap = min(MAX_GAP, gap * COLD_GROWTH)
    return t


def survival(exact: list[float], censored: list[float]) -> list[tuple[float, float]]:
    """Kaplan-Meier: the steps (t, S(t)) of P(latency > t), from finished and running tasks."""
    events = sorted([(t, 1) for t in exact] + [(t, 0) for t in censored])
    at_risk = len(events)
    s = 1.0
    steps: list[tuple[float, float]] = []
    i = 0
    while i < len(events):
        t = events[i][0]
        deaths = removed = 0
        while i < len(events) and events[i][0] == t:
            deaths += events[i][1]
            removed += 1
            i += 1
        if deaths:
            s *= 1 - deaths / at_risk
            steps.append((t, s))
        at_risk -= removed
    return steps


def lognormal_fit(steps: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(mu, sigma) of a lognormal through the survival steps, on the probit scale.

    Used only to extend a curve that stops short (tasks still running past the
    last finish); sigma is kept within what task latencies plausibly show.
    """
    points = [(math.log(t), _NORMAL.inv_cdf(1 - v)) for t, v in steps if t > 0 and 0 < v < 1]
    if not points:
        return None
    if len(points) == 1:
        sigma = PRIOR_SIGMA
    else:
        mx = sum(x for x, _ in points) / len(points)
        mz = sum(z for _, z in points) / len(points)
        var = sum((z - mz) ** 2 for _, z in points)
        sigma = sum((x - mx) * (z - mz) for x, z in points) / var if var > 0 else PRIOR_SIGMA
    # Few points give a wild slope: lean on the prior until there are more.
    sigma = (len(points) * sigma + PRIOR_WEIGHT * PRIOR_SIGMA) / (len(points) + PRIOR_WEIGHT)
    sigma = min(MAX_SIGMA, max(MIN_SIGMA, sigma))
    mu = sum(x - sigma * z for x, z in points) / len(points)
    return mu, sigma


def delay_weight_for(mean: float, delay_weight: float = DELAY_WEIGHT) -> float:
    """The weight of detection delay (in shares of the mean latency) for a class of this mean.

    Constant up to LONG_LATENCY; past it, it grows with the square of the
    mean, so that a second late costs a long class as much as it costs a class
    of LONG_LATENCY seconds times the ratio of their means: lateness stays near
    a second or two instead of growing with the latency.
    """
    return delay_weight * max(1.0, mean / LONG_LATENCY) ** 2


def optimal_schedule(
    exact: list[float], censored: list[float], delay_weight: float = DELAY_WEIGHT
) -> tuple[float, ...]:
    """Poll times minimising GETs + weight * delay / mean latency (see the module docstring)."""
    steps = survival(exact, censored)
    if not steps:
        return ()
    # Tasks seen running past the last finish stretch the known curve: no
    # point polling anyone before then unless the curve says so.
    known = max(steps[-1][0], max(censored, default=0.0))
    if known <= 0:
        return (MIN_GAP,)
    horizon = known
    fit = lognormal_fit(steps) if steps[-1][1] > 0 else None
    if fit is not None:
        # Some tasks outlived everything seen so far (the first wave of a new
        # class): continue the curve with the lognormal that fits it, so they
        # get a schedule instead of blind back-off.
        mu, sigma = fit
        horizon = min(known * 10, max(known, math.exp(mu + sigma * _NORMAL.inv_cdf(0.995))))
    # A long class is polled densely for its length: a finer grid, so that
    # its gaps of a second or two are not rounded to the grid's step.
    rough_mean = sum(exact) / len(exact) if exact else known
    points = round(GRID * min(MAX_GRID_FACTOR, max(1.0, rough_mean / LONG_LATENCY) ** 0.5))
    dt = horizon / (points - 1)
    min_steps = max(1, round(MIN_GAP / dt))
    times = [k * dt for k in range(points)]
    step_times = [t for t, _ in steps]
    step_values = [v for _, v in steps]

    def s_at(t: float) -> float:
        if fit is not None and t > known:
            mu, sigma = fit
            beyond = 1 - _NORMAL.cdf((math.log(t) - mu) / sigma)
            at_known = 1 - _NORMAL.cdf((math.log(known) - mu) / sigma)
            return step_values[-1] * (beyond / at_known if at_known > 0 else 0.0)
        k = bisect.bisect_right(step_times, t)
        return 1.0 if k == 0 else step_values[k - 1]

    s = [s_at(t) for t in times]
    # Cumulative integral of S on the grid (trapezoids), for delay(i, j).
    area = [0.0] * points
    for k in range(1, points):
        area[k] = area[k - 1] + (s[k - 1] + s[k]) / 2 * dt
    mean = max(area[-1], dt)
    weight = delay_weight_for(mean, delay_weight) / mean
    tail = s[-1]
    # best[i]: least expected cost from a poll at times[i] onwards (task alive there).
    best = [0.0] * points
    choice = [points - 1] * points
    best[points - 1] = 2.0 * tail  # past the grid: a couple of backed-off polls
    for i in range(points - 2, -1, -1):
        si, ai, ti = s[i], area[i], times[i]
        if si <= 0:
            best[i] = 0.0
            choice[i] = points - 1
            continue
        lowest, pick = float("inf"), points - 1
        for j in range(min(i + min_steps, points - 1), points):
            # A GET at times[j] happens iff the task was alive at times[i];
            # tasks finishing in between wait (times[j] - finish) to be seen.
            delay = (times[j] - ti) * si - (area[j] - ai)
            cost = si + weight * delay + best[j]
            if cost < lowest:
                lowest, pick = cost, j
        best[i], choice[i] = lowest, pick
    polls: list[float] = []
    i = 0
    while i < points - 1:
        i = choice[i]
        polls.append(max(times[i], MIN_GAP))
        if s[i] <= 0:
            break
    return tuple(polls)
