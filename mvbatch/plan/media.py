"""Local files named in a manifest as `"@path"`: hashed by content, sent as `data:` URIs.

Owns: resolving the path relative to the manifest, the size limits of a data
URI per kind of field, the media type, and the content hash that stands for
the file in idempotency keys. The bytes are read again only when a payload is
built, so a plan of 100,000 tasks that share one image holds one hash, not
100,000 copies of the image.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from mvbatch.errors import FileChangedError, MediaError

# The API documentation accepts "compact data URIs depending on model
# constraints" without a number. These caps are our assumption, chosen so that
# a request stays well under the request sizes HTTP front ends commonly allow;
# a larger file should be hosted and referenced by URL.
DATA_URI_LIMITS = {"image": 10 * 1024 * 1024, "video": 50 * 1024 * 1024, "audio": 10 * 1024 * 1024}

_EXTRA_TYPES = {".webp": "image/webp", ".m4a": "audio/mp4", ".mov": "video/quicktime"}


@dataclass(frozen=True, slots=True)
class LocalFile:
    path: Path  # absolute
    display: str  # as written in the manifest, without the "@"
    sha256: str
    size: int
    media_type: str

    def canonical(self) -> dict[str, str]:
        # The media type is part of what is sent (the data: URI's prefix), so
        # it is part of the key: renaming a.jpg to a.png changes the payload,
        # and an unchanged key with a changed payload would earn a 409.
        return {"$file": f"sha256:{self.sha256}", "type": self.media_type}

    def describe(self) -> str:
        return f"@{self.display} (sha256:{self.sha256[:12]}, {self.size} bytes)"

    def data_uri(self) -> str:
        data = self.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.sha256:
            # The file changed after planning: sending it would submit content
            # the key does not describe, so the run must stop instead.
            raise FileChangedError(self.display)
        return f"data:{self.media_type};base64,{base64.b64encode(data).decode('ascii')}"


def media_type_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _EXTRA_TYPES:
        return _EXTRA_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def resolve(reference: str, base_dir: Path, kind: str, cache: dict[Path, LocalFile]) -> LocalFile:
    """Resolve `"@relative/path"` against the manifest's folder.

    `kind` is the field's kind of media (image, video, audio); it sets the cap.
    """
    written = reference[1:]
    if not written:
        raise MediaError('"@" must be followed by a file path, e.g. "@images/hero.jpg"')
    path = (base_dir / written).resolve()
    if path in cache:
        return cache[path]
    if not path.is_file():
        raise MediaError(f"local file {written!r} not found (looked for {path})")
    size = path.stat().st_size
    limit = DATA_URI_LIMITS.get(kind, DATA_URI_LIMITS["image"])
    if size > limit:
        raise MediaError(
            f"local file {written!r} is {size / 1e6:.1f} MB; {_a(kind)} sent as a data: URI "
            f"may be at most {limit / 1e6:.0f} MB. Host it and give its https:// URL instead"
        )
    media_type = media_type_of(path)
    if kind in ("image", "video", "audio") and not media_type.startswith(kind + "/"):
        raise MediaError(
            f"local file {written!r} looks like {media_type}, expected {_a(kind)} file"
        )
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    file = LocalFile(
        path=path, display=written, sha256=digest.hexdigest(), size=size, media_type=media_type
    )
    cache[path] = file
    return file


def _a(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"
