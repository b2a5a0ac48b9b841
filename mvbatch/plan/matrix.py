"""Matrix expansion with GitHub Actions' exact semantics.

Owns: turning `{axis: [values]}` plus `exclude`/`include` lists into an ordered
list of combinations. Knows nothing about models or inputs.

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
from collections.abc import Mapping, Sequence
from typing import Any

Combination = dict[str, Any]


def expand(
    axes: Mapping[str, Sequence[Any]],
    exclude: Sequence[Mapping[str, Any]] = (),
    include: Sequence[Mapping[str, Any]] = (),
) -> list[Combination]:
    names = list(axes)
    product: list[Combination] = []
    if names:
        for values in itertools.product(*(axes[name] for name in names)):
            product.append(dict(zip(names, values, strict=True)))
    originals = [c for c in product if not any(_matches(c, ex) for ex in exclude)]

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
