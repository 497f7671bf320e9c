"""The two Serve deployments on the test run's real Ray cluster, Redis and the API stub.

Deployed once for the module with serve.apps.deployments.deploy(), as the lead's
start-up will; the NudgeWriter replica calls the real anthropic client against
serve.dev.llm_stub running in this test process.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest
import redis
import redis.asyncio as aioredis

from cluster.config import Settings
from serve.apps import deployments as D
from serve.apps.recommender import SessionKNN
from serve.dev.llm_stub import StubLLM, error, ok, unsafe
from training.recommender_data import publish_catalog, publish_model

CATALOG = {
    i: {"name": i.replace("-", " ").title(), "url": f"/products/{i}"}
    for i in ("lamp", "desk", "chair", "shelf", "rug", "sofa")
}
SESSIONS = [
    ["lamp", "desk", "chair"],
    ["lamp", "desk"],
    ["lamp", "shelf"],
    ["desk", "chair", "rug"],
    ["sofa", "rug"],
    ["lamp", "desk", "shelf"],
]
CONSENT = ["necessary", "analytics", "personalization"]


def now_ms() -> int:
    return int(time.time() * 1000)


def nudge_ctx(**over):
    c = {
        "site": "demo",
        "iid": "i-" + uuid.uuid4().hex[:8],
        "kind": "form_hint",
        "page_path": "/calculator.html?amount=12345",
        "page_type": "form",
        "signals": {"form_struggle": 0.9},
        "segment": 1,
        "cart": {"items": 0, "value": 0.0},
        "consent": CONSENT,
        "template": "This field is picky about its format. Check the hint just below it.",
        "trigger_ms": now_ms(),
    }
    c.update(over)
    return c


@pytest.fixture(scope="module")
async def env(ray_cluster, redis_url):
    prefix = f"lltest-{uuid.uuid4().hex[:10]}:"
    stub = StubLLM(api_key="test-key", seed=3)
    await stub.start()
    r = aioredis.Redis.from_url(redis_url)
    await publish_model(r, prefix, "demo", SessionKNN.fit(SESSIONS))
    await publish_catalog(r, prefix, "demo", CATALOG)
    settings = Settings(anthropic_api_key="test-key", anthropic_base_url=stub.url)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("lifeline.serve").addHandler(handler)
    try:
        handles = D.deploy(
            settings,
            redis_url,
            prefix,
            site_hosts={"demo": ["shop.example"]},
            overrides={
                D.APP_RECOMMENDER: {"catalog_files": {"shop": "serve/static/demo/catalog.json"}}
            },
        )
    finally:
        logging.getLogger("lifeline.serve").removeHandler(handler)
    yield {"stub": stub, "handles": handles, "prefix": prefix, "redis": r, "logs": records}
    from ray import serve

    for app in (D.APP_NUDGE, D.APP_RECOMMENDER):
        serve.delete(app, _blocking=False)  # frees the replicas; nobody waits for it
    await stub.close()
    await r.aclose()
    sync = redis.Redis.from_url(redis_url)
    keys = list(sync.scan_iter(match=prefix + "*"))
    if keys:
        sync.delete(*keys)
    sync.close()


async def test_deploy_logs_llm_state_and_uses_config_file(env):
    messages = [r.getMessage() for r in env["logs"]]
    assert any("LLM nudges ENABLED" in m and "claude-haiku-4-5" in m for m in messages)
    assert not any("test-key" in m for m in messages)  # never log the key
    opts = D.deployment_options(D.load_serve_config(), D.APP_NUDGE, "NudgeWriter")
    assert opts["ray_actor_options"]["num_cpus"] == 0
    assert opts["autoscaling_config"]["max_replicas"] >= 1
    assert await env["handles"]["nudge"].llm_enabled.remote() is True


async def test_nudge_writer_grounded_llm_text_then_cache(env):
    stub, nudge = env["stub"], env["handles"]["nudge"]
    ctx = nudge_ctx()
    before = len(stub.requests)
    out = await nudge.write.remote(ctx)
    assert out["source"] == "llm", out
    # grounded in a calculator article, which the text names by its title, linked, not by path
    assert out["link"]["url"].startswith("/help/calculator"), out
    assert out["link"]["title"] in out["text"] and "/help/" not in out["text"]
    sent = stub.requests[before]
    prompt = sent["messages"][0]["content"]
    assert "12345" not in prompt and "i-" not in prompt  # no typed values, no ids
    assert "financing form" in prompt  # the calculator's help articles were retrieved
    again = await nudge.write.remote(nudge_ctx(iid="i-other"))
    assert again == {
        "text": out["text"],
        "source": "cache",
        "reason": "cache_hit",
        "link": out["link"],
    }
    assert len(stub.requests) == before + 1
    stats = await nudge.stats.remote()
    assert stats["llm_texts"] >= 1 and stats["cache_hits"] >= 1 and stats["input_tokens"] > 0
    text = await nudge.metrics.remote()
    assert 'lifeline_llm_tokens{direction="input",model="claude-haiku-4-5"}' in text


async def test_nudge_writer_falls_back_to_template(env):
    stub, nudge = env["stub"], env["handles"]["nudge"]
    # Slow answer: the trigger was 1.5 s ago, the stub takes 3 s.
    stub.push(ok("A late nudge that must be dropped.", delay_s=3.0))
    ctx = nudge_ctx(page_type="cart", page_path="/cart", kind="help_offer", signals={"idle": 0.9})
    ctx["trigger_ms"] = now_ms() - 1500
    t0 = time.perf_counter()
    out = await nudge.write.remote(ctx)
    assert out == {"text": ctx["template"], "source": "template", "reason": "expired"}
    assert time.perf_counter() - t0 < 1.5
    # Unsafe output: refused, template instead.
    stub.push(unsafe())
    out = await nudge.write.remote(
        nudge_ctx(page_type="product", page_path="/products/x", kind="help_offer")
    )
    assert (out["source"], out["reason"]) == ("template", "rejected")
    # No personalisation consent: no LLM nudge at all, nothing asked.
    n = len(stub.requests)
    assert await nudge.write.remote(nudge_ctx(consent=["necessary", "analytics"])) is None
    assert await nudge.write.remote({"kind": "nope"}) is None
    assert len(stub.requests) == n


async def test_recommender_batches_and_excludes_cart(env):
    rec = env["handles"]["recommender"]
    await rec.latency.remote(reset=True)
    ctx = {"site": "demo", "recent_items": ["lamp"], "cart_items": ["desk"], "k": 3}
    outs = await asyncio.gather(*[rec.recommend.remote(ctx) for _ in range(64)])
    first = outs[0]["items"]
    assert all(o["items"] == first for o in outs)
    got = [i["id"] for i in first]
    assert got and "desk" not in got and "lamp" not in got and len(got) <= 3
    assert got[0] == "shelf"  # lamp's neighbour once desk is in the cart
    assert first[0]["name"] == "Shelf" and first[0]["url"] == "/products/shelf"
    lat = await rec.latency.remote()
    assert lat["requests"] == 64
    assert lat["max_batch"] > 1  # @serve.batch grouped concurrent requests
    assert 0 < lat["p50_ms"] <= lat["p99_ms"] < 1000
    assert await rec.recommend.remote({"site": "unknown", "recent_items": ["lamp"]}) == {
        "items": []
    }


async def test_follow_ups_never_block_and_push_in_time_updates(env):
    handles, stub = env["handles"], env["stub"]
    waited: list[tuple[str, str, float]] = []  # what the shards' follow-up histogram hears
    fu = D.FollowUps(handles["nudge"], handles["recommender"], observe=lambda *a: waited.append(a))
    frames: list[dict] = []
    got = asyncio.Event()

    async def push(frame):
        frames.append(frame)
        got.set()

    ctx = nudge_ctx(
        page_type="checkout", page_path="/checkout", kind="help_offer", signals={"js_error": 1.0}
    )
    t0 = time.perf_counter()
    assert fu.nudge("s-abcdefgh", ctx, push)
    assert time.perf_counter() - t0 < 0.01  # scheduling only: the ack path never waits
    await asyncio.wait_for(got.wait(), 3.0)
    f = frames[0]
    assert (f["t"], f["sid"], f["iid"], f["source"]) == ("update", "s-abcdefgh", ctx["iid"], "llm")
    assert f["text"] and f["text"] != ctx["template"]
    assert f["link"]["title"] in f["text"]  # the help article it names, for the client to link

    got.clear()
    assert fu.recommend(
        "s-abcdefgh",
        "i-rec",
        {"site": "demo", "recent_items": ["sofa"], "cart_items": [], "k": 2},
        now_ms(),
        push,
    )
    await asyncio.wait_for(got.wait(), 3.0)
    assert frames[1]["iid"] == "i-rec" and frames[1]["items"][0] == {
        "id": "rug",
        "name": "Rug",
        "url": "/products/rug",
    }
    assert [(w, o) for w, o, _ in waited] == [("nudge", "ok"), ("recommend", "ok")]
    assert all(0 < t < 3.0 for _, _, t in waited)

    # A deployment slower than the budget: no update, the call is abandoned at the budget.
    stub.push(error(529, retry_after=0.05), ok("too late", delay_s=3.0))
    slow = D.FollowUps(handles["nudge"], None, budget_s=0.6, observe=lambda *a: waited.append(a))
    ctx = nudge_ctx(
        page_type="category",
        page_path="/category/x",
        kind="content_suggestion",
        signals={"uturn": 0.8},
    )
    assert slow.nudge("s-abcdefgh", ctx, push)
    t0 = time.perf_counter()
    await slow.drain()
    assert time.perf_counter() - t0 < 1.0
    assert slow.counts["late"] == 1 and slow.counts["pushed"] == 0 and len(frames) == 2
    what, outcome, seconds = waited[-1]
    assert (what, outcome) == ("nudge", "late") and 0.3 < seconds < 0.7  # waited out the budget


async def test_follow_ups_drop_beyond_the_in_flight_cap(env):
    fu = D.FollowUps(env["handles"]["nudge"], None, max_in_flight=1)
    pushed: list[dict] = []

    async def push(frame):
        pushed.append(frame)

    assert fu.nudge("s-abcdefgh", nudge_ctx(consent=["necessary", "analytics"]), push)
    assert not fu.nudge("s-abcdefgh", nudge_ctx(), push)
    assert fu.counts["dropped"] == 1
    await fu.drain()
    assert fu.in_flight == 0 and pushed == []  # no consent: nothing to push
    assert not D.FollowUps(None, None).nudge("s", nudge_ctx(), push)


async def test_recommender_cold_start_from_a_catalog_file(env):
    """No model published for "shop": its catalog file alone gives category neighbours."""
    rec = env["handles"]["recommender"]
    ctx = {"site": "shop", "recent_items": ["p01"], "cart_items": [], "k": 3}
    items = (await rec.recommend.remote(ctx))["items"]
    # Every catalogued item counts as clicked once (popularity 1): p02 shares p01's category
    # (shoes) and gets the category share 0.3 on top of the popularity term 0.02; no other
    # item is a shoe, so they have the popularity term alone.
    assert items[0] == {
        "id": "p02",
        "name": "City Sneakers",
        "url": "/product.html?id=p02",
        "score": pytest.approx(0.3 + 0.02, abs=1e-4),
    }
    assert [i["score"] for i in items[1:]] == pytest.approx([0.02, 0.02], abs=1e-4)
    assert "p01" not in [i["id"] for i in items] and len(items) == 3


async def test_writer_without_key_says_templates_only(caplog, redis_url, prefix):
    caplog.set_level(logging.WARNING, logger="lifeline.serve")
    writer = D.NudgeWriter.func_or_class({"api_key": ""}, redis_url, prefix)
    assert any(
        "DISABLED" in r.getMessage() and "templates only" in r.getMessage() for r in caplog.records
    )
    out = await writer.write(nudge_ctx(template=""))
    assert out["source"] == "template" and out["reason"] == "disabled"
    assert out["text"].startswith("This field is picky")  # rendered from the templates
    await writer.redis.aclose()
