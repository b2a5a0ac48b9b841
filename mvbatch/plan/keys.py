"""The idempotency key: a documented, versioned content hash.

A task's key is `mvb1-` followed by the first 32 hex digits of BLAKE2b (16-byte
digest) over the canonical JSON of

    {"manifest": <name>, "model": <slug>, "input": <resolved input>, "take": <n>}

Canonical JSON: keys sorted at every level, no insignificant white space,
UTF-8 without escaping, local files replaced by `{"$file": "sha256:<hex>", "type": <media type>}`.
The same content gives the same key on any machine, any day; any change gives
a new key. The `mvb1` tag names both the recipe and the algorithm: changing
either is a new tag (and a ledger migration), never a silent refactor, because
a changed key means the API charges the task again.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any

KEY_VERSION = "mvb1"


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(value: Any) -> str:
    return _ENCODER.encode(value)


def task_key(manifest: str, model: str, canonical_input: Any, take: int) -> str:
    return task_key_from_text(manifest, model, canonical_json(canonical_input), take)


def task_key_from_text(manifest: str, model: str, input_json: str, take: int) -> str:
    """`task_key` for an input already in canonical JSON (the planner's hot path).

    Splices the document's canonical form directly: its keys in sorted order
    are input, manifest, model, take. A test checks this equals hashing
    `canonical_json` of the whole document.
    """
    document = (
        f'{{"input":{input_json},"manifest":{_quoted(manifest)},'
        f'"model":{_quoted(model)},"take":{take}}}'
    )
    digest = hashlib.blake2b(document.encode(), digest_size=16).hexdigest()
    return f"{KEY_VERSION}-{digest}"


@lru_cache(maxsize=1024)
def _quoted(text: str) -> str:
    return canonical_json(text)


def retry_key(key: str, attempt: int) -> str:
    """The key of the `attempt`-th deliberate resubmission of a failed task.

    Derived, never random, so a crash during a retry still resubmits under the
    same key and is not charged twice.
    """
    if attempt <= 0:
        return key
    digest = hashlib.blake2b(f"{key}/retry/{attempt}".encode(), digest_size=16).hexdigest()
    return f"{KEY_VERSION}-{digest}"
