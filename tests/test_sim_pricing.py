"""The simulator's price table: the documented examples exactly, plausible other tiers."""

from __future__ import annotations

import json
from decimal import Decimal
from importlib.resources import files

import pytest

from mvbatch.sim.pricing import PER_SECOND, as_json_number, quote, tier
from mvbatch.sim.validation import with_defaults

DOCUMENTED = {
    "kling-v2-6": (Decimal(5), Decimal("0.0414")),
    "kling-video-o1": (Decimal(5), Decimal("0.0756")),
    "kling-v3-omni": (Decimal(5), Decimal("0.0756")),
    "kling-v3-motion-control": (Decimal(8), Decimal("0.11574")),
    "wan2-6-i2v-flash": (Decimal(5), Decimal("0.0315")),
}


@pytest.mark.parametrize("slug", sorted(DOCUMENTED))
def test_documented_examples_cost_exactly(slug: str) -> None:
    doc = json.loads(files("mvbatch.schemas").joinpath(f"examples/{slug}.json").read_text("utf-8"))
    seconds, cost = DOCUMENTED[slug]
    result = quote(slug, with_defaults(slug, doc["request"]["input"]), seconds)
    assert result.cost == cost
    assert as_json_number(result.cost) == doc["response"]["cost_estimate"]
    assert json.dumps(as_json_number(result.cost)) == str(cost)


def test_tiers_follow_mode_resolution_and_audio() -> None:
    assert tier("kling-v2-6", {"mode": "pro", "audio": True}) == "pro+audio"
    assert tier("kling-video-o1", {"mode": "pro", "audio": True}) == "pro"  # o1 has no audio
    assert tier("wan2-6-i2v-flash", {"resolution": "720p", "audio": False}) == "720p"
    prices = PER_SECOND
    assert prices["kling-v2-6"]["pro"] > prices["kling-v2-6"]["std"]
    assert prices["kling-video-o1"]["std"] < prices["kling-video-o1"]["pro"]
    omni = prices["kling-v3-omni"]
    assert omni["std"] < omni["pro"] < omni["4k"] < omni["4k+audio"]
    wan = prices["wan2-6-i2v-flash"]
    assert wan["720p"] < wan["720p+audio"] < wan["1080p+audio"]
    assert wan["1080p"] < wan["1080p+audio"]


def test_costs_round_half_up_to_six_places() -> None:
    assert quote("kling-v3-motion-control", {}, Decimal("7.333")).cost == Decimal("0.106090")
