"""Recommender data: loaders, the event-log reader, evaluation, and the build/publish job.

* Public click data (``../shared/data``): YOOCHOOSE clicks (RecSys Challenge
  2015 sample) and Diginetica item views with product categories (CIKM Cup
  2016 sample), read into sessions of item ids.
* The live event log: Redis streams ``{prefix}ev:{site}:{sid}`` whose entries hold
  ``b"ev"``, a msgpack list of events normalised by
  :func:`actors.core.events.validate_event`. Product page views (by URL pattern)
  and ``add_to_cart`` events become a session's item sequence.
* Evaluation: next-click prediction with the last day held out (the
  GRU4Rec / session-rec protocol): Recall@20 and MRR@20 of the blended
  session kNN (:class:`serve.apps.recommender.SessionKNN`) against popularity and
  a plain item kNN, all fitted on the same training days in the same run.
* Build: fit a site's model and publish it to Redis, where the Recommender
  deployment loads it.

``python -m training.recommender_data eval`` prints the comparison table;
``python -m training.recommender_data build --site demo`` builds and
publishes. Limits: the whole data set is held in memory (fine at these sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import heapq
import json
import os
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import msgpack

from cluster.config import Settings
from cluster.keys import Keys
from cluster.sealing import opener_for
from serve.apps.recommender import (
    RecParams,
    SessionKNN,
    catalog_from_json,
    catalog_key,
    model_key,
)

DATA_DIR = Path(
    os.environ.get("LIFELINE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")
)
# Product pages of the demo shop: /products/<id> (also /product/<id>).
ITEM_PATH_RE = re.compile(r"^/products?/([A-Za-z0-9_-]{1,64})/?$")
DAY_S = 86400.0

Click = tuple[str, str, float]  # (session id, item id, unix seconds)


# --- loading ------------------------------------------------------------------


def load_yoochoose(path: Path | None = None) -> list[Click]:
    """YOOCHOOSE clicks: ``SessionId<TAB>ItemId<TAB>Time`` (unix seconds)."""
    path = path or DATA_DIR / "yoochoose" / "clicks-train.tsv"
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader)
        return [(r[0], r[1], float(r[2])) for r in reader if len(r) >= 3]


def load_diginetica(path: Path | None = None) -> list[Click]:
    """Diginetica item views; time = the session's date + ``timeframe`` ms into it."""
    path = path or DATA_DIR / "diginetica" / "train-item-views.csv"
    out: list[Click] = []
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter=";")
        next(reader)
        for r in reader:
            day = dt.datetime.strptime(r[4], "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
            out.append((r[0], r[2], day.timestamp() + float(r[3]) / 1000.0))
    return out


def load_diginetica_categories(path: Path | None = None) -> dict[str, str]:
    """``itemId;categoryId`` -> {item: category}."""
    path = path or DATA_DIR / "diginetica" / "product-categories.csv"
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter=";")
        next(reader)
        return {r[0]: r[1] for r in reader if len(r) >= 2}


def sessions_of(clicks: Iterable[Click]) -> dict[str, list[tuple[float, str]]]:
    """Clicks grouped by session, each in time order."""
    by: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for sid, item, ts in clicks:
        by[sid].append((ts, item))
    for seq in by.values():
        seq.sort()
    return dict(by)


def split_last_days(
    clicks: Sequence[Click], days: float = 1.0
) -> tuple[list[list[str]], list[list[str]]]:
    """Hold out the sessions that end in the last ``days`` of the data.

    As in GRU4Rec's preprocessing: test sessions are those whose last click
    falls in the final ``days``; their clicks on items never seen in training
    are dropped, and test sessions left with fewer than 2 clicks are dropped.
    Returns (train sessions, test sessions) as item sequences.
    """
    sessions = sessions_of(clicks)
    tmax = max(ts for _, _, ts in clicks)
    split = tmax - days * DAY_S
    train, test = [], []
    for seq in sessions.values():
        (test if seq[-1][0] > split else train).append([item for _, item in seq])
    known = {i for s in train for i in s}
    test = [t for t in ([i for i in s if i in known] for s in test) if len(t) >= 2]
    return train, test


