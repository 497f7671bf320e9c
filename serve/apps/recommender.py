"""Session-based recommendations: co-occurrence kNN blended with categories and popularity.

The model answers "given the items this session touched, most recent last,
what is it likely to want next?":

* **Co-occurrence (session kNN).** Two items are neighbours when sessions
  touch them close together. Each pair within ``window`` positions adds
  ``1 / distance``, more in the forward direction (``b`` after ``a`` predicts
  a next click better than ``b`` before ``a``), and the sum is normalised by
  the items' session counts (``n_a^alpha * n_b^(1-alpha)`` plus a shrinkage
  term, so rare pairs do not dominate). Only the ``neighbours`` best are
  kept per item. At query time the last ``recent`` items vote, each older one
  with weight ``decay`` times the next newer one's.
* **Content similarity (categories).** With an item -> category map, popular
  items of the recent items' categories get a share of the score; this is
  what recommends for items nobody has co-visited yet.
* **Popularity.** A small popularity term breaks ties and is all a cold
  session (no known items) gets.

Items in the cart are never recommended; the caller may exclude more (e.g.
the item on screen). Pure: no Ray, Redis or network imports; the model is
saved and loaded as msgpack bytes. :class:`RecommenderService` adds per-site
models and catalogs (names, URLs) on top, for the Serve deployment.

Limits: dictionaries in memory, fit in one pass: fine for the tens of
thousands of items and sessions here (YOOCHOOSE sample: 2,933 items fit in
about a second), not for millions (use sparse matrices and a top-k job then).
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack

from cluster.keys import Keys

FORMAT_VERSION = 1
DEFAULT_ITEM_URL = "/product.html?id={id}"
MAX_HISTORY_ITEMS = 20  # a visitor profile keeps as many (actors/core/profile.py MAX_ITEMS)  # the demo shop's product pages


def model_key(prefix: str, site: str) -> str:
    """Redis key of a site's published model bytes (``+ ":version"``: its version counter)."""
    return Keys(prefix).recsys_model(site)


def catalog_key(prefix: str, site: str) -> str:
    """Redis hash of a site's catalog: item id -> msgpack ``{"name", "url"}``."""
    return Keys(prefix).recsys_catalog(site)


@dataclass(frozen=True)
class RecParams:
    """Hyper-parameters; defaults chosen on a validation day (see BENCHMARKS.md)."""

    window: int = 5
    forward_weight: float = 1.0
    backward_weight: float = 1.0
    alpha: float = 0.9
    shrink: float = 2.0
    neighbours: int = 100
    recent: int = 5
    decay: float = 0.6
    category_weight: float = 0.3
    category_top: int = 50
    popularity_weight: float = 0.02


