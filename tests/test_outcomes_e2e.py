"""Outcomes end to end: visitors over real WebSockets, the shards' records, the report read from Redis."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from actors.core.policy import in_holdout
from cluster.keys import Keys
from cluster.redis_client import redis_client
from serve.dev.pyclient import LifelineClient
from training.cli import main as cli_main
from training.outcome_records import read_records
from training.outcomes import aggregate, join, utc_day
from training.simulator import scripted

pytestmark = pytest.mark.asyncio(loop_scope="session")

ORIGIN = "http://127.0.0.1:8080"


def sid_in(holdout: bool, tag: str) -> str:
    """A fresh sid on the chosen side of the demo site's 10 % holdout (drawn by sid hash)."""
    while True:
        sid = f"t-oc-{tag}-{uuid.uuid4().hex[:10]}"
        if in_holdout(sid, 0.10) == holdout:
            return sid


@dataclass
class Visit:
    """One visitor: their journey, what they do with the help, what they convert on."""

    tag: str
    holdout: bool = False
    journey: str = "struggling"
    reactions: tuple[str, ...] = ()  # intervention_* event types sent back
    after: tuple[dict, ...] = ()  # events after the help (purchases, custom events)
    before: dict | None = None  # an event right after the first page view

    def __post_init__(self) -> None:
        self.sid = sid_in(self.holdout, self.tag)

    def events(self) -> list[dict]:
        evs = scripted(self.journey, self.sid, int(time.time() * 1000) - 120_000)
        if self.before is not None:
            evs.insert(1, dict(self.before, ts=evs[0]["ts"] + 1))
        return [dict(ev, seq=i + 1) for i, ev in enumerate(evs)]


PURCHASE = {"type": "purchase", "value": 120.0, "items": ["p-003"]}
LEAD = {"type": "custom", "name": "lead", "props": {"product": "loan"}}
NOT_A_GOAL = {"type": "custom", "name": "newsletter"}
SHOWN, ACCEPTED, DISMISSED = "intervention_shown", "intervention_accepted", "intervention_dismissed"


async def first_part(stack, v: Visit) -> tuple[LifelineClient, list[dict], dict | None]:
    """Send the journey; the intervention it drew (None for holdout and calm visitors)."""
    client = LifelineClient(stack.ws_url, "demo", v.sid, ORIGIN)
    assert (await client.connect())["t"] == "welcome"
    events = v.events()
    for i in range(0, len(events), 6):
        await client.send_events(events[i : i + 6])
    await client.wait_acked(len(events))
    iv = None
    if not v.holdout and v.journey == "struggling":
        iv = await client.wait_for(lambda f: f["t"] == "intervention", timeout=15)
    await stack.gateway.wait_scored(v.sid, len(events))
    return client, events, iv


async def second_part(stack, v: Visit, client, events, iv) -> None:
    """Send the reactions to the help and the conversions; return once they are scored."""
    ts, seq = events[-1]["ts"], len(events)
    more = [{"type": t, "iid": iv["iid"]} for t in v.reactions] + list(v.after)
    more = [dict(ev, seq=seq + i + 1, ts=ts + 400 * (i + 1)) for i, ev in enumerate(more)]
    if more:
        await client.send_events(more)
        await client.wait_acked(seq + len(more))
        await stack.gateway.wait_scored(v.sid, seq + len(more))
    await client.close()


async def decisions_logged(r: aioredis.Redis, log: str, sids: set[str]) -> None:
    """Await the log entries of these sessions' first decisions (written after the reply)."""
    seen: set[str] = set()
    last = "0-0"
    while not sids <= seen:
        for _stream, entries in await r.xread({log: last}, block=10_000) or []:
            for eid, fields in entries:
                last = eid
                seen.add(fields[b"sid"].decode())