# --- baselines --------------------------------------------------------------------


class Popularity:
    """POP: the most clicked training items, the same list for everyone."""

    def __init__(self, sessions: Iterable[Sequence[str]], k: int = 20) -> None:
        counts = Counter(i for s in sessions for i in s)
        self.top = [i for i, _ in sorted(counts.items(), key=lambda t: (-t[1], t[0]))[:k]]

    def predict(self, prefix: Sequence[str], k: int = 20) -> list[str]:
        return self.top[:k]


class ItemKNN:
    """Plain item kNN on the last item (the GRU4Rec paper's baseline).

    ``sim(i, j) = n_ij / ((n_i + lam)^alpha * (n_j + lam)^(1 - alpha))`` where
    ``n_ij`` counts sessions containing both items; lam=20, alpha=0.5.
    """

    def __init__(
        self,
        sessions: Iterable[Sequence[str]],
        lam: float = 20.0,
        alpha: float = 0.5,
        keep: int = 100,
    ) -> None:
        n: Counter[str] = Counter()
        pair: dict[str, Counter[str]] = defaultdict(Counter)
        for s in sessions:
            items = set(s)
            n.update(items)
            for a in items:
                row = pair[a]
                for b in items:
                    if a != b:
                        row[b] += 1
        self.nn: dict[str, list[str]] = {}
        for a, row in pair.items():
            da = (n[a] + lam) ** alpha
            sims = ((b, c / (da * (n[b] + lam) ** (1 - alpha))) for b, c in row.items())
            self.nn[a] = [b for b, _ in heapq.nlargest(keep, sims, key=lambda t: (t[1], t[0]))]

    def predict(self, prefix: Sequence[str], k: int = 20) -> list[str]:
        return self.nn.get(prefix[-1], [])[:k]


def blend_predictor(model: SessionKNN) -> Callable[[Sequence[str], int], list[str]]:
    """Adapt :class:`SessionKNN` to ``predict(prefix, k) -> items``."""

    def predict(prefix: Sequence[str], k: int = 20) -> list[str]:
        return [i for i, _ in model.recommend(prefix, (), k=k)]

    return predict


def evaluate(
    predict: Callable[[Sequence[str], int], list[str]],
    test: Iterable[Sequence[str]],
    cutoff: int = 20,
    skip_repeats: bool = False,
) -> dict[str, float]:
    """Recall@cutoff and MRR@cutoff over every next click of every test session.

    For a session of n clicks there are n-1 predictions: from each prefix,
    the click that follows it. ``skip_repeats`` leaves out the predictions
    whose answer is the item just clicked again (a re-click or reload), which
    a recommender never shows: it is the item on screen.
    """
    hits = 0
    rr = 0.0
    n = 0
    for s in test:
        for i in range(1, len(s)):
            target = s[i]
            if skip_repeats and target == s[i - 1]:
                continue
            recs = predict(s[:i], cutoff)
            n += 1
            try:
                rank = recs.index(target, 0, cutoff) + 1
            except ValueError:
                continue
            hits += 1
            rr += 1.0 / rank
    return {"recall": hits / n if n else 0.0, "mrr": rr / n if n else 0.0, "n": float(n)}


GRID: tuple[dict[str, Any], ...] = (
    {"decay": 0.3},
    {"decay": 0.8},
    {"window": 3},
    {"window": 10},
    {"backward_weight": 0.2},
    {"backward_weight": 1.0},
    {"alpha": 0.5},
    {"alpha": 0.9},
    {"shrink": 10.0},
    {"popularity_weight": 0.0},
    {"popularity_weight": 0.1},
    {"category_weight": 0.1},
    {"category_weight": 0.6},
)


