"""Console page load in a real Chromium with 100,000 sessions and 1,000,000 events in Redis.

Seeds a fresh key prefix with ``loadtests/seed_console.py`` (event logs,
session records, decisions and the tallies the shards keep as events
arrive) and indexes it for the session explorer (``reindex``), starts ``lifeline up`` on that prefix, signs in to the console in
Debian's Chromium and loads pages repeatedly. A page load is measured from
navigation start to the moment the page's data is rendered
(``main[data-loaded-at]``, set by console.js after its first view arrives),
so it includes the server's work and the JSON, not only the HTML.

    python loadtests/bench_console.py --sessions 100000 --events 1000000 --loads 20

Prints and writes (``--out``) p50/p95 per page. Targets (issue #22): Live
< 1 s, session explorer search < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "loadtests"))

PASSWORD = "bench console password"


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


async def measure(console: str, pages: dict[str, str], loads: int) -> dict[str, dict]:
    from playwright.async_api import async_playwright

    chromium = os.environ.get("LIFELINE_CHROMIUM", "/usr/bin/chromium")
    out: dict[str, dict] = {}
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=chromium, args=["--headless=new", "--no-sandbox", "--disable-gpu"]
        )
        context = await browser.new_context(viewport={"width": 1366, "height": 860})
        page = await context.new_page()
        await page.goto(f"{console}/login")
        await page.fill("#name", "bench-admin")
        await page.fill("#password", PASSWORD)
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{console}/")
        for name, path in pages.items():
            times = []
            for _ in range(loads):
                await page.goto(f"{console}{path}")
                await page.wait_for_selector("main[data-loaded-at]", timeout=60_000)
                times.append(float(await page.get_attribute("main", "data-loaded-at")))
            rows = await page.locator("main tbody tr").count()
            out[name] = {
                "path": path,
                "p50_ms": round(statistics.median(times), 1),
                "p95_ms": round(percentile(times, 0.95), 1),
                "max_ms": round(max(times), 1),
                "loads": loads,
                "rows_rendered": rows,
            }
            print(name, json.dumps(out[name]), flush=True)
        await browser.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--loads", type=int, default=20)
    ap.add_argument("--prefix", help="reuse an already seeded prefix (skips seeding)")
    ap.add_argument("--keep", action="store_true", help="keep the seeded keys afterwards")
    ap.add_argument("--out", type=Path, default=ROOT / "loadtests/results/console.json")
    args = ap.parse_args()
    from seed_console import seed

    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = args.prefix or f"llcon-{uuid.uuid4().hex[:6]}:"
    seeded = {}
    if not args.prefix:
        t0 = time.perf_counter()
        seeded = seed(redis_url, prefix, args.sessions, args.events)
        # The session explorer's index, as the shards' snapshot ticks would have written it.

        from actors.shard.index import reindex
        from cluster.keys import Keys
        from cluster.redis_client import redis_client

        seeded["reindex"] = asyncio.run(reindex(redis_client(redis_url, aio=True), Keys(prefix)))
        print(f"seeded {prefix} in {time.perf_counter() - t0:.0f} s: {seeded}", flush=True)
    env = dict(os.environ, LIFELINE_PREFIX=prefix, PYTHONUNBUFFERED="1")
    add = [sys.executable, "-m", "cluster.cli", "operators", "add", "bench-admin"]
    subprocess.run(
        [*add, "--role", "admin", "--password-stdin"],
        input=PASSWORD + "\n",
        env=env,
        cwd=ROOT,
        text=True,
        capture_output=True,
    )
    port = 18190
    log = (args.out.parent / "console-server.log").open("w")
    cmd = [sys.executable, "-m", "cluster.cli", "up", "--no-serve", "--no-llm-stub"]
    cmd += ["--ws-port", "18765", "--http-port", "18180", "--console-port", str(port)]
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        from bench_spine import wait_http

        wait_http(f"http://127.0.0.1:{port}/healthz")
        site = "demo"
        pages = {
            "live": "/",
            "sessions_search_site": f"/sessions?site={site}",
            "sessions_search_intervened": f"/sessions?site={site}&intervened=1",
            "funnel": f"/funnel?site={site}",
            "outcomes": "/outcomes",
        }
        result = asyncio.run(measure(f"http://127.0.0.1:{port}", pages, args.loads))
    finally:
        server.terminate()
        server.wait(timeout=60)
        if not args.keep and not args.prefix:
            from cluster.redis_server import delete_prefix

            delete_prefix(redis_url, prefix)
    doc = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "sessions": args.sessions,
        "events": args.events,
        "seeded": seeded,
        "pages": result,
        "command": " ".join(["python loadtests/bench_console.py", *sys.argv[1:]]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
