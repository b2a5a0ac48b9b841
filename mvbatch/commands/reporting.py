"""`report`: which plan and ledger side the report speaks of, then the report itself.

Must not: write anything but what `report.command` writes.
"""

from __future__ import annotations

from pathlib import Path

from mvbatch.commands import folders
from mvbatch.commands.planning import build_plan, default_env, manifest_of
from mvbatch.ledger import open_ledger
from mvbatch.plan import manifest
from mvbatch.report.command import ReportResult, report_command
from mvbatch.settings import Settings


def report_manifest(path: Path, settings: Settings, *, download: bool) -> ReportResult:
    """`report`: the manifest's ledger side (its last run's, else the default) and plan, then
    the report files, fetching missing videos unless `download` is False."""

    name = manifest.load(manifest_of(path)).manifest.name
    folders.writable(settings.state_dir, folders.STATE)  # the downloads are recorded there
    folders.writable(settings.output_dir, folders.OUTPUT, name)
    with open_ledger(settings.state_dir) as ledger:
        run = ledger.last_run(name)
        env = str(run["env"]) if run is not None else default_env(settings)
        the_plan = build_plan(path, settings, env)
        return report_command(settings, ledger, the_plan, env, download=download)