def tune(
    train_clicks: Sequence[Click],
    days: float = 1.0,
    categories: Mapping[str, str] | None = None,
    grid: Sequence[Mapping[str, Any]] = GRID,
    base: RecParams | None = None,
    rounds: int = 2,
) -> tuple[RecParams, list[tuple[dict[str, Any], float, float]]]:
    """Pick parameters on a validation split carved from the training days only.

    Coordinate search: each round tries one change at a time from the current
    best and keeps the best of them; at most ``rounds`` rounds, fewer if a
    round finds nothing better. The test days are never looked at. Returns
    the best params by MRR@20 and every (params as a diff from the
    defaults, Recall@20, MRR@20) tried.
    """
    best = base or RecParams()
    fit_s, val_s = split_last_days(train_clicks, days)
    rows: list[tuple[dict[str, Any], float, float]] = []
    seen: dict[RecParams, float] = {}

    def score(params: RecParams) -> float:
        if params not in seen:
            r = evaluate(blend_predictor(SessionKNN.fit(fit_s, categories, params)), val_s)
            seen[params] = r["mrr"]
            rows.append((_diff(params), r["recall"], r["mrr"]))
        return seen[params]

    best_mrr = score(best)
    for _ in range(rounds):
        round_best, round_mrr = best, best_mrr
        for change in grid:
            if change.get("category_weight") is not None and not categories:
                continue
            cand = replace(best, **change)
            m = score(cand)
            if m > round_mrr:
                round_best, round_mrr = cand, m
        if round_best == best:
            break
        best, best_mrr = round_best, round_mrr
    return best, rows


def _diff(params: RecParams) -> dict[str, Any]:
    default = asdict(RecParams())
    return {k: v for k, v in asdict(params).items() if default[k] != v}


def run_dataset(
    name: str,
    clicks: Sequence[Click],
    days: float,
    categories: Mapping[str, str] | None = None,
    do_tune: bool = True,
) -> dict[str, Any]:
    """POP, item kNN and the blend on one data set, same split, same run."""
    train, test = split_last_days(clicks, days)
    tmax = max(ts for _, _, ts in clicks)
    train_ids = _train_ids(clicks, tmax - days * DAY_S)
    train_clicks = [c for c in clicks if c[0] in train_ids]
    out: dict[str, Any] = {
        "dataset": name,
        "holdout_days": days,
        "train_sessions": len(train),
        "test_sessions": len(test),
        "items": len({i for s in train for i in s}),
    }
    t0 = time.perf_counter()
    params = RecParams()
    if do_tune:
        params, rows = tune(train_clicks, days, categories)
        out["tuning"] = [{"change": c, "recall@20": r, "mrr@20": m} for c, r, m in rows]
    out["params"] = asdict(params)
    fit_t = time.perf_counter()
    blend = SessionKNN.fit(train, categories, params)
    out["blend_fit_s"] = round(time.perf_counter() - fit_t, 3)
    methods: dict[str, Callable[[Sequence[str], int], list[str]]] = {
        "POP": Popularity(train).predict,
        "Item-kNN": ItemKNN(train).predict,
        "Session-kNN blend": blend_predictor(blend),
    }
    # Ablation: only the last item votes (what item kNN uses), same co-occurrence.
    methods["Session-kNN blend, last item only"] = blend_predictor(
        SessionKNN.fit(train, categories, replace(params, recent=1))
    )
    if categories:
        methods["Session-kNN blend, no categories"] = blend_predictor(
            SessionKNN.fit(train, None, params)
        )
    out["results"] = {name: evaluate(f, test) for name, f in methods.items()}
    out["results_no_repeats"] = {
        name: evaluate(f, test, skip_repeats=True) for name, f in methods.items()
    }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _train_ids(clicks: Sequence[Click], split: float) -> set[str]:
    last: dict[str, float] = {}
    for sid, _, ts in clicks:
        if ts > last.get(sid, -1.0):
            last[sid] = ts
    return {sid for sid, ts in last.items() if ts <= split}


def run_eval(data_dir: Path | None = None, do_tune: bool = True) -> list[dict[str, Any]]:
    """The evaluation reported in BENCHMARKS.md: YOOCHOOSE (last day), Diginetica (last 7 days)."""
    base = data_dir or DATA_DIR
    reports = [
        run_dataset(
            "YOOCHOOSE sample",
            load_yoochoose(base / "yoochoose" / "clicks-train.tsv"),
            1.0,
            None,
            do_tune,
        )
    ]
    dg = load_diginetica(base / "diginetica" / "train-item-views.csv")
    cats = load_diginetica_categories(base / "diginetica" / "product-categories.csv")
    # 2,398 sessions only: one day would leave a few dozen test sessions, so the
    # usual Diginetica protocol's 7 days are held out instead.
    reports.append(run_dataset("Diginetica sample", dg, 7.0, cats, do_tune))
    return reports


