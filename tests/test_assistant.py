"""The help-chat assistant on a real Ray Serve, real Redis and the streaming API stand-in.

The ChatAssistant replica calls the real ``anthropic`` streaming client against
serve.dev.llm_stub running in this test process; answers are read through a
DeploymentHandle with ``stream=True``, as the gateway will.
"""

from __future__ import annotations

import json
import uuid

import pytest
import redis
import redis.asyncio as aioredis

from cluster.config import Settings
from cluster.keys import SESSION_TTL_S, Keys
from serve.apps import assistant as A
from serve.apps import chat_answer as CA
from serve.apps.chat_memory import ChatMemory
from serve.apps.nudge import check_output
from serve.dev.llm_stub import StubLLM, cut, error, unsafe

CONSENT = ["necessary", "analytics", "personalization"]


def ctx(**over):
    c = {
        "page_type": "cart",
        "page_path": "/cart?email=jo%40mail.example&amount=12345",
        "signals": {"cart_hesitation": 0.9},
        "cart": {"items": 2, "value": 99.0},
        "segment": 3,
        "consent": CONSENT,
        "typed": "my secret typed value",
    }
    c.update(over)
    return c


@pytest.fixture(scope="module")
async def env(ray_cluster, redis_url):
    prefix = f"lltest-{uuid.uuid4().hex[:10]}:"
    stub = StubLLM(api_key="test-key", first_token_s=0.05, tokens_per_s=200)
    await stub.start()
    settings = Settings(anthropic_api_key="test-key", anthropic_base_url=stub.url)
    name = f"assistant-{uuid.uuid4().hex[:6]}"
    handle = A.deploy_assistant(
        settings,
        redis_url,
        prefix,
        overrides={"breaker_failures": 100, "first_token_s": 2.0, "backoff_base_s": 0.01},
        name=name,
    )
    r = aioredis.Redis.from_url(redis_url)
    yield {"stub": stub, "handle": handle, "prefix": prefix, "redis": r}
    from ray import serve

    serve.delete(name, _blocking=False)
    await stub.close()
    await r.aclose()
    sync = redis.Redis.from_url(redis_url)
    keys = list(sync.scan_iter(match=prefix + "*"))
    if keys:
        sync.delete(*keys)
    sync.close()


async def ask(env, text, sid=None, **req):
    body = {"site": "demo", "sid": sid or "s-" + uuid.uuid4().hex[:8], "text": text, **req}
    gen = env["handle"].options(stream=True).answer.remote(body)
    items = [item async for item in gen]
    assert items and items[-1]["t"] == "final" and all(i["t"] == "delta" for i in items[:-1])
    return items[:-1], items[-1]


def test_no_answer_threshold_is_the_one_measured_on_labelled_questions():
    assert CA.choose_threshold() == CA.NO_ANSWER_BELOW


def test_gate_releases_checked_sentences_only():
    src = ["Standard delivery takes 3 to 5 business days. /help/shipping"]
    gate = CA.SentenceGate(lambda t: check_output(t, [], src, max_chars=CA.ANSWER_MAX_CHARS))
    assert gate.feed("Standard delivery takes 3 to") == ""  # the sentence is still open
    assert gate.feed(" 5 business days. More") == "Standard delivery takes 3 to 5 business days."
    tail, verdict = gate.finish()
    assert tail == " More" and verdict.ok
    bad = CA.SentenceGate(lambda t: check_output(t, [], src, max_chars=CA.ANSWER_MAX_CHARS))
    with pytest.raises(CA.GateRefused) as e:
        bad.feed("Delivery takes 9 days. ")  # a number no article states
    assert e.value.reason == "ungrounded_number"
    assert CA.redact("mail a.b@x.example or +33 6 12 34 56 78") == "mail [email] or [number]"


def test_titled_shows_article_titles_where_the_model_named_paths():
    from serve.apps.knowledge import KnowledgeBase

    arts = KnowledgeBase.load("demo").articles
    by_url = {a.url: a.title for a in arts}
    text = "It takes 3 days. More in our guide: /help/shipping"
    assert (
        CA.titled(text, arts) == f"It takes 3 days. More in our guide: {by_url['/help/shipping']}"
    )
    two = "See /help/shipping and /help/returns."
    out = CA.titled(two, arts)
    assert "/help/" not in out and by_url["/help/returns"] in out
    assert CA.titled("No article: /help/nowhere", arts) == "No article: /help/nowhere"


