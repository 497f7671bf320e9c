"""How well the help-chat assistant's answers are grounded, on the demo knowledge base.

Usage: ``python loadtests/chat_grounding.py [--site demo]``

Every labelled visitor question of ``serve/apps/kb/<site>/questions.json``
(``items`` with a ``q``; the ``ctx`` items are nudge contexts, not chat
questions) and every out-of-KB question (``out_of_kb``) is asked once, in a
fresh session, through :class:`serve.apps.assistant.Assistant`, the code the
ChatAssistant replica runs: real Redis memory, the real ``anthropic``
streaming client, the local Messages API stand-in as the model (unpaced).

Reported, with Wilson 95 % intervals:

* in-KB: share of final answers citing an acceptable article (any listed in
  ``a``), share of answers wrongly refused (no_answer);
* out-of-KB: share refused (no_answer: "I couldn't find that ... a person?");
* the same for the baseline "always cite the top BM25 article" (it never refuses),
  and for citing WINNER's top article with no model at all.

The stand-in quotes the first excerpt it is given and cites its path (see
serve/dev/llm_stub.py), so this measures retrieval, the no-answer rule, the
prompt, the output checks and citation extraction end to end, not a real
model's faithfulness to the excerpts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _fmt(k: int, n: int) -> str:
    from training.uplift import wilson

    lo, hi = wilson(k, n, 0.95)
    return f"{k}/{n} = {k / n:.3f} [{lo:.3f}, {hi:.3f}]" if n else "n/a"


async def run(site: str, redis_url: str) -> dict[str, object]:

    from serve.apps.assistant import Assistant, AssistantSettings
    from serve.apps.knowledge import KB_ROOT, KnowledgeBase, load_questions
    from serve.dev.llm_stub import StubLLM

    data = json.loads((KB_ROOT / site / "questions.json").read_text(encoding="utf-8"))
    inside = load_questions(site, subset="q")
    outside = list(data.get("out_of_kb", []))
    stub = StubLLM(api_key="grounding")
    await stub.start()
    prefix = f"llground-{uuid.uuid4().hex[:8]}:"
    from cluster.redis_client import redis_client

    r = redis_client(redis_url, aio=True)
    a = Assistant(AssistantSettings(api_key="grounding", base_url=stub.url), r, prefix)
    kb = KnowledgeBase.load(site)

    async def final(q: str) -> dict:
        out = None
        async for item in a.answer({"site": site, "sid": "g-" + uuid.uuid4().hex[:10], "text": q}):
            out = item
        assert out is not None and out["t"] == "final"
        return out

    res = {"in_cited": 0, "in_refused": 0, "in_fallback": 0, "out_refused": 0}
    res |= {"bm25_cited": 0, "winner_cited": 0, "n_in": len(inside), "n_out": len(outside)}
    misses = []
    try:
        for q, ok in inside:
            f = await final(q)
            cited = [c["url"].rsplit("/", 1)[-1] for c in f["citations"]]
            hit = any(c in ok for c in cited)
            res["in_cited"] += hit
            res["in_refused"] += f["source"] == "no_answer"
            res["in_fallback"] += f["source"] == "fallback"
            if not hit:
                misses.append((q, ok, cited, f["source"], f["reason"]))
            top_bm25 = kb.search(q, k=1, method="bm25")
            res["bm25_cited"] += bool(top_bm25) and top_bm25[0][0].id in ok
            top_w = kb.search(q, k=1)
            res["winner_cited"] += bool(top_w) and top_w[0][0].id in ok
        for q in outside:
            f = await final(q)
            res["out_refused"] += f["source"] == "no_answer"
    finally:
        keys = [k async for k in r.scan_iter(match=prefix + "*")]
        if keys:
            await r.delete(*keys)
        await a.aclose()
        await r.aclose()
        await stub.close()
    res["misses"] = misses
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--site", default="demo")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    a = p.parse_args(argv)
    res = asyncio.run(run(a.site, a.redis_url))
    n_in, n_out = res["n_in"], res["n_out"]
    print(f"Help-chat grounding on serve/apps/kb/{a.site}/questions.json (Wilson 95 %)\n")
    print("| | cites a right article (in-KB) | refuses (out-of-KB) | refuses (in-KB) |")
    print("|---|---|---|---|")
    print(
        f"| assistant (stand-in model) | {_fmt(res['in_cited'], n_in)} | "
        f"{_fmt(res['out_refused'], n_out)} | {_fmt(res['in_refused'], n_in)} |"
    )
    print(
        f"| baseline: top BM25 article | {_fmt(res['bm25_cited'], n_in)} | {_fmt(0, n_out)} | - |"
    )
    print(
        f"| top WINNER article, no model | {_fmt(res['winner_cited'], n_in)} | {_fmt(0, n_out)} | - |"
    )
    print(f"\nin-KB answers that fell back (checks/model): {res['in_fallback']}")
    print("in-KB questions not citing a right article:")
    for q, ok, cited, source, reason in res["misses"]:
        print(f"- {q!r}: wants {ok}, cited {cited} ({source}{', ' + reason if reason else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
