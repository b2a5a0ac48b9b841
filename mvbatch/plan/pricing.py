"""What a task will cost, and how sure we are.

Owns: the price table (data in `mvbatch/schemas/pricing.toml`), price classes
(a model plus its tier fields), rates learned from the server, and turning a
rate and a length into an `Estimate`. Money is `Decimal` here and everywhere
inside mvbatch; it becomes a JSON number only at the edge.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from typing import Any, Literal

from mvbatch import schemas
from mvbatch.money import normalize
from mvbatch.plan.catalog import Model
from mvbatch.plan.keys import canonical_json

Source = Literal["documented", "learned", "assumed"]
MICRO = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class Rate:
    usd_per_second: Decimal
    source: Source
    evidence: str = ""


@dataclass(frozen=True, slots=True)
class Estimate:
    cost: Decimal
    source: Source
    price_class: str
    seconds: Decimal
    upper_bound: bool = False  # the length was not known: the longest allowed was priced


def price_class(model: Model, input: Mapping[str, Any]) -> str:
    """A stable name such as `kling-v2-6 {"audio":false,"mode":"std"}`."""
    defaults = model.defaults
    values = tuple([input.get(n, defaults.get(n)) for n in model.tier_fields])
    # Types are part of the token so that `true` and `1` never share a class.
    token = (model.slug, values, tuple([type(v) for v in values]))
    name = _class_names.get(token)
    if name is None:
        name = _class_names[token] = f"{model.slug} {canonical_json(model.tier(input))}"
    return name


_class_names: dict[tuple[Any, ...], str] = {}


@cache
def documented_table() -> dict[str, Rate]:
    text = (schemas.data_dir() / "pricing.toml").read_text(encoding="utf-8")
    table: dict[str, Rate] = {}
    for row in tomllib.loads(text)["rate"]:
        name = f"{row['model']} {canonical_json(row['tier'])}"
        table[name] = Rate(Decimal(row["usd_per_second"]), row["source"], row.get("evidence", ""))
    return table


class PriceBook:
    """The documented table overlaid with what the server has taught us."""

    def __init__(self, learned: Mapping[str, Decimal] | None = None) -> None:
        self._estimates: dict[tuple[str, Decimal, bool], Estimate] = {}
        self._rates = dict(documented_table())
        for name, rate in (learned or {}).items():
            self._rates[name] = Rate(rate, "learned", "learned from the server's cost_estimate")

    def rate(self, model: Model, input: Mapping[str, Any]) -> Rate:
        return self._rate(model, price_class(model, input))

    def _rate(self, model: Model, name: str) -> Rate:
        if name in self._rates:
            return self._rates[name]
        # A tier the table does not know (a new enum value, an undocumented
        # field): price it like the model's most expensive known class so
        # the plan errs on the safe side, and say it is assumed.
        same_model = [
            r.usd_per_second for n, r in self._rates.items() if n.split(" ", 1)[0] == model.slug
        ]
        return Rate(
            max(same_model, default=Decimal("0.1")),
            "assumed",
            "no rate for this tier: the model's highest known rate",
        )

    def estimate(
        self, model: Model, input: Mapping[str, Any], seconds: Decimal, upper_bound: bool = False
    ) -> Estimate:
        name = price_class(model, input)
        cached = self._estimates.get((name, seconds, upper_bound))
        if cached is not None:
            return cached
        rate = self._rate(model, name)
        cost = (rate.usd_per_second * seconds).quantize(MICRO, rounding=ROUND_HALF_UP)
        estimate = Estimate(
            cost=normalize(cost),
            source=rate.source,
            price_class=name,
            seconds=seconds,
            upper_bound=upper_bound,
        )
        self._estimates[(name, seconds, upper_bound)] = estimate
        return estimate


def learn_rate(cost_estimate: Decimal, seconds: Decimal) -> Decimal:
    """The per-second rate implied by a server's estimate for a task of known length."""
    return normalize((cost_estimate / seconds).quantize(Decimal("1e-10"), rounding=ROUND_HALF_UP))
