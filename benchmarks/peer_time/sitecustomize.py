"""Scales mvbatch's absolute poll times by the simulator's speed-up, for `benchmarks/peer.py`.

`peer.py` runs the simulator PEER_SPEED times faster than the service it
stands for, and divides the script's 2 s interval by the same factor. This
file, first on the PYTHONPATH of an `mvbatch run` it starts (before and after
alike), does the same to mvbatch's constants that are in seconds: the cold
schedule's first GET, the least and most gap between two GETs, the length
past which a class is "long" (where it exists), and the re-planning step.
Everything else mvbatch knows about time it learns from the latencies it
sees, which are already in the simulator's seconds. Nothing in `mvbatch`
knows about this file.
"""

import os

speed = float(os.environ.get("PEER_SPEED", "1"))
if speed != 1:
    from mvbatch.run import polling

    for name in ("COLD_FIRST", "MIN_GAP", "MAX_GAP", "LONG_LATENCY"):
        if hasattr(polling, name):
            setattr(polling, name, getattr(polling, name) / speed)
    unscaled = polling.replan_after

    def replan_after(elapsed: float) -> float:
        return unscaled(elapsed * speed) / speed

    polling.replan_after = replan_after
