"""What `lifeline up` does about its processes: restart the dead, clear a killed run's leftovers.

The whole command is tested in tests/test_ops_up.py; these are the same
mechanisms on small real processes, with the cases that run is too slow for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import pytest_asyncio

from cluster import ray_sessions
from cluster.processes import Supervised

# A child that serves until killed; the ready line is what the supervisor waits for.
SERVES = "import time; print('ready', flush=True); time.sleep(600)"


class Said(logging.Handler):
    """Lets a test await a log line (the supervisor's only output) instead of sleeping."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.lines: list[str] = []
        self.waiters: list[tuple[str, asyncio.Future]] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.lines.append(text)
        for fragment, fut in self.waiters:
            if fragment in text and not fut.done():
                self.loop.call_soon_threadsafe(fut.set_result, text)

    async def wait(self, fragment: str, timeout: float = 30) -> str:
        fut = self.loop.create_future()
        self.waiters.append((fragment, fut))
        return await asyncio.wait_for(fut, timeout)


@pytest_asyncio.fixture
async def said():
    handler = Said(asyncio.get_running_loop())
    log = logging.getLogger("lifeline")
    log.addHandler(handler)
    yield handler
    log.removeHandler(handler)


async def test_a_dead_child_is_restarted_and_its_state_says_so(said):
    child = Supervised("worker 1", [sys.executable, "-c", SERVES], dict(os.environ), ".")
    await child.start()
    try:
        first = child.pid
        assert child.status()["state"] == "up" and child.restarts == 0
        exited = said.wait("exited with code -9")
        restarted = said.wait("restarted")
        psutil.Process(first).kill()
        await exited
        assert child.status()["state"] in ("down", "starting")
        await restarted
        assert child.status() == {
            "name": "worker 1",
            "pid": child.pid,
            "state": "up",
            "restarts": 1,
            "last_exit": -9,
        }
        assert child.pid != first and psutil.pid_exists(child.pid)
    finally:
        await child.stop()
    assert child.proc is not None and child.proc.returncode is not None


async def test_a_child_that_never_gets_ready_fails_the_start():
    child = Supervised("worker 1", [sys.executable, "-c", "print('no')"], dict(os.environ), ".")
    with pytest.raises(RuntimeError, match="did not start"):
        await child.start()


async def test_a_stopped_child_is_not_restarted(said):
    child = Supervised("worker 1", [sys.executable, "-c", SERVES], dict(os.environ), ".")
    await child.start()
    await child.stop()
    assert child.proc is not None and child.proc.returncode is not None
    assert not [line for line in said.lines if "exited" in line or "restarted" in line]


# -- a killed run's Ray session -------------------------------------------------------------------

# Stands in for Ray's dashboard agent after its raylet died: renamed command line, a log
# file open in its session directory, SIGTERM ignored (as measured of Ray's agents).
AGENT = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "log = open(sys.argv[1], 'a')\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


def _agent(log_file: Path) -> subprocess.Popen:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(log_file)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _record(data_dir: Path, pid: int, create_time: float, session_dir: Path) -> Path:
    folder = data_dir / ray_sessions.RECORDS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{pid}.json"
    entry = {"pid": pid, "create_time": create_time, "session_dir": str(session_dir)}
    path.write_text(json.dumps(entry))
    return path


def test_stale_session_processes_are_stopped_and_no_others(tmp_path):
    stale = tmp_path / "ray" / "session_1_100"
    other = tmp_path / "ray" / "session_1_1000"  # shares the stale one's name as a prefix
    live = tmp_path / "ray" / "session_2_200"
    # The owner of the stale session: a process that has exited (as after kill -9).
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_started = psutil.Process(gone.pid).create_time()
    gone.wait()
    me = psutil.Process()
    stale_record = _record(tmp_path, gone.pid, gone_started, stale)
    live_record = _record(tmp_path, me.pid, me.create_time(), live)
    agents = [_agent(stale / "logs" / "dashboard_agent.log")]
    bystanders = [_agent(other / "logs" / "agent.log"), _agent(live / "logs" / "agent.log")]
    try:
        found = ray_sessions.stop_stale(tmp_path, grace_s=1.0)
        assert [s.session_dir for s in found] == [str(stale)]
        assert [int(s.split()[0]) for s in found[0].stopped] == [agents[0].pid]
        assert agents[0].wait(timeout=10) is not None
        assert all(b.poll() is None for b in bystanders)
        assert not stale_record.exists() and live_record.exists()
    finally:
        for p in agents + bystanders:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_clean_stop_leaves_no_record(tmp_path):
    path = ray_sessions.record(tmp_path, "/tmp/ray/session_x")
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert ray_sessions.stop_stale(tmp_path) == []  # its owner (this process) runs
    ray_sessions.forget(path)
    assert not path.exists()
