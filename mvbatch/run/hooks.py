"""What happens to a task that succeeded, while the run goes on (its downloads).

Owns: calling the run's `on_succeeded` hook with the task's ledger row, in the
background, once per success (and once per task that succeeded in an earlier
run but was not downloaded); waiting for the hooks at the end, or cancelling
them when the run stops (downloads resume on the next run).

It must not let a hook's error stop the run: a failing hook is logged. It
knows nothing of what a hook does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from mvbatch import logs
from mvbatch.ledger import Ledger, TaskRow

OnSucceeded = Callable[[TaskRow], Awaitable[None]]
log = logs.get("mvbatch.run.hooks")


class SuccessHooks:
    """The `on_succeeded` calls in flight."""

    def __init__(self, hook: OnSucceeded | None, ledger: Ledger, env: str) -> None:
        self.hook, self.ledger, self.env = hook, ledger, env
        self._running: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self.hook is not None

    def start(self, key: str) -> None:
        """Call the hook in the background with the task's row as the ledger has it now."""
        row = self.ledger.task(self.env, key)
        if row is None or self.hook is None:
            return
        task = asyncio.create_task(self._call(self.hook, row), name=f"hook {key}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _call(self, hook: OnSucceeded, row: TaskRow) -> None:
        try:
            await hook(row)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("task.hook_failed", key=row.key, error=f"{type(error).__name__}: {error}")

    def cancel(self) -> None:
        for task in self._running:
            task.cancel()

    async def wait(self, stopping: Callable[[], bool]) -> None:
        """Until every hook has ended; cancels them once `stopping()` says so."""
        while self._running:
            if stopping():
                for task in list(self._running):
                    task.cancel()
            await asyncio.gather(*list(self._running), return_exceptions=True)
