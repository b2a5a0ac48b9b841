"""Where each output video goes: our own names, inside the manifest's folder.

Owns: the report folder of a manifest (`report_folder`), the path of each
output inside it (`output_relpath`: `videos/<shot>/<variant>_take<N>_<key8>.mp4`,
from our data, never the server's path), making any text one safe path
component (`safe_component`), and checking that a path stays inside its folder
(`contained`). The report reads these too, to find the videos it shows.

Must not: touch the network, open or write files, or know how the bytes get
there (that is `partfile` and `fetch`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from mvbatch.ledger import TaskRow
from mvbatch.plan.manifest import NAME_PATTERN

VIDEOS = "videos"
_COMPONENT_BYTES = 80  # per path component: well under every filesystem's 255
_WINDOWS_RESERVED = frozenset(
    {
        "CON",
        "PRN",
        "AUX",
        "NUL",
        *(f"COM{n}" for n in range(1, 10)),
        *(f"LPT{n}" for n in range(1, 10)),
    }
)


def safe_component(text: str, fallback: str) -> str:
    """One path component a person can read, that cannot climb out of its folder.

    Letters and digits of any script stay (people recognise their shot ids);
    everything else, including separators, dots and control characters,
    becomes '-'. Never empty, never '.', '..' or a reserved device name.
    """
    text = unicodedata.normalize("NFC", text)
    kept = "".join(c if c.isalnum() or c in "-_=+" else "-" for c in text)
    kept = re.sub(r"-{2,}", "-", kept).strip("-_")
    encoded = kept.encode("utf-8")[:_COMPONENT_BYTES]
    kept = encoded.decode("utf-8", errors="ignore").strip("-_")
    if not kept:
        return fallback
    if kept.split(".")[0].upper() in _WINDOWS_RESERVED:
        kept = "_" + kept
    return kept


def variant_pairs(variant: Any) -> list[tuple[str, Any]]:
    """The matrix combination as ordered (name, value) pairs, whichever way it was stored."""
    if isinstance(variant, Mapping):
        return [(str(k), v) for k, v in variant.items()]
    if isinstance(variant, (list, tuple)):
        return [
            (str(pair[0]), pair[1])
            for pair in variant
            if isinstance(pair, (list, tuple)) and len(pair) == 2
        ]
    return []


def value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def short_key(key: str) -> str:
    return safe_component(key.rsplit("-", 1)[-1][:8], "task")


def output_relpath(row: TaskRow, idx: int) -> PurePosixPath:
    """Where output `idx` of a task lives, relative to the manifest's report folder.

    `videos/<shot>/<variant>_take<N>_<key8>[_<idx+1>].mp4`: sortable, readable,
    unique (the short key), and derived from our data only.
    """
    pairs = variant_pairs(row.variant)
    variant = "_".join(f"{k}-{value_text(v)}" for k, v in pairs)
    name = (
        f"{safe_component(variant, 'default')}_take{int(row.take)}_{short_key(row.key)}"
        f"{f'_{idx + 1}' if idx else ''}.mp4"
    )
    return PurePosixPath(VIDEOS, safe_component(row.shot, "shot"), name)


def report_folder(output_dir: Path, manifest: str) -> Path:
    """`MVBATCH_OUTPUT_DIR/<name>/`: the reports and the videos of one manifest.

    A valid manifest name is already a safe folder name and is kept exactly
    (SPEC §6 fixes the location); anything else is made safe.
    """
    if re.fullmatch(NAME_PATTERN, manifest):
        return output_dir / manifest
    return output_dir / safe_component(manifest, "manifest")


def contained(folder: Path, relpath: str | PurePosixPath) -> Path | None:
    """`folder/relpath` if it resolves inside `folder` (symlinks included), else None."""
    rel = PurePosixPath(relpath)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        return None
    root = folder.resolve()
    target = root.joinpath(*rel.parts)
    # The parent may not exist yet: resolve what exists, which is where a
    # symlink planted by someone else would be.
    if not target.parent.resolve().is_relative_to(root):
        return None
    return target
