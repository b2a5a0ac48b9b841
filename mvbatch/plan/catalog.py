"""The model catalog: each model's JSON Schema plus the rules that live only in prose.

Owns: loading `mvbatch.schemas` (schemas and `catalog.toml`), validating one
resolved input, and answering questions about a model (its aspect-ratio field,
its media fields, its price-tier fields, its defaults). Knows nothing about
manifests: it reports problems as `(field, message)` pairs and the caller adds
the file and the shot.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any

from mvbatch import schemas
from mvbatch.plan.media import LocalFile

if TYPE_CHECKING:  # imported by the validators: a command that validates nothing skips it
    import jsonschema

IMAGE_REFERENCE = re.compile(r"<<<image_(\d+)>>>")


@dataclass(frozen=True, slots=True)
class Issue:
    field: str
    message: str


@dataclass(frozen=True, slots=True)
class Model:
    slug: str
    schema: Mapping[str, Any]
    aspect_field: str | None
    tier_fields: tuple[str, ...]
    duration_source: str
    media: Mapping[str, str]
    reference_video_seconds: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    # Derived once from the schema, because planning asks for them per task.
    properties: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    closed: bool = False  # the schema forbids fields it does not list

    @classmethod
    def build(cls, slug: str, schema: Mapping[str, Any], extra: Mapping[str, Any]) -> Model:
        properties = schema.get("properties", {})
        return cls(
            slug=slug,
            schema=schema,
            aspect_field=extra.get("aspect_field"),
            tier_fields=tuple(extra.get("tier_fields", ())),
            duration_source=extra.get("duration", "input"),
            media=dict(extra.get("media", {})),
            reference_video_seconds={
                k: (int(v[0]), int(v[1]))
                for k, v in extra.get("reference_video_seconds", {}).items()
            },
            properties=properties,
            defaults={k: v["default"] for k, v in properties.items() if "default" in v},
            closed=schema.get("additionalProperties", True) is False,
        )

    def default(self, name: str) -> Any:
        return self.defaults.get(name)

    def media_kind(self, path: tuple[str | int, ...]) -> str | None:
        """The kind of media at an input path such as ("video_list", 0, "video_url")."""
        pattern = ".".join("[]" if isinstance(p, int) else p for p in path).replace(".[]", "[]")
        return self.media.get(pattern)

    def tier(self, input: Mapping[str, Any]) -> dict[str, Any]:
        return {name: input.get(name, self.defaults.get(name)) for name in self.tier_fields}

    def output_seconds(self, input: Mapping[str, Any]) -> int | None:
        if self.duration_source != "input":
            return None
        value = input.get("duration", self.defaults.get("duration"))
        return value if isinstance(value, int) and not isinstance(value, bool) else None


@cache
def models() -> dict[str, Model]:
    """The bundled models. Their schemas are checked against JSON Schema's own by
    tests/test_catalog.py, not here: that check took 20 ms of every command's start."""
    root = schemas.data_dir()
    config = tomllib.loads((root / "catalog.toml").read_text(encoding="utf-8"))["models"]
    found: dict[str, Model] = {}
    for slug, extra in config.items():
        schema = json.loads((root / "models" / f"{slug}.json").read_text(encoding="utf-8"))
        found[slug] = Model.build(slug, schema, extra)
    return found


@cache
def _validator(slug: str) -> jsonschema.Draft202012Validator:
    import jsonschema

    return jsonschema.Draft202012Validator(models()[slug].schema)


# The top-level keywords for which an object schema can be checked one field
# at a time: then a field's verdict depends on its value alone and is cached,
# so 100,000 variants of a few shots cost a few hundred validations.
_DECOMPOSABLE = frozenset(
    {
        "type",
        "required",
        "properties",
        "additionalProperties",
        "title",
        "description",
        "$schema",
        "$id",
    }
)


@cache
def _field_validator(slug: str, name: str) -> jsonschema.Draft202012Validator:
    import jsonschema

    return jsonschema.Draft202012Validator(models()[slug].properties[name])


_field_verdicts: dict[tuple[Any, ...], tuple[Issue, ...]] = {}


