"""The service's own input checks: the JSON Schemas plus the rules written only in prose.

This is the simulator's independent reading of the documentation (the client
has its own in `mvbatch.catalog`); the two must agree only because both follow
the same pages. Every problem is a `FieldError` naming the offending field with
a dotted path such as `input.video_list[0].video_url`.

The reference-video duration rule of kling-v3-motion-control needs the probed
duration, so it is a separate step (`check_reference_duration`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

ENVELOPE_FIELDS = frozenset({"model", "input"})
IMAGE_REFERENCE = re.compile(r"<<<image_(\d+)>>>")
DATA_URI = re.compile(
    r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]+)*?);base64,(?P<b64>.*)$", re.DOTALL
)
MOTION_REFERENCE_SECONDS = {"image": (3, 10), "video": (3, 30)}

# Where each model takes media references, and what kind of media each is.
MEDIA_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "kling-v2-6": (("image_url", "image"), ("image_urls[]", "image")),
    "kling-video-o1": (("image_urls[]", "image"), ("video_list[].video_url", "video")),
    "kling-v3-omni": (
        ("image_urls[]", "image"),
        ("image_with_roles[].url", "image"),
        ("video_list[].video_url", "video"),
    ),
    "kling-v3-motion-control": (("image_url", "image"), ("video_url", "video")),
    "wan2-6-i2v-flash": (("image_urls[]", "image"), ("audio_url", "audio")),
}


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


@cache
def schemas() -> dict[str, dict[str, Any]]:
    """Every model's input schema, by slug, from the shared data package."""
    folder = files("mvbatch.schemas").joinpath("models")
    loaded: dict[str, dict[str, Any]] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            loaded[entry.name.removesuffix(".json")] = json.loads(entry.read_text("utf-8"))
    return loaded


@cache
def _validator(model: str) -> Draft202012Validator:
    return Draft202012Validator(schemas()[model])


def with_defaults(model: str, params: dict[str, Any]) -> dict[str, Any]:
    """The input with the schema's top-level defaults filled in."""
    properties: dict[str, Any] = schemas()[model].get("properties", {})
    merged = {name: spec["default"] for name, spec in properties.items() if "default" in spec}
    merged.update(params)
    return merged


def check_envelope(body: object) -> list[FieldError]:
    """The request body's outer shape: `{"model": str, "input": {...}}` and nothing else."""
    if not isinstance(body, dict):
        return [FieldError("body", "must be a JSON object with model and input")]
    errors = [FieldError(name, "unknown field") for name in sorted(set(body) - ENVELOPE_FIELDS)]
    if not isinstance(body.get("model"), str) or not body["model"]:
        errors.append(FieldError("model", "is required and must be a model slug (string)"))
    if not isinstance(body.get("input"), dict):
        errors.append(FieldError("input", "is required and must be an object"))
    return errors


def _path(prefix: str, parts: Iterator[str | int] | Any) -> str:
    text = prefix
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _schema_errors(model: str, params: dict[str, Any]) -> list[FieldError]:
    found: list[FieldError] = []
    error: ValidationError
    for error in _validator(model).iter_errors(params):
        where = _path("input", error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, dict):
            found.extend(
                FieldError(f"{where}.{name}", "is required")
                for name in error.validator_value
                if name not in error.instance
            )
        elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = error.schema.get("properties", {})
            found.extend(
                FieldError(f"{where}.{name}", "unknown field for this model")
                for name in error.instance
                if name not in known
            )
        else:
            found.append(FieldError(where, error.message))
    return sorted(set(found), key=lambda e: (e.field, e.message))


def _locations(params: dict[str, Any], spec: str) -> Iterator[tuple[str, Any]]:
    """(field path, value) for a spec like `video_list[].video_url`."""
    head, _, rest = spec.partition(".")
    many = head.endswith("[]")
    name = head.removesuffix("[]")
    if name not in params:
        return
    values = params[name]
    if many:
        if not isinstance(values, list):
            return
        items = [(f"input.{name}[{i}]", v) for i, v in enumerate(values)]
    else:
        items = [(f"input.{name}", values)]
    for where, value in items:
        if not rest:
            yield where, value
        elif isinstance(value, dict) and rest in value:
            yield f"{where}.{rest}", value[rest]


def _media_error(value: object, kind: str) -> str | None:
    if not isinstance(value, str):
        return None  # the schema already reports the type
    if value.startswith("data:"):
        match = DATA_URI.match(value)
        if match is None:
            return "data: URI must be base64 encoded (data:<type>;base64,...)"
        try:
            base64.b64decode(match["b64"], validate=True)
        except binascii.Error:
            return "data: URI payload is not valid base64"
        media_type = (match["type"] or "").lower()
        top = media_type.partition("/")[0]
        if top in {"image", "video", "audio"} and top != kind:
            return f"expects {kind} data, got {media_type}"
        return None
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        return f"must be an http(s) URL or a data: URI of {kind} data"
    return None


def _prose_errors(model: str, params: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    full = with_defaults(model, params)

    for spec, kind in MEDIA_FIELDS.get(model, ()):
        for where, value in _locations(params, spec):
            if (problem := _media_error(value, kind)) is not None:
                errors.append(FieldError(where, problem))

    if model == "kling-v2-6":
        # "Whether to generate synchronized audio. Available with pro mode."
        if full.get("audio") is True and full.get("mode") != "pro":
            errors.append(FieldError("input.audio", "audio is available with mode 'pro' only"))
        # "The first item [of image_urls] is sent as image_url": one or the other.
        if "image_url" in params and "image_urls" in params:
            errors.append(FieldError("input.image_urls", "give image_url or image_urls, not both"))

    if model == "kling-v3-omni" and "image_urls" in params and "image_with_roles" in params:
        message = "image_urls and image_with_roles are mutually exclusive"
        errors.append(FieldError("input.image_urls", message))
        errors.append(FieldError("input.image_with_roles", message))

    if model in {"kling-video-o1", "kling-v3-omni"}:
        images = params.get("image_urls")
        count = len(images) if isinstance(images, list) else 0
        prompts = [("input.prompt", params.get("prompt"))]
        if isinstance(params.get("multi_prompt"), list):
            prompts += [
                (f"input.multi_prompt[{i}].prompt", item.get("prompt"))
                for i, item in enumerate(params["multi_prompt"])
                if isinstance(item, dict)
            ]
        for where, text in prompts:
            if not isinstance(text, str):
                continue
            for match in IMAGE_REFERENCE.finditer(text):
                number = int(match[1])
                if not 1 <= number <= count:
                    errors.append(
                        FieldError(
                            where,
                            f"{match[0]} refers to image_urls entry {number}, "
                            f"but {count} image URL(s) were given",
                        )
                    )
    return errors


def check_input(model: str, params: dict[str, Any]) -> list[FieldError]:
    """Every problem at once: schema errors, then the prose rules (which tolerate bad types)."""
    return _schema_errors(model, params) + _prose_errors(model, params)


def check_reference_duration(params: dict[str, Any], seconds: Decimal | None) -> list[FieldError]:
    """kling-v3-motion-control: "image requires a 3-10s reference video; video 3-30s"."""
    if seconds is None:
        return [FieldError("input.video_url", "could not read the reference video's duration")]
    orientation = str(params.get("character_orientation", "image"))
    low, high = MOTION_REFERENCE_SECONDS.get(orientation, (3, 10))
    if not low <= seconds <= high:
        return [
            FieldError(
                "input.video_url",
                f"character_orientation {orientation!r} needs a {low}-{high} s reference "
                f"video, this one is {seconds.normalize():f} s",
            )
        ]
    return []
