"""Working beside other workers on one ledger: who this worker is, its heartbeat, the dead.

Owns: the worker's identity (`host:pid:nonce`), the heartbeat that keeps its
claims alive (`Fleet.beat`, every third of a lease), letting go of its claims
when it stops, and recognising a worker of this machine that died (its pid is
gone) so that its tasks are taken at once rather than after its lease.
Must not: decide what to send (the executor does) or touch a task's status.

Every run is a worker, alone or not: on a SQLite file the other workers are
the other processes on this machine, on a PostgreSQL ledger those on every
machine. A task in flight is held by the worker that sent it (its claim, taken
with the intent in one step, `Ledger.record_intent`); other workers leave it
alone while the holder's lease runs, and take it over when the lease is over:
a task whose POST may not have been answered is sent again under the same
idempotency key (free), one with a task id is polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from mvbatch import logs
from mvbatch.ledger import Ledger, TaskRow

DEFAULT_LEASE = 30.0  # seconds a dead worker's tasks wait before another takes them
WAIT_AT_MOST = 5.0  # seconds between looks at what other workers hold

log = logs.get("mvbatch.run.fleet")


def here() -> str:
    """This machine as far as pids go: the host name, and the pid namespace where there is
    one (containers sharing a host name, `--network host`, do not share their pids)."""
    try:
        namespace = f"~{Path('/proc/self/ns/pid').stat().st_ino}"
    except OSError:
        namespace = ""
    return socket.gethostname().replace(":", "_") + namespace


def worker_id() -> str:
    """This process's name among the workers: where it runs, its pid, and a nonce."""
    return f"{here()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def dead_here(worker: str) -> bool:
    """Whether `worker` ran on this machine and its process is gone (it cannot beat again)."""
    host, _, rest = worker.partition(":")
    pid_text = rest.partition(":")[0]
    if host != here() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, and not ours to signal
    return False


class Fleet:
    """This worker's place among the others on one ledger."""

    def __init__(self, ledger: Ledger, env: str, *, lease: float = DEFAULT_LEASE) -> None:
        self.ledger, self.env, self.lease = ledger, env, lease
        self.worker = worker_id()
        self._beating: asyncio.Task[None] | None = None
        self._looking: asyncio.Task[None] | None = None
        # Whether another worker held, or took, a task of this run's plan.
        self.saw_others = False

    @property
    def wait(self) -> float:
        """How long to wait between looks at tasks other workers hold."""
        return min(WAIT_AT_MOST, self.lease / 3)

    def release_the_dead(self, rows: Iterable[TaskRow]) -> int:
        """Let go of the claims of this machine's workers that died (`kill -9`, a crash)."""
        dead = {r.claimed_by for r in rows if r.claimed_by and r.claimed_by != self.worker}
        released = 0
        for worker in sorted(w for w in dead if dead_here(w)):
            released += self.ledger.release(self.env, worker)
            log.info("fleet.released_dead_worker", worker=worker)
        return released

    def claim(self, key: str) -> TaskRow | None:
        """Hold a task in flight (free, or its holder's lease is over); its row, or None."""
        return self.ledger.claim(self.env, key, self.worker, self.lease)

    def start(self, look_for_abandoned: Callable[[], None] | None = None) -> None:
        """Start the heartbeat on the running event loop, and, with `look_for_abandoned`,
        a look every `wait` seconds for tasks whose holder is gone (to take them over:
        a dead worker's tasks, and the fleet's slots they hold, wait no longer than its
        lease and one look)."""
        if self._beating is None:
            self._beating = asyncio.create_task(self.beat(), name="fleet heartbeat")
        if look_for_abandoned is not None and self._looking is None:
            self._looking = asyncio.create_task(
                self.look(look_for_abandoned), name="fleet takeover"
            )

    async def beat(self) -> None:
        """Every third of a lease, renew every claim this worker holds."""
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                self.ledger.renew(self.env, self.worker, self.lease)
            except Exception as error:  # a lost database: the lease runs out, others take over
                log.warning("fleet.heartbeat_failed", worker=self.worker, error=str(error))

    async def look(self, look_for_abandoned: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(self.wait)
            try:
                look_for_abandoned()
            except Exception as error:  # a lost database: the run's own steps will say it
                log.warning("fleet.takeover_failed", worker=self.worker, error=str(error))

    async def stop(self) -> None:
        """Stop the heartbeat and let go of every claim: others may take them at once."""
        for task in (self._beating, self._looking):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._beating = self._looking = None
        try:
            self.ledger.release(self.env, self.worker)
        except Exception as error:  # its lease runs out instead
            log.warning("fleet.release_failed", worker=self.worker, error=str(error))