async def test_streamed_answer_in_chunks_cites_the_article(env):
    stub = env["stub"]
    n = len(stub.requests)
    deltas, final = await ask(env, "how long until my parcel arrives", ctx=ctx())
    assert final["source"] == "llm", final
    assert len(deltas) >= 2  # streamed sentence by sentence, not in one piece
    assert "".join(d["text"] for d in deltas).strip() == final["text"]
    assert final["citations"] == [{"title": "Delivery options and times", "url": "/help/shipping"}]
    assert "/help/shipping" not in final["text"] and "Delivery options and times" in final["text"]
    assert len(stub.requests) == n + 1 and stub.requests[-1]["stream"] is True


async def test_memory_carries_a_follow_up_and_expires_with_the_session(env):
    stub, sid = env["stub"], "s-follow"
    _, first = await ask(env, "how long until my parcel arrives", sid=sid)
    _, second = await ask(env, "and is it free?", sid=sid)
    sent = stub.requests[-1]["messages"]
    # the earlier question and answer go to the model as turns before the new one
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"].endswith("how long until my parcel arrives")
    assert sent[1]["content"] == first["text"]
    assert second["citations"][0]["url"] == "/help/shipping"  # "it" is the delivery
    key = Keys(env["prefix"]).chat("demo", sid)
    assert 0 < await env["redis"].ttl(key) <= SESSION_TTL_S
    turns = await ChatMemory(env["redis"], env["prefix"]).history("demo", sid)
    assert [t["role"] for t in turns] == ["visitor", "assistant"] * 2


async def test_memory_expires_with_the_sites_chats_retention(env):
    """A site's ``chats`` retention is its chat memory's TTL (without one: the default)."""
    from actors.core.sites import parse_sites

    table = {"origins": ["http://127.0.0.1:*"], "retention": {"chats": 0.001}}  # 86 s
    sites = parse_sites({"sites": {"demo": table}})
    settings = A.AssistantSettings(api_key="test-key", base_url=env["stub"].url)
    keys = Keys(env["prefix"])
    for given, longest in ((sites, 86), (None, SESSION_TTL_S)):
        a = A.Assistant(settings, env["redis"], env["prefix"], sites=given)
        sid = "s-" + uuid.uuid4().hex[:8]
        items = [
            i async for i in a.answer({"site": "demo", "sid": sid, "text": "is delivery free"})
        ]
        assert items[-1]["t"] == "final"
        ttl = await env["redis"].ttl(keys.chat("demo", sid))
        assert longest - 60 < ttl <= longest, (given is None, ttl)
    # A deployment's memory_ttl_s still overrides every site's.
    mem = ChatMemory(env["redis"], env["prefix"], 30, retention=lambda s: sites[s].retention)
    assert mem.ttl("demo") == 30 and ChatMemory(env["redis"], "x:").ttl("demo") == SESSION_TTL_S


async def test_memory_is_bounded_in_turns_and_bytes(env):
    mem = ChatMemory(env["redis"], env["prefix"], ttl_s=60, max_turns=5, max_bytes=400)
    turns = [{"role": "visitor", "text": f"{i} " + "x" * 90, "ts": i} for i in range(8)]
    assert await mem.append("demo", "s-bound", turns) == 3  # 5 by count, then 3 by bytes
    kept = await mem.history("demo", "s-bound")
    assert [t["ts"] for t in kept] == [5, 6, 7]
    assert sum(len(json.dumps(t)) for t in kept) <= 400
    assert await mem.erase("demo", "s-bound") == 1 and await mem.history("demo", "s-bound") == []


async def test_stand_in_failing_gives_the_fallback(env):
    stub = env["stub"]
    # 500 on every attempt within the budget: a person is promised when one is available
    stub.push(*[error(500)] * 40)
    deltas, final = await ask(env, "is delivery free", person_available=True)
    assert deltas == [] and final["source"] == "fallback" and final["handoff"] is True
    assert final["text"] == CA.PERSON_WILL_ANSWER
    stub.script.clear()
    # overloaded, then no person: the top article's link
    stub.push(*[error(529, retry_after=0.05)] * 40)
    _, final = await ask(env, "is delivery free")
    assert final["source"] == "fallback" and final["reason"] == "529"
    assert final["citations"] == [{"title": "Delivery options and times", "url": "/help/shipping"}]
    stub.script.clear()
    # one 529 then an answer: retried within the budget
    stub.push(error(529, retry_after=0.01))
    _, final = await ask(env, "is delivery free")
    assert final["source"] == "llm"
    # the stream breaks off after its first sentence was shown: replaced by the fallback
    long = (
        "Standard delivery takes 3 to 5 business days. Express delivery is next day. /help/shipping"
    )
    stub.push(cut(20, long))
    deltas, final = await ask(env, "is delivery free")
    assert deltas and final["source"] == "fallback" and final["replace"] is True
    # an answer the output checks refuse never reaches the visitor
    stub.push(unsafe())
    deltas, final = await ask(env, "is delivery free")
    assert deltas == [] and final["source"] == "fallback"
    assert "secure-payments" not in json.dumps(final)


