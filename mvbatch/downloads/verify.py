"""What arrived: is it a video? Checked before any file is made final.

Owns: the rule that tells a video from what a file host sends instead (an
error page, a JSON error body, an XML bucket error) and the words that say
what came: "the server sent application/json, not a video: {"error": ...".

- The type: a Content-Type of text, JSON or XML (`text/*`, `*/json`,
  `*/xml`, `*+json`, `*+xml`) is never a video. Anything else passes this
  check, or none at all: hosts label videos `video/mp4`, `video/quicktime`,
  `application/octet-stream`, `binary/octet-stream`, or not at all.
- The bytes: the first box of an ISO base media file (MP4, MOV): a 32-bit
  size (0, 1 or at least 8) and a type among `BOX_TYPES`. Most encoders (and
  the simulator, whose outputs are MP4) start with `ftyp`; QuickTime writers
  may start with `wide`, `free`, `skip`, `mdat` or `moov`, streaming ones
  with `styp`.

The status (200, or 206 after a Range request) is `fetch`'s to check; the
words are redacted (`logs.redact_text`): a body may echo a key.

Must not: touch the network, the disk or the ledger.
"""

from __future__ import annotations

from mvbatch import logs

HEAD_BYTES = 100  # bytes kept from the start of a file: enough for the box, and the words
BOX_TYPES = frozenset({b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"})
_TEXT_SUFFIXES = ("/json", "/xml", "+json", "+xml")


def media_type(content_type: str | None) -> str | None:
    """`text/html; charset=utf-8` -> `text/html`; None when absent or blank."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    return kind or None


def refused_type(content_type: str | None) -> bool:
    """Whether the Content-Type alone says this is not a video (text, JSON, XML)."""
    kind = media_type(content_type)
    if kind is None:
        return False
    return kind.startswith("text/") or kind.endswith(_TEXT_SUFFIXES)


def starts_like_a_video(head: bytes) -> bool:
    """Whether `head` (the first bytes of the file) is the start of an ISO media file."""
    if len(head) < 8:
        return False
    size = int.from_bytes(head[:4], "big")
    return head[4:8] in BOX_TYPES and (size in (0, 1) or size >= 8)


def not_a_video(content_type: str | None, head: bytes) -> str | None:
    """None for a video; otherwise the words that say what came instead.

    `head` is the first bytes of the body (`HEAD_BYTES` of them when the
    body is that long).
    """
    if not refused_type(content_type) and starts_like_a_video(head):
        return None
    kind = media_type(content_type)
    sent = kind if kind is not None else "data without a Content-Type"
    return logs.redact_text(f"the server sent {sent}, not a video: {printable(head)}")


def printable(head: bytes) -> str:
    """The first characters (`HEAD_BYTES` at most) of a body as one line: control bytes escaped."""
    pieces, length = [], 0
    for c in head[:HEAD_BYTES].decode("utf-8", "backslashreplace"):
        piece = c if c.isprintable() else repr(c)[1:-1]
        if length + len(piece) > HEAD_BYTES:
            break
        pieces.append(piece)
        length += len(piece)
    return "".join(pieces)
