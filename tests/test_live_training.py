"""Learning from what happened, on a real stack: train on the live log, drift, the promotion guard.

Simulated visitors go through real WebSockets into the running service and
answer the help they get (shown, then accepted or dismissed, as the browser
client reports it); ``lifeline train --source live`` learns from that log;
the promotion guard refuses a model trained on flipped labels until
``--force``, and the shards then score with what was forced through.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import zlib
from pathlib import Path

import pytest

from actors.model.scoring import BUNDLED_META, BUNDLED_MODEL
from cluster.redis_client import redis_client
from serve.dev.pyclient import LifelineClient
from training.cli import EXIT_REFUSED, main
from training.dataset import export_redis, rows_frame
from training.labels import DEFAULT_HORIZON_S, EXIT_SOON, apply_label
from training.registry import ModelRegistry
from training.simulator import simulate
from training.train import XGBParams, fit_xgb, time_split

pytestmark = pytest.mark.asyncio(loop_scope="session")

ORIGIN = "http://127.0.0.1:8080"
VISITORS = 100
CONCURRENT = 10
BATCH = 8


def _answers(client: LifelineClient, answered: dict[str, str], seq: int, ts: int) -> list[dict]:
    """Events answering the help not answered yet: shown, then accepted or dismissed."""
    out = []
    for iv in client.of_type("intervention"):
        if iv["iid"] in answered:
            continue
        verdict = "accepted" if zlib.crc32(iv["iid"].encode()) % 2 else "dismissed"
        answered[iv["iid"]] = verdict
        for kind in ("shown", verdict):
            out.append({"type": f"intervention_{kind}", "seq": seq, "ts": ts, "iid": iv["iid"]})
            seq += 1
    return out


async def _visit(stack, sid: str, journey: list[dict]) -> dict[str, str]:
    """One visitor's journey over its own socket, answering help between batches.

    Returns iid -> "accepted" / "dismissed" of every intervention it got.
    """
    client = LifelineClient(stack.ws_url, "demo", sid, ORIGIN)
    assert (await client.connect())["t"] == "welcome"
    answered: dict[str, str] = {}
    seq, ts, i = 1, journey[0]["ts"], 0
    while True:
        batch = _answers(client, answered, seq, ts)
        batch += [{**e, "seq": seq + len(batch) + k} for k, e in enumerate(journey[i : i + BATCH])]
        i += BATCH
        if not batch:
            break
        await client.send_events(batch)
        seq, ts = batch[-1]["seq"] + 1, batch[-1]["ts"]
        await client.wait_acked(seq - 1)
        if i >= len(journey):  # journey over: let its last decisions arrive before answering
            await stack.gateway.wait_scored(sid, seq - 1)
            await client.roundtrip()
    await client.close()
    return answered


@pytest.fixture(scope="module")
async def visits(any_stack) -> dict[str, dict[str, str]]:
    """sid -> its answers to help, of simulated visitors of five hours ago sent through the stack.

    Five hours ago: their sessions are over, so the label knows how each ended.
    """
    tag = uuid.uuid4().hex[:8]
    journeys = simulate(VISITORS, seed=11, start_ms=int(time.time() * 1000) - 5 * 3600_000)
    gate = asyncio.Semaphore(CONCURRENT)

    async def one(j) -> tuple[str, dict[str, str]]:
        sid = f"lt-{tag}-{j.sid}"
        async with gate:
            return sid, await _visit(any_stack, sid, j.events)

    return dict(await asyncio.gather(*(one(j) for j in journeys)))


async def _cli(stack, *argv: str) -> int:
    """A ``lifeline`` command against the stack's Redis, off the event loop the stack runs on."""
    return await asyncio.to_thread(
        main, [*argv, "--redis-url", stack.redis_url, "--prefix", stack.prefix]
    )


async def test_train_on_the_live_log_with_its_outcomes(any_stack, visits, tmp_path: Path, capsys):
    stack = any_stack
    answers = [v for a in visits.values() for v in a.values()]
    assert "accepted" in answers and "dismissed" in answers, "the visitors got help and answered"

    # The log holds what the visitors did, answers included, exactly as sent.
    r = redis_client(stack.redis_url)
    logged = {s.sid: s for s in export_redis(r, stack.prefix) if s.sid in visits}
    assert set(logged) == set(visits)
    for sid, got in visits.items():
        kinds = [e["type"] for e in logged[sid].events]
        assert kinds.count("intervention_shown") == len(got)
        assert kinds.count("intervention_accepted") == list(got.values()).count("accepted")
        assert kinds.count("intervention_dismissed") == list(got.values()).count("dismissed")

    train = ("train", "--source", "live", "--engine", "local", "--rounds", "40")
    rc = await _cli(stack, *train, "--report-dir", str(tmp_path / "rep"))
    out = capsys.readouterr().out
    assert rc == 0, out
    reg = ModelRegistry(r, stack.prefix)
    version = reg.resolve("latest")
    assert f"registered model {version}" in out and "live log:" in out
    meta = reg.meta(version)
    assert meta["data"]["source"] == "live" and meta["data"]["sessions"] >= VISITORS
    # What it learnt from: sessions, rows, conversions and the answers to help.
    ll = meta["live_log"]
    mine = [logged[s] for s in visits]
    assert ll["sessions"] >= VISITORS and ll["rows"] > ll["sessions"]
    assert ll["converted_sessions"] >= sum(s.converted for s in mine) > 0
    assert ll["sessions_accepted_help"] >= sum("accepted" in a.values() for a in visits.values())
    assert ll["rows_after_help"]["iv_accepted"] > 0 and ll["rows_after_help"]["iv_dismissed"] > 0
    # The rows carry the answers: after an accepted help, iv_accepted counts it.
    rows = rows_frame(mine, include_after_purchase=True)
    accepted_sids = {s for s, a in visits.items() if "accepted" in a.values()}
    last = rows.groupby("sid").tail(1).set_index("sid")
    assert (last.loc[sorted(accepted_sids), "iv_accepted"] >= 1).all()
    # Drift: the training rows' bins are kept; a drift entry and report section are there.
    ref = meta["drift_reference"]
    assert set(ref["features"]) == set(meta["feature_names"]) and ref["rows"] > 0
    assert set(meta["drift"]["psi"]) == set(meta["feature_names"])
    assert meta["drift"]["thresholds"] == {"moderate": 0.1, "major": 0.25}
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "## Live event log" in report and "## Drift (population stability index" in report
    assert f"{100 * ll['conversion_rate']:.1f} %" in report
    assert report.index("## Drift") < report.index("## Plots")


