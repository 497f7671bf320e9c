"""The visitor profile, pure: how a finished session updates it, its bounds, what it tells the policy."""

from __future__ import annotations

import msgpack

from actors.core.features import FEATURE_INDEX, N_FEATURES, RETURNING_FEATURES
from actors.core.host import SessionHost
from actors.core.kinds import HELP_OFFER, KINDS
from actors.core.policy import PolicyConfig, decide
from actors.core.profile import (
    DAY_MS,
    FIRST_VISIT,
    MAX_ITEMS,
    MAX_OFFERS,
    MAX_PACKED_BYTES,
    MAX_SEGMENTS,
    MAX_SESSIONS,
    Profile,
    SessionSummary,
    history_of,
    pack,
    returning_features,
    summary_of,
    unpack,
    update,
)
from actors.core.session import EventView, Session

T0 = 1_700_000_000_000
F = {name: i for i, name in enumerate(RETURNING_FEATURES)}


def summary(sid="s-1", start=T0, end=T0 + 60_000, **kw) -> SessionSummary:
    return SessionSummary(sid, start, end, **kw)


def test_update_counts_visits_purchases_items_segments_and_offers() -> None:
    p = update(None, summary("s-1", items=("a", "b"), segment="browsers"))
    p = update(
        p,
        summary(
            "s-2",
            T0 + DAY_MS,
            T0 + DAY_MS + 5_000,
            purchased=True,
            items=("b", "c"),
            offers=(("i-1", HELP_OFFER, "dismissed", T0 + DAY_MS + 1_000),),
            segment="buyers",
        ),
    )
    assert (p.visits, p.purchases) == (2, 1)
    assert (p.first_ts, p.last_ts) == (T0, T0 + DAY_MS + 5_000)
    assert p.items == ("a", "b", "c"), "a re-viewed item moves to the newest end, once"
    assert p.segments == ("browsers", "buyers")
    assert [(o.kind, o.outcome) for o in p.offers] == [(HELP_OFFER, "dismissed")]


def test_update_is_pure_and_idempotent_per_session() -> None:
    first = update(None, summary("s-1", items=("a",), offers=(("i-1", HELP_OFFER, "ignored", T0),)))
    again = update(
        first, summary("s-1", items=("a",), offers=(("i-1", HELP_OFFER, "ignored", T0),))
    )
    assert again == first, "a session merged at a flush and again at its end counts once"
    assert first.visits == 1
    # A later, fuller summary of the same session: its purchase and the offer's outcome count.
    fuller = update(
        first, summary("s-1", purchased=True, offers=(("i-1", HELP_OFFER, "dismissed", T0),))
    )
    assert (fuller.visits, fuller.purchases) == (1, 1)
    assert [o.outcome for o in fuller.offers] == ["dismissed"]
    assert first.purchases == 0 and first.offers[0].outcome == "ignored", "the input is unchanged"


def test_every_list_is_bounded_and_the_worst_case_packs_under_the_bound() -> None:
    p: Profile | None = None
    long = "x" * 200  # longer than any id may be
    for n in range(200):
        p = update(
            p,
            summary(
                f"s-{n}-{long}",
                T0 + n,
                T0 + n + 1,
                purchased=True,
                items=tuple(f"{n}-{i}-{long}" for i in range(30)),
                offers=tuple((f"i-{n}-{k}", long, "accepted", T0 + n) for k in range(5)),
                segment=f"{n}-{long}",
            ),
        )
    assert p is not None
    assert len(p.items) == MAX_ITEMS and len(p.offers) == MAX_OFFERS
    assert len(p.segments) == MAX_SEGMENTS and len(p.sessions) == MAX_SESSIONS
    assert (p.visits, p.purchases) == (200, 200), "the counts go on beyond the kept lists"
    packed = pack(p)
    assert len(packed) <= MAX_PACKED_BYTES, len(packed)
    assert unpack(packed) == p
    assert b"s-199" not in packed, "sessions are remembered by a digest, never their id"


def test_unreadable_profiles_are_first_visits() -> None:
    for data in (None, b"", b"\xc1", msgpack.packb([99, 1]), msgpack.packb({"visits": 3})):
        assert unpack(data) is None
        assert returning_features(unpack(data), T0) == list(FIRST_VISIT)


def test_returning_features() -> None:
    assert returning_features(None, T0) == list(FIRST_VISIT)
    assert FIRST_VISIT[F["days_since_last_visit"]] == -1.0
    p = update(
        None,
        summary(
            "s-1",
            purchased=True,
            offers=(("i-1", HELP_OFFER, "dismissed", T0), ("i-2", "form_hint", "accepted", T0)),
        ),
    )
    f = returning_features(p, T0 + 60_000 + 3 * DAY_MS)
    assert f[F["visits_before"]] == 1 and f[F["purchases_before"]] == 1
    assert f[F["days_since_last_visit"]] == 3.0
    assert f[F["offers_before"]] == 2
    assert (f[F["offers_dismissed_before"]], f[F["offers_accepted_before"]]) == (1, 1)


