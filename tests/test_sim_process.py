"""End to end against a real `python -m mvbatch.sim` on loopback: curl, restarts, drops.

The five POSTs below are the documented curl commands, copied verbatim from the
model pages (only the host is swapped when they run); the GET and events
commands are the documented ones with the real task id in place of
`task_demo_model`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import pytest
from sim_helpers import running_sim

pytestmark = pytest.mark.slow
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

DOC_BASE = "https://api.mindvideo.ai/api/v1"
DOCUMENTED_GET = f'curl {DOC_BASE}/tasks/task_demo_model \\\n-H "Authorization: Bearer mv_live_xxx"'
DOCUMENTED_EVENTS = (
    f'curl {DOC_BASE}/tasks/task_demo_model/events \\\n-H "Authorization: Bearer mv_live_xxx"'
)
DOCUMENTED_POSTS = {  # verbatim from the five model pages
    "kling-v2-6": r"""curl -X POST https://api.mindvideo.ai/api/v1/tasks \
-H "Authorization: Bearer mv_live_xxx" \
-H "Content-Type: application/json" \
-H "Idempotency-Key: task_$(date +%s)" \
-d '{
"model": "kling-v2-6",
"input": {
"prompt": "A cinematic shot of a silver sports car driving through neon-lit rain",
"size": "16:9",
"duration": 5,
"mode": "std"
}
}'""",
    "kling-video-o1": r"""curl -X POST https://api.mindvideo.ai/api/v1/tasks \
-H "Authorization: Bearer mv_live_xxx" \
-H "Content-Type: application/json" \
-H "Idempotency-Key: task_$(date +%s)" \
-d '{
"model": "kling-video-o1",
"input": {
"prompt": "A cinematic skyline at golden hour, premium film look, natural camera movement",
"aspect_ratio": "16:9",
"duration": 5,
"mode": "pro"
}
}'""",
    "kling-v3-omni": r"""curl -X POST https://api.mindvideo.ai/api/v1/tasks \
-H "Authorization: Bearer mv_live_xxx" \
-H "Content-Type: application/json" \
-H "Idempotency-Key: task_$(date +%s)" \
-d '{
"model": "kling-v3-omni",
"input": {
"prompt": "一只金毛犬在沙滩上奔跑,日落,电影质感",
"aspect_ratio": "16:9",
"duration": 5,
"mode": "std"
}
}'""",
    "kling-v3-motion-control": r"""curl -X POST https://api.mindvideo.ai/api/v1/tasks \
-H "Authorization: Bearer mv_live_xxx" \
-H "Content-Type: application/json" \
-H "Idempotency-Key: task_$(date +%s)" \
-d '{
"model": "kling-v3-motion-control",
"input": {
"prompt": "人物按参考视频动作起舞,动作连贯,写实风格",
"character_orientation": "image",
"image_url": "https://example.com/ref-image.png",
"keep_original_sound": "yes",
"mode": "std",
"video_url": "https://example.com/ref-video-8s.mp4"
}
}'""",
    "wan2-6-i2v-flash": r"""curl -X POST https://api.mindvideo.ai/api/v1/tasks \
-H "Authorization: Bearer mv_live_xxx" \
-H "Content-Type: application/json" \
-H "Idempotency-Key: task_$(date +%s)" \
-d '{
"model": "wan2-6-i2v-flash",
"input": {
"prompt": "Let the person in the image turn and smile while the camera slowly pushes in.",
"resolution": "1080p",
"duration": 5,
"image_urls": [
"https://example.com/portrait.jpg"
],
"audio": true
}
}'""",
}


def example(slug: str) -> dict[str, Any]:
    text = files("mvbatch.schemas").joinpath(f"examples/{slug}.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def shell(command: str) -> dict[str, Any]:
    """Run a documented command with bash (so `$(date +%s)` expands) and parse its JSON."""
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True)
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def next_second() -> None:
    """`task_$(date +%s)` is one key per second: give each documented POST its own."""
    time.sleep(1.02 - time.time() % 1)


