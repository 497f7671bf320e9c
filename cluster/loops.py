"""Background loops that cannot die silently: restarted, logged, counted, and seen by health.

A gateway or a shard runs a few endless asyncio loops (the append pipeline,
shard dispatch, pub/sub pushes, snapshots, model polling). If one of them
raised and ended, the process would go on looking healthy while a part of
the service had stopped for everyone. :class:`Supervisor` runs each loop in
a task that restarts it after a failure, with a backoff, logs the first
failure with its traceback and later ones sparingly (a loop that fails on
every pass would otherwise flood the log), counts every failure,
and reports a loop as unhealthy while it is down or failing repeatedly.
:class:`Failures` is the counter and log policy, also for failures that
are not a loop's (a session that cannot be packed, a record not written).

Limits: a restart starts the loop's coroutine afresh; whatever it held in
local variables is gone, so a loop must keep state it cannot lose on its
owner (the gateway's queues, the shard's host), not in its own frame. A
loop that returns is treated as a failure: these loops are meant to run
until their task is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

RESTART_DELAY_S = 0.05  # first restart; doubled on each failure in a row, up to the cap
RESTART_DELAY_MAX_S = 5.0
FAILING_WINDOW_S = 60.0  # this many failures within this window: unhealthy
FAILING_COUNT = 3


class Failures:
    """Counts one kind of failure and logs it without flooding the log.

    The first is logged with its traceback; after that only when the count
    reaches a power of two, with the count: a failure that repeats every
    half second still shows up, a few dozen lines a day, not thousands.
    """

    def __init__(
        self,
        what: str,
        log: logging.Logger,
        owner: str = "",
        counted: Callable[[str], None] | None = None,
    ) -> None:
        self.what = what
        self.log = log
        self.who = f"{owner}: " if owner else ""  # who fails, for log lines ("shard 3: ")
        self.counted = counted  # told of each failure (a metrics counter)
        self.count = 0
        self.last = ""  # the latest failure, as text

    def note(self, exc: BaseException | str) -> None:
        self.count += 1
        if self.counted is not None:
            self.counted(self.what)
        self.last = exc if isinstance(exc, str) else f"{type(exc).__name__}: {str(exc)[:200]}"
        if self.count == 1:
            self.log.error(
                "%s%s failed: %s",
                self.who,
                self.what,
                self.last,
                exc_info=exc if isinstance(exc, BaseException) else None,
            )
        elif self.count & (self.count - 1) == 0:
            self.log.error(
                "%s%s failed again (%d times so far), latest: %s",
                self.who,
                self.what,
                self.count,
                self.last,
            )


@dataclass
class LoopState:
    """What health and metrics show of one supervised loop."""

    name: str
    failures: Failures
    running: bool = False
    recent: list[float] = field(default_factory=list)  # monotonic times of recent failures

    def healthy(self, now: float) -> bool:
        recent = [t for t in self.recent if now - t < FAILING_WINDOW_S]
        return self.running and len(recent) < FAILING_COUNT

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "running": self.running,
            "healthy": self.healthy(now),
            "failures": self.failures.count,
            "last_error": self.failures.last,
        }


class Supervisor:
    """Runs named loops on the current event loop and restarts the ones that fail."""

    def __init__(
        self, log: logging.Logger, owner: str = "", counted: Callable[[str], None] | None = None
    ) -> None:
        self.log = log
        self.owner = owner  # who runs the loops, for log lines ("gateway 3fa2...")
        self.counted = counted  # told of each failure, by loop name (a metrics counter)
        self.loops: dict[str, LoopState] = {}
        self.counts: dict[str, int] = {}  # failures per loop, live (a metrics source)
        self.tasks: list[asyncio.Task] = []

    def start(self, name: str, loop: Callable[[], Coroutine[Any, Any, Any]]) -> asyncio.Task:
        """Run ``loop()`` as ``name`` until cancelled, restarting it whenever it fails."""
        failures = Failures(f"loop {name!r}", self.log, self.owner, self.counted)
        state = self.loops[name] = LoopState(name, failures)
        self.counts[name] = 0
        task = asyncio.get_running_loop().create_task(self._run(state, loop), name=name)
        self.tasks.append(task)
        return task

    async def _run(self, state: LoopState, loop: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        delay = RESTART_DELAY_S
        while True:
            state.running = True
            started = time.monotonic()
            try:
                await loop()
                raise RuntimeError("the loop returned")
            except asyncio.CancelledError:
                state.running = False
                raise
            except Exception as exc:
                state.running = False
                now = time.monotonic()
                if now - started > FAILING_WINDOW_S:
                    delay = RESTART_DELAY_S  # it had been running fine: start the backoff over
                self.failed(state, exc, now)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX_S)

    def failed(self, state: LoopState, exc: BaseException, now: float | None = None) -> None:
        """Count and log one failure of ``state``'s loop (also one it caught and survived)."""
        now = time.monotonic() if now is None else now
        state.recent = [t for t in state.recent if now - t < FAILING_WINDOW_S] + [now]
        state.failures.note(exc)
        self.counts[state.name] = state.failures.count

    @property
    def healthy(self) -> bool:
        now = time.monotonic()
        return all(s.healthy(now) for s in self.loops.values())

    def health(self) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        return {name: s.to_json(now) for name, s in self.loops.items()}

    async def end(self, name: str) -> None:
        """Cancel the loop ``name`` for good (its work is gone, e.g. a shard left the set)."""
        for t in [t for t in self.tasks if t.get_name() == name]:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
            self.tasks.remove(t)
        self.loops.pop(name, None)
        self.counts.pop(name, None)

    async def stop(self) -> None:
        """Cancel every loop and wait for them to end."""
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.tasks = []


async def bounded(
    what: str, step: Any, timeout: float, logger: logging.Logger | None = None
) -> None:
    """Await ``step`` for at most ``timeout`` s; log (by name) one that overran or failed.

    For stops, where no one step may hold up the ones after it. ``asyncio.wait``,
    not ``wait_for``: a step that does not end when cancelled must not hold the
    caller up either.
    """
    logger = logger or logging.getLogger("lifeline")
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        logger.warning("stopping: %s did not end within %.0f s; going on without it", what, timeout)
    elif not task.cancelled() and task.exception() is not None:
        logger.warning("stopping: %s failed: %r", what, task.exception())
