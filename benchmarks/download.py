"""Downloads: mvbatch's Downloader against curl, on the same files, in the same run.

    python benchmarks/download.py [--files 200] [--size-mb 5] [--concurrency 8] [--rounds 8]
                                  [--warmup 1] [--max-cpu-per-gb 4] [--max-rest 0.5] [--redo 3]
                                  [--verbose]

Starts the simulator (`python -m mvbatch.sim`) on a free loopback port with
outputs scaled to `--size-mb`, creates `--files` tasks, then, per round,
fetches every output twice: with `curl --parallel --parallel-max N` (the
reference) and with `mvbatch.downloads.fetch.Downloader(concurrency=N)` on the
files client as `mvbatch run` builds it (httpx's own transport; streamed to a
part file, SHA-256 while streaming, Content-Length check, fsync, rename,
ledger row), N = `--concurrency` for both. Rounds alternate which goes first,
each pass starts after `sync` with the previous pass's files hashed and
deleted, and a warm-up round is discarded (see `--warmup`). Each of curl's
files must have the SHA-256 and size of mvbatch's file and of its ledger row.

Each pass also records the CPU time of the client, of the simulator and of
the rest of the machine (all busy CPU minus those two: kernel threads, and
any other work), and the client's page faults. This machine may be shared:
a round in which the rest used more than `--max-rest` CPU seconds during
either pass is done again, at most `--redo` times, and the count is printed.
Prints Markdown for BENCHMARKS.md: each client's passes, MB/s and CPU
seconds per GB, and mvbatch's ratio to curl. The target is that downloads are
never why a run is slow: exits 1 when the Downloader needs more than
`--max-cpu-per-gb` CPU seconds per GB (median pass; at the default 4, one
core keeps up with 2 Gbit/s, faster than the links file hosts are reached
over), or when a file differs between the two. On loopback the simulator, not
the network, sets the pace, so the ratio to curl is reported, not held to a
target.
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
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from importlib import metadata
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mvbatch import logs  # noqa: E402
from mvbatch.api.endpoint import Endpoint  # noqa: E402
from mvbatch.downloads.fetch import Downloader  # noqa: E402
from mvbatch.downloads.partfile import sha256_file  # noqa: E402
from mvbatch.ledger import Ledger, TaskRow, open_ledger  # noqa: E402

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


def bench_key(task_id: str) -> str:
    return "mvb1-" + hashlib.sha256(task_id.encode()).hexdigest()[:32]


def ledger_rows(ledger: Ledger, tasks: list[tuple[str, str]]) -> list[TaskRow]:
    rows = []
    for n, (task_id, url) in enumerate(tasks):
        key = bench_key(task_id)
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


def own_usage(who: int) -> tuple[float, int]:
    """CPU seconds and minor page faults of this process (or of its waited-for children)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


def machine_busy() -> float:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class Pass:
    """One timed pass: wall seconds, and the CPU seconds spent meanwhile by whom."""

    seconds: float = 0.0
    client: float = 0.0  # the client under test (curl, or this process for mvbatch)
    sim: float = 0.0  # the simulator process
    rest: float = 0.0  # the rest of the machine: kernel threads (writeback), other work
    faults: int = 0  # the client's minor page faults


class Timed:
    """Measures the block it wraps: wall time, the client's, the simulator's and the rest's CPU."""

    def __init__(self, sim_pid: int, client_usage: Callable[[], tuple[float, int]]) -> None:
        self.sim_pid, self.client_usage = sim_pid, client_usage
        self.result = Pass()

    def _read(self) -> tuple[float, float, float, float, int]:
        cpu, faults = self.client_usage()
        return time.perf_counter(), cpu, cpu_seconds(self.sim_pid), machine_busy(), faults

    def __enter__(self) -> Timed:
        self._start = self._read()
        return self

    def __exit__(self, *_exc: object) -> None:
        wall, client, sim, busy, faults = (
            b - a for a, b in zip(self._start, self._read(), strict=True)
        )
        self.result = Pass(wall, client, sim, busy - client - sim, int(faults))


def run_curl(urls: list[str], folder: Path, concurrency: int, sim_pid: int) -> Pass:
    folder.mkdir(parents=True)
    config = folder.parent / f"{folder.name}.curl"
    config.write_text(
        "".join(f'url = "{u}"\noutput = "{folder / f"{n}.mp4"}"\n' for n, u in enumerate(urls))
    )
    with Timed(sim_pid, lambda: own_usage(resource.RUSAGE_CHILDREN)) as timed:
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
    return timed.result