# On one Redis only: the promotion path it drives (registry transaction, publish) runs
# on Redis Cluster in test_spine's hot reload and test_console_admin's promotion.
@pytest.mark.parametrize("any_stack", ["standalone"], indirect=True)
async def test_promotion_guard_refuses_a_worse_model_until_forced(
    any_stack, visits, tmp_path: Path, capsys
):
    stack = any_stack
    r = redis_client(stack.redis_url)
    reg = ModelRegistry(r, stack.prefix)
    train = ("train", "--source", "live", "--engine", "local", "--rounds", "40")
    try:
        # A model of the live log, made live whatever is live now (--force: the stack is shared).
        assert await _cli(stack, *train, "--report-dir", str(tmp_path / "a")) == 0
        good = reg.resolve("latest")
        assert await _cli(stack, "promote", good, "--force") == 0
        assert reg.live() == good
        capsys.readouterr()

        # The same rows with every label flipped: a model that ranks visitors backwards.
        read_at = int(time.time() * 1000)
        sessions = export_redis(r, stack.prefix)
        for s in sessions:
            s.extra["observed_until_ms"] = read_at
        split = time_split(apply_label(rows_frame(sessions), EXIT_SOON, DEFAULT_HORIZON_S))
        flip = {"label": lambda d: 1 - d["label"]}
        bad_model = fit_xgb(
            split.train.assign(**flip), split.valid.assign(**flip), XGBParams(num_boost_round=40)
        )
        bad = reg.save(bad_model.to_bytes(), {**reg.meta(good), "run": "flipped labels"})

        # Refused, with both figures on the same held-back rows, in the output and the history.
        rc = await _cli(stack, "promote", bad)
        err = capsys.readouterr().err
        assert rc == EXIT_REFUSED, err
        assert f"refused: {bad} is not promoted, {good} stays live" in err
        assert "ROC AUC" in err and f"{bad} (candidate)" in err and f"{good} (live)" in err
        assert reg.live() == good
        h = reg.history()[0]
        assert h["refused"] is True and h["version"] == bad and h["previous"] == good
        c = h["check"]
        assert c["decision"] == "refused" and c["verdict"] == "worse", c
        assert c["figures"][bad]["roc_auc"] < c["figures"][good]["roc_auc"] - 0.005
        assert c["held_back"]["source"] == "live" and c["held_back"]["sessions"] >= VISITORS // 5

        # --force overrides: promoted, recorded as forced, and the shards score with it.
        assert await _cli(stack, "promote", bad, "--force") == 0
        assert f"promoted (forced) {bad} (was {good})" in capsys.readouterr().out
        h = reg.history()[0]
        assert "refused" not in h and h["version"] == bad
        assert h["check"]["decision"] == "forced" and h["check"]["verdict"] == "worse"
        infos = await asyncio.gather(*(s.wait_model_decision.remote(bad) for s in stack.shards))
        assert all(i["model"] == bad for i in infos)

        # A retrained model passes the guard on its own held-back rows and goes live with
        # `train --promote`; the guard's figure for it is the run's own test figure.
        rc = await _cli(stack, *train, "--report-dir", str(tmp_path / "c"), "--promote")
        out = capsys.readouterr().out
        assert rc == 0, out
        fresh = reg.resolve("latest")
        assert reg.live() == fresh and f"promoted {fresh} (was {bad})" in out
        c = reg.history()[0]["check"]
        assert c["decision"] == "promoted" and c["verdict"] == "not_worse"
        own = reg.meta(fresh)["metrics"]["xgboost"]["roc_auc"]
        assert c["figures"][fresh]["roc_auc"] == pytest.approx(own, abs=1e-4)
        assert "## Promotion check" in (tmp_path / "c" / "report.md").read_text()
        # The report's plots are kept with the version, for the console's Models page.
        assert "roc.png" in reg.plot_names(fresh)
        assert reg.plot(fresh, "roc.png") == (tmp_path / "c" / "roc.png").read_bytes()
    finally:
        # Leave the shared stack scoring with the bundled model, as the other tests expect.
        meta = json.loads(BUNDLED_META.read_text())
        restore = reg.save(BUNDLED_MODEL.read_bytes(), {**meta, "note": "restored after a test"})
        reg.promote(restore)
        await asyncio.gather(*(s.wait_model_decision.remote(restore) for s in stack.shards))
