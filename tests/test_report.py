"""Reports: the report.json contract (SPEC §6), totals, variance, failures, escaping.

Ledgers are written directly through `Ledger` (report_helpers.add_task), the
way a run leaves them; one test runs the real executor on the in-process
simulator and reports what it left behind.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import io
import json
import tracemalloc
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from report_helpers import add_task, sha256, task_row, video_bytes

from mvbatch import logs
from mvbatch.commands.planning import build_plan, planned_rows
from mvbatch.commands.reporting import report_manifest
from mvbatch.downloads.fetch import Downloader
from mvbatch.downloads.naming import report_folder
from mvbatch.ledger import Ledger, open_ledger
from mvbatch.money import duration, usd
from mvbatch.plan.planner import Plan
from mvbatch.report.build import build_report
from mvbatch.report.command import ReportResult, finish_run, write_report, write_reports
from mvbatch.report.formats import md_cell
from mvbatch.report.model import OutputEntry, Report, TaskEntry
from mvbatch.settings import Settings

DEMO = """
name = "demo"
[budget]
max_usd = 5
[[shots]]
id = "car-rain"
model = "kling-v2-6"
prompt = "A silver sports car driving through neon-lit rain"
[shots.matrix]
mode = ["std", "pro"]
duration = [5, 10]
[[shots.matrix.exclude]]
mode = "pro"
duration = 10
[[shots]]
id = "dog-beach"
model = "kling-v3-omni"
prompt = "A golden retriever running on a beach"
takes = 2
"""

CONTRACT_TASK_KEYS = {
    "shot",
    "key",
    "task_id",
    "model",
    "input",
    "status",
    "cost_estimate",
    "cost_actual",
    "error",
    "outputs",
}
CONTRACT_TOTALS = {
    "tasks",
    "succeeded",
    "failed",
    "cancelled",
    "pending",
    "cost_estimate",
    "cost_actual",
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(MVBATCH_STATE_DIR=tmp_path / "state", MVBATCH_OUTPUT_DIR=tmp_path / "outputs")


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "demo.toml"
    path.write_text(DEMO, encoding="utf-8")
    return path


@pytest.fixture
def plan(manifest: Path, settings: Settings) -> Plan:
    return build_plan(manifest, settings, "sim")


def url(n: int) -> str:
    return f"https://cdn.example.test/v/{n}.mp4?sig=s{n}"


def mixed_ledger(settings: Settings, plan: Plan, env: str = "sim") -> Ledger:
    """car-rain: 2 succeeded (one over its estimate), 1 failed; dog-beach: 1 running, 1 new."""
    ledger = open_ledger(settings.state_dir)
    ledger.start_run(env, plan.name, "http://api.test", None)
    rows = list(planned_rows(plan))
    assert [r["shot"] for r in rows] == ["car-rain"] * 3 + ["dog-beach"] * 2
    add_task(ledger, env, rows[0], urls=[url(0)])
    add_task(
        ledger,
        env,
        rows[1],
        urls=[url(1)],
        cost_actual=str(rows[1]["estimate_local"] + Decimal("0.01")),
    )
    add_task(
        ledger,
        env,
        rows[2],
        "failed",
        error="The prompt was rejected by moderation.",
        cost_actual="0",
    )
    add_task(ledger, env, rows[3], "processing")
    return ledger


async def download_all(ledger: Ledger, settings: Settings, env: str = "sim") -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=video_bytes(request.url.path))

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        await Downloader(ledger, client, settings.output_dir).fetch(ledger.tasks(env))


def read_json(settings: Settings, name: str = "demo") -> Any:
    return json.loads((report_folder(settings.output_dir, name) / "report.json").read_text())


# ----------------------------------------------------------- the contract


def test_report_json_follows_the_contract(settings: Settings, plan: Plan) -> None:
    ledger = mixed_ledger(settings, plan)
    asyncio.run(download_all(ledger, settings))
    result = write_report(settings, ledger, "demo", "sim", plan=plan)
    folder = settings.output_dir / "demo"
    assert result.folder == folder
    assert {p.name for p in result.files.values()} == {
        "report.json",
        "report.csv",
        "report.md",
        "report.html",
    }
    document = read_json(settings)
    assert document["manifest"] == "demo"
    assert document["simulated"] is True
    assert set(document["totals"]) >= CONTRACT_TOTALS
    totals = document["totals"]
    assert (
        totals["tasks"],
        totals["succeeded"],
        totals["failed"],
        totals["cancelled"],
        totals["pending"],
    ) == (5, 2, 1, 0, 2)
    assert len(document["tasks"]) == 5
    for task in document["tasks"]:
        assert set(task) >= CONTRACT_TASK_KEYS
        for output in task["outputs"]:
            assert set(output) >= {"url", "path", "sha256", "bytes"}
    by_status = {t["status"]: t for t in document["tasks"]}
    assert set(by_status) == {"succeeded", "failed", "processing", "planned"}
    assert by_status["planned"]["task_id"] is None
    assert by_status["planned"]["shot"] == "dog-beach"
    assert by_status["failed"]["error"] == "The prompt was rejected by moderation."
    for task in (t for t in document["tasks"] if t["status"] == "succeeded"):
        [output] = task["outputs"]
        path = folder / output["path"]
        assert not Path(output["path"]).is_absolute()
        assert path.is_file()
        assert output["sha256"] == sha256(path.read_bytes())
        assert output["bytes"] == path.stat().st_size
        assert output["url"].startswith("https://cdn.example.test/")


def test_money_is_exact_json_numbers(settings: Settings, plan: Plan) -> None:
    ledger = open_ledger(settings.state_dir)
    rows = [task_row(f"mvb1-{n:032d}", "shot", {"n": n}, estimate="0.1") for n in range(3)]
    for row in rows:
        add_task(ledger, "live", row, cost_actual="0.1")
    write_report(settings, ledger, "demo", "live")
    totals = read_json(settings)["totals"]
    # 0.1 + 0.1 + 0.1 in floats is 0.30000000000000004: Decimal inside.
    assert totals["cost_actual"] == 0.3
    assert totals["cost_estimate"] == 0.3
    assert '"cost_actual": 0.3,' in (settings.output_dir / "demo" / "report.json").read_text()


def test_live_tasks_are_not_simulated_and_envs_do_not_mix(settings: Settings) -> None:
    ledger = open_ledger(settings.state_dir)
    add_task(ledger, "live", task_row("mvb1-" + "1" * 32, "a"))
    add_task(ledger, "sim", task_row("mvb1-" + "2" * 32, "b"))
    write_report(settings, ledger, "demo", "live")
    document = read_json(settings)
    assert document["simulated"] is False
    assert [t["shot"] for t in document["tasks"]] == ["a"]


def test_tasks_from_an_earlier_manifest_version_are_kept(settings: Settings, plan: Plan) -> None:
    ledger = mixed_ledger(settings, plan)
    add_task(ledger, "sim", task_row("mvb1-" + "9" * 32, "old-shot"), cost_actual="0.2")
    write_report(settings, ledger, "demo", "sim", plan=plan)
    document = read_json(settings)
    old = [t for t in document["tasks"] if t["shot"] == "old-shot"]
    assert len(old) == 1
    assert old[0]["in_plan"] is False
    assert document["totals"]["tasks"] == 6


# -------------------------------------------------------------- the totals


def test_cost_by_model_tier_and_shot_and_the_variance(settings: Settings, plan: Plan) -> None:
    ledger = mixed_ledger(settings, plan)
    result = write_report(settings, ledger, "demo", "sim", plan=plan)
    totals = read_json(settings)["totals"]
    estimates = [t.estimate.cost for t in plan.tasks]
    assert totals["cost_estimate"] == float(sum(estimates))
    actual = estimates[0] + estimates[1] + Decimal("0.01")
    assert totals["cost_actual"] == float(actual)
    assert set(totals["by_model"]) == {"kling-v2-6", "kling-v3-omni"}
    assert totals["by_model"]["kling-v2-6"]["succeeded"] == 2
    assert totals["by_model"]["kling-v3-omni"]["cost_actual"] == 0
    assert list(totals["by_shot"]) == ["car-rain", "dog-beach"]
    assert sum(b["tasks"] for b in totals["by_tier"].values()) == 5
    variance = totals["variance"]
    assert variance["tasks"] == 2
    assert variance["difference"] == 0.01
    assert [t["key"] for t in variance["tasks_off"]] == [plan.tasks[1].key]
    markdown = result.files["md"].read_text()
    assert "**Variance: +$0.01" in markdown
    assert any("variance: $0.01" in line for line in result.summary())


def test_failures_are_grouped_by_the_servers_message(settings: Settings) -> None:
    ledger = open_ledger(settings.state_dir)
    for n, (shot, error) in enumerate(
        [("a", "Content flagged"), ("b", "Content flagged"), ("c", "GPU exploded")]
    ):
        add_task(ledger, "sim", task_row(f"mvb1-{n:032d}", shot), "failed", error=error)
    add_task(
        ledger,
        "sim",
        task_row("mvb1-" + "c" * 32, "d"),
        "cancelled",
        error="The task was cancelled.",
    )
    add_task(
        ledger,
        "sim",
        task_row("mvb1-" + "r" * 32, "e"),
        "rejected",
        error="HTTP 422: duration must be 5 or 10",
    )
    result = write_report(settings, ledger, "demo", "sim")
    failures = read_json(settings)["totals"]["failures"]
    assert failures[0] == {
        "reason": "Content flagged",
        "status": "failed",
        "count": 2,
        "keys": [f"mvb1-{0:032d}", f"mvb1-{1:032d}"],
        "shots": ["a", "b"],
    }
    reasons = {f["reason"]: f["count"] for f in failures}
    assert reasons == {
        "Content flagged": 2,
        "GPU exploded": 1,
        "The task was cancelled.": 1,
        "HTTP 422: duration must be 5 or 10": 1,
    }
    totals = read_json(settings)["totals"]
    assert (totals["failed"], totals["cancelled"], totals["rejected"]) == (4, 1, 1)
    assert "| 2 | failed | Content flagged | a, b |" in result.files["md"].read_text()


def test_time_per_task_is_reported(settings: Settings) -> None:
    ledger = open_ledger(settings.state_dir)
    row = add_task(ledger, "sim", task_row("mvb1-" + "t" * 32, "a"))
    write_report(settings, ledger, "demo", "sim")
    [task] = read_json(settings)["tasks"]
    assert row.submitted_at is not None
    assert row.finished_at is not None
    assert task["seconds"] is not None
    assert task["seconds"] >= 0
    assert task["submitted_at"] == row.submitted_at


def test_csv_has_one_row_per_task_and_neutralises_formulas(settings: Settings) -> None:
    ledger = open_ledger(settings.state_dir)
    add_task(
        ledger,
        "sim",
        task_row("mvb1-" + "f" * 32, '=HYPERLINK("http://x")'),
        "failed",
        error="+cmd|' /C calc'!A0",
    )
    result = write_report(settings, ledger, "demo", "sim")
    rows = list(csv.DictReader(io.StringIO(result.files["csv"].read_text())))
    assert len(rows) == 1
    assert rows[0]["shot"].startswith("'=")
    assert rows[0]["error"].startswith("'+")
    assert rows[0]["simulated"] == "True"


# ------------------------------------------------------- safety of the files


HOSTILE = (
    "<script>alert('x')</script><marquee onclick=alert(1)>hi</marquee> | `rm -rf` "
    '[link](javascript:alert(1)) "quoted" &amp;\nsecond line'
)


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_prompts_and_messages_are_escaped_everywhere(settings: Settings) -> None:
    ledger = open_ledger(settings.state_dir)
    add_task(
        ledger,
        "sim",
        task_row("mvb1-" + "h" * 32, "shot<marquee>", input={"prompt": HOSTILE}),
        "failed",
        error=HOSTILE,
    )
    add_task(
        ledger,
        "sim",
        task_row("mvb1-" + "g" * 32, HOSTILE, {"mode": HOSTILE}, input={"prompt": HOSTILE}),
        urls=[url(1)],
    )
    asyncio.run(download_all(ledger, settings))
    result = write_report(settings, ledger, "demo", "sim")
    html = result.files["html"].read_text()
    parser = Tags()
    parser.feed(html)
    names = [tag for tag, _ in parser.tags]
    assert "marquee" not in names
    assert names.count("script") == 1  # ours, allowed by the CSP hash
    assert not [a for _, attrs in parser.tags for a in attrs if a.startswith("on")]
    [video] = [attrs for tag, attrs in parser.tags if tag == "video"]
    # The source is set by the page's script when the card nears the viewport.
    assert str(video["data-src"]).startswith("videos/")
    assert (result.folder / unquote(str(video["data-src"]))).is_file()
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    markdown = result.files["md"].read_text()
    assert "<script>" not in markdown
    assert "<marquee" not in markdown
    # Every task is one table row on one line: a message's pipes and newlines are escaped.
    task_rows = [
        line
        for line in markdown.split("## Tasks")[1].splitlines()
        if line.startswith("| ") and not line.startswith("| shot |")
    ]
    assert len(task_rows) == 2
    for line in task_rows:
        assert line.replace("\\|", "").count("|") == 12
    document = read_json(settings)
    assert document["tasks"][0]["error"] == HOSTILE  # JSON keeps the exact text


NOTE = 'Keep it, "but" trim, the end\nsecond line | <b onclick=alert(1)>bold</b> =SUM(A1)'


def test_verdicts_and_notes_reach_every_report(settings: Settings, plan: Plan) -> None:
    """Given through the ledger (as `mvbatch review` does), shown by JSON, CSV and Markdown."""
    ledger = mixed_ledger(settings, plan)
    rows = ledger.tasks("sim", "demo")
    by_status = {r.status: r for r in reversed(rows)}
    good, bad = [r.key for r in rows if r.status == "succeeded"]
    ledger.record_verdict("sim", good, "approved", NOTE)
    ledger.record_verdict("sim", bad, "approved", None)
    ledger.record_verdict("sim", bad, "rejected", "too dark")  # the latest counts
    ledger.record_verdict("sim", by_status["failed"].key, "rejected", "=1+1")
    result = write_report(settings, ledger, "demo", "sim", plan=plan)

    tasks = {t["key"]: t for t in read_json(settings)["tasks"]}
    assert (tasks[good]["verdict"], tasks[good]["note"]) == ("approved", NOTE)
    assert (tasks[bad]["verdict"], tasks[bad]["note"]) == ("rejected", "too dark")
    unreviewed = [t for t in tasks.values() if t["verdict"] is None]
    assert len(unreviewed) == 2
    assert all(t["note"] is None for t in unreviewed)
    assert read_json(settings)["totals"]["verdicts"] == {
        "approved": 1,
        "rejected": 2,
        "not_reviewed": 2,
    }
    assert "verdict" in read_json(settings)["definitions"]

    csv_rows = {r["key"]: r for r in csv.DictReader(io.StringIO(result.files["csv"].read_text()))}
    assert list(csv_rows[good])[-2:] == ["verdict", "note"]  # added at the end
    assert (csv_rows[good]["verdict"], csv_rows[good]["note"]) == ("approved", NOTE)
    assert (csv_rows[bad]["verdict"], csv_rows[bad]["note"]) == ("rejected", "too dark")
    assert csv_rows[by_status["failed"].key]["note"] == "'=1+1"  # stays text
    assert [r["verdict"] for r in csv_rows.values()].count("") == 2

    markdown = result.files["md"].read_text()
    assert "| reviewed (mvbatch review) | 1 approved, 2 rejected, 2 not reviewed |" in markdown
    assert "<b" not in markdown
    task_rows = [
        line
        for line in markdown.split("## Tasks")[1].splitlines()
        if line.startswith("| ") and not line.startswith("| shot |")
    ]
    assert len(task_rows) == 5
    for line in task_rows:
        assert line.replace("\\|", "").count("|") == 12
    [noted] = [line for line in task_rows if "approved" in line]
    assert noted.endswith(
        '| approved: Keep it, "but" trim, the end second line \\| '
        "&lt;b onclick=alert(1)&gt;bold&lt;/b&gt; =SUM(A1) |"
    )
    assert "| rejected: too dark |" in markdown


def test_the_api_key_never_reaches_a_report(settings: Settings) -> None:
    secret = "mv_live_this_is_a_very_secret_key_42"
    logs.register_secret(secret)
    ledger = open_ledger(settings.state_dir)
    # A server that echoes the key back in an error message must not put it on disk.
    add_task(
        ledger, "live", task_row("mvb1-" + "k" * 32, "a"), "failed", error=f"invalid token {secret}"
    )
    result = write_report(settings, ledger, "demo", "live")
    for path in result.files.values():
        assert secret not in path.read_text()


def test_reports_are_replaced_atomically_and_leave_no_temp_files(
    settings: Settings, plan: Plan
) -> None:
    ledger = mixed_ledger(settings, plan)
    first = write_report(settings, ledger, "demo", "sim", plan=plan)
    inode = first.files["json"].stat().st_ino
    second = write_report(settings, ledger, "demo", "sim", plan=plan)
    assert second.files["json"].stat().st_ino != inode  # a new file, renamed over
    leftovers = [p.name for p in first.folder.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert oct(second.files["html"].stat().st_mode & 0o777) == "0o644"


def test_a_hostile_manifest_name_stays_inside_the_output_dir(settings: Settings) -> None:
    ledger = open_ledger(settings.state_dir)
    add_task(ledger, "sim", task_row("mvb1-" + "n" * 32, "a", manifest="../../escape"))
    result = write_report(settings, ledger, "../../escape", "sim")
    assert result.folder.resolve().is_relative_to(settings.output_dir.resolve())


# ------------------------------------------------------------------ helpers


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("0.0414"), "$0.0414"),
        (Decimal("0.11574"), "$0.11574"),
        (Decimal(2), "$2.00"),
        (Decimal("1234.5"), "$1,234.50"),
        (Decimal("-0.01"), "-$0.01"),
        (None, "—"),
    ],
)
def test_usd(value: Decimal | None, text: str) -> None:
    assert usd(value) == text


def test_seconds_and_md_cell() -> None:
    assert duration(5) == "5 s"
    assert duration(4.25) == "4.2 s"
    assert duration(42.5) == "42 s"
    assert duration(125) == "2 min 05 s"
    assert md_cell("a|b\nc `d`") == "a\\|b c \\`d\\`"


def test_build_report_without_a_plan_orders_shots_as_met(settings: Settings) -> None:
    ledger = open_ledger(settings.state_dir)
    for n, shot in enumerate(["b", "a", "b"]):
        add_task(ledger, "sim", task_row(f"mvb1-{n:032d}", shot))
    rows = ledger.tasks("sim", "demo")
    report = build_report("demo", "sim", rows, {}, settings.output_dir / "demo")
    assert report.shot_order == ("b", "a")
    assert [t.shot for t in report.tasks] == ["b", "b", "a"]


# --------------------------------------------------- the command, end to end


def test_report_command_downloads_from_the_simulator_and_is_idempotent(
    settings: Settings, manifest: Path, plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVBATCH_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("MVBATCH_OUTPUT_DIR", str(settings.output_dir))
    run_on_simulator(settings, plan)
    result = report_manifest(manifest, settings, download=True)
    assert result.complete
    assert result.downloads is not None
    assert result.downloads.downloaded == 5
    document = read_json(settings)
    assert document["simulated"] is True
    assert all(t["status"] == "succeeded" for t in document["tasks"])
    for task in document["tasks"]:
        [output] = task["outputs"]
        data = (result.folder / output["path"]).read_bytes()
        assert data[4:8] == b"ftyp"
        assert output["sha256"] == sha256(data)
    again = report_manifest(manifest, settings, download=True)
    assert again.downloads is not None
    assert (again.downloads.downloaded, again.downloads.kept) == (0, 5)
    offline = report_manifest(manifest, settings, download=False)
    assert offline.downloads is None
    assert offline.complete


def run_on_simulator(settings: Settings, plan: Plan) -> None:
    """What `mvbatch run --no-download` leaves behind, through the real executor."""
    from mvbatch.api.client import ApiClient
    from mvbatch.api.endpoint import choose
    from mvbatch.run.executor import Executor

    endpoint = choose(settings, simulate=True, sim_speed=0)

    async def go() -> None:
        with open_ledger(settings.state_dir) as ledger:
            run_id = ledger.start_run("sim", plan.name, endpoint.base_url, None)
            ledger.ensure_tasks("sim", planned_rows(plan))
            async with ApiClient(endpoint.api_client()) as client:
                await Executor(plan, ledger, client, env="sim", cap=None, run_id=run_id).run()

    asyncio.run(go())


def test_a_run_downloads_as_tasks_succeed_then_reports(settings: Settings, plan: Plan) -> None:
    """The wiring of `mvbatch run`: the executor's hook, then `finish_run`."""
    from mvbatch.api.client import ApiClient
    from mvbatch.api.endpoint import choose
    from mvbatch.run.executor import Executor

    endpoint = choose(settings, simulate=True, sim_speed=0)

    async def go() -> ReportResult:
        with open_ledger(settings.state_dir) as ledger:
            run_id = ledger.start_run("sim", plan.name, endpoint.base_url, None)
            ledger.ensure_tasks("sim", planned_rows(plan))
            async with (
                ApiClient(endpoint.api_client()) as client,
                endpoint.files_client() as files,
            ):
                downloader = Downloader(
                    ledger, files, settings.output_dir, refresh=client.refresh_outputs
                )
                await Executor(
                    plan,
                    ledger,
                    client,
                    env="sim",
                    cap=None,
                    run_id=run_id,
                    on_succeeded=downloader.on_succeeded,
                ).run()
                assert len(downloader.results) == 5  # fetched during the run
                return await finish_run(downloader, settings, ledger, plan, "sim")

    result = asyncio.run(go())
    assert result.complete
    assert result.downloads is not None
    assert (result.downloads.downloaded, result.downloads.kept) == (5, 0)  # none twice
    assert read_json(settings)["totals"]["downloads"]["downloaded"] == 5