async def test_conversions_join_the_decisions_and_the_report_counts_them(any_stack, tmp_path):
    stack = any_stack
    visits = [
        Visit("buy", reactions=(SHOWN, ACCEPTED), after=(PURCHASE,)),
        Visit("lead", reactions=(SHOWN, DISMISSED), after=(LEAD,)),
        Visit("none", reactions=(SHOWN,), after=(NOT_A_GOAL,)),
        Visit("early", reactions=(SHOWN,), before=LEAD),  # converted before the help: not after
        Visit("unseen", after=(PURCHASE,)),  # the page never confirmed showing it
        Visit("hbuy", holdout=True, after=(PURCHASE,)),
        Visit("hnone", holdout=True),
        Visit("calm", journey="calm", after=(PURCHASE,)),  # no decision: not in the report
    ]
    r = stack.gateway.redis
    keys = Keys(stack.prefix)
    started = await asyncio.gather(*(first_part(stack, v) for v in visits))
    # Conversions mark records that exist: the decisions are logged before they are sent.
    await asyncio.wait_for(
        decisions_logged(r, keys.intervention_log, {v.sid for v in visits[:-1]}), 20
    )
    await asyncio.gather(*(second_part(stack, v, *s) for v, s in zip(visits, started, strict=True)))
    await asyncio.gather(*(sh.flush.remote() for sh in stack.shards))  # records written
    # The log entry names the decision's segment (index and name).
    logged = [
        f for _, f in await r.xrange(keys.intervention_log) if f[b"sid"] == visits[0].sid.encode()
    ]
    assert logged and b"segment" in logged[0] and logged[0][b"segment_name"]

    sync = redis_client(stack.redis_url)
    records, _ = await asyncio.to_thread(read_records, sync, keys, None, "demo")
    mine = {v.sid: v for v in visits}
    rows, expired = join(rec for rec in records if rec.sid in mine)
    assert expired == 0
    by_tag = {mine[row.sid].tag: row for row in rows}
    assert set(by_tag) == {"buy", "lead", "none", "early", "unseen", "hbuy", "hnone"}
    assert {t: (row.reaction, row.converted, row.goal) for t, row in by_tag.items()} == {
        "buy": ("accepted", True, "purchase"),
        "lead": ("dismissed", True, "lead"),
        "none": ("ignored", False, None),
        "early": ("ignored", False, None),
        "unseen": ("unseen", True, "purchase"),
        "hbuy": ("holdout", True, "purchase"),
        "hnone": ("holdout", False, None),
    }
    model = (await stack.shards[0].ping.remote())["model"]
    assert {row.model for row in rows} == {model}
    assert all(row.segment not in ("", "none") for row in rows), "the bundled model has segments"
    assert {row.day for row in rows} == {utc_day(int(time.time() * 1000) - 120_000)}

    data = aggregate(rows)
    t = data["totals"]
    assert (t["treated_n"], t["treated_conversions"], t["holdout_n"], t["holdout_conversions"]) == (
        5,
        3,
        2,
        1,
    )
    assert t["uplift"] == pytest.approx(3 / 5 - 1 / 2) and t["low"] < t["uplift"] < t["high"]
    assert t["reactions"] == {"accepted": 1, "dismissed": 1, "ignored": 2, "unseen": 1}
    assert t["goals"] == {
        "lead": {"treated": 1, "holdout": 0},
        "purchase": {"treated": 2, "holdout": 1},
    }
    assert sum(g["sessions"] for g in data["by"]["kind"]) == 7

    # The operator's command on the same Redis: every breakdown, the plots, the JSON.
    out = tmp_path / "report"
    argv = ["report", "outcomes", "--site", "demo", "--out", str(out)]
    argv += ["--redis-url", stack.redis_url, "--prefix", stack.prefix]
    assert await asyncio.to_thread(cli_main, argv) == 0
    report = json.loads((out / "outcomes.json").read_text())
    assert report["totals"]["treated_conversions"] >= 3 and report["totals"]["holdout_n"] >= 2
    assert set(report["by"]) == {"kind", "site", "segment", "model", "day"}
    assert [g["key"] for g in report["by"]["site"]] == ["demo"]
    assert model in {g["key"] for g in report["by"]["model"]}
    md = (out / "outcomes.md").read_text()
    assert "## By segment" in md and "![Uplift per group](uplift.png)" in md
    assert all(
        (out / png).stat().st_size > 5000 for png in ("uplift.png", "daily.png", "reactions.png")
    )
