"""Keep a child process running: restart it with backoff when it dies, and say so.

``lifeline up --gateways N`` runs N-1 gateway processes next to its own
(cluster/gateway_worker.py). Each is watched by a :class:`Supervised`: when
one exits without being asked to, the supervisor logs its exit code, waits
(1 s, doubling up to 30 s, back to 1 s once a run lasted a minute, so a
process that dies at start-up does not spin) and starts it again. Its state
(``starting``, ``up``, ``down``) is what ``/healthz`` lists, and any state
other than ``up`` turns health red: a load balancer should know that this
host serves with fewer gateways than it was given.

Limits: it watches processes it started itself, on this host; the main
process (which serves HTTP and supervises) is not restarted by anything
here: run ``lifeline up`` under systemd or the like for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("lifeline")

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a run this long resets the backoff
READY_TIMEOUT_S = 120.0


class Supervised:
    """One child process kept running; ``await start()`` once, ``await stop()`` at the end.

    The child must print ``ready`` on stdout once it serves. Its command line
    must hold no secret: ``env`` (the whole environment it gets) carries them.
    """

    def __init__(
        self, name: str, argv: Sequence[str], env: dict[str, str], cwd: str | Path
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.cwd = str(cwd)
        self.state = "starting"
        self.restarts = 0
        self.last_exit: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def status(self) -> dict[str, Any]:
        """What ``/healthz`` shows of this process."""
        return {
            "name": self.name,
            "pid": self.pid,
            "state": self.state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }

    async def _spawn(self) -> None:
        """Start the child and wait for its ``ready``; raises if it does not get there."""
        self.state = "starting"
        proc = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, env=self.env, cwd=self.cwd
        )
        self.proc = proc
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT_S)
        except asyncio.TimeoutError:
            line = b"(nothing within the time allowed)"
        if line.strip() != b"ready":
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            self.last_exit = await proc.wait()
            raise RuntimeError(f"{self.name} did not start (said {line!r})")
        self.state = "up"

    async def start(self) -> None:
        """Start the child the first time (a failure here fails the start-up), then watch it."""
        await self._spawn()
        self._task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        backoff = BACKOFF_FIRST_S
        while True:
            assert self.proc is not None
            started = time.monotonic()
            code = await self.proc.wait()
            if self._stopping:
                return
            self.state = "down"
            self.last_exit = code
            if time.monotonic() - started >= STABLE_AFTER_S:
                backoff = BACKOFF_FIRST_S
            log.warning(
                "%s (pid %s) exited with code %s; restarting it in %.0f s",
                self.name,
                self.proc.pid,
                code,
                backoff,
            )
            while True:
                await asyncio.sleep(backoff)  # the backoff itself: nothing to wait for but time
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                if self._stopping:
                    return
                try:
                    await self._spawn()
                    break
                except Exception as exc:  # keeps trying; health stays red meanwhile
                    self.state = "down"
                    log.warning(
                        "%s failed to restart: %s; next try in %.0f s", self.name, exc, backoff
                    )
            self.restarts += 1
            log.warning("%s restarted (pid %s)", self.name, self.proc.pid)

    async def stop(self, timeout_s: float = 15.0) -> None:
        """Stop watching, then SIGTERM the child (SIGKILL if it does not exit in time)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
