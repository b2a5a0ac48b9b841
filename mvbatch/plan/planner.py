"""Manifest → Plan: every concrete task, keyed by its content and priced.

Owns: merging defaults under shots, expanding matrices, mapping the portable
`aspect_ratio`, resolving `"@path"` files, validating each input against the
catalog, pricing it, and deduplicating identical tasks. The result is pure
data (frozen dataclasses); planning twice gives the same plan. The only
network access is reading MP4 headers of reference videos given by URL.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from mvbatch.errors import ManifestError, MediaError, Problem
from mvbatch.money import total
from mvbatch.plan import catalog, matrix, media
from mvbatch.plan.catalog import Model
from mvbatch.plan.keys import canonical_json, task_key_from_text
from mvbatch.plan.manifest import LoadedManifest, Shot
from mvbatch.plan.mp4 import ProbeResult
from mvbatch.plan.pricing import Estimate, PriceBook

PORTABLE_ASPECT = "aspect_ratio"
Variant = tuple[tuple[str, Any], ...]
# The most tasks (matrix combinations times takes, over every shot) one manifest
# may ask for; counted before any matrix is expanded (`_refuse_too_many`).
# Twice the 100,000 tasks the planning benchmark plans in about 2 s and
# 140 MB; ten million would take minutes and every gigabyte there is.
MAX_TASKS = 200_000

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class PlannedTask:
    key: str
    manifest: str
    shot: str
    shots: tuple[str, ...]  # every shot that asked for exactly this task
    variant: Variant  # the matrix combination, in axis order
    take: int
    model: str
    input: Mapping[str, Any]  # local files are media.LocalFile values
    estimate: Estimate

    @property
    def variant_label(self) -> str:
        return " · ".join(f"{k}={_short(v)}" for k, v in self.variant) or "default"

    def payload(self) -> dict[str, Any]:
        """The JSON body to POST: local files become data: URIs here, and only here."""
        return {"model": self.model, "input": _materialize(self.input)}

    def public_input(self) -> dict[str, Any]:
        """The input as shown to people: a local file is `@path#sha256=<hex>`."""
        return _public(self.input)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Plan:
    manifest: LoadedManifest
    tasks: tuple[PlannedTask, ...]
    warnings: tuple[Problem, ...] = ()
    duplicates: int = 0  # tasks asked for by more than one shot, planned once

    @property
    def name(self) -> str:
        return self.manifest.manifest.name

    @property
    def max_usd(self) -> Decimal | None:
        return self.manifest.manifest.budget.max_usd

    @property
    def cost_estimate(self) -> Decimal:
        return total([t.estimate.cost for t in self.tasks])


# Given a reference video (a local file or a URL), its length read from the
# MP4 header, or the reason it could not be read.
ReferenceProbe = Callable[[media.LocalFile | str], ProbeResult]


def no_probe(_reference: media.LocalFile | str) -> ProbeResult:
    return ProbeResult(None, detail="reference videos were not probed")


@dataclass
class _Builder:
    loaded: LoadedManifest
    prices: PriceBook
    probe: ReferenceProbe
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    files: dict[Path, media.LocalFile] = field(default_factory=dict)
    tasks: dict[str, PlannedTask] = field(default_factory=dict)
    # Only for tasks asked for by more than one shot: every shot, in order.
    shared: dict[str, list[str]] = field(default_factory=dict)
    # One object for each variant many tasks share (every shot's matrix names
    # the same ones): 36 MB of a 100,000-task plan otherwise. Keyed with the
    # values' types too: `true` and `1` compare equal, but are not one value.
    # (Estimates are shared already: `PriceBook` makes one per class and length.)
    variants: dict[Any, Variant] = field(default_factory=dict)

    @property
    def file(self) -> str:
        return self.loaded.display


def plan(
    loaded: LoadedManifest, prices: PriceBook | None = None, probe: ReferenceProbe | None = None
) -> Plan:
    builder = _Builder(loaded, prices or PriceBook(), probe or no_probe)
    _refuse_too_many(loaded)
    with _without_cyclic_gc():
        for shot in loaded.manifest.shots:
            _plan_shot(builder, shot)
    if builder.problems:
        raise ManifestError(builder.problems)
    for key, shots in builder.shared.items():
        task = builder.tasks[key]
        builder.tasks[key] = PlannedTask(
            task.key,
            task.manifest,
            task.shot,
            tuple(shots),
            task.variant,
            task.take,
            task.model,
            task.input,
            task.estimate,
        )
    tasks = tuple(builder.tasks.values())
    duplicates = len(builder.shared)
    # A variant asked for twice is checked twice: say each warning once.
    warnings = tuple(dict.fromkeys(builder.warnings))
    return Plan(loaded, tasks, warnings, duplicates)


@dataclass(frozen=True, slots=True)
class _Size:
    shot: str
    combinations: int  # after exclude and include
    takes: int
    exact: bool = True  # False: the excludes were too intricate to count; an upper bound

    @property
    def tasks(self) -> int:
        return self.combinations * self.takes

    def describe(self) -> str:
        takes = f"{self.takes} take" + ("" if self.takes == 1 else "s")
        if self.exact:
            return f"{self.combinations:,} combinations × {takes}"
        return f"up to {self.combinations:,} combinations (too intricate to count) × {takes}"


def _refuse_too_many(loaded: LoadedManifest) -> None:
    """Every shot's tasks, counted without expanding a matrix; over `MAX_TASKS`, refused."""
    defaults = loaded.manifest.defaults
    sizes = []
    for shot in loaded.manifest.shots:
        spec, exact = shot.matrix, True
        count: int | None = 1
        if spec is not None:
            count = matrix.size(spec.axes, spec.exclude, spec.include)
            if count is None:
                exact = False
                count = math.prod(len(v) for v in spec.axes.values()) + len(spec.include)
        # A matrix that leaves nothing plans the shot once, as `_plan_shot` does.
        sizes.append(_Size(shot.id, count or 1, shot.takes or defaults.takes or 1, exact))
    total = sum(s.tasks for s in sizes)
    if total <= MAX_TASKS:
        return
    file, limit = loaded.display, f"{MAX_TASKS:,}"
    split = "split it into several manifests"
    over = [s for s in sizes if s.tasks > MAX_TASKS]
    if over:
        raise ManifestError(
            [
                Problem(
                    file,
                    f"the matrix expands to {s.describe()} = {s.tasks:,} tasks, more than the "
                    f"{limit} one manifest may plan; {split}",
                    shot=s.shot,
                    field="matrix",
                )
                for s in over
            ]
        )
    largest = max(sizes, key=lambda s: s.tasks)
    raise ManifestError(
        [
            Problem(
                file,
                f"the shots ask for {total:,} tasks in all, more than the {limit} one manifest "
                f"may plan; the largest, shot '{largest.shot}', asks for {largest.tasks:,} "
                f"({largest.describe()}); {split}",
            )
        ]
    )


@contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """Planning builds hundreds of thousands of small, acyclic containers.

    CPython's generational collector would walk them again and again as they
    accumulate (about half of the time of a 100,000-task plan); reference
    counting frees everything here, so the cycle collector is paused.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _plan_shot(b: _Builder, shot: Shot) -> None:
    defaults = b.loaded.manifest.defaults
    name = b.loaded.manifest.name
    takes = shot.takes or defaults.takes or 1
    base_input: dict[str, Any] = {**defaults.input, **shot.input}
    prompt = (
        shot.prompt
        if shot.prompt is not None
        else (None if "prompt" in shot.input else defaults.prompt)
    )
    if prompt is not None:
        base_input["prompt"] = prompt
    spec = shot.matrix
    combinations = (matrix.expand(spec.axes, spec.exclude, spec.include) if spec else [{}]) or [{}]

    alone = (shot.id,)
    for combination in combinations:
        variant: Variant = tuple(combination.items())
        variant = _one_of(b.variants, variant, tuple([type(v) for _, v in variant]))
        slug = combination.get("model", shot.model or defaults.model)
        if slug is None:
            b.problems.append(
                Problem(
                    b.file,
                    "no model: set `model` on the shot, in [defaults] "
                    f"or as a matrix axis; known models: {catalog.known()}",
                    shot=shot.id,
                    field="model",
                )
            )
            return
        model = catalog.get(slug) if isinstance(slug, str) else None
        if model is None:
            b.problems.append(
                Problem(
                    b.file,
                    f"unknown model {slug!r}{_where(variant)}; known models: {catalog.known()}",
                    shot=shot.id,
                    field="model",
                )
            )
            continue
        raw = {**base_input, **{k: v for k, v in combination.items() if k != "model"}}
        resolved = _resolve(b, shot, model, raw, variant)
        if resolved is None:
            continue
        canonical = canonical_json(_canonical(resolved) if b.files else resolved)
        errors, warnings, estimate = _check(b, model, resolved)
        for issue in errors:
            b.problems.append(
                Problem(b.file, issue.message + _where(variant), shot=shot.id, field=issue.field)
            )
        for issue in warnings:
            b.warnings.append(
                Problem(b.file, issue.message + _where(variant), shot=shot.id, field=issue.field)
            )
        if errors or estimate is None:
            continue
        for take in range(1, takes + 1):
            key = task_key_from_text(name, model.slug, canonical, take)
            if key in b.tasks:
                shots = b.shared.setdefault(key, [b.tasks[key].shot])
                if shot.id not in shots:
                    shots.append(shot.id)
                continue
            task = PlannedTask(
                key, name, shot.id, alone, variant, take, model.slug, resolved, estimate
            )
            b.tasks[key] = task


def _one_of(memo: dict[Any, _T], value: _T, exactly: tuple[Any, ...]) -> _T:
    """`value`, or the equal one seen before (`exactly` tells apart values that compare equal)."""
    try:
        return memo.setdefault((value, exactly), value)
    except TypeError:  # unhashable (a list in a matrix value): kept as it is
        return value


def another_take(task: PlannedTask, take: int, input: Mapping[str, Any]) -> PlannedTask:
    """`task` as another take with this input (`run --reroll-rejected`), keyed as `plan` keys.

    The input is `task.input` with, at most, a field no price depends on
    changed (a pinned seed), so the estimate stays the task's.
    """
    canonical = canonical_json(_canonical(input))
    key = task_key_from_text(task.manifest, task.model, canonical, take)
    return PlannedTask(
        key,
        task.manifest,
        task.shot,
        task.shots,
        task.variant,
        take,
        task.model,
        dict(input),
        task.estimate,
    )


def _where(variant: Variant) -> str:
    """Names the matrix variant in a message, for shots that have several."""
    label = " · ".join(f"{k}={_short(v)}" for k, v in variant)
    return f" (variant {label})" if label else ""


def _resolve(
    b: _Builder, shot: Shot, model: Model, raw: dict[str, Any], variant: Variant
) -> dict[str, Any] | None:
    """Map the portable aspect ratio and turn `"@path"` media values into LocalFiles."""
    resolved = raw
    if PORTABLE_ASPECT in resolved and model.aspect_field != PORTABLE_ASPECT:
        value = resolved.pop(PORTABLE_ASPECT)
        if model.aspect_field is None:
            b.warnings.append(
                Problem(
                    b.file,
                    f"{model.slug} has no aspect ratio setting (the "
                    f"output follows its reference media); aspect_ratio "
                    f"ignored{_where(variant)}",
                    shot=shot.id,
                    field="input.aspect_ratio",
                )
            )
        elif model.aspect_field in resolved and resolved[model.aspect_field] != value:
            b.problems.append(
                Problem(
                    b.file,
                    f"aspect_ratio {value!r} and "
                    f"{model.aspect_field} {resolved[model.aspect_field]!r} "
                    f"disagree{_where(variant)}",
                    shot=shot.id,
                    field="input.aspect_ratio",
                )
            )
            return None
        else:
            resolved[model.aspect_field] = value
    ok = True
    for name, value in resolved.items():
        # Only strings starting with "@" and containers can hold local files.
        if isinstance(value, (dict, list)) or (isinstance(value, str) and value[:1] == "@"):
            try:
                resolved[name] = _resolve_media(b, model, value, (name,))
            except _MediaAt as failure:
                ok = False
                b.problems.append(
                    Problem(
                        b.file,
                        f"{failure.error}{_where(variant)}",
                        shot=shot.id,
                        field=_field(failure.path),
                    )
                )
    return resolved if ok else None


class _MediaAt(Exception):
    def __init__(self, error: MediaError, path: tuple[str | int, ...]) -> None:
        super().__init__(str(error))
        self.error, self.path = error, path


def _resolve_media(b: _Builder, model: Model, value: Any, path: tuple[str | int, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _resolve_media(b, model, v, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_media(b, model, v, (*path, i)) for i, v in enumerate(value)]
    if isinstance(value, str) and value[:1] == "@":
        kind = model.media_kind(path)
        if kind is None:
            return value  # "@" in a prompt or a non-media field is just text
        try:
            return media.resolve(value, b.loaded.path.parent, kind, b.files)
        except MediaError as error:
            raise _MediaAt(error, path) from None
    return value


def _check(
    b: _Builder, model: Model, resolved: dict[str, Any]
) -> tuple[list[catalog.Issue], list[catalog.Issue], Estimate | None]:
    """Validate and price one variant (once for all its takes)."""
    seconds, upper_bound, probed = _seconds(b, model, resolved)
    errors, warnings = catalog.validate(model, resolved, probed.duration if probed else None)
    estimate = None
    if not errors and seconds is not None:
        estimate = b.prices.estimate(model, resolved, seconds, upper_bound)
        if upper_bound:
            why = f" ({probed.detail})" if probed and probed.detail else ""
            warnings.append(
                catalog.Issue(
                    "input.video_url",
                    (
                        f"could not read the reference video's length{why}; priced at the longest "
                        f"allowed ({seconds} s), an upper bound"
                    ),
                )
            )
    return errors, warnings, estimate


def _seconds(
    b: _Builder, model: Model, resolved: Mapping[str, Any]
) -> tuple[Decimal | None, bool, ProbeResult | None]:
    """The billed length: (seconds, is_upper_bound, what probing the reference found)."""
    if model.duration_source == "input":
        seconds = model.output_seconds(resolved)
        return (Decimal(seconds) if seconds is not None else None), False, None
    reference = resolved.get("video_url")
    probed = b.probe(reference) if isinstance(reference, (str, media.LocalFile)) else None
    if probed is not None and probed.duration is not None:
        return probed.duration, False, probed
    orientation = resolved.get("character_orientation", model.default("character_orientation"))
    bounds = model.reference_video_seconds.get(str(orientation))
    longest = max((hi for _, hi in model.reference_video_seconds.values()), default=30)
    return Decimal(bounds[1] if bounds else longest), True, probed


def _canonical(value: Any) -> Any:
    if isinstance(value, media.LocalFile):
        return value.canonical()
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _public(value: Any) -> Any:
    if isinstance(value, media.LocalFile):
        return f"@{value.display}#sha256={value.sha256}"
    if isinstance(value, Mapping):
        return {k: _public(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


def _materialize(value: Any) -> Any:
    if isinstance(value, media.LocalFile):
        return value.data_uri()
    if isinstance(value, Mapping):
        return {k: _materialize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_materialize(v) for v in value]
    return value


def _field(path: Iterable[str | int]) -> str:
    text = "input"
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _short(value: Any) -> str:
    if isinstance(value, media.LocalFile):
        return "@" + value.display
    text = (
        value
        if isinstance(value, str)
        else repr(value).lower()
        if isinstance(value, bool)
        else str(value)
    )
    return text if len(text) <= 40 else text[:37] + "..."
