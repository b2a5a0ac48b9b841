"""The simulator's input checks: schemas, prose rules, media references, reference video."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from importlib.resources import files
from typing import Any

import pytest
from sim_helpers import sim_client

from mvbatch.sim.config import SimConfig
from mvbatch.sim.mp4 import write_mp4
from mvbatch.sim.validation import check_envelope, check_input, schemas, with_defaults

SLUGS = sorted(schemas())


def fields(model: str, params: dict[str, Any]) -> set[str]:
    return {e.field for e in check_input(model, params)}


def mp4_data_uri(seconds: str) -> str:
    data = write_mp4(seconds=Decimal(seconds), aspect_ratio="16:9", target_size=0, seed=b"r")
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


def test_the_five_models_are_known() -> None:
    assert SLUGS == [
        "kling-v2-6",
        "kling-v3-motion-control",
        "kling-v3-omni",
        "kling-video-o1",
        "wan2-6-i2v-flash",
    ]


@pytest.mark.parametrize("slug", SLUGS)
def test_documented_examples_are_valid(slug: str) -> None:
    doc = json.loads(files("mvbatch.schemas").joinpath(f"examples/{slug}.json").read_text("utf-8"))
    assert check_envelope(doc["request"]) == []
    assert check_input(slug, doc["request"]["input"]) == []


def test_schema_errors_name_the_field() -> None:
    assert fields("kling-v2-6", {}) == {"input.prompt"}
    assert fields("kling-v3-motion-control", {"prompt": "x"}) == {
        "input.image_url",
        "input.video_url",
        "input.character_orientation",
        "input.mode",
    }
    bad_item = {"prompt": "x", "video_list": [{"video_url": "https://e.com/v.mp4", "x": 1}]}
    assert fields("kling-video-o1", bad_item) == {"input.video_list[0].x"}
    assert fields("wan2-6-i2v-flash", {"image_urls": ["https://e.com/a.png"], "duration": 1}) == {
        "input.duration"
    }


def test_unknown_fields_are_refused_except_on_kling_v2_6() -> None:
    assert fields("kling-video-o1", {"prompt": "x", "size": "16:9"}) == {"input.size"}
    assert fields("kling-v2-6", {"prompt": "x", "aspect_ratio": "16:9"}) == set()


def test_kling_v2_6_audio_needs_pro_mode() -> None:
    assert fields("kling-v2-6", {"prompt": "x", "audio": True}) == {"input.audio"}
    assert fields("kling-v2-6", {"prompt": "x", "audio": True, "mode": "std"}) == {"input.audio"}
    assert fields("kling-v2-6", {"prompt": "x", "audio": True, "mode": "pro"}) == set()


def test_kling_v2_6_takes_image_url_or_image_urls() -> None:
    both = {"prompt": "x", "image_url": "https://e.com/a.png", "image_urls": ["https://e.com/b"]}
    assert fields("kling-v2-6", both) == {"input.image_urls"}


def test_omni_image_urls_and_image_with_roles_are_mutually_exclusive() -> None:
    params = {
        "prompt": "x",
        "image_urls": ["https://e.com/a.png"],
        "image_with_roles": [{"url": "https://e.com/b.png", "role": "first_frame"}],
    }
    assert fields("kling-v3-omni", params) == {"input.image_urls", "input.image_with_roles"}


@pytest.mark.parametrize("slug", ["kling-video-o1", "kling-v3-omni"])
def test_image_references_in_prompts_must_exist(slug: str) -> None:
    images = ["https://e.com/a.png", "https://e.com/b.png"]
    ok = {"prompt": "<<<image_1>>> meets <<<image_2>>>", "image_urls": images}
    assert fields(slug, ok) == set()
    assert fields(slug, {"prompt": "<<<image_3>>>", "image_urls": images}) == {"input.prompt"}
    assert fields(slug, {"prompt": "<<<image_1>>>"}) == {"input.prompt"}
    assert fields(slug, {"prompt": "<<<image_0>>>", "image_urls": images}) == {"input.prompt"}


def test_omni_multi_prompt_references_are_checked_too() -> None:
    params = {
        "prompt": "two shots",
        "image_urls": ["https://e.com/a.png"],
        "multi_prompt": [{"index": 1, "prompt": "<<<image_2>>> runs", "duration": 5}],
    }
    assert fields("kling-v3-omni", params) == {"input.multi_prompt[0].prompt"}


def test_media_references_must_be_urls_or_data_uris_of_the_right_kind() -> None:
    def wan(url: str) -> set[str]:
        return fields("wan2-6-i2v-flash", {"image_urls": [url]})

    assert wan("https://example.com/portrait.jpg") == set()
    assert wan("data:image/png;base64,iVBORw0KGgo=") == set()
    assert wan("portrait.jpg") == {"input.image_urls[0]"}
    assert wan("data:image/png;base64,@@@") == {"input.image_urls[0]"}
    assert wan("data:video/mp4;base64,AAAA") == {"input.image_urls[0]"}
    assert wan("data:image/png,rawbytes") == {"input.image_urls[0]"}


def test_envelope_errors() -> None:
    assert {e.field for e in check_envelope([])} == {"body"}
    assert {e.field for e in check_envelope({"model": 3, "input": []})} == {"model", "input"}


def test_defaults_come_from_the_schema() -> None:
    assert with_defaults("kling-v2-6", {"prompt": "x"})["mode"] == "std"
    assert with_defaults("wan2-6-i2v-flash", {})["resolution"] == "1080p"
    assert with_defaults("wan2-6-i2v-flash", {})["audio"] is True


MOTION = {
    "image_url": "https://example.com/ref-image.png",
    "character_orientation": "image",
    "mode": "std",
}


async def motion(video_url: str, orientation: str = "image") -> tuple[int, dict[str, Any]]:
    params = {**MOTION, "video_url": video_url, "character_orientation": orientation}
    async with sim_client(SimConfig(speed=0)) as client:
        payload = {"model": "kling-v3-motion-control", "input": params}
        response = await client.post("/api/v1/tasks", json=payload)
        return response.status_code, response.json()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("video_url", "orientation", "cost"),
    [
        ("https://example.com/ref-video-8s.mp4", "image", 0.11574),
        ("https://example.com/ref_10s.mp4", "image", 0.144675),
        ("https://example.com/dance.mp4", "image", 0.072338),  # no hint: 5 s
        ("https://example.com/ref-video-25s.mp4", "video", 0.361688),
    ],
)
async def test_motion_control_bills_the_reference_duration(
    video_url: str, orientation: str, cost: float
) -> None:
    status, body = await motion(video_url, orientation)
    assert status == 200, body
    assert body["cost_estimate"] == cost


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("video_url", "orientation"),
    [
        ("https://example.com/ref-video-12s.mp4", "image"),
        ("https://example.com/ref-video-2s.mp4", "video"),
        ("https://example.com/ref-video-31s.mp4", "video"),
    ],
)
async def test_motion_control_reference_must_fit_the_orientation(
    video_url: str, orientation: str
) -> None:
    status, body = await motion(video_url, orientation)
    assert status == 422
    assert [d["field"] for d in body["error"]["details"]] == ["input.video_url"]


@pytest.mark.anyio
async def test_motion_control_reads_a_data_uri_mp4() -> None:
    status, body = await motion(mp4_data_uri("6.5"))
    assert status == 200
    assert body["cost_estimate"] == 0.094039  # 6.5 s x 0.0144675
    status, body = await motion(mp4_data_uri("12"))
    assert status == 422
    assert "12 s" in body["error"]["details"][0]["message"]
    status, body = await motion("data:video/mp4;base64,AAAA")
    assert status == 422


@pytest.mark.anyio
async def test_motion_control_accepts_one_of_its_own_outputs() -> None:
    async with sim_client(SimConfig(speed=0)) as client:
        wan_input = {"image_urls": ["https://e.com/a.png"], "duration": 7}
        wan = {"model": "wan2-6-i2v-flash", "input": wan_input}
        first = (await client.post("/api/v1/tasks", json=wan)).json()
        url = first["output"]["videos"][0]["url"]
        payload = {"model": "kling-v3-motion-control", "input": {**MOTION, "video_url": url}}
        body = (await client.post("/api/v1/tasks", json=payload)).json()
        assert body["cost_estimate"] == 0.101273  # 7 s x 0.0144675


def test_schema_and_prose_errors_are_reported_together() -> None:
    params = {"prompt": "x", "duration": 7, "audio": True, "image_url": "nope"}
    assert fields("kling-v2-6", params) == {"input.duration", "input.audio", "input.image_url"}