def _schema_issues(model: Model, view: Mapping[str, Any]) -> tuple[list[Issue], list[Issue]]:
    """(errors, warnings) of the JSON Schema, one field at a time where possible."""
    schema = model.schema
    warnings: list[Issue] = []
    if not set(schema) <= _DECOMPOSABLE or schema.get("type") != "object":
        whole = _validator(model.slug).iter_errors(view)
        return [Issue(_path(e), _describe(e)) for e in whole], warnings
    errors: list[Issue] = []
    for name in schema.get("required", ()):
        if name not in view:
            errors.append(Issue(f"input.{name}", _missing(model, name)))
    properties = model.properties
    for name, value in view.items():
        if name not in properties:
            _unknown_field(model, name, errors, warnings)
            continue
        # The type is part of the token: the string "5" and the integer 5 differ.
        token = (
            model.slug,
            name,
            type(value),
            value if isinstance(value, (str, int, float)) else json.dumps(value, sort_keys=True),
        )
        verdict = _field_verdicts.get(token)
        if verdict is None:
            verdict = _field_verdict(model, name, value)
            if len(_field_verdicts) < 200_000:  # bounded: a plan's distinct values
                _field_verdicts[token] = verdict
        errors.extend(verdict)
    return errors, warnings


def _field_verdict(model: Model, name: str, value: Any) -> tuple[Issue, ...]:
    found = list(_field_validator(model.slug, name).iter_errors(value))
    # A value of the wrong type also fails its enum; saying so twice is noise.
    if any(e.validator == "type" and not e.absolute_path for e in found):
        found = [e for e in found if e.absolute_path or e.validator == "type"]
    return tuple(Issue(_path(e, f"input.{name}"), _describe(e)) for e in found)


def _missing(model: Model, name: str) -> str:
    if name in model.defaults:
        default = json.dumps(model.defaults[name], ensure_ascii=False)
        return (
            f"required field missing: {name} (the documentation lists {default} as its "
            "default, but the API requires it to be sent: write it in the manifest)"
        )
    return f"required field missing: {name}"


def _unknown_field(model: Model, name: str, errors: list[Issue], warnings: list[Issue]) -> None:
    known = sorted(model.properties)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    if model.closed:
        hint = f"did you mean '{close[0]}'? " if close else ""
        errors.append(
            Issue(f"input.{name}", f"unknown field; {hint}the model accepts: {', '.join(known)}")
        )
    elif close:
        # The schema does not forbid extra fields, but a near-miss of a
        # documented one is almost surely a typo that would be paid for.
        errors.append(
            Issue(
                f"input.{name}",
                f"unknown field; did you mean '{close[0]}'? ({model.slug} does not document "
                f"'{name}')",
            )
        )
    else:
        warnings.append(
            Issue(
                f"input.{name}", f"{model.slug} does not document this field; it is sent as written"
            )
        )


def get(slug: str) -> Model | None:
    return models().get(slug)


def known() -> str:
    return ", ".join(sorted(models()))


def validate(
    model: Model, input: Mapping[str, Any], reference_seconds: Decimal | None = None
) -> tuple[list[Issue], list[Issue]]:
    """Check a resolved input; returns (errors, warnings), each located by field."""
    view = _as_sent(input) if _has_files(input) else input
    errors, warnings = _schema_issues(model, view)
    errors.extend(_prose_rules(model, view, reference_seconds, warnings))
    return errors, warnings


