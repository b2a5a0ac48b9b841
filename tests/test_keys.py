"""The idempotency key: stable under formatting and order, new with any semantic change."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from mvbatch.plan import manifest
from mvbatch.plan.keys import canonical_json, retry_key, task_key, task_key_from_text
from mvbatch.plan.planner import plan

scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**31), 2**31),
    st.text(max_size=20),
    st.floats(allow_nan=False, allow_infinity=False),
)
inputs = st.dictionaries(st.text(min_size=1, max_size=12), scalars, max_size=6)


@given(inputs, st.randoms())
def test_key_ignores_dict_order(input: dict[str, Any], rng: Any) -> None:
    items = list(input.items())
    rng.shuffle(items)
    assert task_key("m", "kling-v2-6", input, 1) == task_key("m", "kling-v2-6", dict(items), 1)


@given(inputs, st.sampled_from(["manifest", "model", "take", "input"]), st.data())
def test_key_changes_with_every_semantic_field(
    input: dict[str, Any], which: str, data: st.DataObject
) -> None:
    base = {"manifest": "m", "model": "kling-v2-6", "canonical_input": input, "take": 1}
    changed = dict(base)
    if which == "manifest":
        changed["manifest"] = data.draw(st.text(min_size=1).filter(lambda s: s != "m"))
    elif which == "model":
        changed["model"] = "kling-v3-omni"
    elif which == "take":
        changed["take"] = data.draw(st.integers(2, 100))
    else:
        name = data.draw(st.text(min_size=1, max_size=12))
        value = data.draw(scalars)
        new_input = {**input, name: value}
        if canonical_json(new_input) == canonical_json(input):
            new_input = {**input, name + "x": value}
        changed["canonical_input"] = new_input
    assert task_key(**base) != task_key(**changed)


@given(inputs, st.integers(1, 100))
def test_spliced_key_equals_the_documented_recipe(input: dict[str, Any], take: int) -> None:
    document = {"manifest": "launch", "model": "kling-v2-6", "input": input, "take": take}
    expected = (
        "mvb1-" + hashlib.blake2b(canonical_json(document).encode(), digest_size=16).hexdigest()
    )
    assert task_key_from_text("launch", "kling-v2-6", canonical_json(input), take) == expected


def test_key_is_pinned() -> None:
    # The recipe is a contract: a change here charges every user's tasks again.
    key = task_key(
        "launch-teaser",
        "kling-v2-6",
        {"prompt": "A silver sports car", "size": "16:9", "duration": 5},
        1,
    )
    assert (
        key
        == "mvb1-"
        + hashlib.blake2b(
            json.dumps(
                {
                    "input": {"duration": 5, "prompt": "A silver sports car", "size": "16:9"},
                    "manifest": "launch-teaser",
                    "model": "kling-v2-6",
                    "take": 1,
                },
                sort_keys=True,
                separators=(",", ":"),
            ).encode(),
            digest_size=16,
        ).hexdigest()
    )
    assert key == "mvb1-52aa79d46d446efa2931f134056d7ed7"


def test_retry_keys_are_derived_and_distinct() -> None:
    key = task_key("m", "kling-v2-6", {"prompt": "p"}, 1)
    assert retry_key(key, 0) == key
    assert retry_key(key, 1) == retry_key(key, 1)
    assert len({key, retry_key(key, 1), retry_key(key, 2)}) == 3


LAYOUTS = [
    # The same manifest written three ways: inline tables, sub-tables, reordered keys.
    """
name = "fmt"
[[shots]]
id = "a"
model = "kling-v2-6"
prompt = "A car"
input = { size = "16:9", duration = 5, mode = "std" }
""",
    """
# comments and blank lines do not matter
name    =    "fmt"

[[shots]]
prompt = 'A car'
id = "a"
model = "kling-v2-6"
[shots.input]
mode = "std"
duration = 5
size = "16:9"
""",
    """
name = "fmt"
[defaults]
model = "kling-v2-6"
[defaults.input]
mode = "std"
[[shots]]
id = "a"
input.prompt = "A car"
input.duration = 5
input.size = "16:9"
""",
]


def _keys(tmp_path: Path, text: str, name: str) -> list[str]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return [t.key for t in plan(manifest.load(path)).tasks]


def test_key_ignores_toml_formatting(tmp_path: Path) -> None:
    keys = [_keys(tmp_path, text, f"m{i}.toml") for i, text in enumerate(LAYOUTS)]
    assert keys[0] == keys[1] == keys[2]
    assert len(keys[0]) == 1


@settings(max_examples=30, deadline=None)
@given(
    prompt=st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != ""),
    duration=st.sampled_from([5, 10]),
    mode=st.sampled_from(["std", "pro"]),
    takes=st.integers(1, 3),
)
def test_planning_twice_gives_identical_plans(
    tmp_path_factory: Any, prompt: str, duration: int, mode: str, takes: int
) -> None:
    folder = tmp_path_factory.mktemp("twice")
    text = tomli_w.dumps(
        {
            "name": "twice",
            "shots": [
                {
                    "id": "a",
                    "model": "kling-v2-6",
                    "prompt": prompt,
                    "takes": takes,
                    "matrix": {"duration": [duration, 10], "mode": [mode]},
                }
            ],
        }
    )
    path = folder / "m.toml"
    path.write_text(text, encoding="utf-8")
    first, second = plan(manifest.load(path)), plan(manifest.load(path))
    assert first.tasks == second.tasks
    assert len({t.key for t in first.tasks}) == len(first.tasks)
