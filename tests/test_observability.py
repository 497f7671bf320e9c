"""Debian's Prometheus against a running stack, with cluster/observability's configuration.

The configuration is cluster/observability/prometheus.yml with the test's
addresses: the stack's console port, and Ray's metrics agent of the tests'
Ray cluster. That cluster runs without Ray's dashboard (tests/conftest.py),
and the service-discovery file the production config reads
(``/tmp/ray/prom_metrics_service_discovery.json``) is written by the
dashboard's head process, so here the agent's own port
(``metrics_export_port``) is listed statically instead; what is scraped
from it is the same.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from actors.core.policy import in_holdout
from serve.dev.llm_stub import StubLLM, error
from serve.dev.pyclient import LifelineClient
from serve.edge.gateway import Gateway
from training.simulator import scripted

HERE = Path(__file__).resolve().parent.parent / "cluster" / "observability"
ORIGIN = "http://127.0.0.1:8080"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
WAIT_S = 90.0  # Ray's agent reports every ~10 s; Prometheus scrapes every second here


def test_promtool_accepts_the_config_and_passes_the_alert_tests() -> None:
    out = subprocess.run(
        [PROMTOOL, "check", "config", str(HERE / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 1 rule files found" in out.stdout + out.stderr
    # The alerts' own unit tests: each fires on the series it watches, and not before its time.
    out = subprocess.run(
        [PROMTOOL, "test", "rules", str(HERE / "alerts_test.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(console_port: int, ray_port: int) -> dict[str, Any]:
    """The repository's prometheus.yml with this test's targets and a 1 s scrape."""
    cfg = yaml.safe_load((HERE / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(HERE / f) for f in cfg["rule_files"]]
    jobs = {job["job_name"]: job for job in cfg["scrape_configs"]}
    jobs["lifeline"]["static_configs"] = [{"targets": [f"127.0.0.1:{console_port}"]}]
    ray_job = jobs["ray"]
    assert ray_job["file_sd_configs"][0]["files"] == [
        "/tmp/ray/prom_metrics_service_discovery.json"
    ]
    del ray_job["file_sd_configs"]
    ray_job["static_configs"] = [{"targets": [f"127.0.0.1:{ray_port}"]}]
    return cfg


async def _query(http: aiohttp.ClientSession, base: str, expr: str) -> dict[str, Any]:
    async with http.get(f"{base}/api/v1/query", params={"query": expr}) as r:
        return await r.json()


async def _until(what: str, probe, timeout: float = WAIT_S) -> Any:
    """Poll Prometheus (another process: nothing to await) until ``probe`` returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        got = await probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"Prometheus never showed {what} within {timeout:.0f} s")
        await asyncio.sleep(0.5)


async def _struggle(stack) -> LifelineClient:
    """A struggling visitor outside the holdout: events acked, an intervention pushed."""
    while True:
        sid = f"t-obs-{uuid.uuid4().hex[:12]}"
        if not in_holdout(sid, 0.10):
            break
    events = scripted("struggling", sid, int(time.time() * 1000) - 120_000)
    client = LifelineClient(stack.ws_url, "demo", sid, ORIGIN)
    assert (await client.connect())["t"] == "welcome"
    for i in range(0, len(events), 5):
        await client.send_events(events[i : i + 5])
    await client.wait_for(lambda f: f["t"] == "intervention", timeout=15)
    await client.wait_acked(len(events))
    return client


