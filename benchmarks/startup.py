"""Start-up: the CPU a command spends before it does anything, before and after.

Run: python benchmarks/startup.py [--runs 15] [--before 5198a2f] [--top 12]

Extracts the tree of commit `--before` with `git archive` into a temporary
folder (git's state is not touched) and runs each command below `--runs`
times from that tree and from this one, alternating which goes first:

    mvbatch --help
    mvbatch plan jobs/demo.toml
    mvbatch status jobs/demo.toml
    mvbatch run --help

Each run is `python -c "from mvbatch.cli import main; main()" ARGS` with
PYTHONPATH set to the tree, from an empty working folder (no `.env`), with
MVBATCH_STATE_DIR and MVBATCH_OUTPUT_DIR in a fresh temporary folder and no
MINDVIDEO_API_KEY. Its CPU is user + system time of the reaped child
(`getrusage(RUSAGE_CHILDREN)` deltas); its wall time is from `perf_counter`.
The medians are printed as a Markdown table for BENCHMARKS.md ("Start-up").

Then, for each command of this tree, what `python -X importtime` says it
imports: the top-level packages by their own import time, summed.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "jobs" / "demo.toml")
COMMANDS: dict[str, list[str]] = {
    "mvbatch --help": ["--help"],
    "mvbatch plan jobs/demo.toml": ["plan", DEMO],
    "mvbatch status jobs/demo.toml": ["status", DEMO],
    "mvbatch run --help": ["run", "--help"],
}
MAIN = "from mvbatch.cli import main; main()"


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def environment(tree: Path, folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINDVIDEO_", "MVBATCH_"))}
    env.update(
        PYTHONPATH=str(tree),
        MVBATCH_STATE_DIR=str(folder / "state"),
        MVBATCH_OUTPUT_DIR=str(folder / "outputs"),
        MVBATCH_SIM_SPEED="0",
        COLUMNS="120",
    )
    return env


def run_once(tree: Path, args: list[str], *flags: str) -> tuple[float, float, str]:
    """CPU and wall seconds of one command from `tree`, and its stderr."""
    with tempfile.TemporaryDirectory(prefix="mvbatch-startup-") as name:
        folder = Path(name)
        work = folder / "work"
        work.mkdir()
        cpu, wall = child_cpu(), time.perf_counter()
        done = subprocess.run(
            [sys.executable, *flags, "-c", MAIN, *args],
            cwd=work,
            env=environment(tree, folder),
            capture_output=True,
            text=True,
            check=False,
        )
        cpu, wall = child_cpu() - cpu, time.perf_counter() - wall
    if done.returncode != 0:
        sys.exit(f"{tree}: mvbatch {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return cpu, wall, done.stderr


def check_tree(tree: Path) -> None:
    """The runs must import mvbatch from `tree`, not from the installed package."""
    found = subprocess.run(
        [sys.executable, "-c", "import mvbatch; print(mvbatch.__file__)"],
        env=environment(tree, tree),
        cwd=tempfile.gettempdir(),  # `-c` puts the working folder first on sys.path
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).is_relative_to(tree):
        sys.exit(f"PYTHONPATH={tree} imports mvbatch from {found}")


def import_times(stderr: str) -> dict[str, int]:
    """`-X importtime` lines summed by top-level package: microseconds of own time."""
    totals: dict[str, int] = defaultdict(int)
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, _cumulative, name = line.removeprefix("import time:").split("|")
        totals[name.strip().split(".")[0]] += int(own)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each command per tree")
    parser.add_argument("--before", default="5198a2f", help="the commit to compare with")
    parser.add_argument("--top", type=int, default=12, help="packages to list per command")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mvbatch-before-") as name:
        before = Path(name)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", options.before],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        trees = {f"before ({options.before})": before, "after (this tree)": ROOT}
        for tree in trees.values():
            check_tree(tree)

        cpu: dict[tuple[str, str], list[float]] = defaultdict(list)
        wall: dict[tuple[str, str], list[float]] = defaultdict(list)
        for command, args in COMMANDS.items():
            for tree in trees.values():  # warm the file cache and .pyc files
                run_once(tree, args)
            for i in range(options.runs):
                order = list(trees.items()) if i % 2 == 0 else list(trees.items())[::-1]
                for label, tree in order:
                    spent, took, _ = run_once(tree, args)
                    cpu[command, label].append(spent)
                    wall[command, label].append(took)

        bare = []
        for _ in range(options.runs):
            start = child_cpu()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            bare.append(child_cpu() - start)

        print(
            f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} "
            f"{platform.release()}, CPython {platform.python_version()}; "
            f"{options.runs} runs per command and tree, alternating; medians. "
            f"Bare `python -c pass`: {statistics.median(bare):.3f} s CPU."
        )
        print()
        print("| command | CPU before | CPU after | after / before | wall before | wall after |")
        print("|---|---:|---:|---:|---:|---:|")
        first, second = trees
        for command in COMMANDS:
            b, a = (statistics.median(cpu[command, label]) for label in (first, second))
            wb, wa = (statistics.median(wall[command, label]) for label in (first, second))
            row = f"{b:.3f} s | {a:.3f} s | {a / b:.2f} | {wb:.3f} s | {wa:.3f} s"
            print(f"| `{command}` | {row} |")

        for command, args in COMMANDS.items():
            print()
            print(f"`{command}` imports (this tree; own import time by top-level package, ms):")
            totals = import_times(run_once(ROOT, args, "-X", "importtime")[2])
            ranked = sorted(totals.items(), key=lambda item: -item[1])
            print(
                "  "
                + ", ".join(f"{name} {us / 1000:.1f}" for name, us in ranked[: options.top])
                + f"; all {sum(totals.values()) / 1000:.1f}"
            )


if __name__ == "__main__":
    main()
