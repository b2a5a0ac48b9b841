"""`report`: which plan and ledger side the report speaks of, then the report itself.

Must not: write anything but what `report.command` writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mvbatch.commands import folders
from mvbatch.commands.planning import build_plan, default_env, manifest_of
from mvbatch.commands.selection import with_rerolls
from mvbatch.downloads.naming import report_folder
from mvbatch.errors import ConfigError
from mvbatch.ledger import IN_FLIGHT, Ledger, Output, TaskRow, Verdict, describe, open_ledger
from mvbatch.ledger import exists as ledger_exists
from mvbatch.plan import manifest
from mvbatch.report.build import build_report
from mvbatch.report.command import ReportResult, report_command, write_reports
from mvbatch.settings import Settings


def report_manifest(path: Path, settings: Settings, *, download: bool) -> ReportResult:
    """`report`: the manifest's ledger side (its last run's, else the default) and plan, then
    the report files, fetching missing videos unless `download` is False."""

    name = manifest.load(manifest_of(path)).manifest.name
    folders.writable(settings.state_dir, folders.STATE)  # the downloads are recorded there
    folders.writable(settings.output_dir, folders.OUTPUT, name)
    with open_ledger(settings.ledger_location()) as ledger:
        run = ledger.last_run(name)
        env = str(run["env"]) if run is not None else default_env(settings)
        # Re-rolled takes (`run --reroll-rejected`) were planned: not "from an earlier manifest".
        the_plan, _ = with_rerolls(build_plan(path, settings, env), ledger.rerolls(env, name))
        return report_command(settings, ledger, the_plan, env, download=download)


def merged_report(path: Path, settings: Settings, locations: Sequence[str]) -> ReportResult:
    """`report MANIFEST --merge LEDGER...`: one report over several ledgers of one manifest.

    The ledgers of `run --shard K/N` hold disjoint slices of one plan; a task
    found in two (a shard run twice on different machines) counts once, as the
    ledger that took it furthest has it. A ledger with no task of the manifest,
    or of the other side (sim/live) than the rest, is refused: it is another
    manifest's. Read only: no video is fetched (each shard's are on its own
    machine); the report says which are not on this one.
    """
    name = manifest.load(manifest_of(path)).manifest.name
    folders.writable(settings.output_dir, folders.OUTPUT, name)
    rows: dict[str, TaskRow] = {}
    outputs: dict[str, list[Output]] = {}
    verdicts: dict[str, Verdict] = {}
    side: str | None = None
    for location in locations:
        where: str | Path = location if "://" in location else Path(location).expanduser()
        if not ledger_exists(where):
            raise ConfigError(f"--merge: there is no ledger at {describe(where)}")
        with open_ledger(where) as ledger:
            env, found = _manifest_rows(ledger, name, describe(where))
            if side is not None and env != side:
                raise ConfigError(
                    f"--merge: {describe(where)} holds {env} runs of {name!r}, the others {side}"
                )
            side = env
            for row in found:
                known = rows.get(row.key)
                if known is None or _progress(row) > _progress(known):
                    rows[row.key] = row
                    outputs[row.key] = ledger.outputs(env, row.key)
            verdicts.update(ledger.verdicts(env, name))
    assert side is not None
    the_plan, _ = with_rerolls(build_plan(path, settings, side), list(rows.values()))
    folder = report_folder(settings.output_dir, name)
    ordered = list(rows.values())
    report = build_report(name, side, ordered, outputs, folder, plan=the_plan, verdicts=verdicts)
    return ReportResult(report, folder, write_reports(report, folder))


def _manifest_rows(ledger: Ledger, name: str, shown: str) -> tuple[str, list[TaskRow]]:
    """The side (sim or live) and the tasks of manifest `name` in one ledger; refuses others."""
    run = ledger.last_run(name)
    sides = [str(run["env"])] if run is not None else ["sim", "live"]
    for env in sides:
        found = ledger.tasks(env, name)
        if found:
            return env, found
    others = sorted({r.manifest for env in ("sim", "live") for r in ledger.tasks(env)})
    held = f"it holds {', '.join(map(repr, others))}" if others else "it is empty"
    raise ConfigError(f"--merge: {shown} has no task of manifest {name!r}: {held}")


def _progress(row: TaskRow) -> int:
    """How far a task got: a finished one beats one in flight, which beats a planned one."""
    return 0 if row.status == "planned" else 1 if row.status in IN_FLIGHT else 2
