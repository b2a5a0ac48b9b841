"""What the live display costs: the same run in a pseudo-terminal and in a pipe.

Run: python benchmarks/terminal.py [--tasks 200] [--rounds 3] [--speed 4]

Each round runs `mvbatch run MANIFEST --no-download` twice on a fresh state
folder, against the built-in simulator (in-process, MVBATCH_SIM_SPEED divides
its latencies): once under a pseudo-terminal (pexpect, 40x120), where the
Rich live panel is redrawn in place, and once with stdout and stderr on pipes,
where a plain progress line is printed every 5 s. The two alternate, pipe
first in even rounds, so that the machine's noise falls on both.

For each: wall time, the child's CPU (user + system, from the kernel's
accounting of the reaped child), frames drawn (panel redraws, counted from
the pty's output) and bytes written to the terminal. The difference in CPU
between the two is what the display costs; the in-process simulator's own
CPU is in both.

Prints a Markdown table to paste into BENCHMARKS.md ("Terminal display").
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pexpect

MVBATCH = str(Path(sys.executable).parent / "mvbatch")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STD = {"mode": "std", "duration": 5, "size": "16:9"}


def write_manifest(folder: Path, tasks: int) -> Path:
    lines = ['name = "display"', ""]
    for i in range(tasks):
        lines += [
            "[[shots]]",
            f'id = "s{i}"',
            'model = "kling-v2-6"',
            f'prompt = "shot {i}: a car in neon rain"',
            "[shots.input]",
            *(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in STD.items()),
            "",
        ]
    path = folder / "display.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def environment(folder: Path, speed: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINDVIDEO_", "MVBATCH_"))}
    env.pop("COLUMNS", None)
    env.update(
        MVBATCH_STATE_DIR=str(folder / "state"),
        MVBATCH_OUTPUT_DIR=str(folder / "outputs"),
        MVBATCH_SIM_SPEED=str(speed),
        TERM="xterm-256color",
    )
    return env


def in_terminal(manifest: Path, env: dict[str, str]) -> dict[str, float]:
    before, started = child_cpu(), time.perf_counter()
    child = pexpect.spawn(
        MVBATCH,
        ["run", manifest.name, "--no-download"],
        env=env,
        cwd=str(manifest.parent),
        dimensions=(40, 120),
        timeout=600,
    )
    chunks: list[bytes] = []
    while True:
        try:
            chunks.append(child.read_nonblocking(65536, timeout=600))
        except pexpect.EOF:
            break
    child.close()
    wall, cpu = time.perf_counter() - started, child_cpu() - before
    assert child.exitstatus == 0, b"".join(chunks)[-2000:]
    text = b"".join(chunks).decode("utf-8", "replace")
    frames = len(re.findall(r"display  \d+/\d+ finished", ANSI.sub("", text)))
    return {"wall": wall, "cpu": cpu, "frames": frames, "bytes": len(text.encode())}


def in_pipe(manifest: Path, env: dict[str, str]) -> dict[str, float]:
    before, started = child_cpu(), time.perf_counter()
    result = subprocess.run(
        [MVBATCH, "run", manifest.name, "--no-download"],
        env=env,
        cwd=manifest.parent,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    wall, cpu = time.perf_counter() - started, child_cpu() - before
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.count(b"display:")
    return {"wall": wall, "cpu": cpu, "frames": lines, "bytes": len(result.stderr)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--speed", type=float, default=4.0)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"terminal": [], "pipe": []}
    with tempfile.TemporaryDirectory(prefix="mvbatch-terminal-") as tmp:
        for round_ in range(args.rounds):
            order = ("pipe", "terminal") if round_ % 2 == 0 else ("terminal", "pipe")
            for mode in order:
                folder = Path(tmp) / f"{mode}-{round_}"
                folder.mkdir()
                manifest = write_manifest(folder, args.tasks)
                env = environment(folder, args.speed)
                run = in_terminal if mode == "terminal" else in_pipe
                results[mode].append(run(manifest, env))
                print(f"round {round_ + 1} {mode}: {results[mode][-1]}", file=sys.stderr)
    print(f"\n{args.tasks} tasks, MVBATCH_SIM_SPEED={args.speed}, {args.rounds} rounds (medians)")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print("\n| where | wall | CPU | frames / lines | bytes to the terminal | CPU per frame |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, runs in results.items():
        wall = statistics.median(r["wall"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        frames = statistics.median(r["frames"] for r in runs)
        size = statistics.median(r["bytes"] for r in runs)
        per_frame = ""
        if mode == "terminal":
            extra = cpu - statistics.median(r["cpu"] for r in results["pipe"])
            per_frame = f"{1000 * extra / max(frames, 1):.2f} ms"
        print(
            f"| {mode} | {wall:.1f} s | {cpu:.2f} s | {frames:.0f} | {size / 1024:.0f} KiB "
            f"| {per_frame} |"
        )


if __name__ == "__main__":
    main()
