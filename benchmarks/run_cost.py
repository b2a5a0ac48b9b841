"""What `run` costs the client per task: SQLite statements and CPU, at zero latency.

Run: python benchmarks/run_cost.py [--tasks 1000] [--rounds 3] [--before /tmp/before]

Each measurement is a fresh process (this file with `--child`) that starts its
own `python -m mvbatch.sim --speed 0` (tasks finished when created, so only
the client's own work is left), plans a manifest of `--tasks` tasks (four
documented price classes, as in `execute.py`), and drives the real executor
with `--concurrency 64` and no cap, logging as `mvbatch run` does (every info
event as a JSON line to a log file). It counts:

- SQLite statements during `Executor.run()`, through `sqlite3`'s
  `set_trace_callback` on the ledger's connection: every statement SQLite ran,
  `BEGIN IMMEDIATE`/`COMMIT`/`ROLLBACK` included ("statements"), and the
  same without them ("without BEGIN/COMMIT");
- transactions (`BEGIN`s) and client CPU (this process's user + system time
  during `Executor.run()`, including the event loop, httpx and the log file);
- that every task succeeded and every key was charged exactly once;
- the floor: the same POSTs again under new keys, with no ledger and no
  executor, once through `ApiClient.submit` and once through the bare httpx
  client it wraps (same pool, concurrency 64): what HTTP alone costs here.

With `--before DIR` (a tree of an older commit, e.g. `git archive 5198a2f | tar
-x -C /tmp/before`) the same child runs against that tree's `mvbatch`
(PYTHONPATH), alternating with this tree round by round, and the table shows
both side by side (medians of the rounds by CPU). `--profile FILE` writes a
cProfile of one run of this tree instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
READY = "mvbatch sim listening on "
SHOTS = [
    ("kling-v2-6", {"mode": "std", "duration": 5, "size": "16:9"}),
    ("kling-v3-omni", {"mode": "std", "duration": 5, "aspect_ratio": "16:9"}),
    ("kling-video-o1", {"mode": "pro", "duration": 5, "aspect_ratio": "16:9"}),
    ("kling-v2-6", {"mode": "std", "duration": 10, "size": "9:16"}),
]
TARGET_CPU_MS = 1.2
TARGET_STATEMENTS = 10


def write_manifest(folder: Path, tasks: int) -> Path:
    per_shot = 100
    lines = ['name = "run-cost"', ""]
    for i in range(-(-tasks // per_shot)):
        model, fields = SHOTS[i % len(SHOTS)]
        lines += [
            "[[shots]]",
            f'id = "shot-{i:03d}"',
            f'model = "{model}"',
            f'prompt = "Run cost shot {i}: a car in neon rain"',
            f"takes = {min(per_shot, tasks - i * per_shot)}",
            "[shots.input]",
        ]
        lines += [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
        lines.append("")
    path = folder / "run-cost.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def start_sim(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = folder / "sim.out"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "mvbatch.sim", "--port", "0", "--speed", "0"),
                *("--state-dir", str(folder / "sim"), "--log-level", "warning"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith(READY):
                return process, line.removeprefix(READY).strip()
        time.sleep(0.05)
    process.terminate()
    raise RuntimeError(log.read_text())


async def drive(folder: Path, base: str, tasks: int, profile: str | None) -> dict[str, Any]:
    import httpx

    from mvbatch import logs
    from mvbatch.api.client import ApiClient, pool_size
    from mvbatch.api.endpoint import Endpoint
    from mvbatch.commands.planning import build_plan, planned_rows
    from mvbatch.ledger import open_ledger
    from mvbatch.run.executor import Executor
    from mvbatch.settings import Settings

    concurrency = 64
    state = folder / "state"
    settings = Settings(MVBATCH_STATE_DIR=state, MVBATCH_OUTPUT_DIR=folder / "out")
    # As `mvbatch run` logs: every info event to the log file as JSON.
    logs.configure("json", "warning", log_file=state / "logs" / "mvbatch.jsonl")
    plan = build_plan(write_manifest(folder, tasks), settings, "live")
    endpoint = Endpoint("live", base + "/api/v1", "mv_bench_key")
    kinds: Counter[str] = Counter()

    def traced(statement: str) -> None:
        kinds[statement.split(None, 1)[0].upper()] += 1

    with open_ledger(settings.state_dir) as ledger:
        ledger.ensure_tasks("live", planned_rows(plan))
        run_id = ledger.start_run("live", plan.name, endpoint.base_url, None, concurrency)
        api = ApiClient(endpoint.api_client(max_connections=pool_size(concurrency)))
        executor = Executor(
            plan, ledger, api, env="live", cap=None, run_id=run_id, concurrency=concurrency
        )
        conn = ledger.db.conn  # type: ignore[attr-defined]
        conn.set_trace_callback(traced)
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = await executor.run()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)
        conn.set_trace_callback(None)
        await api.aclose()
        ledger.finish_run(run_id, "benchmark")
        rows = ledger.tasks("live", plan.name)
    floors = await http_floor(endpoint, plan, concurrency)
    async with httpx.AsyncClient(timeout=30) as plain:
        stats = (await plain.get(f"{base}/_sim/stats")).json()
    billing = stats["billing"]["by_idempotency_key"]
    once = all(billing.get(r.submit_key, {}).get("charges") == 1 for r in rows)
    total = sum(kinds.values())
    control = sum(kinds[k] for k in ("BEGIN", "COMMIT", "ROLLBACK"))
    return {
        "tasks": tasks,
        "succeeded": result.counts.get("succeeded", 0),
        "charged_once": once,
        "cpu_ms": 1000 * cpu / tasks,
        "wall_s": wall,
        "statements": total / tasks,
        "without_begin_commit": (total - control) / tasks,
        "transactions": kinds["BEGIN"] / tasks,
        "kinds": dict(kinds),
        **floors,
    }


async def http_floor(endpoint: Any, plan: Any, concurrency: int) -> dict[str, float]:
    """CPU ms per POST of the same tasks under new keys, with no ledger and no executor:
    through `ApiClient.submit`, and through the bare httpx client it wraps."""
    from mvbatch.api.client import ApiClient, pool_size

    slots = asyncio.Semaphore(concurrency)
    bodies = [t.payload() for t in plan.tasks]

    async def through_api(api: Any, n: int) -> None:
        async with slots:
            body = bodies[n]
            await api.submit(body["model"], body["input"], f"mvb1-floor-api-{n}")

    async def bare(http: Any, n: int) -> None:
        async with slots:
            headers = {"Idempotency-Key": f"mvb1-floor-httpx-{n}"}
            (await http.post("tasks", json=bodies[n], headers=headers)).json()

    floors = {}
    for name, post in (("api_client_ms", through_api), ("httpx_ms", bare)):
        http = endpoint.api_client(max_connections=pool_size(concurrency))
        api = ApiClient(http)
        target = api if post is through_api else http
        cpu0 = time.process_time()
        await asyncio.gather(*(post(target, n) for n in range(len(bodies))))
        floors[name] = 1000 * (time.process_time() - cpu0) / len(bodies)
        await api.aclose()
    return floors


def child(tasks: int, profile: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="mvbatch-run-cost-") as tmp:
        folder = Path(tmp)
        process, base = start_sim(folder)
        try:
            measured = asyncio.run(drive(folder, base, tasks, profile))
        finally:
            process.terminate()
            process.wait(timeout=10)
    print(json.dumps(measured))


def measure(tree: Path, tasks: int, profile: str | None = None) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    args = [sys.executable, __file__, "--child", "--tasks", str(tasks)]
    if profile:
        args += ["--profile", profile]
    done = subprocess.run(args, env=env, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(rounds, key=lambda r: r["cpu_ms"])[len(rounds) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, help="a tree of an older commit to compare")
    parser.add_argument("--profile", help="write a cProfile of one run of this tree here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.tasks, args.profile)
        return
    if args.profile:
        print(json.dumps(measure(REPO, args.tasks, args.profile)))
        return
    trees = [("this tree", REPO)]
    if args.before is not None:
        trees.insert(0, (f"before ({args.before})", args.before.resolve()))
    rounds: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in trees}
    for round_ in range(args.rounds):
        for label, tree in trees if round_ % 2 == 0 else trees[::-1]:
            rounds[label].append(measure(tree, args.tasks))
            print(label, json.dumps(rounds[label][-1]), flush=True, file=sys.stderr)
    print()
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}; {args.tasks} tasks, zero latency, "
        f"concurrency 64, median of {args.rounds} rounds by CPU"
    )
    print()
    print(
        "| tree | statements/task | without BEGIN/COMMIT | transactions/task "
        "| client CPU ms/task (rounds) | tasks/s | charged once |"
    )
    print("|---|---:|---:|---:|---|---:|---|")
    for label, _ in trees:
        found = rounds[label]
        m = median_round(found)
        cpus = ", ".join(f"{r['cpu_ms']:.2f}" for r in sorted(found, key=lambda r: r["cpu_ms"]))
        ok = all(r["charged_once"] and r["succeeded"] == r["tasks"] for r in found)
        print(
            f"| {label} | {m['statements']:.2f} | {m['without_begin_commit']:.2f} "
            f"| {m['transactions']:.2f} | **{m['cpu_ms']:.2f}** ({cpus}) "
            f"| {m['tasks'] / m['wall_s']:,.0f} | {ok} |"
        )
    mine = median_round(rounds["this tree"])
    print()
    print(
        f"targets: statements/task ≤ {TARGET_STATEMENTS}: "
        f"{'met' if mine['statements'] <= TARGET_STATEMENTS else 'not met'}; "
        f"client CPU ≤ {TARGET_CPU_MS} ms/task: "
        f"{'met' if mine['cpu_ms'] <= TARGET_CPU_MS else 'not met'}"
    )
    print("statement kinds (this tree):", json.dumps(mine["kinds"]))
    print(
        "the same POSTs with no ledger and no executor, CPU ms/task (this tree, median round): "
        f"ApiClient.submit {mine['api_client_ms']:.2f}, bare httpx {mine['httpx_ms']:.2f}"
    )


if __name__ == "__main__":
    main()
