"""Poll schedules: few GETs per task, finished tasks noticed soon, never hammering.

Costs are computed on synthetic latencies (a seeded lognormal like the
simulator's), never on wall-clock time.
"""

from __future__ import annotations

import math
import random

import pytest

from mvbatch.run.polling import (
    COLD_FIRST,
    MAX_GAP,
    MIN_GAP,
    SCOUTS,
    LatencyBook,
    latency_class,
    optimal_schedule,
    replan_after,
    survival,
)


def lognormal(n: int, median: float = 4.0, sigma: float = 0.35, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [median * math.exp(rng.gauss(0, sigma)) for _ in range(n)]


def simulate(book: LatencyBook, name: str, latencies: list[float]) -> tuple[float, float]:
    """(mean GETs per task, mean detection delay / mean latency) under the book's schedule."""
    gets = delay = 0.0
    for latency in latencies:
        last = None
        t = 0.0
        while True:
            t = book.next_poll(name, t, last)
            gets += 1
            if t >= latency:
                delay += t - latency
                break
            last = t
    return gets / len(latencies), delay / sum(latencies)


def test_kaplan_meier_counts_running_tasks_as_at_risk() -> None:
    assert survival([1.0, 2.0], []) == [(1.0, 0.5), (2.0, 0.0)]
    # Two tasks still running at 3 s: the curve does not reach zero.
    steps = survival([1.0, 2.0], [3.0, 3.0])
    assert steps == [(1.0, 0.75), (2.0, 0.5)]


def test_a_learned_schedule_costs_few_gets_and_notices_soon() -> None:
    book = LatencyBook({"c": lognormal(300)})
    gets, delay = simulate(book, "c", lognormal(3000, seed=2))
    assert gets <= 2.7
    assert delay <= 0.2


def test_few_second_tasks_cost_at_most_three_gets_even_before_any_history() -> None:
    book = LatencyBook()
    gets, _ = simulate(book, "new", [2.5, 3.0, 3.5, 4.0, 5.0, 5.5])
    assert gets <= 3.0


def test_the_cold_schedule_starts_late_and_grows() -> None:
    book = LatencyBook()
    first = book.next_poll("x", 0.0, None)
    second = book.next_poll("x", first, first)
    third = book.next_poll("x", second, second)
    assert first == COLD_FIRST
    assert second - first < third - second


def test_polls_never_come_closer_than_the_minimum_gap() -> None:
    book = LatencyBook({"c": [0.01] * 20})
    assert book.next_poll("c", 5.0, 4.99) >= 4.99 + MIN_GAP


def test_past_the_learned_schedule_polls_back_off_to_a_cap() -> None:
    book = LatencyBook({"c": lognormal(100, median=2.0)})
    last, t, gaps = None, 0.0, []
    for _ in range(40):
        nxt = book.next_poll("c", t, last)
        if last is not None:
            gaps.append(nxt - last)
        last = t = nxt
    assert t > 100  # a stuck task is still polled, ever more rarely
    assert max(gaps) <= MAX_GAP
    assert gaps[-1] >= gaps[5]


def test_schedules_adapt_to_each_class() -> None:
    book = LatencyBook({"fast": lognormal(100, median=1.0), "slow": lognormal(100, median=20.0)})
    assert book.next_poll("fast", 0, None) < 1.5
    assert book.next_poll("slow", 0, None) > 10


def test_running_tasks_delay_the_schedule_of_their_class() -> None:
    # Three quick finishers and 30 tasks still running at 6 s: do not poll
    # everyone at 1 s just because the first finishers were fast.
    optimistic = optimal_schedule([1.0, 1.1, 1.2], [])
    censored = optimal_schedule([1.0, 1.1, 1.2], [6.0] * 30)
    assert optimistic[0] <= 1.2
    assert optimistic[-1] <= 1.2
    assert censored[-1] >= 6.0  # one poll when the survivors were last seen, not many
    book = LatencyBook({"c": [1.0, 1.1, 1.2]})
    for i in range(30):
        book.alive("c", f"t{i}", 6.0)
    book.observe("c", 1.3)
    assert book.next_poll("c", 0, None) >= 1.0


def test_only_a_few_scouts_of_a_new_class_poll_first() -> None:
    book = LatencyBook()
    firsts = [book.next_poll("new", 0.0, None, f"t{i}") for i in range(12)]
    assert firsts.count(COLD_FIRST) == SCOUTS
    assert all(t > COLD_FIRST for t in firsts[SCOUTS:])
    book.observe("new", 3.0, "t0")  # a scout finished: another task takes its place
    assert book.next_poll("new", 0.0, None, "t11") == COLD_FIRST
    assert replan_after(0.5) == 1.0
    assert replan_after(40.0) == 10.0


def test_observing_learns_within_a_run() -> None:
    book = LatencyBook()
    assert book.schedule("c") == ()
    for latency in lognormal(10, median=8.0):
        book.observe("c", latency)
    assert book.schedule("c")
    assert book.next_poll("c", 0, None) > COLD_FIRST
    assert book.median("c") == pytest.approx(8.0, rel=0.5)


def test_latency_class_names_model_tier_and_length() -> None:
    assert latency_class('kling-v2-6 {"mode":"std"}', 5) == 'kling-v2-6 {"mode":"std"} 5s'


def fixed_interval(latencies: list[float], interval: float) -> tuple[float, float]:
    """(mean GETs per task, mean delay / mean latency) of a script that GETs every `interval` s."""
    gets = [math.ceil(latency / interval) for latency in latencies]
    delay = sum(n * interval - latency for n, latency in zip(gets, latencies, strict=True))
    return sum(gets) / len(latencies), delay / sum(latencies)


def test_a_minute_long_class_is_noticed_within_seconds_not_a_share_of_its_latency() -> None:
    # A script polling every 2 s is ~1 s late on any task. Past LONG_LATENCY,
    # the schedule values a second of lateness the same whatever the class's
    # length, so a one-minute class is not left ~13 % (8 s) late.
    latencies = lognormal(3000, median=60.0, seed=2)
    book = LatencyBook({"c": lognormal(300, median=60.0)})
    gets, delay = simulate(book, "c", latencies)
    mean = sum(latencies) / len(latencies)
    assert delay * mean <= 2.0
    script_gets, _ = fixed_interval(latencies, 2.0)
    assert gets <= 0.5 * script_gets


def test_lateness_in_seconds_stays_bounded_as_classes_grow_longer() -> None:
    late = []
    for median in (20.0, 60.0, 180.0):
        latencies = lognormal(2000, median=median, seed=3)
        book = LatencyBook({"c": lognormal(300, median=median)})
        _, delay = simulate(book, "c", latencies)
        late.append(delay * sum(latencies) / len(latencies))
    # Nine times the latency, not nine times the lateness (shares: 13 % each).
    assert max(late) <= 2 * min(late)
    assert max(late) <= 2.5
