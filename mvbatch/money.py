"""Money and durations as people and documents see them: one formatter for each.

Owns: exact decimal helpers at the edge (`normalize`, `total`, `json_number`,
`plain`), the one way an amount of US dollars is written for a person
(`usd`), and the one way a length of time is (`duration`). Every stage
formats through these, so "$0.0414" and "1 min 05 s" read the same in the
plan, the progress panel, `status`, an error and every report.

Must not: round money for arithmetic (amounts stay `Decimal` inside and are
only formatted here), or know anything of tasks, plans or ledgers.
"""

from __future__ import annotations

from decimal import Decimal

NONE = "—"  # an amount or a time that is not known


def normalize(value: Decimal) -> Decimal:
    """Drop trailing zeros without switching to exponent notation (0E-6 -> 0)."""
    if value == 0:
        return Decimal(0)
    normalized = value.normalize()
    return normalized.quantize(Decimal(1)) if normalized == normalized.to_integral() else normalized


def total(values: list[Decimal]) -> Decimal:
    return normalize(sum(values, Decimal(0)))


def json_number(value: Decimal | None) -> float | None:
    # float() of a Decimal gives the shortest decimal that round-trips, so
    # 0.0414 prints as 0.0414: exact at the edge, Decimal everywhere inside.
    return None if value is None else float(value)


def plain(value: Decimal | None) -> str:
    """An amount for a spreadsheet cell: digits only, no symbol, no trailing zeros."""
    return "" if value is None else str(normalize(value))


def usd(value: Decimal | None) -> str:
    """Dollars with as many decimals as the amount has, 2 to 6: $0.0414, $0.11574, $2.00.

    Prices are set to the millionth of a dollar (a rate per second times the
    seconds), so six places show every amount exactly; fewer would hide
    that $0.11574 is not $0.1157.
    """
    if value is None:
        return NONE
    value = normalize(value)
    exponent = value.as_tuple().exponent
    places = min(6, max(2, -exponent if isinstance(exponent, int) else 2))
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value):,.{places}f}"


def duration(seconds: float | Decimal | None) -> str:
    """4.2 s, 45 s, 12 min 05 s, 3 h 05 min: how long, for people."""
    if seconds is None:
        return NONE
    number = max(0.0, float(seconds))
    tenths = round(number, 1)
    if tenths < 10 and tenths != int(tenths):
        return f"{tenths:.1f} s"
    whole = round(number)
    if whole < 60:
        return f"{whole} s"
    minutes, rest = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
