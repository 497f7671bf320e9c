"""Help-chat time to first token through a Serve DeploymentHandle, with a paced model stand-in.

Usage: ``python loadtests/chat_latency.py [--requests 100] [--concurrency 1,20]
[--first-token-s 0.3] [--tokens-per-s 50]``

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
    finally:
        serve.shutdown()
        ray.shutdown()
        await stub.close()

        from cluster.redis_client import redis_client

        r = redis_client(a.redis_url)
        keys = list(r.scan_iter(match=prefix + "*"))
        if keys:
            r.delete(*keys)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 20])
    p.add_argument("--first-token-s", type=float, default=0.3)
    p.add_argument("--tokens-per-s", type=float, default=50.0)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    asyncio.run(main_async(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