@pytest.mark.asyncio(loop_scope="session")
async def test_prometheus_scrapes_lifeline_and_ray_and_loads_the_alerts(
    lifeline_stack, tmp_path: Path
) -> None:
    import ray

    stack = lifeline_stack
    ray_port = ray._private.worker._global_node.metrics_export_port
    # A second gateway process's stand-in: another Gateway publishing to the same Redis,
    # with no HTTP port of its own, as cluster/gateway_worker.py runs one.
    extra = stack.side_gateway()
    await extra.start("127.0.0.1", 0)
    client = await _struggle(stack)

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(_config(stack.console_port, ray_port)))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

            async def ready() -> bool:
                if proc.returncode is not None:
                    raise AssertionError((tmp_path / "prometheus.log").read_text()[-2000:])
                try:
                    async with http.get(f"{base}/-/ready") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await _until("readiness", ready, 30)

            async def series(expr: str) -> list[dict[str, Any]]:
                body = await _query(http, base, expr)
                assert body["status"] == "success", body
                return body["data"]["result"]

            # The gateways' histograms, one series set per gateway process.
            acks = await _until(
                "the ack histogram of both gateways",
                lambda: _gateways(series, "lifeline_gateway_ack_seconds_bucket", 2, stack, extra),
            )
            le = {r["metric"]["le"] for r in acks if r["metric"]["gateway"] == stack.gateway.id}
            assert {"0.025", "0.05", "+Inf"} <= le
            mine = f'gateway="{stack.gateway.id}"'
            count = await series(f"lifeline_gateway_ack_seconds_count{{{mine}}}")
            assert float(count[0]["value"][1]) >= 1
            ivs = await series(f"lifeline_gateway_intervention_seconds_count{{{mine}}}")
            assert float(ivs[0]["value"][1]) >= 1, "the intervention was timed"
            for name in ("shard_call", "redis_append"):
                got = await series(f"lifeline_gateway_{name}_seconds_count{{{mine}}}")
                assert float(got[0]["value"][1]) >= 1, name
            restarts = await series("lifeline_gateway_shard_restarts_total")
            assert {r["metric"]["shard"] for r in restarts} == {
                str(i) for i in range(len(stack.shards))
            }

            # The shards' Ray metrics, through Ray's metrics agent.
            scored = await _until(
                "the shards' Ray metrics",
                lambda: series("ray_lifeline_shard_events_scored_total"),
            )
            assert sum(float(r["value"][1]) for r in scored) >= 1

            # Every alert rule of alerts.yml is loaded and evaluates without error.
            want = {
                r["alert"]
                for g in yaml.safe_load((HERE / "alerts.yml").read_text())["groups"]
                for r in g["rules"]
            }

            async def rules() -> list[dict[str, Any]] | None:
                async with http.get(f"{base}/api/v1/rules") as r:
                    body = await r.json()
                got = [r for g in body["data"]["groups"] for r in g["rules"]]
                return got if all(r["health"] != "unknown" for r in got) and got else None

            loaded = await _until("the alert rules evaluated", rules, 30)
            assert {r["name"] for r in loaded if r["type"] == "alerting"} == want
            assert [r["name"] for r in loaded if r["health"] != "ok"] == []

            # Every Grafana panel's query is PromQL that Prometheus accepts.
            dashboard = json.loads((HERE / "grafana" / "dashboards" / "lifeline.json").read_text())
            exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
            assert len(exprs) > 10
            for expr in exprs:
                body = await _query(http, base, expr.replace("$__rate_interval", "1m"))
                assert body["status"] == "success", (expr, body)
    finally:
        proc.terminate()
        await proc.wait()
        log.close()
        await client.close()
        await extra.stop()


async def _gateways(series, expr: str, n: int, stack, extra: Gateway) -> list[dict[str, Any]]:
    """The series of ``expr`` once both gateways (the stack's, the extra one) have some."""
    got = await series(expr)
    ids = {r["metric"].get("gateway") for r in got}
    return got if {stack.gateway.id, extra.id} <= ids else []


def _ray_samples(port: int, name: str, worker_id: str) -> dict[str, float]:
    """Samples of ``name`` this process exported, as Ray's metrics agent serves them."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(name) and s.labels.get("WorkerId") == worker_id
    }


@pytest.mark.asyncio(loop_scope="session")
async def test_an_open_llm_breaker_is_a_ray_metric(
    ray_cluster, redis_url: str, prefix: str
) -> None:
    """The series the breaker alert reads: a NudgeWriter whose API fails opens its breaker."""
    import ray

    from serve.apps import deployments as D

    stub = StubLLM(api_key="test-key", seed=5)
    await stub.start()
    stub.push(*[error(500) for _ in range(10)])
    llm = {"api_key": "test-key", "base_url": stub.url, "breaker_failures": 2}
    llm.update(backoff_base_s=0.01, backoff_cap_s=0.02)
    writer = D.NudgeWriter.func_or_class(llm, redis_url, prefix)
    ctx = {
        "site": "demo",
        "iid": "i-" + uuid.uuid4().hex[:8],
        "kind": "form_hint",
        "page_path": "/calculator.html",
        "page_type": "form",
        "signals": {"form_struggle": 0.9},
        "segment": 1,
        "cart": {"items": 0, "value": 0.0},
        "consent": ["necessary", "analytics", "personalization"],
        "template": "This field is picky about its format.",
        "trigger_ms": int(time.time() * 1000),
    }
    try:
        out = await writer.write(ctx)
        assert out["source"] == "template" and writer.llm.breaker.state == "open"
    finally:
        await writer.redis.aclose()
        await stub.close()

    port = ray._private.worker._global_node.metrics_export_port
    me = ray.get_runtime_context().get_worker_id()

    async def exported() -> dict[str, float]:
        got = await asyncio.to_thread(_ray_samples, port, "ray_lifeline_nudge_breaker", me)
        return got if "ray_lifeline_nudge_breaker_opens_total" in got else {}

    got = await _until("the breaker's Ray metrics", exported, 60)
    assert got["ray_lifeline_nudge_breaker_opens_total"] == 1
    assert got["ray_lifeline_nudge_breaker_open"] == 1