def looks_like_mp4(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and b"moov" in data and b"mdat" in data


@needs_curl
def test_the_documented_curl_requests_work_verbatim(tmp_path: Path) -> None:
    with running_sim(tmp_path, speed=40, seed=1) as base_url:
        api = f"{base_url}/api/v1"
        for slug, command in DOCUMENTED_POSTS.items():
            documented = example(slug)
            # The command is the documentation's, to the byte; only the host changes.
            assert json.loads(command.split("-d '", 1)[1][:-1]) == documented["request"]
            next_second()
            created = shell(command.replace(DOC_BASE, api))
            assert created["request_id"].startswith("req_")
            assert created["task_id"].startswith("task_")
            assert created["status"] in {"queued", "processing", "succeeded"}
            assert created["cost_estimate"] == documented["response"]["cost_estimate"]

            get = DOCUMENTED_GET.replace(DOC_BASE, api).replace(
                "task_demo_model", created["task_id"]
            )
            deadline = time.monotonic() + 30
            body = shell(get)
            while body["status"] in {"queued", "processing"} and time.monotonic() < deadline:
                time.sleep(0.05)
                body = shell(get)

            expected = documented["response"]
            assert set(expected) <= set(body)
            assert body["request_id"] == created["request_id"]
            assert body["task_id"] == created["task_id"]
            for field in ("status", "cost_estimate", "cost_actual"):
                assert body[field] == expected[field], (slug, field)
            (video,) = body["output"]["videos"]
            assert video["url"].startswith(f"{base_url}/files/{created['task_id']}/")

            out = tmp_path / f"{slug}.mp4"
            subprocess.run(["curl", "-sS", "-f", "-o", str(out), video["url"]], check=True)
            assert looks_like_mp4(out.read_bytes())
            if shutil.which("ffprobe"):
                subprocess.run(["ffprobe", "-v", "error", str(out)], check=True)

            events_command = DOCUMENTED_EVENTS.replace(DOC_BASE, api)
            events = shell(events_command.replace("task_demo_model", created["task_id"]))
            assert events["task_id"] == created["task_id"]
            assert [e["type"] for e in events["events"]] == [
                "task.created",
                "task.processing",
                "task.succeeded",
            ]

        stats = httpx.get(f"{base_url}/_sim/stats").json()
        assert stats["tasks"]["by_status"]["succeeded"] == 5
        assert stats["billing"]["charges"] == 5
        assert {v["charges"] for v in stats["billing"]["by_idempotency_key"].values()} == {1}
        # 0.0414 + 0.0756 + 0.0756 + 0.11574 + 0.0315, summed as money is (in Decimal)
        assert stats["billing"]["total_charged"] == 0.33984


PAYLOAD = {"model": "kling-v2-6", "input": {"prompt": "A car", "duration": 10}}
AUTH = {"Authorization": "Bearer mv_live_xxx"}


def test_an_interrupted_run_resumes_after_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    headers = {**AUTH, "Idempotency-Key": "survives"}
    with running_sim(tmp_path, state_dir=state, speed=0.01) as base_url:
        first = httpx.post(f"{base_url}/api/v1/tasks", json=PAYLOAD, headers=headers).json()
        assert first["status"] == "queued"
    with running_sim(tmp_path, state_dir=state, speed=0.01) as base_url:
        again = httpx.post(f"{base_url}/api/v1/tasks", json=PAYLOAD, headers=headers)
        assert again.json()["task_id"] == first["task_id"]
        assert again.headers["Idempotent-Replayed"] == "true"
        httpx.post(f"{base_url}/_sim/clock", json={"advance": 10**6})
        body = httpx.get(f"{base_url}/api/v1/tasks/{first['task_id']}", headers=AUTH).json()
        assert body["status"] == "succeeded"
        stats = httpx.get(f"{base_url}/_sim/stats").json()
        assert stats["billing"]["by_idempotency_key"]["survives"]["charges"] == 1
        assert stats["billing"]["charges"] == 1


def test_dropped_connections_are_transport_errors_over_a_real_socket(tmp_path: Path) -> None:
    options = {"speed": 0, "fault_drop_after_create": 1, "fault_truncated_download": 1}
    with running_sim(tmp_path, **options) as base_url:
        headers = {**AUTH, "Idempotency-Key": "dropped"}
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(f"{base_url}/api/v1/tasks", json=PAYLOAD, headers=headers)
        retry = httpx.post(f"{base_url}/api/v1/tasks", json=PAYLOAD, headers=headers)
        assert retry.status_code == 200
        url = retry.json()["output"]["videos"][0]["url"]
        size = int(httpx.head(url).headers["Content-Length"])
        with pytest.raises(httpx.TransportError):
            httpx.get(url)
        if shutil.which("curl"):  # curl notices the short body as well
            result = subprocess.run(
                ["curl", "-sS", "-o", "/dev/null", url], check=False, capture_output=True
            )
            assert result.returncode != 0
        stats = httpx.get(f"{base_url}/_sim/stats").json()
        assert stats["billing"]["charges"] == 1
        assert stats["faults"]["drop_after_create"] == 1
        assert stats["faults"]["truncated_download"] == (2 if shutil.which("curl") else 1)
        assert size > 0
    log = next(tmp_path.glob("sim-*.err")).read_text()
    assert "Traceback" not in log
