"""Words that match the money: every figure named, charges told apart, rows that add up.

- The plan header shows the cap that holds (the lower of max_usd and
  --max-cost) and where it came from.
- A task the server refused before creating it is "rejected (not charged)";
  a failed task says whether it was charged, and how much, in the run
  summary, `status` and every report.
- `status` before the first run plans from the manifest.
- report.json adds up: the task rows sum exactly to the totals.
"""

from __future__ import annotations

import csv
import io
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from report_helpers import add_task, task_row
from rich.console import Console, RenderableType
from run_helpers import invoke, shots, write_manifest

from mvbatch.commands.planning import build_plan
from mvbatch.commands.status import status_document
from mvbatch.ledger import STATUSES, Ledger, open_ledger
from mvbatch.report.build import build_report
from mvbatch.report.command import write_report
from mvbatch.report.formats import csv_text, markdown_text
from mvbatch.report.model import Report, TaskEntry
from mvbatch.run.budget import Preflight
from mvbatch.run.results import RunResult
from mvbatch.settings import Settings
from mvbatch.ui import progress, render

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "jobs" / "demo.toml"
DEMO_ESTIMATE = Decimal("0.6468")  # the plan's estimate of jobs/demo.toml (9 tasks)


def text_of(renderable: RenderableType) -> str:
    console = Console(file=io.StringIO(), width=300, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def exact(text: str) -> Any:
    """JSON with every number as an exact Decimal, the way a careful user reads money."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(MVBATCH_STATE_DIR=tmp_path / "state", MVBATCH_OUTPUT_DIR=tmp_path / "outputs")


# ------------------------------------------------------- the cap and its source


def test_the_plan_header_shows_the_cap_that_holds_and_where_it_came_from(
    settings: Settings, tmp_path: Path
) -> None:
    plan = build_plan(DEMO, settings, "sim")  # [budget] max_usd = 2.00
    assert "cap $2.00 (the manifest's [budget] max_usd)" in text_of(render.plan_view(plan, {}))
    lowered = text_of(render.plan_view(plan, {}, max_cost=Decimal("0.5")))
    assert "cap $0.50 (--max-cost; the manifest's [budget] max_usd is $2.00)" in lowered
    higher = text_of(render.plan_view(plan, {}, max_cost=Decimal(5)))
    assert "cap $2.00 (the manifest's [budget] max_usd; --max-cost $5.00 is higher)" in higher
    uncapped = build_plan(write_manifest(tmp_path, "free", shots(1)), settings, "sim")
    assert "no cap (set [budget] max_usd" in text_of(render.plan_view(uncapped, {}))
    only_flag = text_of(render.plan_view(uncapped, {}, max_cost=Decimal("0.5")))
    assert "cap $0.50 (--max-cost)" in only_flag
    assert "budget: $" not in text_of(render.plan_view(plan, {}))


def test_the_plan_names_its_estimate(settings: Settings) -> None:
    text = text_of(render.plan_view(build_plan(DEMO, settings, "sim"), {}))
    assert "9 tasks, estimated $0.6468" in text
    assert "price table" in text  # where the estimate comes from


# --------------------------------------------------------- the preflight check


def preflight(**values: Any) -> Preflight:
    fields: dict[str, Any] = {
        "manifest": "demo",
        "cap": Decimal("0.5"),
        "committed": Decimal(0),
        "new": 9,
        "new_cost": Decimal("0.96"),
        "retry": 0,
        "retry_cost": Decimal(0),
        "resume": 0,
        "poll": 0,
        "done": 0,
        "failed": 0,
        "assumed_classes": ('kling-v2-6 {"audio":false,"mode":"pro"}',),
        "floor": Decimal("0.8839"),
    }
    fields.update(values)
    return Preflight(**fields)


def test_the_preflight_explains_committed_projected_and_at_least() -> None:
    text = text_of(progress.preflight_view(preflight(), simulated=False))
    assert "committed so far $0.00 (" in text  # named where it first appears
    assert "projected $0.96 (" in text
    # The budget refusal that follows says "at least $0.8839": say here what that is.
    assert "at least $0.8839" in text
    assert "one task of each assumed-price tier" in text
    assert "committed = " in text
    # Words for the live progress lines of a run that goes ahead.
    going = text_of(progress.preflight_view(preflight(cap=Decimal("0.9")), simulated=False))
    assert "spent = " in going


def test_retrying_failed_tasks_says_they_are_new_tasks_charged_as_such() -> None:
    text = text_of(
        progress.preflight_view(
            preflight(new=0, new_cost=Decimal(0), retry=2, retry_cost=Decimal("0.0828")),
            simulated=False,
        )
    )
    assert "2 failed to submit again as new tasks" in text
    assert "$0.0828" in text
    assert "charged again" not in text  # a rejected task was never charged a first time


# ------------------------------------------------------------ the run summary


def entry(key: str, status: str, **values: Any) -> TaskEntry:
    return TaskEntry(
        key,
        f"shot-{key}",
        (f"shot-{key}",),
        (),
        1,
        "kling-v2-6",
        {"prompt": "p"},
        status,
        values.pop("estimate_local", Decimal("0.0414")),
        'kling-v2-6 {"mode":"std"}',
        "documented",
        False,
        **values,
    )


def failed_report() -> Report:
    tasks = (
        entry(
            "a",
            "succeeded",
            cost_estimate_server=Decimal("0.0414"),
            cost_actual=Decimal("0.0414"),
        ),
        entry(
            "b",
            "failed",
            task_id="t-b",
            cost_estimate_server=Decimal("0.0414"),
            cost_actual=Decimal("0.0414"),
            error="GPU exploded",
        ),
        entry(
            "c",
            "failed",
            task_id="t-c",
            cost_estimate_server=Decimal("0.0414"),
            cost_actual=Decimal(0),
            error="Content flagged",
        ),
        entry("d", "rejected", error="HTTP 422: duration must be 5 or 10"),
    )
    return Report("demo", "live", tasks, ("shot-a", "shot-b", "shot-c", "shot-d"), {}, "now")


def run_result(**values: Any) -> RunResult:
    fields: dict[str, Any] = {
        "manifest": "demo",
        "simulated": False,
        "total": 4,
        "counts": {"succeeded": 1, "failed": 2, "rejected": 1},
        "submitted": 4,
        "held": 0,
        "held_reason": None,
        "committed": Decimal("0.0828"),
        "spent": Decimal("0.0414"),
        "cap": Decimal(2),
        "interrupted": False,
        "elapsed": 3.0,
        "requests": {},
        "failures": (
            ("shot-b", "b", "GPU exploded"),
            ("shot-c", "c", "Content flagged"),
            ("shot-d", "d", "HTTP 422: duration must be 5 or 10"),
        ),
    }
    fields.update(values)
    return RunResult(**fields)


def test_the_run_summary_tells_rejected_from_failed_by_counts() -> None:
    text = text_of(progress.result_view(run_result(), "mvbatch run demo.toml"))
    summary = text.splitlines()[0]
    assert "2 failed, 1 rejected (not charged)" in summary
    assert "3 failed" not in summary


def test_the_run_summary_says_which_failures_were_charged() -> None:
    text = text_of(
        progress.result_view(run_result(), "mvbatch run demo.toml", report=failed_report())
    )
    assert "1 failed (charged $0.0414)" in text
    assert "1 failed (not charged)" in text
    assert "1 rejected (not charged)" in text
    assert "failed (charged $0.0414): shot-b b: GPU exploded" in text
    assert "rejected (not charged): shot-d d: HTTP 422" in text
    hint = next(line for line in text.splitlines() if "--retry-failed" in line)
    assert "charged again" not in hint
    assert "new task" in hint


# ------------------------------------------------------------------- status


def test_status_before_the_first_run_plans_from_the_manifest(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not (settings.state_dir / "ledger.sqlite").exists()
    document = status_document(DEMO, settings)
    assert document["tasks"] == 9
    assert document["counts"]["planned"] == 9
    assert document["states"]["new"] == 9
    assert document["left"]["tasks"] == 9
    assert Decimal(str(document["left"]["cost_estimate"])) == DEMO_ESTIMATE
    assert document["last_run"] is None
    assert document["plan"]["tasks"] == 9
    text = text_of(progress.status_view(document))
    assert "left: 9 task(s)" in text
    assert "$0.6468" in text
    result = invoke(["status", str(DEMO), "--json"])
    assert result.exit_code == 0, result.output
    assert exact(result.output)["left"]["cost_estimate"] == DEMO_ESTIMATE


def test_status_counts_tasks_added_to_the_manifest_since_the_last_run(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVBATCH_SIM_SPEED", "0")
    path = write_manifest(tmp_path, "grow", shots(2), max_usd=1)
    ran = invoke(["run", str(path), "--no-download"])
    assert ran.exit_code == 0, ran.output
    write_manifest(tmp_path, "grow", shots(3), max_usd=1)  # one more shot
    document = status_document(path, settings)
    assert document["tasks"] == 3
    assert document["counts"]["succeeded"] == 2
    assert document["counts"]["planned"] == 1
    assert document["left"]["tasks"] == 1
    assert Decimal(str(document["left"]["cost_estimate"])) == Decimal("0.0414")


def failures_ledger(settings: Settings, name: str = "demo") -> Ledger:
    ledger = open_ledger(settings.state_dir)
    ledger.start_run("sim", name, "http://sim", None)
    add_task(ledger, "sim", task_row("mvb1-" + "a" * 32, "a", manifest=name))
    add_task(
        ledger,
        "sim",
        task_row("mvb1-" + "b" * 32, "b", manifest=name),
        "failed",
        cost_actual="0.0414",
        error="GPU exploded",
    )
    add_task(
        ledger,
        "sim",
        task_row("mvb1-" + "c" * 32, "c", manifest=name),
        "failed",
        cost_actual="0",
        error="Content flagged",
    )
    add_task(
        ledger,
        "sim",
        task_row("mvb1-" + "d" * 32, "d", manifest=name),
        "rejected",
        error="HTTP 422: duration must be 5 or 10",
    )
    return ledger


def test_status_says_which_failures_were_charged(tmp_path: Path, settings: Settings) -> None:
    path = write_manifest(tmp_path, "demo", shots(1))
    failures_ledger(settings).close()
    document = status_document(path, settings)
    groups = {(g["status"], g["charge"]): g for g in document["failures_by_charge"]}
    assert groups["failed", "charged"]["tasks"] == 1
    assert Decimal(str(groups["failed", "charged"]["usd"])) == Decimal("0.0414")
    assert groups["failed", "not_charged"]["tasks"] == 1
    assert groups["rejected", "not_charged"]["tasks"] == 1
    text = text_of(progress.status_view(document))
    assert "failed (charged $0.0414)" in text
    assert "failed (not charged)" in text
    assert "rejected (not charged)" in text


# ----------------------------------------------------------------- reports


def test_the_reports_say_which_failures_were_charged(settings: Settings) -> None:
    ledger = failures_ledger(settings)
    result = write_report(settings, ledger, "demo", "sim")
    document = exact(result.files["json"].read_text())
    by_key = {t["key"][5:6]: t for t in document["tasks"]}
    assert by_key["b"]["status_text"] == "failed (charged $0.0414)"
    assert by_key["c"]["status_text"] == "failed (not charged)"
    assert by_key["d"]["status_text"] == "rejected (not charged)"
    assert by_key["d"]["charge"] == "not_charged"
    groups = {(g["status"], g["charge"]): g for g in document["totals"]["failures_by_charge"]}
    assert groups["failed", "charged"]["usd"] == Decimal("0.0414")
    markdown = result.files["md"].read_text()
    assert "failed (charged $0.0414)" in markdown
    assert "rejected (not charged)" in markdown
    html = result.files["html"].read_text()
    assert "failed (charged $0.0414)" in html
    assert "rejected (not charged)" in html
    rows = list(csv.DictReader(io.StringIO(result.files["csv"].read_text())))
    assert {r["status_text"] for r in rows} >= {
        "failed (charged $0.0414)",
        "rejected (not charged)",
    }


def test_report_rows_add_up_to_the_totals_after_a_run_of_the_demo(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVBATCH_SIM_SPEED", "0")
    ran = invoke(["run", str(DEMO), "--no-download"])
    assert ran.exit_code == 0, ran.output
    document = exact((settings.output_dir / "demo" / "report.json").read_text())
    tasks, totals = document["tasks"], document["totals"]
    assert len(tasks) == 9
    # The demo's pro tier has an assumed price: the server's estimate differs from the plan's.
    assert totals["cost_estimate_plan"] == DEMO_ESTIMATE
    assert totals["cost_estimate"] != totals["cost_estimate_plan"]
    assert_rows_add_up(document)


def assert_rows_add_up(document: Any) -> None:
    tasks, totals = document["tasks"], document["totals"]

    def column(name: str) -> Decimal:
        return sum((t[name] for t in tasks if t[name] is not None), Decimal(0))

    for name in (
        "cost_estimate",
        "cost_actual",
        "cost_estimate_plan",
        "cost_estimate_server",
        "cost_committed",
    ):
        assert column(name) == totals[name], name
    for buckets in ("by_model", "by_tier", "by_shot"):
        assert (
            sum((b["cost_estimate"] for b in totals[buckets].values()), Decimal(0))
            == totals["cost_estimate"]
        ), buckets
        assert (
            sum((b["cost_actual"] for b in totals[buckets].values()), Decimal(0))
            == totals["cost_actual"]
        ), buckets


money = st.decimals(min_value=0, max_value=3, places=6, allow_nan=False, allow_infinity=False)


@st.composite
def task_entries(draw: st.DrawFn) -> list[TaskEntry]:
    entries = []
    for n in range(draw(st.integers(min_value=0, max_value=12))):
        status = draw(st.sampled_from(STATUSES))
        submitted = status not in ("planned", "submitting", "rejected")
        server = draw(st.none() | money) if submitted else None
        finished = status in ("succeeded", "failed", "cancelled")
        actual = draw(st.none() | money) if finished else None
        entries.append(
            entry(
                f"k{n}",
                status,
                estimate_local=draw(money),
                cost_estimate_server=server,
                cost_actual=actual,
                cost_prior=draw(st.sampled_from([Decimal(0), Decimal("0.0414")])),
            )
        )
    return entries


@given(task_entries())
def test_report_rows_always_add_up_to_the_totals(entries: list[TaskEntry]) -> None:
    shot_order = tuple(dict.fromkeys(e.shot for e in entries))
    report = Report("demo", "sim", tuple(entries), shot_order, {}, "now")
    document = exact(json.dumps(report.document()))
    assert_rows_add_up(document)
    rows = list(csv.DictReader(io.StringIO(csv_text(report))))
    assert (
        sum((Decimal(r["cost_estimate"]) for r in rows), Decimal(0))
        == (document["totals"]["cost_estimate"])
    )


def test_markdown_task_estimates_add_up_to_its_total(settings: Settings) -> None:
    ledger = failures_ledger(settings)
    add_task(
        ledger,
        "sim",
        task_row("mvb1-" + "e" * 32, "e", estimate="0.0516", source="assumed"),
        cost_estimate="0.058",
        cost_actual="0.058",
    )
    rows = ledger.tasks("sim", "demo")
    report = build_report("demo", "sim", rows, {}, settings.output_dir / "demo")
    markdown = markdown_text(report)
    total = re.search(r"^\| estimated cost[^|]*\| \$([0-9.]+)", markdown, re.MULTILINE)
    assert total is not None
    # The server's estimate of the assumed-price task (0.058), not the plan's (0.0516).
    assert Decimal(total.group(1)) == 4 * Decimal("0.0414") + Decimal("0.058")
    table = markdown.split("## Tasks")[1]
    header = [c.strip() for c in table.strip().splitlines()[0].strip("|").split("|")]
    column = next(i for i, name in enumerate(header) if name.startswith("estimate"))
    estimates = [
        Decimal(line.strip("|").split("|")[column].strip().lstrip("$"))
        for line in table.strip().splitlines()[2:]
        if line.startswith("| ")
    ]
    assert len(estimates) == 5
    assert sum(estimates, Decimal(0)) == Decimal(total.group(1))


def test_status_after_an_edit_that_breaks_planning_reports_the_ledger_and_why(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVBATCH_SIM_SPEED", "0")
    path = write_manifest(tmp_path, "edit", shots(2))
    assert invoke(["run", str(path), "--no-download"]).exit_code == 0
    # Loads, but no longer plans: kling-v2-6 has no 7-second duration.
    write_manifest(tmp_path, "edit", shots(2, input={"mode": "std", "duration": 7}))
    document = status_document(path, settings)
    assert document["counts"]["succeeded"] == 2
    assert document["plan"] is None
    assert "duration" in document["plan_error"]
    assert "does not plan now" in text_of(progress.status_view(document))
