"""Download throughput: mvbatch's Downloader against curl, on the same files, in the same run.

    python benchmarks/download.py [--files 200] [--size-mb 5] [--concurrency 8] [--rounds 5]
                                  [--warmup 1] [--target 0.9]

Starts the simulator (`python -m mvbatch.sim`) on a free loopback port with
outputs scaled to `--size-mb`, creates `--files` tasks, then, per round,
fetches every output twice: with `curl --parallel` (the reference) and with
`mvbatch.download.Downloader` (streamed to a part file, SHA-256 while
streaming, Content-Length check, fsync, rename, ledger row). Rounds alternate
which goes first, each pass starts after `sync`, and a warm-up round is
discarded (see `--warmup`). Prints a Markdown table for BENCHMARKS.md; exits 1 when
mvbatch is below `--target` times curl's throughput (median of rounds), or
when a file differs between the two.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mvbatch import logs  # noqa: E402
from mvbatch.download import Downloader  # noqa: E402
from mvbatch.endpoint import Endpoint  # noqa: E402
from mvbatch.ledger import Ledger, TaskRow  # noqa: E402

KEY = "mv_bench_local"
READY = "mvbatch sim listening on "
BYTES_PER_SECOND_STD = 40_000  # the simulator's kling-v2-6 std size rate (mvbatch/sim/service.py)


def start_sim(work: Path, size_bytes: int) -> tuple[subprocess.Popen[bytes], str]:
    scale = size_bytes / (BYTES_PER_SECOND_STD * 5)
    log = (work / "sim.out").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mvbatch.sim",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--speed",
            "0",
            "--output-scale",
            f"{scale}",
            "--url-ttl",
            "86400",
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in (work / "sim.out").read_text().splitlines():
            if line.startswith(READY):
                return process, line.removeprefix(READY).strip()
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.terminate()
    raise SystemExit("the simulator did not start:\n" + (work / "sim.out").read_text())


def create_tasks(base: str, count: int) -> list[tuple[str, str]]:
    """(task_id, url) of `count` finished kling-v2-6 tasks."""
    found = []
    with httpx.Client(
        base_url=f"{base}/api/v1/", timeout=30, headers={"Authorization": f"Bearer {KEY}"}
    ) as api:
        for n in range(count):
            created = api.post(
                "tasks",
                headers={"Idempotency-Key": f"bench-{n}"},
                json={
                    "model": "kling-v2-6",
                    "input": {"prompt": f"benchmark clip {n}", "duration": 5, "mode": "std"},
                },
            )
            created.raise_for_status()
            task = api.get(f"tasks/{created.json()['task_id']}").json()
            found.append((task["task_id"], task["output"]["videos"][0]["url"]))
    return found


def ledger_rows(ledger: Ledger, tasks: list[tuple[str, str]]) -> list[TaskRow]:
    rows = []
    for n, (task_id, url) in enumerate(tasks):
        key = "mvb1-" + hashlib.sha256(task_id.encode()).hexdigest()[:32]
        ledger.ensure_tasks(
            "live",
            [
                {
                    "key": key,
                    "manifest": "bench",
                    "shot": f"shot-{n // 10}",
                    "shots": [f"shot-{n // 10}"],
                    "variant": {"n": n},
                    "take": 1,
                    "model": "kling-v2-6",
                    "input": {},
                    "price_class": "kling-v2-6 std",
                    "seconds": Decimal(5),
                    "estimate_local": Decimal("0.0414"),
                    "estimate_source": "documented",
                }
            ],
        )
        ledger.record_intent(
            "live", key, previous="planned", submit_key=key, attempt=0, run_id=None
        )
        ledger.record_submitted(
            "live",
            key,
            task_id=task_id,
            request_id=None,
            status="queued",
            cost_estimate=Decimal("0.0414"),
            run_id=None,
        )
        ledger.record_finished(
            "live",
            key,
            previous="queued",
            status="succeeded",
            cost_estimate=None,
            cost_actual=Decimal("0.0414"),
            error=None,
            urls=[url],
            polls=1,
            latency=None,
            run_id=None,
        )
        row = ledger.task("live", key)
        assert row is not None
        rows.append(row)
    return rows


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_curl(urls: list[str], folder: Path, concurrency: int) -> float:
    folder.mkdir(parents=True)
    config = folder.parent / f"{folder.name}.curl"
    config.write_text(
        "".join(f'url = "{u}"\noutput = "{folder / f"{n}.mp4"}"\n' for n, u in enumerate(urls))
    )
    started = time.perf_counter()
    subprocess.run(
        [
            "curl",
            "--parallel",
            "--parallel-max",
            str(concurrency),
            "--silent",
            "--no-progress-meter",
            "--show-error",
            "--fail",
            "--config",
            str(config),
        ],
        check=True,
    )
    return time.perf_counter() - started


def run_mvbatch(
    tasks: list[tuple[str, str]], work: Path, concurrency: int
) -> tuple[float, float, Ledger]:
    """(seconds, CPU seconds, ledger) of one pass; the ledger rows are written untimed."""
    ledger = Ledger(work / "state")
    rows = ledger_rows(ledger, tasks)
    endpoint = Endpoint("live", "http://127.0.0.1:9/api/v1", KEY)
    os.sync()

    async def go() -> tuple[float, float]:
        async with endpoint.files_client(max_connections=concurrency) as client:
            downloader = Downloader(ledger, client, work / "out", concurrency=concurrency)
            started, cpu = time.perf_counter(), own_cpu(resource.RUSAGE_SELF)
            results = await downloader.fetch(rows)
            elapsed = time.perf_counter() - started
            cpu = own_cpu(resource.RUSAGE_SELF) - cpu
        failed = [r for r in results if not r.ok]
        if failed:
            raise SystemExit(f"{len(failed)} downloads failed: {failed[0].error}")
        return elapsed, cpu

    elapsed, cpu = asyncio.run(go())
    return elapsed, cpu, ledger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--size-mb", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--target", type=float, default=0.9, help="minimum ratio to curl")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed rounds first: on a VM, the first write to a page of "
        "guest memory costs ~8x a later one, whoever makes it",
    )
    args = parser.parse_args()
    logs.configure("json", "warning")  # as the CLI does: info events go to the log file only
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed")
    size = int(args.size_mb * 1_000_000)
    with tempfile.TemporaryDirectory(prefix="mvbatch-bench-") as tmp:
        work = Path(tmp)
        process, base = start_sim(work, size)
        try:
            tasks = create_tasks(base, args.files)
            urls = [url for _, url in tasks]
            curl_times, ours_times, synced = [], [], []
            cpu: dict[str, list[float]] = {
                "curl": [],
                "mvbatch": [],
                "sim (curl)": [],
                "sim (mvbatch)": [],
            }
            total = 0
            for round_no in range(-args.warmup, args.rounds):
                folder = work / f"round-{round_no}"
                order = ["curl", "mvbatch"] if round_no % 2 == 0 else ["mvbatch", "curl"]
                for who in order:
                    # Start each pass with no dirty pages from the previous
                    # one, so neither client pays for the other's writeback.
                    os.sync()
                    server_before = cpu_seconds(process.pid)
                    if who == "curl":
                        before = own_cpu(resource.RUSAGE_CHILDREN)
                        curl_times.append(run_curl(urls, folder / "curl", args.concurrency))
                        cpu["curl"].append(own_cpu(resource.RUSAGE_CHILDREN) - before)
                        # curl leaves its bytes in the page cache; mvbatch
                        # fsyncs each file before it counts it as done. How
                        # long curl's bytes take to reach the disk:
                        started = time.perf_counter()
                        os.sync()
                        synced.append(curl_times[-1] + time.perf_counter() - started)
                    else:
                        elapsed, used, ledger = run_mvbatch(
                            tasks, folder / "mvbatch", args.concurrency
                        )
                        ours_times.append(elapsed)
                        cpu["mvbatch"].append(used)
                    cpu[f"sim ({who})"].append(cpu_seconds(process.pid) - server_before)
                total = check_same(folder, ledger, tasks)
                ledger.close()
                shutil.rmtree(folder)
                if round_no < 0:  # a warm-up round: measured, then forgotten
                    for values in (curl_times, ours_times, synced, *cpu.values()):
                        values.pop()
        finally:
            process.terminate()
            process.wait(10)
    report(args, total, curl_times, ours_times, synced, cpu)


def check_same(folder: Path, ledger: Ledger, tasks: list[tuple[str, str]]) -> int:
    """Every file mvbatch recorded has curl's bytes; returns the bytes of one pass."""
    total = 0
    for n, row in enumerate(ledger.tasks("live", "bench")):
        [output] = ledger.outputs("live", row.key)
        theirs = (folder / "curl" / f"{n}.mp4").read_bytes()
        assert output.path is not None
        ours = (folder / "mvbatch" / "out" / "bench" / output.path).read_bytes()
        if ours != theirs or hashlib.sha256(ours).hexdigest() != output.sha256:
            raise SystemExit(f"file {n} differs between curl and mvbatch")
        total += len(ours)
    if len(tasks) != n + 1:
        raise SystemExit("not every task was downloaded")
    return total


