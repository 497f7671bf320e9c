"""`lifeline up` as a newcomer runs it: Ctrl-C during its ~25 s start-up stops it.

It starts its own local Ray cluster (a separate process tree, not the
suite's shared one), so this is one test, not several.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shards_of(proc: psutil.Process) -> list[psutil.Process]:
    """SessionShard actors started by this `lifeline up` (its Ray cluster is its own child)."""
    out = []
    for p in proc.children(recursive=True):
        try:
            if "SessionShard" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            continue
    return out


def test_ctrl_c_during_start_up_stops_everything(redis_url, tmp_path):
    env = dict(
        os.environ,
        LIFELINE_PREFIX=f"lltest-up-{uuid.uuid4().hex[:8]}:",
        REDIS_URL=redis_url,
        LIFELINE_DATA_DIR=str(tmp_path),  # its records of Ray sessions, not the user's
    )
    env.pop("RAY_ADDRESS", None)
    # With Serve, as the quick start runs it (a Ctrl-C was lost there).
    cmd = [sys.executable, "-m", "cluster.cli", "up", "--no-llm-stub"]
    cmd += ["--ws-port", str(free_port()), "--http-port", str(free_port())]
    cmd += ["--console-port", str(free_port())]
    up = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    proc = psutil.Process(up.pid)
    try:
        # Mid-start: the shards exist, the gateway does not listen yet. There is
        # no event to await across processes, so the process table is polled.
        deadline = time.monotonic() + 120
        while len(shards_of(proc)) < 2:
            assert up.poll() is None, up.stdout.read() if up.stdout else ""
            assert time.monotonic() < deadline, "the shards never started"
            time.sleep(0.2)
        shards = shards_of(proc)
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=90)
        assert up.returncode == 0, output
        assert "interrupted during start-up" in output
        assert "Lifeline is running" not in output
        gone, alive = psutil.wait_procs(shards, timeout=30)
        assert not alive, f"shards still running: {alive}"
        # Stopped cleanly: no record of its Ray session is left for the next start to clear.
        assert not list((tmp_path / "ray-sessions").glob("*.json"))
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
