"""Simulated visitors who treat help as the browser client does: traffic for the outcome report.

What it is for: filling a running stack (``lifeline up``) with sessions whose
decisions, reactions and conversions ``lifeline report outcomes`` joins. The
load generators (bench_spine.py, locustfile.py) replay journeys but never
answer an intervention, so every treated session of theirs is "unseen".
Here each visitor replays one simulated journey (training/simulator.py) on
its own WebSocket (serve/dev/pyclient.py) the way the demo shop's pages
would send it:

* in small batches, each awaited until acknowledged, so help drawn by one
  batch arrives before the next goes;
* on an ``intervention`` frame: ``intervention_shown`` (what lifeline.js
  sends when it renders one), then ``intervention_accepted`` with
  probability ``--accept``, ``intervention_dismissed`` with ``--dismiss``,
  else nothing (ignored); holdout visitors get no frame, as in a browser;
* after a successful calculator submit: the custom ``lead`` event the demo's
  calculator page tracks (a goal of the demo site in cluster/sites.toml);
  purchases as the simulator wrote them.

Timestamps keep the journey's spacing and end at most ``--spread-hours``
before now (the gateway takes events up to a day old), so a report has
several days' points only when the run spreads its visitors back that far.

Limits: the journeys are fixed before they are sent, so a visitor never
changes course because of the help: the true uplift is zero, and the
report's intervals should include it (a check of the measurement, not of
the help). Python client, one socket per visitor: a few hundred events/s
per process, meant for demos and checks, not benchmarks.

    python loadtests/outcome_traffic.py --visitors 2000 --concurrency 40
    python loadtests/outcome_traffic.py --visitors 500 --site loadtest --origin http://loadtest.local
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serve.dev.pyclient import LifelineClient  # noqa: E402
from training.simulator import CALC_FORM, Journey, simulate  # noqa: E402

BATCH = 5  # events per frame, about what the browser client flushes
REACT_MS = (800, 4000)  # from an intervention to the visitor's answer


class Visitor:
    """One visitor's session: the journey renumbered as it goes, the help answered."""

    def __init__(
        self, journey: Journey, end_ms: int, rng: random.Random, args: argparse.Namespace
    ) -> None:
        self.journey, self.rng, self.args = journey, rng, args
        events = journey.events
        self.shift = end_ms - events[-1]["ts"]  # grows as reactions take time
        self.seq = 0
        self.last_ts = 0
        self.counts: Counter[str] = Counter()
        self.answered = 0  # interventions answered so far
        self.led = False

    def stamp(self, ev: dict[str, Any], ts: int | None = None) -> dict[str, Any]:
        self.seq += 1
        t = max(self.last_ts + 1, ev["ts"] + self.shift if ts is None else ts)
        self.last_ts = t
        return dict(ev, seq=self.seq, ts=t)

    def next_events(self, raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for ev in raw:
            out.append(self.stamp(ev))
            self.counts[ev["type"]] += 1
            if (
                ev["type"] == "form_submit"
                and ev.get("form") == CALC_FORM
                and ev.get("ok")
                and not self.led
            ):
                self.led = True  # calculator.html tracks its first quote as a "lead"
                out.append(self.stamp({"type": "custom", "name": "lead", "ts": ev["ts"] + 5}))
                self.counts["lead"] += 1
        return out

    def answers(self, interventions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """What the visitor sends back about interventions not answered yet."""
        out = []
        for iv in interventions[self.answered :]:
            self.answered += 1
            delay = self.rng.uniform(*REACT_MS)
            self.shift += int(delay) + 300  # the rest of the journey comes after the answer
            out.append(
                self.stamp({"type": "intervention_shown", "iid": iv["iid"]}, self.last_ts + 300)
            )
            draw = self.rng.random()
            answer = (
                "intervention_accepted"
                if draw < self.args.accept
                else "intervention_dismissed"
                if draw < self.args.accept + self.args.dismiss
                else None
            )
            self.counts["intervention"] += 1
            if answer:
                out.append(
                    self.stamp({"type": answer, "iid": iv["iid"]}, self.last_ts + int(delay))
                )
                self.counts[answer] += 1
        return out

    async def run(self, ws_url: str) -> Counter[str]:
        a = self.args
        client = LifelineClient(ws_url, a.site, f"oc-{self.journey.sid}-{a.tag}", a.origin)
        welcome = await client.connect()
        if welcome["t"] != "welcome":
            raise RuntimeError(f"refused: {welcome}")
        events = self.journey.events
        for i in range(0, len(events), BATCH):
            batch = self.next_events(events[i : i + BATCH])
            await client.send_events(batch)
            await client.wait_acked(self.seq, timeout=30)
            await client.roundtrip()  # interventions drawn by this batch have arrived
            more = self.answers(client.of_type("intervention"))
            if more:
                await client.send_events(more)
                await client.wait_acked(self.seq, timeout=30)
        self.counts["error"] += len(client.of_type("error"))
        await client.close()
        return self.counts


async def drive(args: argparse.Namespace) -> Counter[str]:
    journeys = simulate(args.visitors, seed=args.seed, mean_gap_ms=0)
    rng = random.Random(args.seed)
    now = int(time.time() * 1000)
    gate = asyncio.Semaphore(args.concurrency)
    total: Counter[str] = Counter()
    done = 0

    async def one(j: Journey) -> None:
        nonlocal done
        end = now - 60_000 - int(rng.uniform(0, args.spread_hours) * 3_600_000)
        async with gate:
            total.update(await Visitor(j, end, random.Random(rng.random()), args).run(args.ws))
        done += 1
        if done % max(1, args.visitors // 10) == 0:
            print(f"{done}/{args.visitors} visitors", file=sys.stderr)

    await asyncio.gather(*(one(j) for j in journeys))
    return total


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ws", default="ws://127.0.0.1:8765/ws", help="the gateway's WebSocket URL")
    ap.add_argument("--site", default="demo", help="site key (cluster/sites.toml)")
    ap.add_argument("--origin", default="http://127.0.0.1:8080", help="Origin the site allows")
    ap.add_argument("--visitors", type=int, default=1000, help="simulated journeys to replay")
    ap.add_argument("--concurrency", type=int, default=40, help="visitors connected at once")
    ap.add_argument("--seed", type=int, default=0, help="simulator and reaction seed")
    ap.add_argument("--accept", type=float, default=0.2, help="share of help accepted")
    ap.add_argument("--dismiss", type=float, default=0.3, help="share of help dismissed")
    ap.add_argument(
        "--spread-hours",
        type=float,
        default=0.0,
        help="journeys end up to this long ago (at most 23; default: all end about now)",
    )
    ap.add_argument("--tag", default="", help="added to each sid, so reruns are new sessions")
    args = ap.parse_args()
    if not 0 <= args.spread_hours <= 23:
        ap.error("--spread-hours must be within 0..23 (the gateway refuses events a day old)")
    args.tag = args.tag or f"{int(time.time()) % 100_000}"
    t0 = time.monotonic()
    counts = asyncio.run(drive(args))
    print(
        f"{args.visitors} visitors in {time.monotonic() - t0:.0f}s: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k in REPORTED)
    )
    return 0


REPORTED = {
    "intervention",
    "intervention_accepted",
    "intervention_dismissed",
    "purchase",
    "lead",
    "error",
}

if __name__ == "__main__":
    sys.exit(main())
