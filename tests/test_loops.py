"""Supervised loops: a loop that fails is restarted, logged once, counted, and seen by health."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cluster import loops
from cluster.loops import Supervisor

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_failing_loop_restarts_and_health_turns_red_if_it_keeps_failing(
    caplog, monkeypatch
):
    monkeypatch.setattr(loops, "RESTART_DELAY_S", 0.001)
    log = logging.getLogger("test.loops")
    sup = Supervisor(log, "test")
    passes = 0
    failed_enough = asyncio.Event()

    async def flaky() -> None:
        nonlocal passes
        passes += 1
        if passes >= loops.FAILING_COUNT:
            failed_enough.set()
        raise ValueError(f"pass {passes}")

    steady = asyncio.Event()

    async def fine() -> None:
        steady.set()
        await asyncio.Event().wait()  # runs until cancelled

    with caplog.at_level(logging.ERROR, logger="test.loops"):
        sup.start("flaky", flaky)
        sup.start("fine", fine)
        await asyncio.wait_for(failed_enough.wait(), 5)
        await asyncio.wait_for(steady.wait(), 5)
        # Let the supervisor note the last failure before reading its state.
        while sup.counts["flaky"] < loops.FAILING_COUNT:
            await asyncio.sleep(0)
        health = sup.health()
        assert not sup.healthy
        assert health["flaky"]["healthy"] is False
        assert health["flaky"]["failures"] >= loops.FAILING_COUNT
        assert health["flaky"]["last_error"].startswith("ValueError")
        assert health["fine"] == {
            "running": True,
            "healthy": True,
            "failures": 0,
            "last_error": "",
        }
        await sup.stop()
    # The first failure is logged with its traceback; later ones only at powers of two.
    lines = [r for r in caplog.records if "flaky" in r.getMessage()]
    count = sup.counts["flaky"]
    assert lines[0].exc_info is not None and "pass 1" in lines[0].getMessage()
    assert len(lines) == sum(1 for n in range(1, count + 1) if n & (n - 1) == 0)
    assert all(r.exc_info is None for r in lines[1:])


async def test_a_loop_that_returns_is_restarted_too():
    sup = Supervisor(logging.getLogger("test.loops"))
    runs = 0
    second = asyncio.Event()

    async def returns() -> None:
        nonlocal runs
        runs += 1
        if runs == 2:
            second.set()
            await asyncio.Event().wait()

    sup.start("returns", returns)
    await asyncio.wait_for(second.wait(), 5)
    assert sup.counts["returns"] == 1 and sup.loops["returns"].running
    assert sup.healthy  # one failure a minute is not "cannot restart"
    await sup.stop()
    assert not sup.loops["returns"].running
