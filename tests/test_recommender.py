"""The session-kNN recommender, its evaluation protocol and the event-log reader."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest
import redis.asyncio as aioredis

from actors.core.events import validate_event
from cluster.keys import Keys
from serve.apps.recommender import (
    RecommenderService,
    RecParams,
    SessionKNN,
    catalog_from_json,
    catalog_key,
    cold_start_model,
    model_key,
)
from training import recommender_data as rd

SESSIONS = [
    ["a", "b", "c"],
    ["a", "b", "d"],
    ["a", "b"],
    ["b", "c"],
    ["x", "y"],
    ["x", "y", "z"],
    ["p"],
    ["p"],
    ["p"],
    ["p", "p"],
]


def ids(recs):
    return [i for i, _ in recs]


def test_cooccurrence_neighbours_rank_first_and_cart_is_excluded():
    m = SessionKNN.fit(SESSIONS)
    assert ids(m.recommend(["a"], k=2))[0] == "b"
    recs = ids(m.recommend(["a"], cart_items=["b"], k=5))
    assert "b" not in recs and recs[0] in ("c", "d")
    assert sorted(ids(m.recommend(["a"], exclude=["a"], k=10))) == [
        "b",
        "c",
        "d",
        "p",
        "x",
        "y",
        "z",
    ]
    scores = [s for _, s in m.recommend(["a"], k=5)]
    assert scores == sorted(scores, reverse=True)


def test_recent_items_outweigh_older_ones():
    m = SessionKNN.fit(SESSIONS)
    # The session went from x to a: a's neighbour b beats x's neighbour y.
    recs = ids(m.recommend(["x", "a"], k=3))
    assert recs.index("b") < recs.index("y")
    recs = ids(m.recommend(["a", "x"], k=3))
    assert recs.index("y") < recs.index("b")


def test_cold_start_gets_popularity():
    m = SessionKNN.fit(SESSIONS)
    assert ids(m.recommend([], k=2)) == ["p", "b"]  # p: 5 clicks, b: 4
    assert ids(m.recommend(["never-seen"], k=1)) == ["p"]
    assert ids(m.recommend([], cart_items=["p"], k=1)) == ["b"]


def test_categories_recommend_items_nobody_co_visited():
    cats = {"a": "lamps", "q": "lamps", "p": "chairs"}
    sessions = SESSIONS + [["q"], ["q"]]
    with_cat = SessionKNN.fit(sessions, cats)
    without = SessionKNN.fit(sessions)
    # q was never seen with a, but shares its category.
    assert "q" in ids(with_cat.recommend(["a"], k=4))
    plain = ids(without.recommend(["a"], k=4))
    assert len(plain) == 4 and "q" not in plain
    # Category votes never outrank real co-occurrence at the top.
    assert ids(with_cat.recommend(["a"], k=1)) == ["b"]


def test_model_round_trips_through_msgpack_bytes():
    m = SessionKNN.fit(SESSIONS, {"a": "lamps", "q": "lamps"}, RecParams(decay=0.5))
    data = m.to_bytes()
    m2 = SessionKNN.from_bytes(data)
    assert m2.params == m.params and m2.items == m.items
    for q in (["a"], ["x", "y"], [], ["a", "b", "c", "d"]):
        assert m2.recommend(q, ["b"], k=5) == m.recommend(q, ["b"], k=5)
    bad = msgpack.unpackb(data, raw=False, strict_map_key=False)
    bad["v"] = 99
    with pytest.raises(ValueError):
        SessionKNN.from_bytes(msgpack.packb(bad))


def test_service_names_items_and_respects_catalog_cart_and_k():
    m = SessionKNN.fit(SESSIONS)
    svc = RecommenderService({"demo": m}, {"shop": {"c": {"name": "Lamp C", "url": "/products/c"}}})
    svc.models["shop"] = m
    out = svc.recommend({"site": "demo", "recent_items": ["a"], "cart_items": ["b"], "k": 2})
    assert [i["id"] for i in out["items"]] == ids(m.recommend(["a"], ["b"], k=2, exclude=["a"]))
    assert out["items"][0]["url"] == f"/product.html?id={out['items'][0]['id']}"
    assert set(out["items"][0]) == {"id", "name", "url", "score"}
    # With a catalog only catalogued items are shown. c's score, by the model's formula
    # (module docstring, RecParams defaults): a and c co-occur once at distance 2 (0.5),
    # a and b three times at distance 1 (3.0), b being a's best neighbour; each sum is
    # normalised by n_a^0.9 * n_x^0.1 + 2 (sessions holding the items) and the
    # co-occurrence votes scaled to the best one; then 0.02 times c's popularity
    # (2 clicks of the 5 of the most clicked item, p).
    sim_ab = round(3.0 / (3**0.9 * 4**0.1 + 2.0), 6)
    sim_ac = round(0.5 / (3**0.9 * 2**0.1 + 2.0), 6)
    score_c = sim_ac / sim_ab + 0.02 * 2 / 5
    shop = svc.recommend({"site": "shop", "recent_items": ["a"], "cart_items": [], "k": 3})
    assert shop["items"] == [
        {
            "id": "c",
            "name": "Lamp C",
            "url": "/products/c",
            "score": pytest.approx(score_c, abs=1e-4),
        }
    ]
    # The item on screen is not recommended, all else is (8 items are known).
    rest = svc.recommend({"site": "demo", "recent_items": ["b", "a"], "k": 50})["items"]
    assert sorted(i["id"] for i in rest) == ["b", "c", "d", "p", "x", "y", "z"]
    # k is bounded, on a model that knows more items than the bound.
    svc.models["big"] = SessionKNN.fit([[f"i{n}", f"i{n + 1}"] for n in range(40)])
    big = svc.recommend({"site": "big", "recent_items": [], "k": 500})["items"]
    assert len(big) == RecommenderService.MAX_K < 41
    # Junk is harmless: a string for the recent items, a bool for k: a cold answer of 4.
    junk = svc.recommend({"site": "demo", "recent_items": "a", "k": True})["items"]
    assert [i["id"] for i in junk][:2] == ["p", "b"] and len(junk) == 4
    assert svc.recommend({"site": "nope", "recent_items": ["a"]}) == {"items": []}
    both = svc.recommend_many([{"site": "demo"}, {"site": "nope"}])
    assert len(both[0]["items"]) == 4 and both[1] == {"items": []}


def test_evaluate_counts_every_next_click():
    test = [["a", "b", "c"], ["x", "x"]]

    def predict(prefix, k):
        return {"a": ["z", "b"], "b": ["c"], "x": ["y"]}[prefix[-1]][:k]

    r = rd.evaluate(predict, test)
    # Predictions: a->b (rank 2), b->c (rank 1), x->x (miss).
    assert r["n"] == 3
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["mrr"] == pytest.approx((0.5 + 1.0) / 3)
    r2 = rd.evaluate(predict, test, skip_repeats=True)
    assert r2["n"] == 2 and r2["recall"] == 1.0


def test_last_day_split_drops_unknown_items_and_short_sessions():
    day = rd.DAY_S
    clicks = [
        ("s1", "a", 0.0), ("s1", "b", 10.0),
        ("s2", "b", 5 * day), ("s2", "c", 5 * day + 1),
        ("s3", "a", 9.5 * day), ("s3", "new", 9.5 * day + 1), ("s3", "b", 9.5 * day + 2),
        ("s4", "a", 9.6 * day), ("s4", "new", 9.6 * day + 5),
        ("s5", "c", 8.9 * day), ("s5", "a", 9.2 * day),  # ends in the last day
        ("s6", "b", 10 * day), ("s6", "a", 10 * day + 1),
    ]  # fmt: skip
    train, test = rd.split_last_days(clicks, 1.0)
    assert sorted(train) == [["a", "b"], ["b", "c"]]
    # s3 loses "new" (never in training), s4 becomes too short, s5 and s6 stay.
    assert sorted(test) == [["a", "b"], ["b", "a"], ["c", "a"]]


def test_baselines_on_toy_data():
    pop = rd.Popularity(SESSIONS, k=3)
    assert pop.predict(["anything"]) == ["p", "b", "a"]
    knn = rd.ItemKNN(SESSIONS)
    assert knn.predict(["a"])[0] == "b"
    assert knn.predict(["unknown"]) == []


def test_blend_beats_baselines_on_real_yoochoose_clicks():
    """A slice of the real evaluation (the full one is in BENCHMARKS.md)."""
    clicks = rd.load_yoochoose()
    train, test = rd.split_last_days(clicks, 1.0)
    assert len(train) > 10_000 and len(test) > 3_000
    test = test[:600]
    pop = rd.evaluate(rd.Popularity(train).predict, test)
    knn = rd.evaluate(rd.ItemKNN(train).predict, test)
    blend = rd.evaluate(rd.blend_predictor(SessionKNN.fit(train)), test)
    assert blend["recall"] > knn["recall"] > 3 * pop["recall"]
    assert blend["mrr"] > pop["mrr"] * 5


def test_items_from_events_uses_product_views_and_cart_adds():
    now = 1_732_200_000_000
    raw = [
        {"type": "page_view", "seq": 3, "ts": now, "path": "/products/lamp-2?ref=x"},
        {"type": "page_view", "seq": 1, "ts": now, "path": "/"},
        {"type": "add_to_cart", "seq": 4, "ts": now, "item": "lamp-2", "qty": 1},
        {"type": "page_view", "seq": 2, "ts": now, "path": "/products/desk"},
        {"type": "click", "seq": 5, "ts": now, "selector": "#b", "x": 1, "y": 2, "reacted": True},
        {"type": "page_view", "seq": 6, "ts": now, "path": "/products/desk/reviews"},
        # The demo shop: /product.html?id=..., and the page view's own item field wins.
        {"type": "page_view", "seq": 7, "ts": now, "path": "/product.html?id=p03"},
        {"type": "page_view", "seq": 8, "ts": now, "path": "/product.html?id=p03", "item": "p04"},
        {"type": "page_view", "seq": 9, "ts": now, "path": "/?category=gear"},
    ]
    events = [validate_event(e, now) for e in raw]
    assert all(isinstance(e, dict) for e in events)
    assert rd.items_from_events(events) == ["desk", "lamp-2", "lamp-2", "p03", "p04"]
    assert rd.item_of_page("/product.html?x=1&id=p01") == "p01"
    assert rd.item_of_page("/product.html?id=<script>") is None


def test_catalog_json_list_or_map_and_cold_start():
    demo = json.loads(
        (Path(__file__).resolve().parent.parent / "serve/static/demo/catalog.json").read_text()
    )
    cat = catalog_from_json(demo)
    assert len(cat) == len(demo) and cat["p01"]["url"] == "/product.html?id=p01"
    assert cat["p01"]["category"] == "shoes"
    assert catalog_from_json({"x": {"name": "X"}, "y": {}}) == {
        "x": {"name": "X", "url": "/product.html?id=x"}
    }
    m = cold_start_model(cat)
    # Same category first (the other shoes), then the catalogue by popularity.
    assert ids(m.recommend(["p01"], k=1, exclude=["p01"])) == ["p02"]
    assert len(m.recommend([], k=12)) == 12


async def test_event_log_to_published_model(redis_url, prefix):
    now = 1_732_200_000_000
    r = aioredis.Redis.from_url(redis_url)
    try:
        journeys = {
            "s-aaaaaaaa1": ["lamp", "desk", "chair"],
            "s-aaaaaaaa2": ["lamp", "desk"],
            "s-aaaaaaaa3": ["desk", "chair"],
            "s-aaaaaaaa4": ["sofa"],  # one item: not a session for co-occurrence
        }
        for sid, items in journeys.items():
            evs = [
                validate_event(
                    {"type": "page_view", "seq": i + 1, "ts": now, "path": f"/products/{it}"}, now
                )
                for i, it in enumerate(items)
            ]
            # Two stream entries per session, as the gateway appends batches.
            await r.xadd(Keys(prefix).events("demo", sid), {b"ev": msgpack.packb(evs[:1])})
            if evs[1:]:
                await r.xadd(Keys(prefix).events("demo", sid), {b"ev": msgpack.packb(evs[1:])})
        await r.xadd(Keys(prefix).events("demo", "s-broken0001"), {b"ev": b"\xc1not msgpack"})
        sessions = await rd.sessions_from_event_log(r, prefix)
        assert sorted(sessions) == [["desk", "chair"], ["lamp", "desk"], ["lamp", "desk", "chair"]]

        catalog = {
            i: {"name": i.title(), "url": f"/products/{i}"} for i in ("lamp", "desk", "chair")
        }
        out = await rd.build(redis_url, prefix, "demo", catalog_file=None)
        assert out["log_sessions"] == 3 and out["version"] == 1
        await rd.publish_catalog(r, prefix, "demo", catalog)
        model = SessionKNN.from_bytes(await r.get(model_key(prefix, "demo")))
        assert ids(model.recommend(["lamp"], k=1)) == ["desk"]
        assert msgpack.unpackb(await r.hget(catalog_key(prefix, "demo"), "desk")) == catalog["desk"]
        assert int(await r.get(model_key(prefix, "demo") + ":version")) == 1
    finally:
        await r.aclose()