async def test_no_personal_data_or_typed_text_in_the_prompt(env):
    stub = env["stub"]
    _, final = await ask(
        env, "my mail is jo@mail.example, phone 0612345678: can I return shoes?", ctx=ctx()
    )
    assert final["source"] == "llm"
    prompt = json.dumps(stub.requests[-1])
    for secret in ("jo@mail.example", "0612345678", "12345", "secret typed", "jo%40"):
        assert secret not in prompt
    assert "Page type: cart" in prompt and "Cart: several items." in prompt
    # without personalization consent: no session context at all
    _, final = await ask(env, "can I return shoes?", ctx=ctx(consent=["necessary"]))
    prompt = json.dumps(stub.requests[-1])
    assert "Page type" not in prompt and "About the visitor" not in prompt
    assert "cluster" not in prompt and "Cart:" not in prompt


async def test_no_answer_and_bad_requests_ask_nothing(env):
    stub = env["stub"]
    n = len(stub.requests)
    _, final = await ask(env, "qwzx vvjk", person_available=True)
    assert final["source"] == "no_answer" and final["offer_person"] is True
    assert final["text"].startswith(CA.NO_ANSWER_TEXT)
    _, final = await ask(env, "  ")
    assert (final["source"], final["reason"]) == ("error", "empty_message")
    _, final = await ask(env, "x" * 5000)
    assert (final["source"], final["reason"]) == ("error", "message_too_long")
    gen = env["handle"].options(stream=True).answer.remote({"text": "hi"})
    assert [i async for i in gen][-1]["reason"] == "bad_request"
    assert len(stub.requests) == n  # none of these reached the model


async def test_stand_in_streams_server_sent_events_like_the_api():
    import aiohttp

    stub = StubLLM(api_key="k")
    await stub.start()
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    user = (
        "Help articles:\n[1] Delivery (/help/shipping)\nIt takes 3 days. Express: 1 day. More.\nQ"
    )
    body = {"model": "m", "max_tokens": 200, "system": CA.CHAT_SYSTEM_PROMPT}
    try:
        async with aiohttp.ClientSession() as http:
            req = {**body, "stream": True, "messages": [{"role": "user", "content": user}]}
            async with http.post(stub.url + "/v1/messages", json=req, headers=headers) as resp:
                assert resp.headers["content-type"].startswith("text/event-stream")
                raw = await resp.text()
            kinds = [line[7:] for line in raw.splitlines() if line.startswith("event: ")]
            datas = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: ")]
            assert kinds[:3] == ["message_start", "content_block_start", "ping"]
            assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
            assert kinds.count("content_block_delta") > 3
            text = "".join(d["delta"]["text"] for d in datas if d["type"] == "content_block_delta")
            assert text == "It takes 3 days. Express: 1 day. More in our guide: /help/shipping"
            # not streamed, no excerpt: a JSON message saying it does not know
            req = {**body, "messages": [{"role": "user", "content": "Help articles: none.\nQ"}]}
            async with http.post(stub.url + "/v1/messages", json=req, headers=headers) as resp:
                msg = await resp.json()
            assert msg["content"][0]["text"].startswith("I don't know")
    finally:
        await stub.close()


async def test_breaker_opens_and_then_costs_no_request():
    stub = StubLLM(api_key="k")
    await stub.start()
    settings = A.AssistantSettings(
        api_key="k", base_url=stub.url, breaker_failures=2, first_token_s=0.8, backoff_base_s=0.01
    )
    a = A.Assistant(settings, None, "unused:")
    try:
        stub.push(*[error(500)] * 10)
        finals = []
        for _ in range(2):
            async for item in a.answer({"site": "demo", "sid": "s-b", "text": "is delivery free"}):
                finals.append(item)
        assert [f["reason"] for f in finals] == ["breaker_open", "breaker_open"]
        assert len(stub.requests) == 2 and a.breaker.state == "open"
        assert finals[-1]["citations"][0]["url"] == "/help/shipping"  # the top article
    finally:
        await a.aclose()
        await stub.close()
