"""Plan a generated 100,000-task manifest; compare with a bare expand-and-hash loop.

Run: python benchmarks/plan_100k.py [--tasks 100000]

Prints wall time and peak memory (tracemalloc peak of Python allocations, and
the process's max RSS) for the real planner, and the wall time of a bare loop
that expands the same matrices and hashes the same task documents, measured
in the same run. Each task has a distinct input (prompts differ per shot), so
validation and pricing run for every variant, not once per take.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from mvbatch.plan import manifest, matrix
from mvbatch.plan.keys import canonical_json, task_key_from_text
from mvbatch.plan.planner import plan

MODELS = ["kling-v2-6", "kling-v3-omni"]
VARIANTS_PER_SHOT = 2 * 2 * 3 * 2  # mode x duration x aspect x model


def write_manifest(folder: Path, tasks: int) -> Path:
    shots = tasks // VARIANTS_PER_SHOT
    lines = ['name = "bench-100k"', "", "[defaults.input]", "cfg_scale = 0.5", ""]
    for i in range(shots):
        lines += [
            "[[shots]]",
            f'id = "shot-{i:05d}"',
            f'prompt = "Shot {i}: a silver car drives through neon rain, take the corner {i % 7}"',
            "[shots.matrix]",
            f"model = {MODELS!r}".replace("'", '"'),
            'mode = ["std", "pro"]',
            "duration = [5, 10]",
            'aspect_ratio = ["16:9", "9:16", "1:1"]',
            "",
        ]
    path = folder / "bench.toml"
    # cfg_scale is a kling-v2-6 field only: keep defaults portable.
    path.write_text("\n".join(lines).replace("cfg_scale = 0.5", ""), encoding="utf-8")
    return path


def bare_loop(loaded: manifest.LoadedManifest) -> int:
    """Expand every matrix and hash every task document: the floor for planning.

    Runs with the cycle collector paused, as the planner does, so the ratio
    compares the work itself.
    """
    gc.disable()
    name = loaded.manifest.name
    count = 0
    for shot in loaded.manifest.shots:
        assert shot.matrix is not None
        for combination in matrix.expand(shot.matrix.axes):
            model = combination["model"]
            payload = {
                "prompt": shot.prompt,
                **{k: v for k, v in combination.items() if k != "model"},
            }
            task_key_from_text(name, model, canonical_json(payload), 1)
            count += 1
    gc.enable()
    return count


def _measure(mode: str, path: Path) -> dict[str, float]:
    """One measurement in this process (called in a fresh child per mode)."""
    start = time.perf_counter()
    loaded = manifest.load(path)
    load_s = time.perf_counter() - start
    if mode == "bare":
        start = time.perf_counter()
        count = bare_loop(loaded)
        return {"seconds": time.perf_counter() - start, "tasks": count}
    if mode == "traced":
        tracemalloc.start()
        plan(loaded)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return {"traced_peak_mb": peak / 1e6}
    start = time.perf_counter()
    result = plan(loaded)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "seconds": seconds,
        "load_seconds": load_s,
        "tasks": len(result.tasks),
        "max_rss_mb": rss,
    }


def _child(mode: str, path: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--manifest", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=["bare", "plan", "traced"])
    parser.add_argument("--manifest", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.child, args.manifest)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = write_manifest(Path(tmp), args.tasks)
        # Each measurement in a fresh process, so RSS is the planner's own and
        # runs do not warm each other's caches; alternate them so that noise
        # from the machine hits both alike.
        bares, plans = [], []
        for _ in range(args.repeat):
            bares.append(_child("bare", path))
            plans.append(_child("plan", path))
        traced = _child("traced", path)
    bare_s = statistics.median(b["seconds"] for b in bares)
    plan_s = statistics.median(p["seconds"] for p in plans)
    load_s = statistics.median(p["load_seconds"] for p in plans)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {sys.version.split()[0]}")
    planned, bare_count = int(plans[0]["tasks"]), int(bares[0]["tasks"])
    print(f"tasks planned:          {planned:,} (bare loop: {bare_count:,})")
    print(f"load manifest:          {load_s:.2f} s (TOML + pydantic, median of {args.repeat})")
    print(f"plan (after loading):   {plan_s:.2f} s")
    print(f"load + plan:            {load_s + plan_s:.2f} s   (target < 3 s)")
    print(f"bare expand+hash loop:  {bare_s:.2f} s (same tasks, after loading)")
    print(f"ratio plan / bare:      {plan_s / bare_s:.2f}x   (target <= 4x)")
    print(f"plan process max RSS:   {max(p['max_rss_mb'] for p in plans):.0f} MB (target < 400)")
    print(f"traced Python peak:     {traced['traced_peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