# ----------------------------------------------------------- scale


def synthetic_report(tasks: int) -> Report:
    """`tasks` tasks as a finished simulated run leaves them, 24 variants a shot: most
    succeeded (videos not downloaded), every 10th failed, every 7th charged off plan."""
    variants = [
        (("model", model), ("mode", mode), ("duration", seconds), ("aspect_ratio", aspect))
        for model in ("kling-v2-6", "kling-v3-omni")
        for mode in ("std", "pro")
        for seconds in (5, 10)
        for aspect in ("16:9", "9:16", "1:1")
    ]
    entries = []
    for n in range(tasks):
        shot = f"shot-{n // len(variants):05d}"
        variant = variants[n % len(variants)]
        failed = n % 10 == 0
        entries.append(
            TaskEntry(
                f"mvb1-{n:032x}",
                shot,
                (shot,),
                variant,
                1,
                str(variant[0][1]),
                {"prompt": f"Shot {shot}: a silver car in neon rain", "mode": variant[1][1]},
                "failed" if failed else "succeeded",
                Decimal("0.21"),
                f'{variant[0][1]} {{"mode":"{variant[1][1]}"}}',
                "documented",
                False,
                task_id=f"task_{n:024x}",
                cost_estimate_server=Decimal("0.21"),
                cost_actual=Decimal(0) if failed else Decimal("0.22" if n % 7 == 0 else "0.21"),
                error="The prompt was rejected by moderation." if failed else None,
                submitted_at="2026-12-07T10:00:00+00:00",
                finished_at=f"2026-12-07T10:00:{n % 50 + 5:02d}+00:00",
                billed_seconds=Decimal(variant[2][1]),
                outputs=() if failed else (OutputEntry(0, url(n), None, None, None),),
            )
        )
    shots = tuple(dict.fromkeys(e.shot for e in entries))
    prompts = {shot: f"Shot {shot}: a silver car in neon rain" for shot in shots}
    return Report("scale", "sim", tuple(entries), shots, prompts, "2026-12-07T10:00:00+00:00")


