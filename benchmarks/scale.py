"""Every command at 100, 1k, 10k and 100k tasks: wall time, CPU and peak RSS.

Run: python benchmarks/scale.py [--sizes 100,1000,10000,100000] [--tree DIR]

For each size, a generated manifest (the one of `plan_100k.py`: shots of
2 models x 2 modes x 2 durations x 3 aspect ratios, every task with a
distinct input) goes through the real CLI, one fresh process per command,
in this order, against one state folder:

    plan, plan --json, run --no-download, status, report --no-download

`run` uses the in-process simulator at zero latency (`MVBATCH_SIM_SPEED=0`,
no key: simulated), so `status` and `report` then speak of a finished run
of every task. stdout goes to a file (`plan --json` is checked to parse).
Wall time is the parent's clock; CPU (user + system) and peak RSS come from
the kernel (`wait4`), so they are the command's own, start-up included.

`--tree DIR` runs another checkout of mvbatch (its children get
`PYTHONPATH=DIR`), e.g. the tree before a change:
`git archive 5198a2f | tar -x -C /tmp/before-report`, then `--tree /tmp/before-report`
(the script checks that the children import mvbatch from that tree).
This script imports nothing of mvbatch itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ["kling-v2-6", "kling-v3-omni"]
VARIANTS_PER_SHOT = 2 * 2 * 3 * 2  # mode x duration x aspect x model
COMMANDS: dict[str, list[str]] = {
    "plan": ["plan", "{manifest}"],
    "plan --json": ["plan", "{manifest}", "--json"],
    "run --no-download": ["run", "{manifest}", "--no-download", "--concurrency", "64"],
    "status": ["status", "{manifest}"],
    "report --no-download": ["report", "{manifest}", "--no-download"],
}


def write_manifest(folder: Path, tasks: int) -> Path:
    """`plan_100k.py`'s manifest: `tasks // 24` shots of 24 variants each."""
    shots = max(1, tasks // VARIANTS_PER_SHOT)
    lines = ['name = "scale"', ""]
    for i in range(shots):
        lines += [
            "[[shots]]",
            f'id = "shot-{i:05d}"',
            f'prompt = "Shot {i}: a silver car drives through neon rain, take the corner {i % 7}"',
            "[shots.matrix]",
            f"model = {json.dumps(MODELS)}",
            'mode = ["std", "pro"]',
            "duration = [5, 10]",
            'aspect_ratio = ["16:9", "9:16", "1:1"]',
            "",
        ]
    path = folder / "scale.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def measure(argv: list[str], env: dict[str, str], out: Path) -> dict[str, float]:
    """One command in a fresh process: wall, CPU and peak RSS from the kernel."""
    with out.open("wb") as stdout, (out.parent / (out.name + ".err")).open("wb") as stderr:
        start = time.perf_counter()
        # Run from the scratch folder: `python -m` puts the working directory first
        # on sys.path, where a checkout would shadow PYTHONPATH's tree.
        child = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env, cwd=out.parent)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
        "code": child.returncode,
    }


def tasks_in(plan_json: Path) -> int:
    """`plan --json`'s task count, parsed in a child process: parsing 50 MB here
    would grow this process, and Linux counts a parent's resident memory at
    fork in every later child's peak RSS (`ru_maxrss`)."""
    code = "import json, sys; print(json.load(open(sys.argv[1]))['totals']['tasks'])"
    done = subprocess.run(
        [sys.executable, "-c", code, str(plan_json)], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


LOAD_AND_PLAN = """
import json, sys, time
from pathlib import Path
from mvbatch.plan import manifest
from mvbatch.plan.planner import plan
wall, cpu = time.perf_counter(), time.process_time()
planned = plan(manifest.load(Path(sys.argv[1])))
print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}))
"""


def run_size(tasks: int, tree: Path | None, commands: list[str]) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="mvbatch-scale-") as tmp:
        folder = Path(tmp)
        manifest = write_manifest(folder, tasks)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MINDVIDEO_", "MVBATCH_"))}
        env |= {
            "MVBATCH_STATE_DIR": str(folder / "state"),
            "MVBATCH_OUTPUT_DIR": str(folder / "out"),
            "MVBATCH_SIM_SPEED": "0",
            "COLUMNS": "120",
        }
        env["PYTHONPATH"] = str(tree or Path(__file__).resolve().parents[1])
        where = subprocess.run(
            [sys.executable, "-c", "import mvbatch; print(mvbatch.__file__)"],
            env=env,
            cwd=folder,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert where.startswith(env["PYTHONPATH"]), f"mvbatch came from {where}"
        results = {}
        # The floor `plan` is held to: loading and planning, in process (no start-up).
        out = folder / "load_plan.out"
        found = measure([sys.executable, "-c", LOAD_AND_PLAN, str(manifest)], env, out)
        inner = json.loads(out.read_text())
        results["load + plan (in process)"] = {**found, "wall": inner["wall"], "cpu": inner["cpu"]}
        floor = f"wall {inner['wall']:7.2f} s  cpu {inner['cpu']:7.2f} s"
        print(f"  {tasks:>7,} {'load + plan':<22} {floor}", flush=True)
        for name in commands:
            argv = [sys.executable, "-m", "mvbatch"]
            argv += [a.format(manifest=manifest) for a in COMMANDS[name]]
            out = folder / f"{name.replace(' ', '_')}.out"
            found = measure(argv, env, out)
            if name == "plan --json" and found["code"] == 0:
                found["tasks"] = tasks_in(out)
            found["stdout_kb"] = out.stat().st_size / 1024
            results[name] = found
            if found["code"] not in (0, 1):  # 1: some tasks of the run failed (simulated)
                tail = (folder / (out.name + ".err")).read_text(errors="replace").splitlines()[-3:]
                print("    stderr: " + " | ".join(tail), flush=True)
            print(
                f"  {tasks:>7,} {name:<22} wall {found['wall']:7.2f} s  cpu {found['cpu']:7.2f} s"
                f"  rss {found['rss_mb']:6.0f} MB  exit {found['code']:.0f}"
                f"  stdout {found['stdout_kb']:,.0f} KiB",
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--tree", type=Path, help="another mvbatch checkout to run (PYTHONPATH)")
    parser.add_argument("--commands", default=",".join(COMMANDS))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    commands = [c.strip() for c in args.commands.split(",")]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"python {sys.version.split()[0]}, tree {args.tree or 'this one'}"
    )
    table: dict[int, dict[str, dict[str, float]]] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        table[size] = run_size(size, args.tree, commands)
    print()
    print("| tasks | command | wall s | CPU s | peak RSS MB |")
    print("|---:|---|---:|---:|---:|")
    for size, rows in table.items():
        planned = max(1, size // VARIANTS_PER_SHOT) * VARIANTS_PER_SHOT
        for name, found in rows.items():
            print(
                f"| {planned:,} | `{name}` | {found['wall']:.2f} | {found['cpu']:.2f} "
                f"| {found['rss_mb']:.0f} |"
            )
    if args.json is not None:
        args.json.write_text(json.dumps(table, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
