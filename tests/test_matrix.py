"""GitHub Actions matrix semantics, checked against GitHub's documented examples."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mvbatch.plan.matrix import expand, same, size


def test_github_example_expanding_configurations() -> None:
    # docs.github.com: "Example: Expanding configurations"
    result = expand(
        {"fruit": ["apple", "pear"], "animal": ["cat", "dog"]},
        include=[
            {"color": "green"},
            {"color": "pink", "animal": "cat"},
            {"fruit": "apple", "shape": "circle"},
            {"fruit": "banana"},
            {"fruit": "banana", "animal": "cat"},
        ],
    )
    assert result == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]


def test_github_example_adding_configurations() -> None:
    # "Example: Adding configurations": an include that matches one original.
    result = expand(
        {"os": ["windows-latest", "ubuntu-latest"], "node": [14, 16]},
        include=[{"os": "windows-latest", "node": 16, "npm": 6}],
    )
    assert result == [
        {"os": "windows-latest", "node": 14},
        {"os": "windows-latest", "node": 16, "npm": 6},
        {"os": "ubuntu-latest", "node": 14},
        {"os": "ubuntu-latest", "node": 16},
    ]


def test_github_example_include_only() -> None:
    # "Example: Adding new combinations": no axes, only includes.
    result = expand(
        {},
        include=[
            {"site": "production", "datacenter": "site-a"},
            {"site": "staging", "datacenter": "site-b"},
        ],
    )
    assert result == [
        {"site": "production", "datacenter": "site-a"},
        {"site": "staging", "datacenter": "site-b"},
    ]


def test_github_example_excluding() -> None:
    # "Excluding matrix configurations": 12 combinations, 3 excluded by 2 partial matches.
    result = expand(
        {
            "os": ["macos-latest", "windows-latest"],
            "version": [12, 14, 16],
            "environment": ["staging", "production"],
        },
        exclude=[
            {"os": "macos-latest", "version": 12, "environment": "production"},
            {"os": "windows-latest", "version": 16},
        ],
    )
    assert len(result) == 9
    assert {"os": "macos-latest", "version": 12, "environment": "production"} not in result
    assert not any(c["os"] == "windows-latest" and c["version"] == 16 for c in result)


def test_includes_apply_after_excludes() -> None:
    # An include naming an excluded combination adds it back as a new combination.
    result = expand(
        {"mode": ["std", "pro"], "duration": [5, 10]},
        exclude=[{"mode": "pro", "duration": 10}],
        include=[{"mode": "pro", "duration": 10, "audio": True}],
    )
    assert result[-1] == {"mode": "pro", "duration": 10, "audio": True}
    assert len(result) == 4


def test_include_may_overwrite_values_added_by_an_earlier_include() -> None:
    result = expand({"a": [1]}, include=[{"b": 1}, {"b": 2}])
    assert result == [{"a": 1, "b": 2}]


def test_toml_types_stay_apart() -> None:
    assert not same(True, 1)
    assert not same(5, 5.0)
    assert same({"a": [1, {"b": True}]}, {"a": [1, {"b": True}]})
    # `true` in an exclude does not remove the axis value 1.
    assert expand({"x": [1, True]}, exclude=[{"x": True}]) == [{"x": 1}]


axis_values = st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True)


@given(st.dictionaries(st.sampled_from("abcd"), axis_values, min_size=1, max_size=3), st.data())
def test_exclude_removes_exactly_the_partial_matches(
    axes: dict[str, list[int]], data: st.DataObject
) -> None:
    names = list(axes)
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    exclude = {name: data.draw(st.sampled_from(axes[name])) for name in chosen}
    full = expand(axes)
    kept = expand(axes, exclude=[exclude])
    removed = [c for c in full if all(c[k] == v for k, v in exclude.items())]
    assert len(kept) == len(full) - len(removed)
    assert all(c not in kept for c in removed)


@given(st.dictionaries(st.sampled_from("abc"), axis_values, min_size=1, max_size=3))
def test_product_size_and_order(axes: dict[str, list[Any]]) -> None:
    result = expand(axes)
    size = 1
    for values in axes.values():
        size *= len(values)
    assert len(result) == size
    assert result == expand(axes)  # deterministic
    assert all(list(c) == list(axes) for c in result)  # keys in axis order


# ------------------------------------------------------------------ counting before expanding

values = st.one_of(st.integers(0, 2), st.booleans(), st.sampled_from(["x", "y"]))
matrices = st.dictionaries(
    st.sampled_from("abcd"), st.lists(values, min_size=1, max_size=4), min_size=0, max_size=4
)


@given(matrices, st.data())
def test_size_is_the_length_of_the_expansion(
    axes: dict[str, list[Any]], data: st.DataObject
) -> None:
    keys = st.sampled_from([*axes, "z"]) if axes else st.just("z")
    partial = st.dictionaries(keys, values, min_size=1, max_size=3)
    exclude = data.draw(st.lists(partial, max_size=4))
    exclude = [e for e in exclude if all(k in axes for k in e)]  # the manifest's rule
    include = data.draw(st.lists(partial, max_size=4))
    assert size(axes, exclude, include) == len(expand(axes, exclude, include))


def test_size_does_not_expand() -> None:
    # 10^30 combinations: counting them one by one would never end.
    axes = {f"axis{i}": list(range(10)) for i in range(30)}
    assert size(axes) == 10**30
    assert size(axes, exclude=[{"axis0": 0}]) == 9 * 10**29
    assert size(axes, exclude=[{"axis0": 0}, {"axis0": 0, "axis1": 1}]) == 9 * 10**29
    assert size(axes, exclude=[{"axis0": 0}, {"axis1": 1}]) == 10**30 - 19 * 10**28
    assert size(axes, include=[{"axis0": 99}]) == 10**30 + 1
    assert size(axes, include=[{"axis0": 9, "extra": 1}]) == 10**30
    # Forty excludes of one key each: 2^40 groups for inclusion-exclusion, one walk here.
    binary = {f"x{i}": [0, 1] for i in range(40)}
    assert size(binary, exclude=[{f"x{i}": 0} for i in range(40)]) == 1


def test_size_gives_up_on_excludes_too_intricate_to_count() -> None:
    # Every exclude stays undecided until the last axis: 2^29 sets of them to follow.
    axes = {f"x{i}": [0, 1] for i in range(30)}
    assert size(axes, exclude=[{f"x{i}": 0, "x29": 1} for i in range(29)]) is None
