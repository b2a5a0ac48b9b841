"""How the service "probes the real video duration" of a motion-control reference.

The real server downloads the video. The simulator, which mostly sees example
URLs that do not exist, decides in this order:

1. a `data:` URI of an MP4: the duration in its `moov/mvhd` box;
2. one of the simulator's own output URLs: that task's duration;
3. an http(s) URL on a loopback host: the `mvhd` read through Range requests;
4. a file name with a duration hint, `…-8s.mp4` or `…_8s.mp4` (the documented
   example `https://example.com/ref-video-8s.mp4` is 8 s);
5. otherwise 5 s.

None means the video was readable but is not an MP4 with a duration.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct
from collections.abc import Callable
from decimal import Decimal
from urllib.parse import unquote, urlsplit

import httpx

from mvbatch.sim import mp4

DURATION_HINT = re.compile(r"[-_](\d+(?:\.\d+)?)s\.mp4$", re.IGNORECASE)
DEFAULT_SECONDS = Decimal(5)
HEAD_BYTES = 256 * 1024
MAX_HOPS = 8

OwnFileLookup = Callable[[str], Decimal | None]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _data_uri_seconds(uri: str) -> Decimal | None:
    _, _, payload = uri.partition(",")
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error:
        return None
    return mp4.read_duration(data)


async def _fetch_seconds(url: str) -> Decimal | None:
    """Read mvhd over HTTP without downloading the media: walk top-level boxes by Range."""
    async with httpx.AsyncClient(timeout=3.0, follow_redirects=True) as client:
        offset = 0
        for _ in range(MAX_HOPS):
            headers = {"Range": f"bytes={offset}-{offset + HEAD_BYTES - 1}"}
            response = await client.get(url, headers=headers)
            if response.status_code not in {200, 206}:
                return None
            chunk = response.content if response.status_code == 206 or offset == 0 else b""
            if not chunk:
                return None
            if (seconds := mp4.read_duration(chunk)) is not None:
                return seconds
            # No whole moov in this window: jump over the boxes before it.
            pos = 0
            while pos + 8 <= len(chunk):
                size, kind = struct.unpack_from(">I4s", chunk, pos)
                if size == 1 and pos + 16 <= len(chunk):
                    (size,) = struct.unpack_from(">Q", chunk, pos + 8)
                if size < 8:
                    return None
                if kind == b"moov":
                    headers = {"Range": f"bytes={offset + pos}-{offset + pos + size - 1}"}
                    moov = (await client.get(url, headers=headers)).content
                    return mp4.read_duration(moov)
                pos += size
            offset += pos
    return None


async def reference_seconds(url: str, own_file: OwnFileLookup) -> Decimal | None:
    if url.startswith("data:"):
        return _data_uri_seconds(url)
    if (own := own_file(url)) is not None:
        return own
    parts = urlsplit(url)
    if parts.scheme in {"http", "https"} and _is_loopback(parts.hostname or ""):
        try:
            if (fetched := await _fetch_seconds(url)) is not None:
                return fetched
        except httpx.HTTPError:
            pass  # unreachable: fall back to the name hint, like a best-effort probe
    name = unquote(parts.path.rsplit("/", 1)[-1])
    if (hint := DURATION_HINT.search(name)) is not None:
        return Decimal(hint[1])
    return DEFAULT_SECONDS