def run_mvbatch(
    tasks: list[tuple[str, str]], work: Path, concurrency: int, sim_pid: int
) -> tuple[Pass, Ledger]:
    """One pass, and its ledger; the ledger rows are written untimed."""
    ledger = open_ledger(work / "state")
    rows = ledger_rows(ledger, tasks)
    endpoint = Endpoint("live", "http://127.0.0.1:9/api/v1", KEY)
    os.sync()

    async def go() -> Pass:
        async with endpoint.files_client(max_connections=concurrency) as client:
            downloader = Downloader(ledger, client, work / "out", concurrency=concurrency)
            with Timed(sim_pid, lambda: own_usage(resource.RUSAGE_SELF)) as timed:
                results = await downloader.fetch(rows)
        failed = [r for r in results if not r.ok]
        if failed:
            raise SystemExit(f"{len(failed)} downloads failed: {failed[0].error}")
        return timed.result

    return asyncio.run(go()), ledger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--size-mb", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--rounds", type=int, default=8, help="even, so each client goes first equally often"
    )
    parser.add_argument(
        "--max-cpu-per-gb",
        type=float,
        default=4.0,
        help="most CPU seconds the Downloader may spend per GB (median pass)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed rounds first: on a VM, the first write to a page of "
        "guest memory costs ~8x a later one, whoever makes it",
    )
    parser.add_argument(
        "--max-rest",
        type=float,
        default=0.5,
        help="CPU seconds the rest of the machine (other work, kernel threads) may use "
        "during a pass; a round where it used more is done again (see --redo)",
    )
    parser.add_argument("--redo", type=int, default=3, help="most times one round is redone")
    parser.add_argument("--verbose", action="store_true", help="print each pass as it ends")
    args = parser.parse_args()
    if args.rounds < 2 or args.rounds % 2:
        parser.error("--rounds must be even (and at least 2): each client goes first as often")
    logs.configure("json", "warning")  # as the CLI does: info events go to the log file only
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed")
    size = int(args.size_mb * 1_000_000)
    with tempfile.TemporaryDirectory(prefix="mvbatch-bench-") as tmp:
        work = Path(tmp)
        process, base = start_sim(work, size)
        try:
            tasks = create_tasks(base, args.files)
            passes: dict[str, list[Pass]] = {"curl": [], "mvbatch": []}
            synced: list[float] = []
            redone = total = 0
            for round_no in range(-args.warmup, args.rounds):
                for attempt in range(args.redo + 1):
                    done, sync_seconds, total = one_round(args, work, round_no, tasks, process.pid)
                    disturbed = max(p.rest for p in done.values())
                    if disturbed <= args.max_rest or attempt == args.redo:
                        break
                    redone += 1
                    print(
                        f"round {round_no} redone: the rest of the machine used "
                        f"{disturbed:.2f} CPU s during a pass",
                        file=sys.stderr,
                    )
                if round_no >= 0:  # a warm-up round is measured, then forgotten
                    for who, measured in done.items():
                        passes[who].append(measured)
                    synced.append(sync_seconds)
        finally:
            process.terminate()
            process.wait(10)
    report(args, total, passes, synced, redone)


def one_round(
    args: argparse.Namespace, work: Path, round_no: int, tasks: list[tuple[str, str]], sim: int
) -> tuple[dict[str, Pass], float, int]:
    """Both clients once, in alternating order: their passes, curl's time to sync, the bytes.

    Each pass starts from the same state: no dirty pages (sync) and no files
    of the other client in the page cache (each pass's files are hashed and
    deleted before the next pass starts). On this benchmark's VM a pass that
    must find a gigabyte of memory beyond what the last deletion freed costs
    its writer up to twice the CPU, whoever it is; kept, that made the second
    pass of every round the slow one.
    """
    folder = work / f"round-{round_no}"
    urls = [url for _, url in tasks]
    done: dict[str, Pass] = {}
    digests: dict[str, list[tuple[str, int]]] = {}
    synced = 0.0
    for who in ["curl", "mvbatch"] if round_no % 2 == 0 else ["mvbatch", "curl"]:
        # Start each pass with no dirty pages from the previous one, so
        # neither client pays for the other's writeback.
        os.sync()
        if who == "curl":
            done[who] = run_curl(urls, folder / "curl", args.concurrency, sim)
            # curl leaves its bytes in the page cache; mvbatch fsyncs each
            # file before it counts it as done. How long curl's bytes take
            # to reach the disk:
            started = time.perf_counter()
            os.sync()
            synced = done[who].seconds + time.perf_counter() - started
            digests[who] = [digest_of(folder / "curl" / f"{n}.mp4") for n in range(len(tasks))]
        else:
            done[who], ledger = run_mvbatch(tasks, folder / "mvbatch", args.concurrency, sim)
            digests[who] = recorded_digests(folder / "mvbatch", ledger, tasks)
            ledger.close()
        shutil.rmtree(folder / who)
        if args.verbose:
            print(f"round {round_no} {who}: {done[who]}", file=sys.stderr)
    for n, (theirs, ours) in enumerate(zip(digests["curl"], digests["mvbatch"], strict=True)):
        if theirs != ours:
            raise SystemExit(f"file {n} differs between curl and mvbatch")
    shutil.rmtree(folder)
    return done, synced, sum(size for _, size in digests["curl"])


