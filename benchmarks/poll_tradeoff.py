"""GETs against lateness: the poll scheduler's whole trade-off curve, next to a 2 s poller.

Run: python benchmarks/poll_tradeoff.py [--medians 4,12,60,180] [--tasks 2000]

For each median latency, tasks with the simulator's spread (lognormal,
sigma 0.35) are polled on the schedule `LatencyBook` computes from 300
finished tasks of their class (a warm ledger), at the shipped weight of
lateness (`DELAY_WEIGHT`) and at multiples of it. Printed per point: GETs per
task, how late a finished task is noticed (mean, seconds), and the same for
the script of `peer_naive.py` (a GET every 2 s). A second or so of
simulation per point; no network, no ledger.

The question it answers: how many of the script's GETs does mvbatch need to
notice finished tasks as soon as the script does? In a run bound by its
concurrency, every task noticed late holds its slot that much longer, so the
makespan follows lateness.
"""

from __future__ import annotations

import argparse
import math
import platform
import random

from mvbatch.run.polling import DELAY_WEIGHT, LatencyBook

SIGMA = 0.35  # the simulator's spread of log-latency
SCRIPT_INTERVAL = 2.0
MULTIPLES = (0.5, 1.0, 2.0, 4.0, 8.0)


def lognormal(n: int, median: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [median * math.exp(rng.gauss(0, SIGMA)) for _ in range(n)]


def scheduled(book: LatencyBook, latencies: list[float]) -> tuple[float, float]:
    """(GETs per task, mean seconds late) of tasks polled on the book's schedule."""
    gets = late = 0.0
    for latency in latencies:
        t, last = 0.0, None
        while True:
            t = book.next_poll("c", t, last)
            gets += 1
            if t >= latency:
                late += t - latency
                break
            last = t
    return gets / len(latencies), late / len(latencies)


def script(latencies: list[float]) -> tuple[float, float]:
    gets = [math.ceil(latency / SCRIPT_INTERVAL) for latency in latencies]
    late = [n * SCRIPT_INTERVAL - x for n, x in zip(gets, latencies, strict=True)]
    return sum(gets) / len(latencies), sum(late) / len(latencies)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--medians", default="4,12,60,180")
    parser.add_argument("--tasks", type=int, default=2000)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, python {platform.python_version()}")
    print("| median | weight | GETs/task | late s | script GETs | script late s | GETs / script |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for median in (float(m) for m in args.medians.split(",")):
        latencies = lognormal(args.tasks, median, seed=3)
        script_gets, script_late = script(latencies)
        for multiple in MULTIPLES:
            book = LatencyBook({"c": lognormal(300, median, seed=1)}, DELAY_WEIGHT * multiple)
            gets, late = scheduled(book, latencies)
            shipped = " (shipped)" if multiple == 1.0 else ""
            print(
                f"| {median:g} s | {multiple:g}x{shipped} | {gets:.1f} | {late:.2f} | "
                f"{script_gets:.1f} | {script_late:.2f} | {gets / script_gets:.2f}x |"
            )


if __name__ == "__main__":
    main()
