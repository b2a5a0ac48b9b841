"""A plan as the commands build it: documented rates plus what the ledger learned.

Owns: the price book for a plan (documented rates and those this ledger
learned from the server), the reference-video probe (MP4 headers only, no
Authorization), which side of the ledger (live or sim) a command speaks of,
the tasks a selection would run (`selected`), the plan's tasks as ledger
rows, and their states in the ledger.
Must not: send anything but the header requests of reference videos.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mvbatch.commands import folders
from mvbatch.commands.selection import Kind, Selection, select
from mvbatch.ledger import exists as ledger_exists
from mvbatch.ledger import learned_rates as ledger_rates
from mvbatch.ledger import open_ledger, plan_states
from mvbatch.plan import manifest, media, mp4, mp4_probe, planfile
from mvbatch.plan.planner import Plan, ReferenceProbe, plan
from mvbatch.plan.pricing import PriceBook
from mvbatch.settings import Settings

if TYPE_CHECKING:
    import httpx

# Seconds: (connect, every other operation) of a reference URL's header requests.
PROBE_TIMEOUT = (3.0, 5.0)


@contextmanager
def url_client() -> Iterator[Callable[[], httpx.Client]]:
    """The client for reference URLs, made (and httpx imported) only if one is probed.

    No Authorization header: reference videos live on other hosts.
    """
    made: list[httpx.Client] = []

    def client() -> httpx.Client:
        if not made:
            import httpx

            connect, other = PROBE_TIMEOUT
            made.append(
                httpx.Client(timeout=httpx.Timeout(other, connect=connect), follow_redirects=True)
            )
        return made[0]

    try:
        yield client
    finally:
        for each in made:
            each.close()


def reference_probe(client: Callable[[], httpx.Client]) -> ReferenceProbe:
    """Reads a reference video's length once per file or URL, header bytes only.

    `client` gives the HTTP client for URLs (`url_client`), asked for only when one is probed.
    """
    seen: dict[str, mp4.ProbeResult] = {}

    def probe(reference: media.LocalFile | str) -> mp4.ProbeResult:
        if isinstance(reference, media.LocalFile):
            return mp4_probe.probe_local(reference.path)
        if reference not in seen:
            if reference.startswith("data:"):
                seen[reference] = mp4_probe.probe_data_uri(reference)
            elif reference.startswith(("http://", "https://")):
                seen[reference] = mp4_probe.probe_url_sync(client(), reference)
            else:
                seen[reference] = mp4.ProbeResult(None, detail="not an http(s) or data: URL")
        return seen[reference]

    return probe


def manifest_of(path: Path) -> Path:
    """The manifest a command speaks of: `path`, or the one a reviewed PLAN.toml names."""
    if path.suffix == ".toml" and planfile.is_plan_file(path):
        return planfile.read(path)[0]
    return path


def build_plan(path: Path, settings: Settings, env: str | None = None) -> Plan:
    # The plan reads the rates this ledger learned: nothing but a folder may be in the way.
    folders.readable(settings.state_dir, folders.STATE)
    target = path
    reviewed: tuple[str, list[str]] | None = None
    if path.suffix == ".toml" and planfile.is_plan_file(path):
        target, sha, keys = planfile.read(path)
        reviewed = (sha, keys)
    loaded = manifest.load(target)
    with url_client() as client:
        result = plan(loaded, PriceBook(learned_rates(settings, env)), reference_probe(client))
    if reviewed is not None:
        planfile.check_unchanged(path, result, *reviewed)
    return result


def default_env(settings: Settings) -> str:
    """Which side of the ledger a command without --simulate/--live speaks of."""
    return "live" if settings.api_key_value() else "sim"


def learned_rates(settings: Settings, env: str | None = None) -> Mapping[str, Decimal]:
    return ledger_rates(settings.ledger_location(), env or default_env(settings))


def ledger_states(the_plan: Plan, settings: Settings, env: str | None = None) -> Mapping[str, str]:
    return plan_states(
        settings.ledger_location(),
        the_plan.name,
        [t.key for t in the_plan.tasks],
        env or default_env(settings),
    )


def selected(
    the_plan: Plan, settings: Settings, kind: Kind = "all", env: str | None = None
) -> Selection:
    """What `run` with this selection would run, the re-rolls earlier runs recorded
    included (`commands.selection`); creates no ledger."""
    if not ledger_exists(settings.ledger_location()):
        return select(the_plan, [], {}, kind)
    side = env or default_env(settings)
    with open_ledger(settings.ledger_location()) as ledger:
        if kind == "all":  # what a plain run runs needs only each task's status
            status = ledger.task_states(side, the_plan.name)
            return select(the_plan, ledger.rerolls(side, the_plan.name), {}, kind, status)
        rows = ledger.tasks(side, the_plan.name)
        return select(the_plan, rows, ledger.verdicts(side, the_plan.name), kind)


def planned_rows(
    the_plan: Plan, rerolled_from: Mapping[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """The plan's tasks as ledger rows (`Ledger.ensure_tasks`), made as they are written.

    `rerolled_from`: for each re-rolled take's key, the rejected take it replaces.
    """
    replaces = rerolled_from or {}
    return (
        {
            "key": t.key,
            "manifest": t.manifest,
            "shot": t.shot,
            "shots": list(t.shots),
            "variant": dict(t.variant),
            "take": t.take,
            "model": t.model,
            "input": t.public_input(),
            "price_class": t.estimate.price_class,
            "seconds": t.estimate.seconds,
            "upper_bound": t.estimate.upper_bound,
            "estimate_local": t.estimate.cost,
            "estimate_source": t.estimate.source,
            "rerolled_from": replaces.get(t.key),
        }
        for t in the_plan.tasks
    )