def digest_of(path: Path) -> tuple[str, int]:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: the client did not write it")
    return sha256_file(path), path.stat().st_size


def recorded_digests(
    folder: Path, ledger: Ledger, tasks: list[tuple[str, str]]
) -> list[tuple[str, int]]:
    """(sha256, bytes) of each file mvbatch recorded, checked against the file on disk."""
    found = []
    for task_id, _ in tasks:
        outputs = ledger.outputs("live", bench_key(task_id))
        if len(outputs) != 1 or outputs[0].path is None:
            raise SystemExit(f"task {task_id} was not downloaded")
        on_disk = digest_of(folder / "out" / "bench" / outputs[0].path)
        if on_disk != (outputs[0].sha256, outputs[0].bytes):
            raise SystemExit(f"{outputs[0].path}: the ledger's sha256 or size is not the file's")
        found.append(on_disk)
    return found


def report(
    args: argparse.Namespace,
    total: int,
    passes: dict[str, list[Pass]],
    synced: list[float],
    redone: int,
) -> None:
    curl, ours = passes["curl"], passes["mvbatch"]
    gb = total / 1e9
    curl_rate = total / statistics.median(p.seconds for p in curl) / 1e6
    ours_rate = total / statistics.median(p.seconds for p in ours) / 1e6
    ratio = ours_rate / curl_rate
    paired = [c.seconds / o.seconds for c, o in zip(curl, ours, strict=True)]
    print(
        f"{args.files} files of {args.size_mb:g} MB ({total / 1e6:.0f} MB per pass), "
        f"{args.concurrency} transfers at a time on both sides (curl --parallel-max, "
        f"Downloader concurrency), {args.rounds} rounds after {args.warmup} warm-up, "
        f"loopback, {os.cpu_count()} vCPUs ({cpu_model()}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, httpx {version('httpx')}, "
        f"httpcore {version('httpcore')}, {curl_version()}; {redone} round(s) redone because "
        f"other work used over {args.max_rest} CPU s during a pass"
    )
    print()
    print(
        "| client | seconds per pass (each round) | median MB/s "
        "| median CPU s per pass: client / simulator / rest of machine "
        "| client CPU s per GB | client page faults per pass |"
    )
    print("|---|---|---:|---|---:|---:|")
    for name, runs in (("curl --parallel (the reference)", curl), ("mvbatch Downloader", ours)):
        client = statistics.median(p.client for p in runs)
        print(
            f"| {name} | {', '.join(f'{p.seconds:.2f}' for p in runs)} "
            f"| {total / statistics.median(p.seconds for p in runs) / 1e6:.0f} "
            f"| {client:.2f} / "
            f"{statistics.median(p.sim for p in runs):.2f} / "
            f"{statistics.median(p.rest for p in runs):.2f} "
            f"| {client / gb:.2f} "
            f"| {statistics.median(p.faults for p in runs):,.0f} |"
        )
    print(
        f"| curl --parallel, then sync | {', '.join(f'{t:.2f}' for t in synced)} "
        f"| {total / statistics.median(synced) / 1e6:.0f} | | | |"
    )
    print()
    ours_cpu = statistics.median(p.client for p in ours) / gb
    curl_cpu = statistics.median(p.client for p in curl) / gb
    print(
        f"mvbatch / curl, round by round: {', '.join(f'{r:.2f}' for r in paired)} "
        f"(median {statistics.median(paired):.2f}x)"
    )
    print(f"mvbatch / curl = {ratio:.2f}x, from the median passes")
    print(
        f"client CPU per GB: mvbatch {ours_cpu:.2f} s, curl {curl_cpu:.2f} s "
        f"({ours_cpu / curl_cpu:.1f}x); one core at this rate: "
        f"{1000 / ours_cpu:.0f} MB/s ({8 / ours_cpu:.1f} Gbit/s); "
        f"target <= {args.max_cpu_per_gb:g} s per GB"
    )
    if ours_cpu > args.max_cpu_per_gb:
        sys.exit(1)


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def curl_version() -> str:
    done = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False)
    return " ".join(done.stdout.split()[:2]) or "curl ?"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    main()