def peak_of_writing(tasks: int, folder: Path) -> int:
    """Peak traced memory (tracemalloc) of writing the four files of a built report."""
    report = synthetic_report(tasks)
    gc.collect()
    tracemalloc.start()
    try:
        write_reports(report, folder)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_writing_a_report_takes_memory_that_does_not_grow_with_its_tasks(
    tmp_path: Path,
) -> None:
    """The files are streamed: what writing holds at once is the same at 2k and 20k tasks.

    What is measured is the writing, from a built `Report`: the model holds
    every task by design (a report of all tasks needs them all), so its size
    grows with the tasks; before the writers were streamed, writing held
    each whole file as text (and a redacted copy of it) besides, about 5 KB
    more per task. The contact sheet renders at most `SHEET_TAKES` takes, so
    the 2,000 of the smaller report are as many as the larger one shows.
    """
    peak_of_writing(100, tmp_path / "warm")  # Jinja compiles its templates once
    small = peak_of_writing(2_000, tmp_path / "small")
    large = peak_of_writing(20_000, tmp_path / "large")
    assert large <= 1.5 * small, f"2k tasks: {small / 1e6:.1f} MB, 20k: {large / 1e6:.1f} MB"
    # The stream is the document, whole.
    document = json.loads((tmp_path / "small" / "report.json").read_text())
    assert document == json.loads(json.dumps(synthetic_report(2_000).document()))
    assert len(json.loads((tmp_path / "large" / "report.json").read_text())["tasks"]) == 20_000
