"""Help-chat time to first token through a Serve DeploymentHandle, with a paced model stand-in.

Usage: ``python loadtests/chat_latency.py [--requests 100] [--concurrency 1,20]
[--first-token-s 0.3] [--tokens-per-s 50] [--gateway [--gateway-seconds 40]]``

Starts a local Ray cluster (2 CPUs), deploys the ChatAssistant
(serve/apps/assistant.py ``deploy_assistant``) pointed at the local Messages
API stand-in streaming at a realistic pace (first token after
``--first-token-s``, then ``--tokens-per-s``), and asks the demo knowledge
base's labelled visitor questions in fresh sessions, ``--concurrency`` at a
time, through ``handle.options(stream=True).answer.remote``, as the gateway
will. For each level it reports, in ms, p50 / p95 of:

* client TTFT: request sent -> first checked text received by the caller;
* model TTFT: request received by the replica -> the stand-in's first token;
* gate hold: what the sentence gate holds back (first sentence completed and
  checked), replica-side shown TTFT minus model TTFT;
* total: request -> final message.

The issue's target: client TTFT p95 < 1 s plus the model's own first-token time.

``--gateway``: also through the real gateway, as a visitor sees it. The whole
stack starts in this process (shards, gateway; cluster/stack.py) with the
ChatAssistant behind its help chat, and ``--concurrency`` chats at a time
(loadtests/chat_load.py: real sockets, ``chat_open``, questions paced under
the chat's 8 messages a minute) ask for ``--gateway-seconds``; it reports
question sent on the socket -> first ``chat_delta`` received (p50/p95) and ->
the final ``chat_turn``. The clients share the gateway's process and event
loop: at high concurrency their own work is in the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else 0.0


async def level(handle, questions: list[str], n: int, concurrency: int) -> dict[str, float]:
    await handle.ttft.remote(reset=True)
    sem = asyncio.Semaphore(concurrency)
    first: list[float] = []
    total: list[float] = []
    sources: dict[str, int] = {}

    async def one(i: int) -> None:
        req = {
            "site": "demo",
            "sid": f"lat-{uuid.uuid4().hex[:10]}",
            "text": questions[i % len(questions)],
        }
        async with sem:
            t0 = time.perf_counter()
            seen = False
            async for item in handle.options(stream=True).answer.remote(req):
                if item["t"] == "delta" and not seen:
                    seen = True
                    first.append((time.perf_counter() - t0) * 1000)
                if item["t"] == "final":
                    total.append((time.perf_counter() - t0) * 1000)
                    sources[item["source"]] = sources.get(item["source"], 0) + 1

    await asyncio.gather(*(one(i) for i in range(n)))
    inside = await handle.ttft.remote()
    hold = [s - m for s, m in zip(inside["shown"], inside["model"], strict=False)]
    return {
        "concurrency": concurrency,
        "streamed": len(first),
        "sources": sources,
        "client_p50": pct(first, 0.5),
        "client_p95": pct(first, 0.95),
        "model_p50": pct(inside["model"], 0.5),
        "model_p95": pct(inside["model"], 0.95),
        "hold_p50": pct(hold, 0.5),
        "hold_p95": pct(hold, 0.95),
        "total_p50": pct(total, 0.5),
        "total_p95": pct(total, 0.95),
    }


async def main_async(a: argparse.Namespace) -> None:
    import ray
    from ray import serve

    from cluster.config import Settings
    from serve.apps.assistant import deploy_assistant
    from serve.apps.knowledge import load_questions
    from serve.dev.llm_stub import StubLLM

    stub = StubLLM(api_key="latency", first_token_s=a.first_token_s, tokens_per_s=a.tokens_per_s)
    await stub.start()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    prefix = f"llchatlat-{uuid.uuid4().hex[:8]}:"
    try:
        settings = Settings(anthropic_api_key="latency", anthropic_base_url=stub.url)
        handle = deploy_assistant(settings, a.redis_url, prefix)
        # Answerable questions only: a no-answer reply streams nothing.
        questions = [q for q, _ in load_questions("demo", subset="q")]
        await level(handle, questions, 5, 1)  # warm-up: connections, imports
        print(
            f"ChatAssistant through a DeploymentHandle, stand-in model: first token "
            f"{a.first_token_s * 1000:.0f} ms, {a.tokens_per_s:g} tokens/s; {a.requests} questions "
            "per level (ms)\n"
        )
        print(
            "| concurrency | streamed | client TTFT p50 | p95 | model TTFT p50 | p95 "
            "| gate hold p50 | p95 | total p50 | p95 |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for c in a.concurrency:
            r = await level(handle, questions, a.requests, c)
            print(
                f"| {c} | {r['streamed']} | {r['client_p50']:.0f} | {r['client_p95']:.0f} "
                f"| {r['model_p50']:.0f} | {r['model_p95']:.0f} | {r['hold_p50']:.0f} "
                f"| {r['hold_p95']:.0f} | {r['total_p50']:.0f} | {r['total_p95']:.0f} |"
            )
            print(f"  sources: {r['sources']}", file=sys.stderr)
        if a.gateway:
            await through_gateway(a, settings)
    finally:
        serve.shutdown()
        ray.shutdown()
        await stub.close()

        from cluster.redis_client import redis_client

        r = redis_client(a.redis_url)
        keys = list(r.scan_iter(match=prefix + "*"))
        if keys:
            r.delete(*keys)


async def through_gateway(a: argparse.Namespace, settings) -> None:
    """Question sent on a socket -> first chat_delta, through the stack's gateway."""
    from cluster.config import Settings
    from cluster.redis_server import delete_prefix
    from cluster.stack import Stack
    from loadtests.chat_load import run_chats, summary
    from serve.apps.assistant import deploy_assistant

    prefix = f"llchatgw-{uuid.uuid4().hex[:8]}:"
    stack = Stack(
        Settings(redis_url=a.redis_url, prefix=prefix, ws_port=0, http_port=0, console_port=0)
    )
    await stack.start()
    try:
        handle = deploy_assistant(settings, a.redis_url, prefix, name="assistant-gw")
        stack.gateway.chat.assistant = handle
        await run_chats(stack.ws_url, 2, 3.0, think_s=(0.5, 1.0))  # warm-up
        print("\nThrough the gateway: question sent on the socket -> first chat_delta (ms)\n")
        print("| chats | questions | TTFT p50 | p95 | final turn p50 | p95 | errors |")
        print("|---|---|---|---|---|---|---|")
        for c in a.concurrency:
            r = summary(await run_chats(stack.ws_url, c, a.gateway_seconds, think_s=(7.5, 9.0)))
            print(
                f"| {c} | {r['questions']} | {r['ttft_p50_ms']:.0f} | {r['ttft_p95_ms']:.0f} "
                f"| {r['total_p50_ms']:.0f} | {r['total_p95_ms']:.0f} | {r['errors'] or ''} |"
            )
    finally:
        await stack.stop()
        delete_prefix(a.redis_url, prefix)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 20])
    p.add_argument("--first-token-s", type=float, default=0.3)
    p.add_argument("--tokens-per-s", type=float, default=50.0)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    p.add_argument("--gateway", action="store_true", help="also through the real gateway")
    p.add_argument("--gateway-seconds", type=float, default=40.0, help="per level, --gateway")
    asyncio.run(main_async(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
