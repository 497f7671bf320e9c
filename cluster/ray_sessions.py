"""Local Ray clusters that ``lifeline up`` started, and what a killed one leaves behind.

``lifeline up`` starts its own Ray cluster (unless ``RAY_ADDRESS`` names
one). Stopped normally, Ray's shutdown takes every process with it. Killed
with SIGKILL, the GCS and the raylet go, but Ray's dashboard and
runtime-env agents stay, orphaned, holding ports and memory, and they
ignore SIGTERM (measured with Ray 2.5x: still running 7 s after it).

So each ``lifeline up`` that starts a local cluster records it (its own pid
and start time, and Ray's session directory) in
``$LIFELINE_DATA_DIR/ray-sessions/``, and removes the record when it stops.
The next ``lifeline up`` finds the records whose owner is gone and stops the
processes of that session: every process whose command line or open files
name the session directory (the agents rename themselves, ``ray::…``, but
keep their log files open there). SIGTERM first, then SIGKILL after a grace
period, like ``ray stop``; unlike ``ray stop`` it touches no other Ray
cluster on the machine (a test suite's, another user's).

Reusing the leftovers is not an option: without their GCS and raylet the
agents serve nothing, and a new cluster starts its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger("lifeline")

RECORDS = "ray-sessions"


@dataclass(frozen=True)
class StaleSession:
    """A Ray session whose ``lifeline up`` is gone, and what was still running of it."""

    owner_pid: int
    session_dir: str
    stopped: list[str]  # "pid name" of each process stopped


def _records(data_dir: str | Path) -> Path:
    return Path(data_dir) / RECORDS


def record(data_dir: str | Path, session_dir: str) -> Path:
    """Note that this process started the local Ray cluster of ``session_dir``."""
    me = psutil.Process()
    folder = _records(data_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{me.pid}.json"
    path.write_text(
        json.dumps({"pid": me.pid, "create_time": me.create_time(), "session_dir": session_dir})
    )
    return path


def forget(path: Path | None) -> None:
    """Remove a record at a clean stop (Ray's own shutdown stops the processes)."""
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _owner_alive(entry: dict) -> bool:
    try:
        return abs(psutil.Process(entry["pid"]).create_time() - entry["create_time"]) < 0.01
    except psutil.NoSuchProcess:
        return False


def processes_of(session_dir: str) -> list[psutil.Process]:
    """Processes that belong to the Ray session ``session_dir`` (by command line or open files)."""
    needle = session_dir.rstrip("/") + "/"  # session_x must not match session_x0
    found = []
    me = psutil.Process().pid
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == me:
            continue
        try:
            if any(needle in arg + "/" for arg in proc.info["cmdline"] or ()) or any(
                f.path.startswith(needle) for f in proc.open_files()
            ):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def stop_stale(data_dir: str | Path, grace_s: float = 5.0) -> list[StaleSession]:
    """Stop what remains of local Ray clusters whose ``lifeline up`` died without stopping them."""
    folder = _records(data_dir)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _owner_alive(entry):  # a lifeline up that still runs: its cluster is its own
            continue
        session_dir = entry.get("session_dir") or ""
        procs = processes_of(session_dir) if session_dir.startswith("/") else []
        names = []
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                names.append(f"{proc.pid} {proc.name()}")
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for proc in alive:  # Ray's agents ignore SIGTERM once their raylet is gone
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=grace_s)
        forget(path)
        if names:
            log.warning(
                "stopped %d process(es) of Ray session %s, left by a lifeline up (pid %d) that "
                "was killed: %s",
                len(names),
                session_dir,
                entry["pid"],
                ", ".join(names),
            )
        out.append(StaleSession(entry["pid"], session_dir, names))
    return out
