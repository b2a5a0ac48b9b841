"""The script a user writes instead of mvbatch: POST, GET every 2 s, download.

Run: MINDVIDEO_API_KEY=mv_... MINDVIDEO_BASE_URL=.../api/v1 python benchmarks/peer_naive.py
     [--tasks 200] [--concurrency 16] [--interval 2] [--out videos]

No mvbatch import: `benchmarks/peer.py` races it against `mvbatch run`.
"""

import argparse
import asyncio
import os
import uuid
from pathlib import Path

import httpx

p = argparse.ArgumentParser()
p.add_argument("--tasks", type=int, default=200)
p.add_argument("--concurrency", type=int, default=16)
p.add_argument("--interval", type=float, default=2.0)  # seconds between two GETs of a task
p.add_argument("--out", default="videos")  # "" skips the downloads
args = p.parse_args()
API = os.environ["MINDVIDEO_BASE_URL"]
HEADERS = {"Authorization": f"Bearer {os.environ['MINDVIDEO_API_KEY']}"}
INPUT = {"mode": "std", "duration": 5, "size": "16:9"}


async def one(client: httpx.AsyncClient, sem: asyncio.Semaphore, i: int) -> str:
    async with sem:
        body = {"model": "kling-v2-6", "input": {"prompt": f"shot {i}: neon rain", **INPUT}}
        key = {"Idempotency-Key": str(uuid.uuid4())}
        task = (await client.post(f"{API}/tasks", json=body, headers=key)).raise_for_status().json()
        while task["status"] not in ("succeeded", "failed", "cancelled"):
            await asyncio.sleep(args.interval)
            task = (await client.get(f"{API}/tasks/{task['task_id']}")).raise_for_status().json()
        if task["status"] == "succeeded" and args.out:
            url = task["output"]["videos"][0]["url"]
            async with client.stream("GET", url) as r:
                with (Path(args.out) / f"shot-{i}.mp4").open("wb") as f:
                    async for chunk in r.raise_for_status().aiter_bytes():
                        f.write(chunk)
        return str(task["status"])


async def main() -> None:
    sem = asyncio.Semaphore(args.concurrency)
    async with httpx.AsyncClient(headers=HEADERS, timeout=60) as client:
        statuses = await asyncio.gather(*(one(client, sem, i) for i in range(args.tasks)))
    print({s: statuses.count(s) for s in set(statuses)})


if args.out:
    Path(args.out).mkdir(parents=True, exist_ok=True)
asyncio.run(main())
