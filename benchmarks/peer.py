"""mvbatch against the script a user would write instead, side by side in one run.

Run: python benchmarks/peer.py [--tasks 200] [--concurrency 16] [--rounds 2]
     [--medians 4,60] [--before DIR | --before-commit 5198a2f] [--no-download]

Each round, for each median latency, runs every contender once, each against
a fresh `python -m mvbatch.sim` (its own process on 127.0.0.1) with the same
seed, `--latency-median` and `--speed`, so the k-th task submitted has the
same latency for everyone:

- `naive`: `benchmarks/peer_naive.py` (httpx, a semaphore of the same
  concurrency, a POST with an Idempotency-Key, a GET every 2 s, a streamed
  download);
- `after`: `mvbatch run MANIFEST --yes` from this tree, live against the
  simulator (MINDVIDEO_API_KEY=mv_..., MINDVIDEO_BASE_URL=<sim>/api/v1, fresh
  MVBATCH_STATE_DIR and MVBATCH_OUTPUT_DIR);
- `before`: the same command from another tree (`--before DIR`, or
  `git archive` of `--before-commit` into a temporary folder), on PYTHONPATH.

The order of the contenders rotates from round to round, so the noise of a
shared machine falls on all of them. Downloads are on for everyone (the
user wants the videos), or off for everyone with `--no-download`.

Two makespans, both from the contender's launch: until the last video is
on disk (its final mtime; the moment the user has every video), and until
the process exits (mvbatch then also writes its reports, with a poster per
video, which the script does not do). Without downloads both are the exit.
GETs are the
simulator's own request counters: every `GET /api/v1/...` (task status and
event history); downloads are counted apart.

Fair time: a median of 60 s would take an hour of real time for 200 tasks,
so the simulator runs `--speed` times faster (median / speed, ~10 s real),
and the script's 2 s interval is divided by the same speed: it stands for a
user polling every 2 real seconds against real latencies. mvbatch has no
interval to scale: its poll times are learned from the latencies it
observes, in the simulator's (sped-up) seconds. What it cannot scale are its
absolute constants (the cold schedule's first GET at 2 s, the 0.25 s
minimum gap, HTTP and ledger time): at speed 6 they count six times as much
of a task's life as they would against the real service, which only works
against mvbatch (and the script's HTTP time is likewise unscaled).

Prints one line per run and a Markdown table of medians: makespan and GETs
per task of each contender, and the ratios of mvbatch's to the script's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
NAIVE = REPO / "benchmarks" / "peer_naive.py"
TIME_SCALING = REPO / "benchmarks" / "peer_time"
READY = "mvbatch sim listening on "
SEED = 7
REAL_MEDIAN = 10.0  # real seconds a sped-up median aims at
NAIVE_INTERVAL = 2.0
INPUT = {"mode": "std", "duration": 5, "size": "16:9"}  # the script's tasks, too


@dataclass
class Outcome:
    contender: str
    median: float
    round: int
    seconds: float  # launch to exit
    videos: float  # launch to the last video on disk (or exit, without downloads)
    gets: int
    downloads: int
    posts: int
    succeeded: int
    charged_once: bool


def write_manifest(folder: Path, tasks: int) -> Path:
    lines = ['name = "peer"', ""]
    for i in range(tasks):
        lines += [
            "[[shots]]",
            f'id = "s{i}"',
            'model = "kling-v2-6"',
            f'prompt = "shot {i}: neon rain"',
            "[shots.input]",
            *(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in INPUT.items()),
            "",
        ]
    path = folder / "peer.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@contextlib.contextmanager
def simulator(folder: Path, median: float, speed: float) -> Iterator[str]:
    """A fresh simulator process; yields its origin."""
    folder.mkdir(parents=True)
    out = folder / "sim.out"
    with out.open("w") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mvbatch.sim",
                "--port",
                "0",
                "--seed",
                str(SEED),
                "--latency-median",
                str(median),
                "--speed",
                str(speed),
                "--log-level",
                "warning",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                lines = [x for x in out.read_text().splitlines() if x.startswith(READY)]
                if lines:
                    yield lines[0].removeprefix(READY).strip()
                    break
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(out.read_text())
                time.sleep(0.05)
        finally:
            process.terminate()
            process.wait(timeout=10)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MINDVIDEO_", "MVBATCH_"))}


def command(
    contender: str, trees: dict[str, Path], folder: Path, args: argparse.Namespace, speed: float
) -> tuple[list[str], dict[str, str]]:
    env = clean_env()
    if contender == "naive":
        out = str(folder / "videos") if args.download else ""
        interval = NAIVE_INTERVAL / speed
        argv = [sys.executable, str(NAIVE), "--tasks", str(args.tasks)]
        argv += ["--concurrency", str(args.concurrency), "--interval", f"{interval:g}"]
        return [*argv, "--out", out], env
    manifest = write_manifest(folder, args.tasks)
    env.update(
        # the tree first, then the time scaling (peer_time/sitecustomize.py)
        PYTHONPATH=os.pathsep.join([str(trees[contender]), str(TIME_SCALING)]),
        PEER_SPEED=f"{speed:g}",
        MVBATCH_STATE_DIR=str(folder / "state"),
        MVBATCH_OUTPUT_DIR=str(folder / "outputs"),
    )
    argv = [sys.executable, "-m", "mvbatch", "run", str(manifest), "--yes"]
    argv += ["--concurrency", str(args.concurrency)]
    return [*argv, *([] if args.download else ["--no-download"])], env


def run_one(
    contender: str,
    trees: dict[str, Path],
    folder: Path,
    args: argparse.Namespace,
    median: float,
    speed: float,
    round_: int,
) -> Outcome:
    with simulator(folder / "sim", median, speed) as origin:
        argv, env = command(contender, trees, folder, args, speed)
        env.update(MINDVIDEO_API_KEY="mv_peer_bench", MINDVIDEO_BASE_URL=f"{origin}/api/v1")
        with (folder / "out.txt").open("w") as sink:
            launched, started = time.time(), time.perf_counter()
            # cwd is the scratch folder: `python -m` must not pick up this tree
            code = subprocess.call(argv, env=env, cwd=folder, stdout=sink, stderr=sink)
            seconds = time.perf_counter() - started
        if code != 0:
            raise RuntimeError(f"{contender} exited {code}: {(folder / 'out.txt').read_text()}")
        stats: dict[str, Any] = httpx.get(f"{origin}/_sim/stats", timeout=30).json()
    files = [path.stat().st_mtime for path in folder.rglob("*.mp4")]
    if args.download and len(files) != args.tasks:
        raise RuntimeError(f"{contender}: {len(files)} videos on disk, not {args.tasks}")
    requests: dict[str, int] = stats["requests"]
    keys = stats["billing"]["by_idempotency_key"].values()
    return Outcome(
        contender=contender,
        median=median,
        round=round_,
        seconds=seconds,
        videos=max(files) - launched if files else seconds,
        gets=sum(n for name, n in requests.items() if name.startswith("GET /api/")),
        downloads=sum(n for name, n in requests.items() if name.startswith("GET /files/")),
        posts=requests.get("POST /api/v1/tasks", 0),
        succeeded=stats["tasks"]["by_status"]["succeeded"],
        charged_once=all(k["charges"] == 1 for k in keys) and len(keys) == args.tasks,
    )


def before_tree(args: argparse.Namespace, scratch: Path) -> Path:
    if args.before:
        return Path(args.before).resolve()
    tree = scratch / "before"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", args.before_commit],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--medians", default="4,60", help="median latencies, seconds")
    parser.add_argument("--before", help="a tree of the code to compare with (its root)")
    parser.add_argument("--before-commit", default="5198a2f")
    parser.add_argument("--no-before", action="store_true", help="only naive and after")
    parser.add_argument("--no-download", dest="download", action="store_false")
    args = parser.parse_args()
    medians = [float(m) for m in args.medians.split(",")]
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="mvbatch-peer-") as tmp:
        scratch = Path(tmp)
        trees = {"after": REPO}
        if not args.no_before:
            trees["before"] = before_tree(args, scratch)
        contenders = ["naive", *trees]
        for round_ in range(args.rounds):
            for median in medians:
                speed = max(1.0, median / REAL_MEDIAN)
                # rotate who goes first, so noise falls on everyone
                shift = round_ % len(contenders)
                for contender in contenders[shift:] + contenders[:shift]:
                    folder = scratch / f"r{round_}-m{median:g}-{contender}"
                    outcome = run_one(contender, trees, folder, args, median, speed, round_)
                    outcomes.append(outcome)
                    print(
                        f"round {round_} median {median:g}s (speed {speed:g}) {contender:>6}: "
                        f"videos {outcome.videos:6.1f} s, exit {outcome.seconds:6.1f} s, "
                        f"{outcome.gets / args.tasks:5.2f} GETs/task, "
                        f"{outcome.downloads} downloads, {outcome.succeeded} succeeded, "
                        f"charged once: {outcome.charged_once}",
                        flush=True,
                    )
    report(outcomes, medians, args)


def report(outcomes: list[Outcome], medians: list[float], args: argparse.Namespace) -> None:
    print()
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}; {args.tasks} tasks, concurrency "
        f"{args.concurrency}, downloads {'on' if args.download else 'off'}, "
        f"{args.rounds} rounds, medians"
    )
    print()
    print(
        "| median latency | contender | videos on disk (runs) | process exit (runs) "
        "| GETs/task | videos / script | exit / script | GETs / script |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|")
    for median in medians:
        mine = [o for o in outcomes if o.median == median]
        naive = [o for o in mine if o.contender == "naive"]
        base_v = statistics.median(o.videos for o in naive)
        base_s = statistics.median(o.seconds for o in naive)
        base_g = statistics.median(o.gets for o in naive)
        for contender in dict.fromkeys(o.contender for o in mine):
            runs = [o for o in mine if o.contender == contender]
            videos = statistics.median(o.videos for o in runs)
            seconds = statistics.median(o.seconds for o in runs)
            gets = statistics.median(o.gets for o in runs)
            print(
                f"| {median:g} s | {contender} | {videos:.1f} s "
                f"({', '.join(f'{o.videos:.1f}' for o in runs)}) | {seconds:.1f} s "
                f"({', '.join(f'{o.seconds:.1f}' for o in runs)}) "
                f"| {gets / args.tasks:.2f} | **{videos / base_v:.3f}x** "
                f"| {seconds / base_s:.3f}x | **{gets / base_g:.2f}x** |"
            )


if __name__ == "__main__":
    main()
