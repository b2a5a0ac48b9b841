"""The service's true prices: what a task costs, by model, tier and output seconds.

Only the five documented examples are public (kling-v2-6 std 5 s = 0.0414,
kling-video-o1 pro 5 s = 0.0756, kling-v3-omni std 5 s = 0.0756,
kling-v3-motion-control std with an 8 s reference = 0.11574,
wan2-6-i2v-flash 1080p 5 s with audio = 0.0315). Every other tier is
deliberately undocumented: a client learns it from `cost_estimate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

MICRO = Decimal("0.000001")

# Price per second of output, keyed by model then tier name (see `tier()`).
PER_SECOND: dict[str, dict[str, Decimal]] = {
    "kling-v2-6": {
        "std": Decimal("0.00828"),  # documented
        "pro": Decimal("0.0116"),
        "pro+audio": Decimal("0.0174"),
    },
    "kling-video-o1": {
        "std": Decimal("0.01134"),
        "pro": Decimal("0.01512"),  # documented
    },
    "kling-v3-omni": {
        "std": Decimal("0.01512"),  # documented
        "std+audio": Decimal("0.02268"),
        "pro": Decimal("0.02016"),
        "pro+audio": Decimal("0.03024"),
        "4k": Decimal("0.03024"),
        "4k+audio": Decimal("0.04536"),
    },
    "kling-v3-motion-control": {
        "std": Decimal("0.0144675"),  # documented (0.11574 for 8 s)
        "pro": Decimal("0.01929"),
    },
    "wan2-6-i2v-flash": {
        "720p": Decimal("0.003"),
        "720p+audio": Decimal("0.0042"),
        "1080p": Decimal("0.0045"),
        "1080p+audio": Decimal("0.0063"),  # documented
    },
}


@dataclass(frozen=True, slots=True)
class Quote:
    model: str
    tier: str
    per_second: Decimal
    seconds: Decimal
    cost: Decimal


def tier(model: str, params: dict[str, Any]) -> str:
    """The price tier of an input with its schema defaults applied."""
    if model == "wan2-6-i2v-flash":
        base = str(params.get("resolution", "1080p"))
    else:
        base = str(params.get("mode", "std"))
    audio = params.get("audio") is True and model in {
        "kling-v2-6",
        "kling-v3-omni",
        "wan2-6-i2v-flash",
    }
    return f"{base}+audio" if audio else base


def quote(model: str, params: dict[str, Any], seconds: Decimal) -> Quote:
    """The cost of `seconds` of output, rounded half-up to 6 decimal places."""
    name = tier(model, params)
    per_second = PER_SECOND[model][name]
    cost = (per_second * seconds).quantize(MICRO, rounding=ROUND_HALF_UP)
    return Quote(model=model, tier=name, per_second=per_second, seconds=seconds, cost=cost)


def as_json_number(amount: Decimal) -> float:
    """Money at the JSON edge: float() of a 6-place Decimal prints its shortest exact form."""
    return float(amount)
