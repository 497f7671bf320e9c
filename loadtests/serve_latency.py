"""Serving latency of the Recommender and NudgeWriter deployments (p50 / p99 per request).

Usage: ``python loadtests/serve_latency.py [--requests 2000] [--concurrency 1,16,64] [--batch-wait-ms 0]``

Starts a local Ray cluster (2 CPUs), deploys both apps with
``serve.apps.deployments.deploy`` (the Serve config file's options), with the
Recommender holding a model fitted on all YOOCHOOSE clicks (2,933 items) and
the NudgeWriter pointed at the local Messages API stub. Requests replay real
sessions: each context is a YOOCHOOSE session prefix (recent items) with the
prefix's first item in the cart. For each concurrency level it reports the
latency seen by the caller (handle round trip, what a shard waits for in
the background) and the time inside the replica (from ``latency()``: batch
wait + model), plus mean batch size.

Nudge writer: p50 / p99 of ``write`` served from the Redis cache and of a
fresh LLM call against the stub answering at once (so this is our overhead:
retrieval, prompt, HTTP, checks, cache write; a real model adds its own).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else 0.0


async def bench_recommender(handle, contexts, concurrency: int) -> dict[str, float]:
    await handle.latency.remote(reset=True)
    lat: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(ctx):
        async with sem:
            t0 = time.perf_counter()
            await handle.recommend.remote(ctx)
            lat.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(c) for c in contexts))
    wall = time.perf_counter() - t0
    inside = await handle.latency.remote()
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "rps": len(lat) / wall,
        "client_p50": pct(lat, 0.5),
        "client_p99": pct(lat, 0.99),
        "replica_p50": inside["p50_ms"],
        "replica_p99": inside["p99_ms"],
        "mean_batch": inside["mean_batch"],
    }


async def bench_nudge(handle, n: int) -> dict[str, dict[str, float]]:
    signals = ["rage_click", "form_struggle", "uturn", "idle", "js_error", "cart_hesitation"]
    pages = [
        ("calculator", "/calculator"),
        ("product", "/products/x"),
        ("cart", "/cart"),
        ("checkout", "/checkout"),
    ]
    fresh: list[float] = []
    cached: list[float] = []
    base = {
        "site": "demo",
        "kind": "help_offer",
        "cart": {"items": 0, "value": 0.0},
        "consent": ["necessary", "analytics", "personalization"],
        "template": "Need a hand? Tell us what you're trying to do and we'll help you get there.",
    }
    for i in range(n):
        pt, path = pages[i % len(pages)]
        # A new segment each round makes every context a cache miss once.
        ctx = dict(base, iid=f"i-{i}", page_type=pt, page_path=path, segment=i)
        ctx["signals"] = {signals[i % len(signals)]: 0.9}
        for bucket in (fresh, cached):
            ctx["trigger_ms"] = int(time.time() * 1000)
            t0 = time.perf_counter()
            out = await handle.write.remote(ctx)
            bucket.append((time.perf_counter() - t0) * 1000)
            assert out and out["source"] in ("llm", "cache"), out
    return {
        "llm (stub answers at once)": {
            "p50": pct(fresh, 0.5),
            "p99": pct(fresh, 0.99),
            "n": len(fresh),
        },
        "cache hit": {"p50": pct(cached, 0.5), "p99": pct(cached, 0.99), "n": len(cached)},
    }


async def run(args) -> None:
    import ray

    from cluster.config import Settings
    from cluster.redis_server import ensure_redis
    from serve.apps import deployments as D
    from serve.apps.recommender import SessionKNN
    from serve.dev.llm_stub import StubLLM
    from training.recommender_data import load_yoochoose, sessions_of

    server = ensure_redis(os.environ.get("REDIS_URL", ""))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    stub = StubLLM(api_key="bench-key", seed=1)
    await stub.start()
    prefix = f"llbench-{uuid.uuid4().hex[:8]}:"
    try:
        sessions = [[i for _, i in s] for s in sessions_of(load_yoochoose()).values()]
        model = SessionKNN.fit(sessions)
        print(
            f"model: {model.items} items from {len(sessions)} sessions, {len(model.to_bytes()) / 1e6:.1f} MB"
        )
        settings = Settings(anthropic_api_key="bench-key", anthropic_base_url=stub.url)
        t0 = time.perf_counter()
        handles = D.deploy(
            settings,
            server.url,
            prefix,
            recommender_models={"bench": model.to_bytes()},
            overrides={D.APP_RECOMMENDER: {"batch_wait_s": args.batch_wait_ms / 1000.0}},
        )
        print(
            f"deploy: {time.perf_counter() - t0:.1f} s; @serve.batch wait {args.batch_wait_ms} ms"
        )
        rng = random.Random(0)
        contexts = []
        while len(contexts) < args.requests:
            s = rng.choice(sessions)
            cut = rng.randint(1, len(s))
            contexts.append({"site": "bench", "recent_items": s[:cut], "cart_items": s[:1], "k": 6})
        await bench_recommender(handles["recommender"], contexts[:200], 8)  # warm-up
        print("\nRecommender (ms per request)\n")
        print(
            "| concurrency | requests | req/s | caller p50 | caller p99 | in replica p50 | in replica p99 | mean batch |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for c in args.concurrency:
            r = await bench_recommender(handles["recommender"], contexts, c)
            print(
                f"| {c} | {r['requests']} | {r['rps']:.0f} | {r['client_p50']:.2f} | {r['client_p99']:.2f} "
                f"| {r['replica_p50']:.2f} | {r['replica_p99']:.2f} | {r['mean_batch']:.1f} |"
            )
        nud = await bench_nudge(handles["nudge"], args.nudges)
        print("\nNudgeWriter.write (ms per request, sequential)\n")
        print("| path | n | p50 | p99 |\n|---|---|---|---|")
        for name, r in nud.items():
            print(f"| {name} | {r['n']} | {r['p50']:.1f} | {r['p99']:.1f} |")
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        await stub.close()

        from cluster.redis_client import redis_client

        r = redis_client(server.url)
        keys = list(r.scan_iter(match=prefix + "*"))
        if keys:
            r.delete(*keys)
        server.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--nudges", type=int, default=100)
    p.add_argument("--batch-wait-ms", type=float, default=0.0, help="@serve.batch wait")
    a = p.parse_args()
    a.concurrency = [int(x) for x in a.concurrency.split(",")]
    asyncio.run(run(a))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