def test_summary_of_a_session_remembers_its_offers_and_what_the_visitor_did() -> None:
    s = Session("s-abcdefgh", "demo")
    s.consent = ["analytics"]
    for seq, ev in enumerate(
        [
            {"type": "page_view", "path": "/product/p1"},
            {"type": "page_view", "path": "/product/p2"},
        ],
        start=1,
    ):
        s.apply({**ev, "seq": seq, "ts": T0 + seq})
    s.offered("i-1", HELP_OFFER, T0 + 2)
    s.offered("i-2", "form_hint", T0 + 3)
    s.apply({"type": "intervention_dismissed", "iid": "i-1", "seq": 3, "ts": T0 + 4})
    sm = summary_of(s, segment="browsers")
    assert sm.items == ("p1", "p2") and sm.segment == "browsers"
    assert sm.offers == (
        ("i-1", HELP_OFFER, "dismissed", T0 + 2),
        ("i-2", "form_hint", "ignored", T0 + 3),
    )
    # The offers ride in the session's snapshot.
    again = Session.from_state(msgpack.unpackb(s.packed()))
    assert summary_of(again, "browsers") == sm


def _view(ts: int) -> EventView:
    row = [0.0] * N_FEATURES
    row[FEATURE_INDEX["n_events"]] = 10
    return EventView(5, ts, row, "/p", "product", "")


def _returning(consent: list[str], dismissed_at: int, now: int) -> Session:
    s = Session("sess-abcdefgh")
    s.consent = consent
    p = update(None, summary("s-0", offers=(("i-0", HELP_OFFER, "dismissed", dismissed_at),)))
    s.history = history_of(p, now)
    return s


def test_no_repeat_of_a_kind_dismissed_in_the_site_window_with_personalisation_only() -> None:
    cfg = PolicyConfig(holdout=0.0, dismissed_days=30, kinds=KINDS)
    now = T0 + 10 * int(DAY_MS)
    with_consent = _returning(["analytics", "personalization"], T0, now)
    assert decide(with_consent, _view(now), 0.99, cfg) is None, "the only kind left was dismissed"
    # Without personalisation consent the profile does not count: a first visit's decision.
    first = Session("sess-abcdefgh")
    first.consent = ["analytics"]
    expected = decide(first, _view(now), 0.99, cfg)
    without = _returning(["analytics"], T0, now)
    got = decide(without, _view(now), 0.99, cfg)
    assert got is not None and expected is not None and got.kind == expected.kind == HELP_OFFER
    # Past the window, or with the rule off, the kind comes back.
    old = _returning(["analytics", "personalization"], now - 31 * int(DAY_MS), now)
    assert decide(old, _view(now), 0.99, cfg) is not None
    off = _returning(["analytics", "personalization"], T0, now)
    d = decide(off, _view(now), 0.99, PolicyConfig(holdout=0.0, dismissed_days=0))
    assert d is not None and d.kind == HELP_OFFER


def test_a_shown_decision_is_noted_on_the_session_a_holdout_is_not() -> None:
    s = Session("sess-abcdefgh")
    s.consent = ["analytics"]
    d = decide(s, _view(T0), 0.99, PolicyConfig(holdout=0.0))
    assert d is not None and s.offers == [[d.iid, d.kind, T0, "ignored"]]
    h = Session("sess-abcdefgh")
    h.consent = ["analytics"]
    held = decide(h, _view(T0), 0.99, PolicyConfig(holdout=0.9999))
    assert held is not None and held.holdout and h.offers == []


def test_a_visit_gives_its_session_the_history_whenever_it_arrives() -> None:
    host = SessionHost()
    score = lambda rows: [0.0] * len(rows)  # noqa: E731
    ev = {"type": "page_view", "seq": 1, "ts": T0, "path": "/"}
    hist = history_of(update(None, summary("s-0")), T0)
    host.visit("s-new", "v-aaaaaaaa", hist)
    host.process([("s-new", "demo", ["analytics", "personalization"], [ev])], score)
    assert host.get("s-new").history == hist
    host.visit("s-new", "v-aaaaaaaa", None)  # a later hello without personalisation consent
    assert host.get("s-new").history is None
    # The history survives compaction (it rides in the state).
    host.visit("s-new", "v-aaaaaaaa", hist)
    host.sweep(now_ms=T0 + host.compact_after_ms)
    assert "s-new" in host.dormant and host.get("s-new").history == hist


def test_the_recommender_starts_a_new_visit_from_the_visitors_history() -> None:
    from serve.apps.recommender import RecommenderService, SessionKNN

    sessions = [["x", "y"], ["x", "y", "z"], ["p"], ["p"], ["p"], ["a", "b"]]
    svc = RecommenderService({"demo": SessionKNN.fit(sessions)})
    cold = svc.recommend({"site": "demo", "recent_items": [], "k": 2})["items"]
    assert cold[0]["id"] == "p", "a first page without history gets the popular items"
    warm = svc.recommend({"site": "demo", "recent_items": [], "history_items": ["x"], "k": 2})
    assert [i["id"] for i in warm["items"]] == ["y", "z"], "x's neighbours first"
    # This visit's own items weigh more than the history's (newest first).
    mixed = svc.recommend({"site": "demo", "recent_items": ["a"], "history_items": ["x"], "k": 1})[
        "items"
    ]
    assert mixed[0]["id"] == "b"
    junk = svc.recommend({"site": "demo", "recent_items": [], "history_items": "x", "k": 2})
    assert junk["items"] == cold


