"""The review loop: `run --draft`, `--approved-only`, `--reroll-rejected` (commands/selection.py).

The end-to-end test runs the real CLI against a real simulator process and
checks every claim against the simulator's own billing (/_sim/stats) and
the payloads it stored; verdicts are written through the ledger, as
`mvbatch review` writes them. The unit tests use the planner and a ledger in
a temporary folder, no network.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from run_helpers import charges_by_key, cli, cli_env, invoke, planned, sim_stats
from sim_helpers import running_sim

from mvbatch.commands.planning import planned_rows
from mvbatch.commands.selection import (
    SEED_MAX,
    new_rerolls,
    reroll_seed,
    select,
    with_rerolls,
)
from mvbatch.commands.status import status_document
from mvbatch.ledger import Ledger, TaskRow, open_ledger
from mvbatch.plan.planner import Plan, PlannedTask
from mvbatch.settings import Settings

# hero: 4 variants (its cheapest, std·5 s, comes last) with a pinned seed;
# wide: 2 variants x 2 takes; close: one task.
MANIFEST = """\
name = "review"

[[shots]]
id = "hero"
model = "kling-v2-6"
prompt = "a silver car in neon rain"
[shots.input]
size = "16:9"
seed = 42
[shots.matrix]
mode = ["pro", "std"]
duration = [10, 5]

[[shots]]
id = "wide"
model = "kling-v2-6"
prompt = "a city street at night, wide"
takes = 2
[shots.input]
size = "16:9"
mode = "std"
[shots.matrix]
duration = [10, 5]