def format_reports(reports: Sequence[Mapping[str, Any]]) -> str:
    """Markdown tables of :func:`run_eval` results."""
    lines = []
    for r in reports:
        n_all = int(next(iter(r["results"].values()))["n"])
        n_new = int(next(iter(r["results_no_repeats"].values()))["n"])
        lines.append(
            f"**{r['dataset']}**: last {r['holdout_days']:g} day(s) held out; "
            f"{r['train_sessions']} training sessions, {r['test_sessions']} test sessions, "
            f"{r['items']} items; {n_all} next-click predictions, {n_new} of them to a "
            "different item than the one on screen.\n"
        )
        lines.append(
            "| method | Recall@20 | MRR@20 | Recall@20, no re-clicks | MRR@20, no re-clicks |"
        )
        lines.append("|---|---|---|---|---|")
        for name, m in r["results"].items():
            m2 = r["results_no_repeats"][name]
            lines.append(
                f"| {name} | {m['recall']:.4f} | {m['mrr']:.4f} | {m2['recall']:.4f} | {m2['mrr']:.4f} |"
            )
        lines.append("")
    return "\n".join(lines)


# --- the live event log ---------------------------------------------------------------


def item_of_page(path: str, item_path_re: re.Pattern[str] = ITEM_PATH_RE) -> str | None:
    """The product id a page path shows: ``/products/<id>`` or an ``id`` query parameter."""
    base, _, query = path.partition("?")
    m = item_path_re.fullmatch(base)  # "$" alone would take a trailing newline
    if m:
        return m.group(1)
    for part in query.split("&"):
        k, _, v = part.partition("=")
        if k == "id" and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", v):
            return v
    return None


def items_from_events(
    events: Iterable[Mapping[str, Any]], item_path_re: re.Pattern[str] = ITEM_PATH_RE
) -> list[str]:
    """A session's item sequence: product page views and add-to-cart, in seq order.

    A page view's ``item`` field wins (the session actor uses the same field
    for its recent items); without it the product id is read from the path.
    """
    out: list[str] = []
    for ev in sorted((e for e in events if isinstance(e, Mapping)), key=lambda e: e.get("seq", 0)):
        t = ev.get("type")
        if t == "page_view":
            item = ev.get("item")
            if not isinstance(item, str) or not item:
                path = ev.get("path")
                item = item_of_page(path, item_path_re) if isinstance(path, str) else None
            if item:
                out.append(item)
        elif t == "add_to_cart" and isinstance(ev.get("item"), str):
            out.append(ev["item"])
    return out


async def sessions_from_event_log(
    redis: Any, prefix: str, item_path_re: re.Pattern[str] = ITEM_PATH_RE, min_items: int = 2
) -> list[list[str]]:
    """Item sequences of every session in the event log under ``prefix``.

    ``redis`` is a ``redis.asyncio.Redis``. Entries whose ``ev`` field is not
    a msgpack list are skipped (the log may hold other fields later), and so
    are sealed entries whose data key is gone (erased; cluster/sealing.py).
    """
    sessions: list[list[str]] = []
    opener = opener_for(Settings(), Keys(prefix))
    async for key in redis.scan_iter(match=Keys(prefix).events_pattern, count=500):
        events: list[Mapping[str, Any]] = []
        entries = [(i, f) for i, f in await redis.xrange(key) if f.get(b"ev") is not None]
        for raw in await opener.aopen_entries(redis, entries):
            if raw is None:
                continue
            try:
                batch = msgpack.unpackb(raw, raw=False)
            except (ValueError, msgpack.UnpackException):
                continue
            if isinstance(batch, list):
                events.extend(e for e in batch if isinstance(e, dict))
        items = items_from_events(events, item_path_re)
        if len(items) >= min_items:
            sessions.append(items)
    return sessions


