"""Execute 1,000 tasks against the simulator on loopback: throughput, CPU, memory, polling.

Run: python benchmarks/execute.py [--tasks 1000] [--concurrency 64] [--scenario both]

Two scenarios, each against a fresh `python -m mvbatch.sim` process on
127.0.0.1 (its own CPU, as a remote service would be), driven by the real
executor in this process (ledger, client, polling, budget: everything `mvbatch
run --no-download` does once the plan is shown):

- zero latency (`--speed 0`): tasks are finished when created, so this
  measures the client's own cost: tasks per second, client CPU milliseconds
  per task (this process's user+system time during the run / tasks), and the
  process's peak RSS.
- realistic latency (`--speed 1`: the simulator's lognormal latencies, a
  median of 4 s scaled by model, tier and length): GETs per task (from the
  simulator's request counters) and makespan over the ideal makespan. The
  ideal is a list schedule of the same tasks, in the same order, with the
  same concurrency, using each task's true server-side latency (read from
  the simulator's state), with zero client overhead and every finish noticed
  the instant it happens. The run starts with an empty ledger (cold: no
  latency history), then a second batch of new tasks runs on the learned
  history (warm), which is how a ledger is used.

Prints a Markdown table to paste into BENCHMARKS.md ("Execution").
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from mvbatch import logs
from mvbatch.api.client import ApiClient, pool_size
from mvbatch.api.endpoint import Endpoint
from mvbatch.commands.planning import build_plan, planned_rows
from mvbatch.ledger import open_ledger
from mvbatch.run.executor import Executor
from mvbatch.run.polling import DELAY_WEIGHT, LatencyBook
from mvbatch.settings import Settings

REPO = Path(__file__).resolve().parent.parent
READY = "mvbatch sim listening on "
# Documented price classes only, so no first-POST-alone probing skews the start.
SHOTS = [
    ("kling-v2-6", {"mode": "std", "duration": 5, "size": "16:9"}),
    ("kling-v3-omni", {"mode": "std", "duration": 5, "aspect_ratio": "16:9"}),
    ("kling-video-o1", {"mode": "pro", "duration": 5, "aspect_ratio": "16:9"}),
    ("kling-v2-6", {"mode": "std", "duration": 10, "size": "9:16"}),
]


def write_manifest(folder: Path, name: str, tasks: int, salt: str) -> Path:
    per_shot = 100  # the manifest's most takes per shot
    lines = [f'name = "{name}"', ""]
    for i in range(-(-tasks // per_shot)):
        model, fields = SHOTS[i % len(SHOTS)]
        takes = min(per_shot, tasks - i * per_shot)
        lines += [
            "[[shots]]",
            f'id = "shot-{i:03d}"',
            f'model = "{model}"',
            f'prompt = "Benchmark shot {i} {salt}: a car in neon rain"',
            f"takes = {takes}",
            "[shots.input]",
        ]
        lines += [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
        lines.append("")
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class Sim:
    def __init__(self, folder: Path, speed: float) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.state = folder / "sim"
        self.out = (folder / "sim.out").open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mvbatch.sim",
                "--port",
                "0",
                "--speed",
                str(speed),
                "--state-dir",
                str(self.state),
                "--log-level",
                "warning",
            ],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.base = self._ready(folder / "sim.out")

    def _ready(self, log: Path) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for line in log.read_text().splitlines():
                if line.startswith(READY):
                    return line.removeprefix(READY).strip()
            time.sleep(0.05)
        raise RuntimeError(log.read_text())

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.base}/_sim/stats", timeout=30).json()  # type: ignore[no-any-return]

    def latencies(self) -> dict[str, float]:
        """True latency of every task by idempotency key, from the simulator's own state."""
        with sqlite3.connect(self.state / "sim.sqlite3") as db:
            return {
                key: queued + run
                for key, queued, run in db.execute(
                    "SELECT idempotency_key, queued_seconds, run_seconds FROM tasks"
                )
            }

    def cpu(self) -> float:
        """The simulator process's CPU seconds so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.out.close()


@dataclass
class Measured:
    tasks: int
    seconds: float
    cpu: float
    rss_mb: float
    gets: int
    posts: int
    charges: int
    makespan: float
    ideal: float
    server_cpu: float
    delay: float  # mean time from a task's end to its noticing, over the mean latency


def ideal_makespan(latencies: list[float], slots: int) -> float:
    """List scheduling in submission order: each task starts when a slot frees."""
    free = [0.0] * slots
    end = 0.0
    for latency in latencies:
        start = heapq.heappop(free)
        finish = start + latency
        heapq.heappush(free, finish)
        end = max(end, finish)
    return end


async def execute(
    folder: Path,
    sim: Sim,
    name: str,
    tasks: int,
    concurrency: int,
    salt: str,
    delay_weight: float = DELAY_WEIGHT,
) -> Measured:
    settings = Settings(MVBATCH_STATE_DIR=folder / "state", MVBATCH_OUTPUT_DIR=folder / "out")
    path = write_manifest(folder, name, tasks, salt)
    the_plan = build_plan(path, settings, "live")
    endpoint = Endpoint("live", sim.base + "/api/v1", "mv_bench_key")
    before = sim.stats()
    server0 = sim.cpu()
    with open_ledger(settings.state_dir) as ledger:
        ledger.ensure_tasks("live", planned_rows(the_plan))
        run_id = ledger.start_run("live", the_plan.name, endpoint.base_url, None, concurrency)
        api = ApiClient(endpoint.api_client(max_connections=pool_size(concurrency)))
        executor = Executor(
            the_plan,
            ledger,
            api,
            env="live",
            cap=None,
            run_id=run_id,
            concurrency=concurrency,
            latencies=LatencyBook(ledger.latencies("live"), delay_weight),
        )
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = await executor.run()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        await api.aclose()
        ledger.finish_run(run_id, "benchmark")
        assert result.counts.get("succeeded") == tasks, result
    server = sim.cpu() - server0
    after = sim.stats()
    true = sim.latencies()
    with open_ledger(settings.state_dir) as ledger:
        # The order the executor actually submitted in (it interleaves classes).
        rows = sorted(ledger.tasks("live", the_plan.name), key=lambda r: r.submitted_at or "")
    keys = [r.key for r in rows]
    noticed = [_seconds(r.submitted_at, r.finished_at) for r in rows]
    late = sum(n - true[k] for n, k in zip(noticed, keys, strict=True))
    total = sum(true[k] for k in keys)
    delay = late / total if total > 0 else 0.0

    def count(stats: dict[str, Any], name: str) -> int:
        return int(stats["requests"].get(name, 0))

    charges = sum(after["billing"]["by_idempotency_key"][k]["charges"] for k in keys)
    return Measured(
        tasks=tasks,
        seconds=wall,
        cpu=cpu,
        rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        gets=count(after, "GET /api/v1/tasks/{task_id}")
        - count(before, "GET /api/v1/tasks/{task_id}"),
        posts=count(after, "POST /api/v1/tasks") - count(before, "POST /api/v1/tasks"),
        charges=charges,
        makespan=wall,
        ideal=ideal_makespan([true[k] for k in keys], concurrency),
        server_cpu=server,
        delay=delay,
    )


def _seconds(start: str | None, end: str | None) -> float:
    assert start is not None
    assert end is not None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--scenario", choices=["zero", "realistic", "both"], default="both")
    parser.add_argument(
        "--delay-weight",
        type=float,
        default=DELAY_WEIGHT,
        help="the poll scheduler's weight of detection delay against GETs",
    )
    args = parser.parse_args()
    logs.configure("json", "error")
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mvbatch-bench-") as tmp:
        folder = Path(tmp)
        if args.scenario in ("zero", "both"):
            # Three rounds, each on a fresh simulator; the median round is
            # reported with the range, since other load on 2 cores moves it.
            rounds = []
            for round_ in range(3):
                sim = Sim(folder / f"zero-{round_}", 0)
                try:
                    rounds.append(
                        asyncio.run(
                            execute(
                                folder / f"zero-{round_}",
                                sim,
                                "bench-zero",
                                args.tasks,
                                args.concurrency,
                                "zero",
                            )
                        )
                    )
                finally:
                    sim.close()
            rates = sorted(r.tasks / r.seconds for r in rounds)
            m = sorted(rounds, key=lambda r: r.tasks / r.seconds)[1]
            assert all(r.charges == r.tasks for r in rounds)
            rows.append(
                f"| zero latency | {m.tasks} | **{m.tasks / m.seconds:,.0f} tasks/s** "
                f"(rounds: {', '.join(f'{r:,.0f}' for r in rates)}) "
                f"| {1000 * m.cpu / m.tasks:.2f} ms CPU/task | peak RSS "
                f"{m.rss_mb:.0f} MB | simulator {1000 * m.server_cpu / m.tasks:.2f} ms "
                f"CPU/task | {m.gets / m.tasks:.2f} GETs/task "
                f"| charged once each: {m.charges == m.tasks} |"
            )
            print(rows[-1], flush=True)
        if args.scenario in ("realistic", "both"):
            sim = Sim(folder / "real", 1)
            try:
                for label, salt in (
                    ("realistic, cold ledger", "cold"),
                    ("realistic, warm ledger", "warm"),
                ):
                    m = asyncio.run(
                        execute(
                            folder / "real",
                            sim,
                            f"bench-{salt}",
                            args.tasks,
                            args.concurrency,
                            salt,
                            args.delay_weight,
                        )
                    )
                    assert m.charges == m.tasks
                    rows.append(
                        f"| {label} | {m.tasks} | makespan {m.makespan:.1f} s vs "
                        f"ideal {m.ideal:.1f} s = **{m.makespan / m.ideal:.3f}x** "
                        f"| **{m.gets / m.tasks:.2f} GETs/task** | noticed "
                        f"{100 * m.delay:.0f}% of latency late | "
                        f"{1000 * m.cpu / m.tasks:.2f} ms CPU/task | "
                        f"concurrency {args.concurrency} |"
                    )
                    print(rows[-1], flush=True)
            finally:
                sim.close()
    print()
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}"
    )
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
