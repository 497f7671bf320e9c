"""A circuit breaker for calls to an outside service (the LLM API).

Closed: calls go through and consecutive failures are counted. After
``failure_threshold`` consecutive failures it opens: calls are refused at once
(the caller uses its fallback) for ``reset_after_s``. Then it is half-open:
one probe call is let through; its success closes the breaker, its failure
opens it again for another ``reset_after_s``.

Pure: no I/O, and the clock is injectable so tests can move time instead of
sleeping. Not thread-safe; it is meant for one asyncio event loop (one Serve
replica), where the check and the state change of one call cannot interleave.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker with a single half-open probe."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or reset_after_s <= 0:
            raise ValueError("failure_threshold >= 1 and reset_after_s > 0 are required")
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.opens = 0  # times it opened, for metrics

    @property
    def state(self) -> str:
        """Current state; an open breaker turns half-open once its wait is over."""
        if self._state == OPEN and self._clock() - self._opened_at >= self.reset_after_s:
            self._state = HALF_OPEN
            self._probe_in_flight = False
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """May a call go out now? In half-open state only one probe at a time may.

        Every ``True`` must be followed by :meth:`record_success` or
        :meth:`record_failure` for that call, or a half-open breaker would wait
        for a probe verdict forever.
        """
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        """The call worked: close the breaker and forget past failures."""
        self._state = CLOSED
        self._failures = 0
        self._probe_in_flight = False

    def abandon(self) -> None:
        """The call was cancelled before a verdict: free the half-open probe slot.

        Neither a success nor a failure: a caller giving up says nothing about
        the service.
        """
        self._probe_in_flight = False

    def record_failure(self) -> None:
        """The call failed: count it, and open the breaker at the threshold or on a failed probe."""
        state = self.state
        self._failures += 1
        if state == HALF_OPEN or (state == CLOSED and self._failures >= self.failure_threshold):
            self._state = OPEN
            self._opened_at = self._clock()
            self._probe_in_flight = False
            self.opens += 1
