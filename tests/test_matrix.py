"""GitHub Actions matrix semantics, checked against GitHub's documented examples."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mvbatch.plan.matrix import expand, same


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
