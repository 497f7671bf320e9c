"""Help chats as load: visitors who open the chat and ask the demo knowledge base's questions.

For ``bench_spine.py --chats N`` (the chat's cost on the spine while chats run
alongside the sessions) and ``chat_latency.py --gateway`` (time from question
sent to first token received, through the real gateway). Each chat is one
socket and one session of the ``demo`` site: hello, ``chat_open``, then a
question, the streamed answer (``chat_delta`` pieces, then the final
``chat_turn``), a pause of ``think_s`` (uniform; at least the chat's own limit
of 8 messages a minute allows), the next question. A chat the assistant hands
to a person is closed and reopened.

Per streamed answer it records, in seconds: question sent -> first
``chat_delta`` received (TTFT), and -> the final ``chat_turn`` (total), with
the time it was sent, so a caller keeps only its measurement window. Answers
that stream nothing (the articles have no answer, a fallback) are counted as
``unstreamed``, not timed.

Limits: one Python client per chat (serve/dev/pyclient.py), fine for
hundreds of chats, not for thousands; a question the knowledge base cannot
answer streams nothing (only labelled visitor questions are asked).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

ORIGIN = "http://127.0.0.1:8080"  # the demo site's origins (cluster/sites.toml)


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0.0 for no values."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else 0.0


def questions() -> list[str]:
    from serve.apps.knowledge import load_questions

    return [q for q, _ in load_questions("demo", subset="q")]


async def one_chat(
    ws_url: str,
    asked: list[str],
    t_end: float,
    think_s: tuple[float, float],
    out: dict[str, Any],
    rng: random.Random,
) -> None:
    """One visitor chatting until ``t_end`` (perf_counter); results appended to ``out``."""
    from serve.apps.chat_answer import PERSON_WILL_ANSWER
    from serve.dev.pyclient import LifelineClient

    c = LifelineClient(ws_url, "demo", "s-chatload-" + uuid.uuid4().hex[:12], ORIGIN)
    c.keep_frames = True
    try:
        if (await c.connect())["t"] != "welcome":
            out["errors"]["hello"] = out["errors"].get("hello", 0) + 1
            return
        await c.send_frame({"t": "chat_open", "sid": c.sid})
        await c.wait_for(lambda f: f["t"] in ("chat_state", "error"), 30)
        await asyncio.sleep(rng.uniform(0, think_s[1]))  # spread the first questions
        n = 0
        while time.perf_counter() < t_end:
            n += 1
            start = len(c.frames)
            sent = time.perf_counter()
            q = rng.choice(asked)
            await c.send_frame({"t": "chat_send", "sid": c.sid, "text": q, "mid": f"q{n}"})

            def first(f: dict[str, Any]) -> bool:
                return f["t"] in ("chat_delta", "error") or (
                    f["t"] == "chat_turn" and f["turn"]["role"] == "assistant"
                )

            got = await c.wait_for(first, 60, start)
            if got["t"] == "error":
                out["errors"][got["code"]] = out["errors"].get(got["code"], 0) + 1
            else:
                ttft = time.perf_counter() - sent
                final = await c.wait_for(
                    lambda f: f["t"] == "chat_turn" and f["turn"]["role"] == "assistant", 60, start
                )
                if got["t"] == "chat_delta":
                    out["samples"].append((sent, ttft, time.perf_counter() - sent))
                else:  # no answer in the articles, or a fallback: nothing streamed, not timed
                    out["unstreamed"] += 1
                # A hand-off (the fallback's "a person will answer") sends its chat_state
                # after the final turn: the text says it without waiting for that frame.
                if (
                    final["turn"].get("offer_person")
                    or final["turn"]["text"] == PERSON_WILL_ANSWER
                    or any(
                        f.get("t") == "chat_state" and f.get("state") == "waiting_for_person"
                        for _, f in c.frames[start:]
                    )
                ):
                    await c.send_frame({"t": "chat_close", "sid": c.sid})
                    await c.send_frame({"t": "chat_open", "sid": c.sid})
            del c.frames[:]  # a long run: keep memory flat
            await asyncio.sleep(rng.uniform(*think_s))
    except (ConnectionError, asyncio.TimeoutError, OSError) as exc:
        key = type(exc).__name__
        out["errors"][key] = out["errors"].get(key, 0) + 1
    finally:
        await c.close()


async def run_chats(
    ws_url: str,
    chats: int,
    seconds: float,
    think_s: tuple[float, float] = (8.0, 15.0),
    seed: int = 1,
) -> dict[str, Any]:
    """Run ``chats`` chats for ``seconds``; returns the samples (sent, ttft_s, total_s) and errors."""
    rng = random.Random(seed)
    asked = questions()
    out: dict[str, Any] = {"samples": [], "errors": {}, "unstreamed": 0}
    t_end = time.perf_counter() + seconds
    await asyncio.gather(
        *(
            one_chat(ws_url, asked, t_end, think_s, out, random.Random(rng.random()))
            for _ in range(chats)
        )
    )
    return out


def summary(out: dict[str, Any], since: float = 0.0) -> dict[str, Any]:
    """p50/p95 in ms of the samples sent at or after ``since`` (perf_counter)."""
    kept = [s for s in out["samples"] if s[0] >= since]
    ttft = [s[1] * 1000 for s in kept]
    total = [s[2] * 1000 for s in kept]
    return {
        "questions": len(kept),
        "ttft_p50_ms": round(pct(ttft, 0.5), 1),
        "ttft_p95_ms": round(pct(ttft, 0.95), 1),
        "total_p50_ms": round(pct(total, 0.5), 1),
        "total_p95_ms": round(pct(total, 0.95), 1),
        "unstreamed": out["unstreamed"],
        "errors": dict(out["errors"]),
    }


def chat_worker(
    ws_url: str, chats: int, warmup: float, duration: float, q: Any, start_at: float
) -> None:
    """A load-generator process (bench_spine.py): chats from ``start_at`` (wall clock) for
    ``warmup + duration`` s; puts the summary of the measured window on ``q``."""
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)

    async def go() -> dict[str, Any]:
        t0 = time.perf_counter()
        out = await run_chats(ws_url, chats, warmup + duration)
        return summary(out, since=t0 + warmup)

    q.put(asyncio.run(go()))