@dataclass
class SessionKNN:
    """The fitted model. Build with :meth:`fit`; query with :meth:`recommend`."""

    params: RecParams = field(default_factory=RecParams)
    neighbours: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    popularity: dict[str, float] = field(default_factory=dict)  # clicks / max clicks
    popular: list[str] = field(default_factory=list)  # most clicked first
    category: dict[str, str] = field(default_factory=dict)
    category_top: dict[str, list[str]] = field(default_factory=dict)
    n_sessions: int = 0

    @classmethod
    def fit(
        cls,
        sessions: Iterable[Sequence[str]],
        categories: Mapping[str, str] | None = None,
        params: RecParams | None = None,
    ) -> SessionKNN:
        """Fit from sessions given as item-id sequences in click order.

        Consecutive repeats are collapsed (a reload is not a co-visit);
        ``categories`` may cover only some items.
        """
        p = params or RecParams()
        clicks: Counter[str] = Counter()
        in_sessions: Counter[str] = Counter()
        raw: dict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
        n = 0
        for session in sessions:
            seq: list[str] = []
            for item in session:
                item = str(item)
                clicks[item] += 1
                if not seq or seq[-1] != item:
                    seq.append(item)
            if not seq:
                continue
            n += 1
            in_sessions.update(set(seq))
            for i, a in enumerate(seq):
                for j in range(i + 1, min(len(seq), i + 1 + p.window)):
                    b = seq[j]
                    if a == b:
                        continue
                    w = 1.0 / (j - i)
                    raw[a][b] += w * p.forward_weight
                    raw[b][a] += w * p.backward_weight
        neighbours: dict[str, list[tuple[str, float]]] = {}
        for a, row in raw.items():
            na = in_sessions[a] ** p.alpha
            sims = (
                (b, v / (na * in_sessions[b] ** (1.0 - p.alpha) + p.shrink)) for b, v in row.items()
            )
            best = heapq.nlargest(p.neighbours, sims, key=lambda t: (t[1], t[0]))
            neighbours[a] = [(b, round(s, 6)) for b, s in best]
        top = max(clicks.values()) if clicks else 1
        popularity = {i: c / top for i, c in clicks.items()}
        popular = [i for i, _ in sorted(clicks.items(), key=lambda t: (-t[1], t[0]))[:500]]
        cat = {str(k): str(v) for k, v in (categories or {}).items() if str(k) in clicks}
        by_cat: dict[str, list[str]] = defaultdict(list)
        for item in sorted(cat, key=lambda i: (-clicks[i], i)):
            lst = by_cat[cat[item]]
            if len(lst) < p.category_top:
                lst.append(item)
        return cls(p, neighbours, popularity, popular, cat, dict(by_cat), n)

    @property
    def items(self) -> int:
        return len(self.popularity)

    def recommend(
        self,
        recent_items: Sequence[str],
        cart_items: Iterable[str] = (),
        k: int = 10,
        exclude: Iterable[str] = (),
    ) -> list[tuple[str, float]]:
        """Up to ``k`` (item, score) pairs, best first, never an item in the cart.

        ``recent_items`` are oldest first. Scores are comparable within one
        answer only (each component is scaled to its own maximum).
        """
        p = self.params
        banned = {str(i) for i in cart_items} | {str(i) for i in exclude}
        tail: list[str] = []
        for item in reversed([str(i) for i in recent_items]):
            if item not in tail:
                tail.append(item)  # newest first, distinct
            if len(tail) == p.recent:
                break
        co: defaultdict[str, float] = defaultdict(float)
        for age, item in enumerate(tail):
            w = p.decay**age
            for other, s in self.neighbours.get(item, ()):
                co[other] += w * s
        scores: defaultdict[str, float] = defaultdict(float)
        if co:
            top = max(co.values()) or 1.0
            for item, s in co.items():
                scores[item] += s / top
        if p.category_weight > 0 and self.category:
            cat_w: defaultdict[str, float] = defaultdict(float)
            for age, item in enumerate(tail):
                c = self.category.get(item)
                if c is not None:
                    cat_w[c] += p.decay**age
            if cat_w:
                top_w = max(cat_w.values())
                for c, w in cat_w.items():
                    members = self.category_top.get(c, [])
                    if not members:
                        continue
                    head = self.popularity[members[0]] or 1.0
                    for item in members:
                        scores[item] += (
                            p.category_weight * (w / top_w) * (self.popularity[item] / head)
                        )
        # Popularity: a tie-breaker for known candidates, the answer for cold sessions.
        need = k + len(banned) + len(tail)
        for item in self.popular[:need]:
            scores[item] += 0.0
        for item in scores:
            scores[item] += p.popularity_weight * self.popularity.get(item, 0.0)
        for item in banned:
            scores.pop(item, None)
        return heapq.nlargest(k, scores.items(), key=lambda t: (t[1], t[0]))

    def to_bytes(self) -> bytes:
        """msgpack bytes (format version, params, neighbour lists, popularity, categories)."""
        return msgpack.packb(
            {
                "v": FORMAT_VERSION,
                "params": asdict(self.params),
                "neighbours": {
                    a: [[b for b, _ in lst], [s for _, s in lst]]
                    for a, lst in self.neighbours.items()
                },
                "popularity": self.popularity,
                "popular": self.popular,
                "category": self.category,
                "category_top": self.category_top,
                "n_sessions": self.n_sessions,
            },
            use_bin_type=True,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionKNN:
        """Inverse of :meth:`to_bytes`; refuses other format versions."""
        d = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if d.get("v") != FORMAT_VERSION:
            raise ValueError(f"unsupported recommender model format {d.get('v')!r}")
        known = set(RecParams.__dataclass_fields__)
        params = RecParams(**{k: v for k, v in d["params"].items() if k in known})
        neighbours = {
            a: list(zip(ids, sims, strict=True)) for a, (ids, sims) in d["neighbours"].items()
        }
        return cls(
            params,
            neighbours,
            dict(d["popularity"]),
            list(d["popular"]),
            dict(d["category"]),
            {c: list(v) for c, v in d["category_top"].items()},
            int(d["n_sessions"]),
        )


def catalog_from_json(data: Any) -> dict[str, dict[str, Any]]:
    """``{item: {"name", "url", "category"?}}`` from a catalog list (with ``id``) or map.

    Accepts the demo shop's ``catalog.json`` (a list of products) as is.
    Entries without a name are skipped: there is nothing to show for them.
    """
    rows = data.items() if isinstance(data, Mapping) else ((d.get("id"), d) for d in data or [])
    out: dict[str, dict[str, Any]] = {}
    for item, entry in rows:
        if item is None or not isinstance(entry, Mapping) or not entry.get("name"):
            continue
        e = {
            "name": str(entry["name"]),
            "url": str(entry.get("url") or DEFAULT_ITEM_URL.format(id=item)),
        }
        if entry.get("category") is not None:
            e["category"] = str(entry["category"])
        out[str(item)] = e
    return out


def cold_start_model(
    catalog: Mapping[str, Mapping[str, Any]], params: RecParams | None = None
) -> SessionKNN:
    """A model from a catalog alone: every item seen once, categories as content.

    For a site with no recorded sessions yet: it recommends items of the
    recent items' categories, and the catalog for a cold session. A model
    fitted on real sessions replaces it as soon as one is published.
    """
    cats = {i: e["category"] for i, e in catalog.items() if "category" in e}
    return SessionKNN.fit([[i] for i in sorted(catalog)], cats, params)


def _as_items(value: Any, limit: int = 50) -> list[str]:
    if not isinstance(value, (list, tuple)):
        return []
    return [
        str(v)[:128]
        for v in value[-limit:]
        if isinstance(v, (str, int)) and not isinstance(v, bool)
    ]


class RecommenderService:
    """Per-site models and catalogs behind the deployment's request shape.

    ``catalogs[site][item_id] = {"name": ..., "url": ...}``. With a catalog,
    items missing from it are skipped (nothing to show for them); without
    one, items are named by id and linked at :data:`DEFAULT_ITEM_URL`.
    """

    MAX_K = 20

    def __init__(
        self,
        models: Mapping[str, SessionKNN] | None = None,
        catalogs: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    ) -> None:
        self.models: dict[str, SessionKNN] = dict(models or {})
        self.catalogs: dict[str, Mapping[str, Mapping[str, Any]]] = dict(catalogs or {})

    def recommend(self, ctx: Mapping[str, Any]) -> dict[str, Any]:
        """``{"items": [{"id", "name", "url", "score"}]}`` for one request context.

        ``ctx``: ``{"site", "recent_items": [...], "cart_items": [...], "k": int}``, and
        optionally ``"history_items"``: items of the visitor's earlier visits, oldest first.
        The item on screen (the last recent one) is not recommended either.
        Unknown site or malformed context: an empty list, never an exception.
        """
        site = ctx.get("site") if isinstance(ctx, Mapping) else None
        model = self.models.get(site) if isinstance(site, str) else None
        if model is None:
            return {"items": []}
        recent = _as_items(ctx.get("recent_items"))
        # Items the visitor viewed in earlier visits (their profile, sent only with
        # personalisation consent): older than this visit's, so they seed a new visit's
        # first page and weigh less as the visit goes on.
        history = _as_items(ctx.get("history_items"), limit=MAX_HISTORY_ITEMS)
        cart = _as_items(ctx.get("cart_items"), limit=200)
        k = ctx.get("k", 4)
        k = max(1, min(self.MAX_K, k)) if isinstance(k, int) and not isinstance(k, bool) else 4
        catalog = self.catalogs.get(site)
        exclude = recent[-1:]
        # Ask for more than k when a catalog may filter some out.
        ranked = model.recommend(history + recent, cart, k=k * 3 if catalog else k, exclude=exclude)
        items = []
        for item, score in ranked:
            if catalog is not None:
                entry = catalog.get(item)
                if entry is None:
                    continue
                name, url = (
                    str(entry.get("name", item)),
                    str(entry.get("url", DEFAULT_ITEM_URL.format(id=item))),
                )
            else:
                name, url = item, DEFAULT_ITEM_URL.format(id=item)
            items.append({"id": item, "name": name, "url": url, "score": round(float(score), 4)})
            if len(items) == k:
                break
        return {"items": items}

    def recommend_many(self, ctxs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One answer per context, in order (the batched deployment's body)."""
        return [self.recommend(c) for c in ctxs]
