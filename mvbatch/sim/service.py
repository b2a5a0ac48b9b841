"""The simulator's running state, shared by every endpoint: store, clock, faults, secrets.

Opened lazily on first use (an app driven by `httpx.ASGITransport` gets no
lifespan events), and holding nothing that cannot be rebuilt from the store,
so a restart changes nothing a client can see. Also owns what is derived from
a task record: its timeline, its signed output URL and its file bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
import threading
from collections import OrderedDict
from decimal import Decimal
from urllib.parse import urlencode, urlsplit

from mvbatch.sim import mp4
from mvbatch.sim.config import SimConfig
from mvbatch.sim.faults import FaultInjector
from mvbatch.sim.lifecycle import CANCELLED, FAILED, SUCCEEDED, Timeline
from mvbatch.sim.store import Store, TaskRecord

FILES_PREFIX = "/files/"
FILE_CACHE_SIZE = 8
# Bytes per second of output at output_scale 1, by tier: a few hundred KB per clip.
BYTES_PER_SECOND = {"std": 40_000, "720p": 40_000, "pro": 64_000, "1080p": 64_000, "4k": 128_000}
AUDIO_BYTES_PER_SECOND = 16_000


def key_owner(api_key: str) -> str:
    """Tasks belong to a hash of the API key; the key itself is never stored."""
    return "sha256:" + hashlib.sha256(api_key.encode()).hexdigest()


class Service:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.faults = FaultInjector(config.faults, config.seed)
        self.clock_offset = 0.0
        self._store: Store | None = None
        self._secret: bytes | None = None
        self._salt = ""
        self._open_lock = threading.Lock()
        self._files: OrderedDict[str, bytes] = OrderedDict()
        self._files_lock = threading.Lock()

    @property
    def store(self) -> Store:
        if self._store is None:
            with self._open_lock:
                if self._store is None:
                    store = Store(self.config.state_dir)
                    # Both live in the store so URLs and ids stay valid across restarts.
                    self._secret = bytes.fromhex(
                        store.meta("signing_secret", lambda: secrets.token_hex(32))
                    )
                    self._salt = store.meta("task_id_salt", lambda: secrets.token_hex(8))
                    self._store = store
        return self._store

    @property
    def secret(self) -> bytes:
        _ = self.store
        assert self._secret is not None
        return self._secret

    def now(self) -> float:
        return self.config.clock() + self.clock_offset

    def scale(self) -> float:
        """Multiplier of every simulated duration: 1/speed, 0 when instantaneous."""
        return self.config.scaled(1.0)

    def reset(self) -> None:
        """Forget everything; new task ids never repeat the forgotten ones."""
        self.store.reset()
        self._salt = secrets.token_hex(8)
        self.store.set_meta("task_id_salt", self._salt)
        with self._files_lock:
            self._files.clear()
        self.clock_offset = 0.0

    # -- tasks ----------------------------------------------------------------

    def new_task_id(self, seq: int) -> str:
        _ = self.store
        digest = hashlib.sha256(f"{self._salt}:{seq}".encode()).hexdigest()
        return f"task_{digest[:24]}"

    def task_rng(self, seq: int) -> random.Random:
        """The dice of the seq-th task: same seed, same order, same schedules."""
        return random.Random(f"{self.config.seed}:task:{seq}")

    @staticmethod
    def timeline(record: TaskRecord) -> Timeline:
        return Timeline(
            created_at=record.created_at,
            queued_seconds=record.queued_seconds,
            run_seconds=record.run_seconds,
            failure_message=record.failure_message,
            cancelled_at=record.cancelled_at,
        )

    def settle(self, record: TaskRecord, now: float) -> str:
        """The status at `now`; a failed or cancelled task gets its charge back."""
        status = self.timeline(record).status_at(now)
        if status in {FAILED, CANCELLED}:
            self.store.refund(record, now)
        return status

    def settle_all(self) -> dict[str, str]:
        now = self.now()
        return {record.task_id: self.settle(record, now) for record in self.store.all_tasks()}

    def cost_actual(self, record: TaskRecord, status: str) -> Decimal | None:
        if status == SUCCEEDED:
            return record.cost
        if status in {FAILED, CANCELLED}:
            return Decimal(0)
        return None

    # -- output files ---------------------------------------------------------

    def _mac(self, message: str) -> str:
        return hmac.new(self.secret, message.encode(), hashlib.sha256).hexdigest()

    def file_name(self, record: TaskRecord) -> str:
        return self._mac(f"name:{record.task_id}")[:16] + ".mp4"

    def signature(self, task_id: str, name: str, expires: int) -> str:
        return self._mac(f"file:{task_id}/{name}:{expires}")[:32]

    def output_url(self, origin: str, record: TaskRecord, now: float) -> tuple[str, int]:
        """A signed URL of the task's video and when it expires (unix seconds)."""
        expires = int(now + self.config.url_ttl_seconds)
        name = self.file_name(record)
        query = urlencode(
            {"expires": expires, "sig": self.signature(record.task_id, name, expires)}
        )
        return f"{origin.rstrip('/')}{FILES_PREFIX}{record.task_id}/{name}?{query}", expires

    def file_size(self, record: TaskRecord) -> int:
        base, _, extra = record.tier.partition("+")
        per_second = BYTES_PER_SECOND.get(base, 40_000)
        per_second += AUDIO_BYTES_PER_SECOND if extra == "audio" else 0
        return int(per_second * float(record.output_seconds) * self.config.output_scale)

    def file_bytes(self, record: TaskRecord) -> bytes:
        """The task's video, identical on every call (and after a restart)."""
        with self._files_lock:
            if (cached := self._files.get(record.task_id)) is not None:
                self._files.move_to_end(record.task_id)
                return cached
        data = mp4.write_mp4(
            seconds=record.output_seconds,
            aspect_ratio=record.aspect_ratio,
            target_size=self.file_size(record),
            seed=hmac.digest(self.secret, f"bytes:{record.task_id}".encode(), "sha256"),
        )
        with self._files_lock:
            self._files[record.task_id] = data
            while len(self._files) > FILE_CACHE_SIZE:
                self._files.popitem(last=False)
        return data

    def own_file_seconds(self, url: str) -> Decimal | None:
        """The duration of one of our own output URLs, used as a reference video."""
        path = urlsplit(url).path
        if not path.startswith(FILES_PREFIX):
            return None
        task_id = path.removeprefix(FILES_PREFIX).split("/", 1)[0]
        record = self.store.get(task_id)
        if record is None or self.timeline(record).status_at(self.now()) != SUCCEEDED:
            return None
        return record.output_seconds

    # -- counters -------------------------------------------------------------

    def count(self, name: str) -> None:
        self.store.bump(name)