def _prose_rules(
    model: Model,
    view: Mapping[str, Any],
    reference_seconds: Decimal | None,
    warnings: list[Issue],
) -> Iterator[Issue]:
    slug = model.slug
    if slug == "kling-v2-6":
        if view.get("audio") is True and view.get("mode", model.default("mode")) != "pro":
            yield Issue(
                "input.audio",
                'audio is available with pro mode only: set mode = "pro" or audio = false',
            )
        if "image_url" in view and "image_urls" in view:
            yield Issue(
                "input.image_urls",
                "give either image_url or image_urls, not both "
                "(the first item of image_urls is sent as image_url)",
            )
    if slug == "kling-v3-omni" and "image_urls" in view and "image_with_roles" in view:
        yield Issue(
            "input.image_with_roles",
            "image_urls and image_with_roles are mutually exclusive: use one of them",
        )
    if "<<<image_" in str(view.get("prompt", "")) and "image_urls" in model.properties:
        images = view.get("image_urls")
        count = len(images) if isinstance(images, list) else 0
        for number in sorted({int(n) for n in IMAGE_REFERENCE.findall(view["prompt"])}):
            if not 1 <= number <= count:
                have = f"image_urls has {count} item{'s' if count != 1 else ''}"
                yield Issue(
                    "input.prompt",
                    f"<<<image_{number}>>> refers to image_urls item "
                    f"{number}, but {have} (numbering starts at 1)",
                )
    if slug == "wan2-6-i2v-flash" and "audio_url" in view and view.get("audio") is False:
        warnings.append(Issue("input.audio_url", "ignored by the model because audio = false"))
    if model.reference_video_seconds and reference_seconds is not None:
        orientation = view.get("character_orientation", model.default("character_orientation"))
        bounds = model.reference_video_seconds.get(str(orientation))
        if bounds and not bounds[0] <= reference_seconds <= bounds[1]:
            yield Issue(
                "input.video_url",
                f"the reference video is {reference_seconds} s long; "
                f'character_orientation = "{orientation}" requires {bounds[0]}-{bounds[1]} s',
            )


def _has_files(value: Any) -> bool:
    if isinstance(value, LocalFile):
        return True
    if isinstance(value, Mapping):
        return any(_has_files(v) for v in value.values() if not isinstance(v, (str, int, float)))
    if isinstance(value, list):
        return any(_has_files(v) for v in value)
    return False


def _as_sent(value: Any) -> Any:
    """The input as the server will see it, with local files standing as data: URIs."""
    if isinstance(value, LocalFile):
        return f"data:{value.media_type};base64,"
    if isinstance(value, Mapping):
        return {k: _as_sent(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_sent(v) for v in value]
    return value


def _path(error: jsonschema.ValidationError, prefix: str = "input") -> str:
    parts = [prefix]
    for p in error.absolute_path:
        if isinstance(p, int):
            parts[-1] += f"[{p}]"
        else:
            parts.append(str(p))
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [n for n in error.validator_value if n not in error.instance]
        if missing:
            parts.append(missing[0])
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra:
            parts.append(extra[0])
    return ".".join(parts)


def _describe(error: jsonschema.ValidationError) -> str:
    kind, expected, got = error.validator, error.validator_value, error.instance
    shown = json.dumps(got, ensure_ascii=False) if not isinstance(got, (dict, list)) else None
    if kind == "enum":
        options = ", ".join(json.dumps(v, ensure_ascii=False) for v in expected)
        return f"expected one of {options}; got {shown}"
    if kind == "type":
        return f"expected {_a(expected)}; got {_type_name(got)} {shown or ''}".rstrip()
    if kind == "minimum":
        return f"expected at least {expected}; got {shown}"
    if kind == "maximum":
        return f"expected at most {expected}; got {shown}"
    if kind == "minLength":
        return f"expected at least {expected} character{'s' if expected != 1 else ''}"
    if kind == "maxLength":
        return f"expected at most {expected} characters; got {len(got)}"
    if kind == "minItems":
        return f"expected at least {expected} item{'s' if expected != 1 else ''}; got {len(got)}"
    if kind == "maxItems":
        return f"expected at most {expected} item{'s' if expected != 1 else ''}; got {len(got)}"
    if kind == "required":
        missing = [n for n in expected if n not in got]
        return f"required field missing: {', '.join(missing)}"
    if kind == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"unknown field; the model accepts: {allowed}"
    return str(error.message)


def _a(type_name: Any) -> str:
    names: dict[str, str] = {
        "string": "a string",
        "integer": "an integer",
        "number": "a number",
        "boolean": "true or false",
        "array": "a list",
        "object": "a table",
    }
    if isinstance(type_name, list):
        return " or ".join(names.get(str(t), str(t)) for t in type_name)
    return names.get(str(type_name), str(type_name))


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__
