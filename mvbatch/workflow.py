"""The steps the commands share, wired to settings: plan a manifest, read ledger state.

Owns: choosing the price book (documented rates plus those the ledger has
learned) and the reference-video probe for a plan. Keeps `cli.py` thin.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

import httpx

from mvbatch import manifest, media, mp4, planfile
from mvbatch.planner import Plan, ReferenceProbe, plan
from mvbatch.pricing import PriceBook
from mvbatch.settings import Settings

PROBE_TIMEOUT = httpx.Timeout(5.0, connect=3.0)


def reference_probe(client: httpx.Client) -> ReferenceProbe:
    """Reads a reference video's length once per file or URL, header bytes only."""
    seen: dict[str, mp4.ProbeResult] = {}

    def probe(reference: media.LocalFile | str) -> mp4.ProbeResult:
        if isinstance(reference, media.LocalFile):
            return mp4.probe_local(reference.path)
        if reference not in seen:
            if reference.startswith("data:"):
                seen[reference] = mp4.probe_data_uri(reference)
            elif reference.startswith(("http://", "https://")):
                seen[reference] = mp4.probe_url_sync(client, reference)
            else:
                seen[reference] = mp4.ProbeResult(None, detail="not an http(s) or data: URL")
        return seen[reference]

    return probe


def build_plan(path: Path, settings: Settings, env: str | None = None) -> Plan:
    target = path
    reviewed: tuple[str, list[str]] | None = None
    if path.suffix == ".toml" and planfile.is_plan_file(path):
        target, sha, keys = planfile.read(path)
        reviewed = (sha, keys)
    loaded = manifest.load(target)
    # No Authorization header here: reference videos live on other hosts.
    with httpx.Client(timeout=PROBE_TIMEOUT, follow_redirects=True) as client:
        result = plan(loaded, PriceBook(learned_rates(settings, env)), reference_probe(client))
    if reviewed is not None:
        planfile.check_unchanged(path, result, *reviewed)
    return result


def default_env(settings: Settings) -> str:
    """Which side of the ledger a command without --simulate/--live speaks of."""
    return "live" if settings.api_key_value() else "sim"


def learned_rates(settings: Settings, env: str | None = None) -> Mapping[str, Decimal]:
    from mvbatch import ledger

    return ledger.learned_rates(settings.state_dir, env or default_env(settings))


def ledger_states(the_plan: Plan, settings: Settings, env: str | None = None) -> Mapping[str, str]:
    from mvbatch import ledger

    return ledger.plan_states(
        settings.state_dir,
        the_plan.name,
        [t.key for t in the_plan.tasks],
        env or default_env(settings),
    )