class _Risky:
    """A scorer that finds every moment risky, with no explanation to give."""

    segments = None

    def __call__(self, rows):
        return [0.99] * len(rows)

    def explain(self, rows):
        return [[0.0] * len(r) for r in rows]


def test_replay_carries_a_visitors_profile_from_one_session_to_the_next() -> None:
    from training.loaders import SessionEvents
    from training.replay import replay

    def pages(sid: str, start: int, n: int) -> list[dict]:
        return [
            {"type": "page_view", "path": f"/product/p{k}", "seq": k, "ts": start + k * 1000}
            for k in range(1, n + 1)
        ]

    first = pages("tb-7-0", T0, 3)
    # The replay decides at the third event (min_events 3); the visitor dismisses that help.
    first.append({"type": "intervention_dismissed", "iid": "i-tb-7-0-3", "seq": 4, "ts": T0 + 5000})
    later = T0 + 3_600_000
    sessions = [
        SessionEvents("tb-7-0", first, False, "taobao", T0, {"user_id": "7"}),
        SessionEvents(
            "tb-7-1", pages("tb-7-1", later, 4), False, "taobao", later, {"user_id": "7"}
        ),
    ]
    policy = PolicyConfig(holdout=0.0, budget=1.0, risk_threshold=0.5)
    kinds = lambda r: {sid: [d.kind for d in ds] for sid, ds in r.decisions.items()}  # noqa: E731
    remembered = replay(sessions, _Risky(), policy=policy)
    assert kinds(remembered) == {"tb-7-0": [HELP_OFFER]}, "the dismissed kind is not offered again"
    newcomer = replay(sessions, _Risky(), policy=policy, consent=("analytics",))
    assert kinds(newcomer) == {"tb-7-0": [HELP_OFFER], "tb-7-1": [HELP_OFFER]}


def test_history_holds_the_newest_items_only() -> None:
    from actors.core.profile import HISTORY_ITEMS

    p = update(None, summary("s-1", items=tuple(f"i{n}" for n in range(15))))
    hist = history_of(p, T0)
    assert hist[2] == [f"i{n}" for n in range(15 - HISTORY_ITEMS, 15)]


async def test_shards_merging_one_visitors_sessions_at_once_both_count(redis_url, prefix) -> None:
    import asyncio

    import redis.asyncio as aioredis

    from actors.core.retention import Retention
    from actors.shard.profiles import ShardProfiles
    from cluster.keys import Keys, subject_digest

    clients = [aioredis.from_url(redis_url) for _ in range(2)]
    keys = Keys(prefix)
    hour = Retention(profiles=3600)  # the site's profiles retention sets the TTL
    shards = [ShardProfiles(c, keys, lambda site: hour) for c in clients]
    try:
        # Two shards, each ending its own session of the same visitor, concurrently, many times.
        for n in range(10):
            await asyncio.gather(
                *(
                    shard.remember(
                        [("demo", "v-aaaaaaaa", summary(f"s-{n}-{i}", items=(f"i{n}",)))]
                    )
                    for i, shard in enumerate(shards)
                )
            )
        profile = unpack(await clients[0].get(keys.visitor_profile("demo", "v-aaaaaaaa")))
        assert profile is not None and profile.visits == 20, "no merge lost to another"
        assert 0 < await clients[0].ttl(keys.visitor_profile("demo", "v-aaaaaaaa")) <= 3600
        # An erased visitor's profile is never written back by a session that ends later.
        await clients[0].hset(keys.erased("demo", subject_digest("demo", "v-erased0")), "ts", 1)
        assert await shards[0].remember([("demo", "v-erased0", summary("s-late"))]) == 0
        assert await clients[0].exists(keys.visitor_profile("demo", "v-erased0")) == 0
        hist = await shards[0].histories([("s-new", "demo", "v-aaaaaaaa")], T0)
        assert hist["s-new"][0][F["visits_before"]] == 20
        none = await shards[0].histories([("s-x", "demo", "v-bbbbbbbb")], T0)
        assert none["s-x"][0] == list(FIRST_VISIT)
    finally:
        for c in clients:
            await c.aclose()


def test_the_access_document_holds_everything_the_profile_keeps() -> None:
    import json

    from actors.core.profile import as_document

    p = update(
        None,
        summary(
            "s-1",
            purchased=True,
            items=("a",),
            segment="browsers",
            offers=(("i-1", HELP_OFFER, "dismissed", T0),),
        ),
    )
    doc = json.loads(json.dumps(as_document(p)))
    assert doc["visits"] == 1 and doc["visits_with_a_purchase"] == 1
    assert doc["items_viewed_lately"] == ["a"] and doc["segments_seen"] == ["browsers"]
    assert doc["help_offered"] == [{"kind": HELP_OFFER, "what_you_did": "dismissed", "ts_ms": T0}]
