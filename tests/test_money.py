"""The one money and one duration formatter."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mvbatch.money import duration, json_number, normalize, plain, total, usd


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("0.0414", "$0.0414"),
        ("0.11574", "$0.11574"),
        ("2", "$2.00"),
        ("2.5", "$2.50"),
        ("1234.5", "$1,234.50"),
        ("0.000001", "$0.000001"),
        ("-0.011", "-$0.011"),
        ("0E-6", "$0.00"),
    ],
)
def test_usd_shows_every_amount_exactly(amount: str, text: str) -> None:
    assert usd(Decimal(amount)) == text


def test_unknown_amounts_and_times_read_as_a_dash() -> None:
    assert usd(None) == duration(None) == "—"
    assert plain(None) == ""
    assert json_number(None) is None


@given(st.decimals(min_value=-(10**6), max_value=10**6, places=6, allow_nan=False))
def test_usd_round_trips_to_the_same_amount(amount: Decimal) -> None:
    text = usd(amount).replace("$", "").replace(",", "")
    assert Decimal(text) == amount


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (4.24, "4.2 s"),
        (9.96, "10 s"),
        (45, "45 s"),
        (65, "1 min 05 s"),
        (3599.6, "1 h 00 min"),
        (3 * 3600 + 300, "3 h 05 min"),
        (-3, "0 s"),
    ],
)
def test_duration_reads_like_a_person_would_say_it(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_totals_are_exact_and_without_trailing_zeros() -> None:
    assert total([Decimal("0.0414")] * 3) == Decimal("0.1242")
    assert str(normalize(Decimal("2.000000"))) == "2"
    assert plain(Decimal("0.041400")) == "0.0414"
    assert json_number(Decimal("0.0414")) == 0.0414
