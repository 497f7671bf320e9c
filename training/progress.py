"""A minimal progress bar on stderr for long training steps (no extra dependency).

What it is for: replay, cross-validation and k-selection loops that take
seconds to minutes. It redraws at most ~5 times a second, only when stderr
is a terminal (logs and CI get a single summary line at the end), and can
be switched off with ``enabled=False`` or ``LIFELINE_NO_PROGRESS=1``.
Limits: one bar at a time; no nesting.
"""

from __future__ import annotations

import os
import sys
import time


class Progress:
    """Counts work done out of ``total`` (None: unknown total) and draws a bar."""

    def __init__(self, total: int | None, label: str, *, enabled: bool = True) -> None:
        self.total = total
        self.label = label
        self.n = 0
        self.t0 = time.monotonic()
        self._last = 0.0
        self.enabled = enabled and not os.environ.get("LIFELINE_NO_PROGRESS")
        self.tty = self.enabled and sys.stderr.isatty()

    def update(self, k: int = 1) -> None:
        self.n += k
        if not self.tty:
            return
        now = time.monotonic()
        if now - self._last < 0.2 and (self.total is None or self.n < self.total):
            return
        self._last = now
        sys.stderr.write("\r" + self._line(now))
        sys.stderr.flush()

    def _line(self, now: float) -> str:
        el = now - self.t0
        if self.total:
            frac = min(self.n / self.total, 1.0)
            filled = int(frac * 30)
            eta = el / frac - el if frac > 0 else 0.0
            return (
                f"{self.label:>10} [{'#' * filled}{'.' * (30 - filled)}] "
                f"{self.n}/{self.total} {el:5.1f}s eta {eta:5.1f}s"
            )
        return f"{self.label:>10} {self.n} done {el:5.1f}s"

    def close(self) -> None:
        if not self.enabled:
            return
        line = self._line(time.monotonic())
        if self.tty:
            sys.stderr.write("\r" + line + "\n")
        else:
            sys.stderr.write(line.strip() + "\n")
        sys.stderr.flush()
