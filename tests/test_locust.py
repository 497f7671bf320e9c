"""The Locust load test against the real stack: its figures and its SLO gate.

Locust runs as its own process (it monkey-patches the standard library
with gevent on import), against the gateway of the shared stack, replaying
the scripted struggling journey so interventions arrive too.
"""

from __future__ import annotations

import asyncio
import csv
import sys
from pathlib import Path

import pytest

from cluster.keys import Keys

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_locust_reports_acks_and_interventions_and_its_slo_gate_fails_the_run(
    lifeline_stack, tmp_path
):
    # A generous ack SLO and an impossible intervention SLO: the run must end
    # with exit code 1, naming the intervention SLO and only that one.
    cmd = [
        sys.executable, "-m", "locust",
        "-f", str(ROOT / "loadtests" / "locustfile.py"),
        "--headless", "-u", "10", "-r", "10", "-t", "8s",
        "--host", lifeline_stack.ws_url,
        "--journeys", "struggling",
        "--slo-ack-p99-ms", "60000", "--slo-iv-p99-ms", "0.5",
        "--csv", str(tmp_path / "run"), "--only-summary",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    log = out.decode(errors="replace")
    assert proc.returncode == 1, log
    assert "SLO missed: p99 trigger -> intervention" in log, log
    assert "event -> ack" not in log.split("SLO missed:")[1].splitlines()[0], log

    with open(tmp_path / "run_stats.csv") as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    ack, iv = rows[("WS", "ack")], rows[("WS", "intervention")]
    assert int(ack["Request Count"]) > 100 and int(ack["Failure Count"]) == 0
    assert int(iv["Request Count"]) > 0
    assert float(iv["99%"]) > 0.5
    assert int(rows[("WS", "connect")]["Request Count"]) == 10

    # What Locust counted as acknowledged is in the event log: the ack means durable.
    store = lifeline_stack.gateway.store
    keys = Keys(lifeline_stack.prefix)
    pattern = keys.events("loadtest", "locust-*")
    streams = [k.decode() async for k in store.r.scan_iter(match=pattern)]
    sids = [keys.session_of_events_key(k)[1] for k in streams]
    logged = [len(await store.read_events("loadtest", sid)) for sid in sids]
    assert len(sids) == 10
    assert sum(logged) >= int(ack["Request Count"])