def report(
    args: argparse.Namespace,
    total: int,
    curl_times: list[float],
    ours_times: list[float],
    synced: list[float],
    cpu: dict[str, list[float]],
) -> None:
    curl_rate = total / statistics.median(curl_times) / 1e6
    ours_rate = total / statistics.median(ours_times) / 1e6
    ratio = ours_rate / curl_rate
    print(
        f"{args.files} files of {args.size_mb:g} MB ({total / 1e6:.0f} MB per pass), "
        f"concurrency {args.concurrency}, {args.rounds} rounds, loopback, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print()
    print("| client | seconds per pass (each round) | median MB/s |")
    print("|---|---|---:|")
    print(
        f"| curl --parallel (the target) | {', '.join(f'{t:.2f}' for t in curl_times)} "
        f"| {curl_rate:.0f} |"
    )
    print(
        f"| mvbatch Downloader (fsync per file) | "
        f"{', '.join(f'{t:.2f}' for t in ours_times)} | {ours_rate:.0f} |"
    )
    print(
        f"| curl --parallel, then sync | {', '.join(f'{t:.2f}' for t in synced)} "
        f"| {total / statistics.median(synced) / 1e6:.0f} |"
    )
    print()
    print(
        "CPU seconds per pass (median): "
        + ", ".join(f"{who} {statistics.median(values):.2f}" for who, values in cpu.items())
    )
    print()
    print(f"mvbatch / curl = {ratio:.2f}x (target >= {args.target}x)")
    if ratio < args.target:
        sys.exit(1)


if __name__ == "__main__":
    main()
