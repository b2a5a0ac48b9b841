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
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from mvbatch import manifest, matrix
from mvbatch.keys import canonical_json, task_key_from_text
from mvbatch.planner import plan

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


def bare_loop(path: Path) -> int:
    """Expand every matrix and hash every task document: the floor for planning."""
    loaded = manifest.load(path)
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
    return count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_manifest(Path(tmp), args.tasks)
        gc.collect()
        start = time.perf_counter()
        bare = bare_loop(path)
        bare_s = time.perf_counter() - start

        gc.collect()
        tracemalloc.start()
        start = time.perf_counter()
        result = plan(manifest.load(path))
        plan_s = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

        # A second run without tracemalloc, whose own overhead inflates time.
        gc.collect()
        start = time.perf_counter()
        again = plan(manifest.load(path))
        plan_untraced_s = time.perf_counter() - start
        assert [t.key for t in again.tasks] == [t.key for t in result.tasks]

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"python {sys.version.split()[0]}"
    )
    print(f"tasks planned:        {len(result.tasks):,} (bare loop: {bare:,})")
    print(f"plan wall time:       {plan_untraced_s:.2f} s")
    print(f"bare loop wall time:  {bare_s:.2f} s (includes loading the manifest)")
    print(f"ratio plan / bare:    {plan_untraced_s / bare_s:.2f}x")
    print(f"peak traced memory:   {peak / 1e6:.0f} MB (wall with tracing {plan_s:.2f} s)")
    print(f"process max RSS:      {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