[[shots]]
id = "close"
model = "kling-v2-6"
prompt = "a close-up of rain on glass"
[shots.input]
size = "9:16"
mode = "std"
duration = 5
"""


def write(folder: Path, text: str = MANIFEST) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "review.toml"
    path.write_text(text, encoding="utf-8")
    return path


def variant(row: TaskRow | PlannedTask) -> dict[str, Any]:
    return dict(row.variant)


def by_key(state: Path, env: str = "live") -> dict[str, TaskRow]:
    with open_ledger(state) as ledger:
        return {r.key: r for r in ledger.tasks(env, "review")}


def verdict(state: Path, key: str, word: str | None, env: str = "live") -> None:
    with open_ledger(state) as ledger:
        ledger.record_verdict(env, key, word, None)


def charged(base: str) -> dict[str, int]:
    return charges_by_key(sim_stats(base))


def sent_input(sim_state: Path, key: str) -> dict[str, Any]:
    """The input the simulator received under this idempotency key (its own store)."""
    with sqlite3.connect(f"file:{sim_state / 'sim.sqlite3'}?mode=ro", uri=True) as db:
        found = db.execute(
            "SELECT input_json FROM tasks WHERE idempotency_key = ?", (key,)
        ).fetchall()
    assert len(found) == 1, found
    return json.loads(found[0][0])  # type: ignore[no-any-return]


def run(args: list[str], env: Mapping[str, str], cwd: Path) -> str:
    result = cli(["run", *args, "--yes"], env, cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_draft_then_approved_then_rerolls_charge_exactly_what_they_say(tmp_path: Path) -> None:
    path = write(tmp_path)
    state, sim_state = tmp_path / "state", tmp_path / "sim"
    with running_sim(tmp_path, speed=20, state_dir=sim_state) as base:
        env = cli_env(tmp_path, base)

        # --draft: one task per shot, each its shot's cheapest variant, take 1.
        out = run([str(path), "--draft"], env, tmp_path)
        assert "draft: the cheapest variant of each of 3 shots, one take" in out
        draft = charged(base)
        rows = by_key(state)
        assert set(draft.values()) == {1}
        assert sorted(rows[k].shot for k in draft) == ["close", "hero", "wide"]
        for key in draft:
            assert rows[key].take == 1
            assert rows[key].variant in ({"mode": "std", "duration": 5}, {"duration": 5}, {})
        assert len(rows) == 3  # nothing else was even planned into the ledger

        # Approve hero's draft: --approved-only runs exactly hero's other three variants.
        hero_draft = next(k for k in draft if rows[k].shot == "hero")
        verdict(state, hero_draft, "approved")
        out = run([str(path), "--approved-only"], env, tmp_path)
        assert "approved only: the rest of the matrix of 1 shot with an approved take (hero)" in out
        approved = charged(base)
        rows = by_key(state)
        added = set(approved) - set(draft)
        assert set(approved.values()) == {1}
        assert {rows[k].shot for k in added} == {"hero"}
        assert len(added) == 3
        assert {json.dumps(rows[k].variant, sort_keys=True) for k in added} == {
            json.dumps(v, sort_keys=True)
            for v in (
                {"mode": "pro", "duration": 10},
                {"mode": "pro", "duration": 5},
                {"mode": "std", "duration": 10},
            )
        }

        # Reject two takes: hero pro·10 s (seed 42 pinned) and wide's draft.
        hero_pro = next(k for k in added if rows[k].variant == {"mode": "pro", "duration": 10})
        wide_draft = next(k for k in draft if rows[k].shot == "wide")
        verdict(state, hero_pro, "rejected")
        verdict(state, wide_draft, "rejected")

        preview = cli(["plan", str(path), "--reroll-rejected", "--json"], env, tmp_path)
        assert preview.returncode == 0, preview.stderr
        previewed = json.loads(preview.stdout)["tasks"]
        assert sorted(t["rerolled_from"] for t in previewed) == sorted([hero_pro, wide_draft])
        assert charged(base) == approved  # a preview sends nothing

        out = run([str(path), "--reroll-rejected"], env, tmp_path)
        rerolled = charged(base)
        rows = by_key(state)
        new = set(rerolled) - set(approved)
        assert set(rerolled.values()) == {1}
        assert new == {t["key"] for t in previewed}  # what was shown is what was charged
        assert len(new) == 2
        replaces = {rows[k].rerolled_from: rows[k] for k in new}
        assert set(replaces) == {hero_pro, wide_draft}
        hero_new, wide_new = replaces[hero_pro], replaces[wide_draft]
        assert (hero_new.shot, hero_new.variant, hero_new.take) == (
            "hero",
            rows[hero_pro].variant,
            2,
        )
        assert (wide_new.shot, wide_new.variant, wide_new.take) == ("wide", {"duration": 5}, 3)
        new_seed = hero_new.input["seed"]
        assert new_seed != 42
        assert 0 <= new_seed <= SEED_MAX
        assert sent_input(sim_state, hero_new.key)["seed"] == new_seed
        assert sent_input(sim_state, hero_pro)["seed"] == 42
        assert "seed" not in sent_input(sim_state, wide_new.key)
        assert f"seed 42 -> {new_seed}" in out
        assert "take 1 (rejected) -> new take 3" in out

        # Again: every rejected take has its re-roll; nothing is sent.
        again = cli(["run", str(path), "--reroll-rejected", "--yes"], env, tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "no rejected take waits for a re-roll" in again.stdout
        assert charged(base) == rerolled

        # A plain run: everything left (wide's other three takes), nothing twice.
        run([str(path)], env, tmp_path)
        final = charged(base)
        rows = by_key(state)
        assert set(final.values()) == {1}
        assert {rows[k].shot for k in set(final) - set(rerolled)} == {"wide"}
        assert len(set(final) - set(rerolled)) == 3
        assert set(final) == set(rows)  # 9 planned + 2 re-rolls, each charged once
        assert len(rows) == 11
        assert {r.status for r in rows.values()} == {"succeeded"}

    # `mvbatch report` knows the re-rolls as planned too, not "from an earlier manifest".
    written = cli(["report", str(path), "--no-download"], env, tmp_path)
    assert written.returncode == 0, written.stdout + written.stderr
    report = json.loads((tmp_path / "outputs" / "review" / "report.json").read_text())
    entries = {t["key"]: t for t in report["tasks"]}
    assert entries[hero_new.key]["rerolled_from"] == hero_pro
    assert entries[hero_new.key]["in_plan"] is True  # planned, not "from an earlier manifest"
    assert entries[hero_pro]["verdict"] == "rejected"


def test_the_three_selections_exclude_each_other(tmp_path: Path) -> None:
    path = write(tmp_path)
    for pair in (["--draft", "--approved-only"], ["--approved-only", "--reroll-rejected"]):
        for command in ("run", "plan"):
            result = invoke([command, str(path), *pair])
            assert result.exit_code == 2, result.output
            assert "exclude each other" in result.output


def test_approved_only_with_no_approved_take_sends_nothing_and_exits_0(tmp_path: Path) -> None:
    path = write(tmp_path)
    result = invoke(["run", str(path), "--approved-only"])
    assert result.exit_code == 0, result.output
    assert "no shot has an approved take yet, so nothing runs" in result.output
    with open_ledger(tmp_path / "state") as ledger:
        assert ledger.tasks("sim", "review") == []


def test_plan_out_refuses_a_selection(tmp_path: Path) -> None:
    path = write(tmp_path)
    result = invoke(["plan", str(path), "--draft", "--out", str(tmp_path / "p.toml")])
    assert result.exit_code == 2, result.output
    assert "--out saves the whole plan" in result.output
    assert not (tmp_path / "p.toml").exists()


# ------------------------------------------------------------------ selection.py, no network


@pytest.fixture
def plan_and_ledger(tmp_path: Path) -> tuple[Plan, Ledger]:
    the_plan = planned(write(tmp_path / "m"), tmp_path / "state")
    ledger = open_ledger(tmp_path / "state")
    ledger.ensure_tasks("sim", planned_rows(the_plan))
    return the_plan, ledger


def key_of(the_plan: Plan, shot: str, take: int = 1, **axes: Any) -> str:
    return next(
        t.key
        for t in the_plan.tasks
        if t.shot == shot
        and t.take == take
        and all(dict(t.variant)[k] == v for k, v in axes.items())
    )


def test_draft_is_take_1_of_each_shots_cheapest_variant(
    plan_and_ledger: tuple[Plan, Ledger],
) -> None:
    the_plan, ledger = plan_and_ledger
    chosen = select(the_plan, ledger.tasks("sim", "review"), {}, "draft")
    assert chosen.shots == ("hero", "wide", "close")
    assert [(t.shot, variant(t), t.take) for t in chosen.plan.tasks] == [
        ("hero", {"mode": "std", "duration": 5}, 1),
        ("wide", {"duration": 5}, 1),
        ("close", {}, 1),
    ]
    assert chosen.full.tasks == the_plan.tasks


def test_draft_breaks_a_tie_by_matrix_order(tmp_path: Path) -> None:
    text = MANIFEST.replace('mode = ["pro", "std"]\nduration = [10, 5]', 'size = ["9:16", "1:1"]')
    text = text.replace('size = "16:9"\nseed = 42', 'mode = "std"\nduration = 5', 1)
    the_plan = planned(write(tmp_path, text), tmp_path / "state")
    chosen = select(the_plan, [], {}, "draft")
    hero = [t for t in chosen.plan.tasks if t.shot == "hero"]
    assert [variant(t) for t in hero] == [{"size": "9:16"}]


def test_approved_only_takes_every_task_of_shots_with_an_approved_take(
    plan_and_ledger: tuple[Plan, Ledger],
) -> None:
    the_plan, ledger = plan_and_ledger
    assert select(the_plan, ledger.tasks("sim", "review"), {}, "approved").empty
    ledger.record_verdict("sim", key_of(the_plan, "wide", 2, duration=10), "approved", None)
    ledger.record_verdict("sim", key_of(the_plan, "close"), "rejected", None)
    chosen = select(
        the_plan, ledger.tasks("sim", "review"), ledger.verdicts("sim", "review"), "approved"
    )
    assert chosen.shots == ("wide",)
    assert chosen.left_out == 2
    assert {t.key for t in chosen.plan.tasks} == {t.key for t in the_plan.tasks if t.shot == "wide"}


def test_a_task_shared_by_two_shots_counts_for_each(tmp_path: Path) -> None:
    again = MANIFEST[MANIFEST.index('[[shots]]\nid = "close"') :].replace('"close"', '"again"')
    the_plan = planned(write(tmp_path, MANIFEST + "\n" + again), tmp_path / "state")
    shared = next(t for t in the_plan.tasks if t.shot == "close")
    assert shared.shots == ("close", "again")
    ledger = open_ledger(tmp_path / "state")
    ledger.ensure_tasks("sim", planned_rows(the_plan))
    ledger.record_verdict("sim", shared.key, "approved", None)
    chosen = select(
        the_plan, ledger.tasks("sim", "review"), ledger.verdicts("sim", "review"), "approved"
    )
    assert chosen.shots == ("close", "again")
    assert [t.key for t in chosen.plan.tasks] == [shared.key]
    drafted = select(the_plan, [], {}, "draft")
    assert drafted.shots == ("hero", "wide", "close", "again")
    assert len(drafted.plan.tasks) == 3  # the shared draft is one task


def test_rerolls_are_new_takes_past_the_highest_with_the_seed_changed(
    plan_and_ledger: tuple[Plan, Ledger],
) -> None:
    the_plan, ledger = plan_and_ledger
    hero = key_of(the_plan, "hero", mode="pro", duration=10)
    wide = key_of(the_plan, "wide", 1, duration=5)
    ledger.record_verdict("sim", hero, "rejected", None)
    ledger.record_verdict("sim", wide, "rejected", None)
    ledger.record_verdict("sim", key_of(the_plan, "close"), "approved", None)
    rows, verdicts = ledger.tasks("sim", "review"), ledger.verdicts("sim", "review")
    chosen = select(the_plan, rows, verdicts, "reroll")
    assert [(r.replaces.key, r.task.take) for r in chosen.rerolls] == [(hero, 2), (wide, 3)]
    assert [t.key for t in chosen.plan.tasks] == [r.task.key for r in chosen.rerolls]
    first = chosen.rerolls[0]
    assert first.seed == (42, first.task.input["seed"])
    assert first.task.input == {**first.replaces.input, "seed": first.task.input["seed"]}
    assert first.task.input["seed"] != 42
    assert chosen.rerolls[1].seed is None
    assert "seed" not in chosen.rerolls[1].task.input
    assert first.task.estimate == first.replaces.estimate
    # The same ledger gives the same re-rolls: a crash before they are recorded makes no others.
    assert select(the_plan, rows, verdicts, "reroll").rerolls == chosen.rerolls
    assert not set(chosen.rerolled_from) & {t.key for t in the_plan.tasks}

    # Recorded (as the run records them), they are not re-rolled again, and
    # every run takes them back into the plan.
    ledger.ensure_tasks("sim", planned_rows(chosen.plan, chosen.rerolled_from))
    rows = ledger.tasks("sim", "review")
    again = select(the_plan, rows, verdicts, "reroll")
    assert [(r.task.key, r.recorded) for r in again.rerolls] == [
        (r.task.key, True) for r in chosen.rerolls
    ]  # still unfinished: they run again, under the same keys
    assert new_rerolls(again.full, rows, verdicts) == ()
    everything = select(the_plan, rows, {}, "all")
    assert len(everything.plan.tasks) == len(the_plan.tasks) + 2
    # A rejected re-roll gets its own, one take further.
    ledger.record_verdict("sim", first.task.key, "rejected", None)
    verdicts = ledger.verdicts("sim", "review")
    third = new_rerolls(with_rerolls(the_plan, rows)[0], rows, verdicts)
    assert [(r.replaces.key, r.task.take) for r in third] == [(first.task.key, 3)]
    assert third[0].seed is not None
    assert third[0].seed[0] == first.task.input["seed"]


def test_a_recorded_reroll_the_recipe_no_longer_gives_is_left_alone(
    plan_and_ledger: tuple[Plan, Ledger],
) -> None:
    the_plan, ledger = plan_and_ledger
    hero = key_of(the_plan, "hero", mode="pro", duration=10)
    row = {**next(planned_rows(the_plan)), "key": "mvb1-" + "0" * 32, "take": 2}
    ledger.ensure_tasks("sim", [{**row, "rerolled_from": hero}])
    full, found = with_rerolls(the_plan, ledger.tasks("sim", "review"))
    assert found == ()
    assert full.tasks == the_plan.tasks


def test_reroll_seed_is_another_valid_seed_derived_from_seed_and_take() -> None:
    for seed in (0, 1, 42, SEED_MAX):
        for take in (2, 3, 50):
            new = reroll_seed("kling-v2-6", seed, take)
            assert new != seed
            assert 0 <= new <= SEED_MAX
            assert new == reroll_seed("kling-v2-6", seed, take)
    assert reroll_seed("kling-v2-6", 42, 2) != reroll_seed("kling-v2-6", 42, 3)
    assert 0 <= reroll_seed("wan2-6-i2v-flash", 7, 2) <= SEED_MAX  # no maximum in its schema


def test_plan_status_and_report_count_an_unfinished_reroll_as_planned(
    tmp_path: Path, plan_and_ledger: tuple[Plan, Ledger]
) -> None:
    the_plan, ledger = plan_and_ledger
    hero = key_of(the_plan, "hero", mode="pro", duration=10)
    ledger.record_verdict("sim", hero, "rejected", None)
    chosen = select(
        the_plan, ledger.tasks("sim", "review"), ledger.verdicts("sim", "review"), "reroll"
    )
    ledger.ensure_tasks("sim", planned_rows(chosen.plan, chosen.rerolled_from))
    ledger.close()
    (reroll,) = chosen.rerolls
    path = tmp_path / "m" / "review.toml"

    shown = invoke(["plan", str(path), "--json"])
    assert shown.exit_code == 0, shown.output
    tasks = {t["key"]: t for t in json.loads(shown.output)["tasks"]}
    assert len(tasks) == len(the_plan.tasks) + 1
    assert tasks[reroll.task.key]["rerolled_from"] == hero
    assert tasks[reroll.task.key]["input"]["seed"] == reroll.task.input["seed"]

    document = status_document(path, Settings(MVBATCH_STATE_DIR=tmp_path / "state"))
    assert document["left"]["tasks"] == len(the_plan.tasks) + 1

    written = invoke(["report", str(path), "--no-download"])
    report = json.loads((tmp_path / "outputs" / "review" / "report.json").read_text())
    entry = next(t for t in report["tasks"] if t["key"] == reroll.task.key)
    assert entry["in_plan"] is True, written.output
    assert entry["rerolled_from"] == hero


def test_a_selection_is_held_against_the_cap_before_anything_is_sent(tmp_path: Path) -> None:
    path = write(tmp_path)  # the draft: 3 tasks of $0.0414; the whole plan costs more
    refused = invoke(["run", str(path), "--draft", "--max-cost", "0.12"])
    assert refused.exit_code == 3, refused.output
    assert "draft: the cheapest variant of each of 3 shots" in refused.output
    assert "$0.1242" in refused.output
    with open_ledger(tmp_path / "state") as ledger:
        assert ledger.tasks("sim", "review") == []
