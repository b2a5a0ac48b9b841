"""Matrix expansion with GitHub Actions' exact semantics, and its size before it is made.

Owns: turning `{axis: [values]}` plus `exclude`/`include` lists into an ordered
list of combinations, and counting them without making them (`size`), so that
a matrix too large to plan is refused before it fills the memory. Knows
nothing about models, inputs or how many tasks are too many (the planner does).

GitHub's rules, as documented for `jobs.<job_id>.strategy.matrix`:

1. The axes form a cartesian product, in the order the axes are written.
2. `exclude` entries are partial matches: a combination is dropped when every
   key/value of some exclude entry equals the combination's value. Excludes
   apply to the product only, before includes.
3. Each `include` entry is added to every *original* combination in which none
   of its keys would overwrite an original axis value (values added by an
   earlier include may be overwritten). An entry that fits no original
   combination becomes a new combination of its own.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

Combination = dict[str, Any]


# How much counting `size` may do (the excludes and values each state of its
# walk over the axes looks at) before it gives up: far beyond any real matrix
# (the 100,000-task benchmark uses a few hundred per shot), about a second.
COUNT_BUDGET = 2_000_000


def size(
    axes: Mapping[str, Sequence[Any]],
    exclude: Sequence[Mapping[str, Any]] = (),
    include: Sequence[Mapping[str, Any]] = (),
) -> int | None:
    """How many combinations `expand` returns, counted without making them.

    Exact: the axes are walked once, keeping only how many partial
    combinations each set of still-matching excludes stands for, so the work
    grows with the excludes, not with the product (ten million combinations
    are counted as fast as ten). An include adds one when it fits no
    remaining combination. None if the excludes are too intricate to count
    within `COUNT_BUDGET`; no real matrix comes near it.
    """
    budget = [COUNT_BUDGET]
    kept = _surviving(axes, exclude, budget)
    if kept is None:
        return None
    added = 0
    for entry in include:
        if kept == 0:
            added += 1
            continue
        narrowed = {
            name: [x for x in values if same(x, entry[name])] if name in entry else values
            for name, values in axes.items()
        }
        fits = _surviving(narrowed, exclude, budget)
        if fits is None:
            return None
        added += fits == 0
    return kept + added


def expand(
    axes: Mapping[str, Sequence[Any]],
    exclude: Sequence[Mapping[str, Any]] = (),
    include: Sequence[Mapping[str, Any]] = (),
) -> list[Combination]:
    """Every combination, in order. Count them with `size` first: this makes them all."""
    originals = [c for c in _product(axes) if not any(_matches(c, ex) for ex in exclude)]

    # Track which keys of each combination came from the axes: only those are
    # protected from being overwritten by an include.
    extended: list[Combination] = [dict(c) for c in originals]
    added: list[Combination] = []
    for entry in include:
        fitted = False
        for original, combination in zip(originals, extended, strict=True):
            if all(k not in original or same(original[k], v) for k, v in entry.items()):
                combination.update(entry)
                fitted = True
        if not fitted:
            added.append(dict(entry))
    return extended + added


def _product(axes: Mapping[str, Sequence[Any]]) -> Iterator[Combination]:
    names = list(axes)
    if not names:
        return
    for values in itertools.product(*(axes[name] for name in names)):
        yield dict(zip(names, values, strict=True))


def _surviving(
    axes: Mapping[str, Sequence[Any]], exclude: Sequence[Mapping[str, Any]], budget: list[int]
) -> int | None:
    """How many combinations of the product no exclude entry matches (None: over budget).

    Walks the axes in order. A state is the set of excludes that every value
    chosen so far agrees with; it counts the partial combinations that reach
    it. An exclude whose last axis is reached while it still agrees removes
    those combinations; one that disagrees drops out of the state.
    """
    names = list(axes)
    if not names:
        return 0
    # An entry naming a key that is not an axis matches nothing (as in `_matches`).
    entries = [e for e in exclude if all(k in axes for k in e)]
    if any(not e for e in entries):
        return 0  # an empty entry matches every combination
    last = [max(names.index(k) for k in e) for e in entries]
    states: dict[frozenset[int], int] = {frozenset(range(len(entries))): 1}
    for position, name in enumerate(names):
        values = axes[name]
        following: dict[frozenset[int], int] = {}
        for agreeing, count in states.items():
            deciding = [i for i in agreeing if name in entries[i]]
            budget[0] -= len(agreeing) + len(values) * (1 + len(deciding))  # the work below
            if budget[0] < 0:
                return None
            groups: dict[frozenset[int], int] = {}
            for value in values:
                still = frozenset(i for i in deciding if same(value, entries[i][name]))
                groups[still] = groups.get(still, 0) + 1
            for still, weight in groups.items():
                if any(last[i] == position for i in still):
                    continue  # an exclude matched the whole combination
                state = (agreeing - frozenset(deciding)) | still
                following[state] = following.get(state, 0) + count * weight
        states = following
    return sum(states.values())


def same(a: Any, b: Any) -> bool:
    """Equality that keeps TOML's types apart: `true` is not `1`, `5` is not `5.0`."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _matches(combination: Mapping[str, Any], partial: Mapping[str, Any]) -> bool:
    return all(k in combination and same(combination[k], v) for k, v in partial.items())