async def publish_model(redis: Any, prefix: str, site: str, model: SessionKNN) -> int:
    """Store the model where the deployment reads it; returns the new version number."""
    await redis.set(model_key(prefix, site), model.to_bytes())
    return int(await redis.incr(model_key(prefix, site) + ":version"))


async def publish_catalog(
    redis: Any, prefix: str, site: str, catalog: Mapping[str, Mapping[str, Any]]
) -> None:
    """Store ``{item: {"name", "url"}}`` as a hash of msgpack values."""
    if not catalog:
        return
    key = catalog_key(prefix, site)
    await redis.delete(key)
    await redis.hset(key, mapping={k: msgpack.packb(dict(v)) for k, v in catalog.items()})


async def build(
    redis_url: str,
    prefix: str,
    site: str,
    public: Sequence[str] = (),
    catalog_file: Path | None = None,
    params: RecParams | None = None,
) -> dict[str, Any]:
    """Fit a site's model from its event log (+ public data) and publish it.

    Public sessions get id prefixes (``yc:``, ``dg:``) so they cannot collide
    with the site's own item ids; with a catalog they are never shown, they
    only sharpen popularity and co-occurrence statistics of their own items.
    """
    from cluster.redis_client import redis_client

    r = redis_client(redis_url, aio=True)
    try:
        sessions = await sessions_from_event_log(r, prefix)
        n_log = len(sessions)
        cats: dict[str, str] = {}
        if "yoochoose" in public:
            for s in sessions_of(load_yoochoose()).values():
                sessions.append([f"yc:{i}" for _, i in s])
        if "diginetica" in public:
            for s in sessions_of(load_diginetica()).values():
                sessions.append([f"dg:{i}" for _, i in s])
            cats.update({f"dg:{k}": f"dg:{v}" for k, v in load_diginetica_categories().items()})
        catalog: dict[str, dict[str, Any]] = {}
        if catalog_file is not None:
            catalog = catalog_from_json(json.loads(Path(catalog_file).read_text()))
            cats.update({k: v["category"] for k, v in catalog.items() if "category" in v})
            # Every catalogued item counts as seen once, so a new or unpopular
            # item can still be recommended through its category.
            sessions.extend([i] for i in sorted(catalog))
        model = SessionKNN.fit(sessions, cats, params)
        version = await publish_model(r, prefix, site, model)
        await publish_catalog(r, prefix, site, catalog)
        return {
            "site": site,
            "version": version,
            "log_sessions": n_log,
            "sessions": len(sessions),
            "items": model.items,
        }
    finally:
        await r.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``eval`` (print the comparison) or ``build`` (fit and publish a site's model)."""
    p = argparse.ArgumentParser(prog="python -m training.recommender_data")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval", help="next-click evaluation vs POP and item kNN")
    e.add_argument("--data", type=Path, default=None)
    e.add_argument(
        "--no-tune", action="store_true", help="skip the validation-day parameter search"
    )
    e.add_argument("--json", type=Path, default=None, help="also write the full report here")
    b = sub.add_parser("build", help="fit from the event log and publish to Redis")
    b.add_argument("--site", default="demo")
    b.add_argument("--redis", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    b.add_argument("--prefix", default=os.environ.get("LIFELINE_PREFIX", "ll:"))
    b.add_argument("--public", default="", help="comma list: yoochoose,diginetica")
    b.add_argument(
        "--catalog",
        type=Path,
        default=None,
        help='catalog JSON: a list of {"id", "name", "url", "category"} or a map by id',
    )
    a = p.parse_args(argv)
    if a.cmd == "eval":
        reports = run_eval(a.data, not a.no_tune)
        print(format_reports(reports))
        for r in reports:
            print(
                f"{r['dataset']}: params {r['params']}, fit {r['blend_fit_s']} s, run {r['seconds']} s"
            )
        if a.json:
            a.json.write_text(json.dumps(reports, indent=2))
        return 0
    public = [x for x in a.public.split(",") if x]
    print(json.dumps(asyncio.run(build(a.redis, a.prefix, a.site, public, a.catalog))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
