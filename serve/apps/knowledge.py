"""Per-site help articles, indexed for retrieval, to ground LLM nudges.

Each site has a folder ``serve/apps/kb/<site>/`` of short Markdown articles with a
small front matter (``title``, ``url``: the article's path on the site,
``pages``: page types it is about) and a labelled question set
``questions.json``. The nudge writer searches the articles with a query built
from the session context (:func:`serve.apps.nudge.retrieval_query`) and puts the
best excerpts in the prompt, so the LLM can point at the right help page and
quote only what the site wrote.

Several retrieval methods are implemented so they can be measured against
each other on the labelled questions (``python -m serve.apps.knowledge``); the
method the nudge writer uses is :data:`WINNER`, and a test keeps it equal to
the measured best. Pure Python plus scikit-learn; no downloads, no network.

Limits: built for a few dozen articles per site (everything is in memory and
re-indexed at start-up in milliseconds); no embeddings, so a question that
shares neither words nor word fragments with its article is missed.
"""

from __future__ import annotations

import html
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve.apps.nudge import GroundingArticle, retrieval_query

KB_ROOT = Path(__file__).resolve().parent / "kb"

METHODS: tuple[str, ...] = ("bm25", "tfidf_word", "tfidf_char", "hybrid_rrf")

# Chosen by `python -m serve.apps.knowledge` on serve/apps/kb/demo/questions.json; see
# BENCHMARKS.md. tests/test_nudge.py re-measures and fails if this drifts.
WINNER = "hybrid_rrf"

_STOP = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "our",
        "so",
        "that",
        "the",
        "this",
        "to",
        "was",
        "we",
        "what",
        "when",
        "where",
        "which",
        "who",
        "will",
        "with",
        "you",
        "your",
        "not",
        "no",
        "there",
        "their",
        "them",
        "they",
        "then",
        "than",
        "too",
        "very",
        "just",
        "also",
        "any",
    }
)


def _stem(word: str) -> str:
    """A deliberately tiny suffix stripper (plural, -ing, -ed); enough for help text."""
    for suf, keep in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suf) and len(word) - len(suf) >= 3:
            return word[: -len(suf)] + keep
    return word


def tokenize(text: str) -> list[str]:
    """Lower-case word stems without stop words."""
    return [_stem(w) for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP]


@dataclass(frozen=True, slots=True)
class Article:
    """One help article: id (file stem), title, site path, body, page types."""

    id: str
    title: str
    url: str
    body: str
    pages: tuple[str, ...] = ()

    def index_text(self) -> str:
        # The title says what the article is about more densely than the body,
        # so it counts twice.
        return f"{self.title}. {self.title}. {self.body}"


def parse_article(article_id: str, text: str) -> Article:
    """Parse ``---``-delimited ``key: value`` front matter and the body after it."""
    meta: dict[str, str] = {}
    body = text
    if text.startswith("---"):
        _, head, body = text.split("---", 2)
        for line in head.strip().splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                meta[k.strip().lower()] = v.strip()
    url = meta.get("url", f"/help/{article_id}")
    if not url.startswith("/"):
        raise ValueError(f"article {article_id}: url must be a site path starting with /")
    pages = tuple(p.strip() for p in meta.get("pages", "").split(",") if p.strip())
    return Article(article_id, meta.get("title", article_id), url, body.strip(), pages)


class _BM25:
    """Okapi BM25 over :func:`tokenize` tokens (k1=1.5, b=0.75)."""

    def __init__(self, docs: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.tfs = [Counter(tokenize(d)) for d in docs]
        self.lens = [sum(tf.values()) for tf in self.tfs]
        self.avg = (sum(self.lens) / len(self.lens)) if self.lens else 1.0
        df: Counter[str] = Counter()
        for tf in self.tfs:
            df.update(tf.keys())
        n = len(docs)
        self.idf = {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}

    def scores(self, query: str) -> list[float]:
        q = tokenize(query)
        out = []
        for tf, dl in zip(self.tfs, self.lens, strict=True):
            s = 0.0
            for t in q:
                f = tf.get(t, 0)
                if f:
                    s += (
                        self.idf[t]
                        * f
                        * (self.k1 + 1)
                        / (f + self.k1 * (1 - self.b + self.b * dl / self.avg))
                    )
            out.append(s)
        return out


class _Tfidf:
    """scikit-learn TF-IDF with cosine similarity, on word stems or character n-grams."""

    def __init__(self, docs: Sequence[str], analyzer: str) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        if analyzer == "word":
            self.vec = TfidfVectorizer(
                tokenizer=tokenize, lowercase=False, token_pattern=None, sublinear_tf=True
            )
        else:
            # char_wb n-grams inside word boundaries survive typos and word forms
            # ("shiping", "returning") that exact tokens miss.
            self.vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)
        self.mat = self.vec.fit_transform(docs)

    def scores(self, query: str) -> list[float]:
        q = self.vec.transform([query])
        return (self.mat @ q.T).toarray().ravel().tolist()  # rows are L2-normalised: cosine


class _HybridRRF:
    """Reciprocal rank fusion of BM25 and char n-gram TF-IDF (k=60, Cormack et al. 2009)."""

    def __init__(self, docs: Sequence[str]) -> None:
        self.parts = [_BM25(docs), _Tfidf(docs, "char")]

    def scores(self, query: str) -> list[float]:
        total = [0.0] * len(self.parts[0].tfs)
        for part in self.parts:
            s = part.scores(query)
            order = sorted(range(len(s)), key=lambda i: -s[i])
            for rank, i in enumerate(order):
                if s[i] > 0:
                    total[i] += 1.0 / (60 + rank + 1)
        return total


@dataclass
class KnowledgeBase:
    """A site's help articles with lazily built retrieval indexes."""

    site: str
    articles: list[Article]
    _index: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, site: str, root: Path = KB_ROOT) -> KnowledgeBase:
        """Read ``root/<site>/*.md``; an unknown site gets an empty knowledge base."""
        folder = root / site
        if not re.fullmatch(r"[A-Za-z0-9_-]+", site) or not folder.is_dir():
            return cls(site, [])
        arts = [
            parse_article(p.stem, p.read_text(encoding="utf-8"))
            for p in sorted(folder.glob("*.md"))
        ]
        return cls(site, arts)

    def _retriever(self, method: str) -> Any:
        if method not in self._index:
            docs = [a.index_text() for a in self.articles]
            if method == "bm25":
                self._index[method] = _BM25(docs)
            elif method == "tfidf_word":
                self._index[method] = _Tfidf(docs, "word")
            elif method == "tfidf_char":
                self._index[method] = _Tfidf(docs, "char")
            elif method == "hybrid_rrf":
                self._index[method] = _HybridRRF(docs)
            else:
                raise ValueError(f"unknown retrieval method {method!r}")
        return self._index[method]

    def prepare(self, method: str = WINNER) -> KnowledgeBase:
        """Build the retrieval index now (at replica start) rather than on the first query."""
        if self.articles:
            self._retriever(method)
        return self

    def search(self, query: str, k: int = 3, method: str = WINNER) -> list[tuple[Article, float]]:
        """Up to ``k`` articles with a positive score, best first."""
        if not self.articles or not query.strip():
            return []
        scores = self._retriever(method).scores(query)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], self.articles[i].id))
        return [(self.articles[i], scores[i]) for i in order[:k] if scores[i] > 0]

    def grounding(self, ctx: Mapping[str, Any], k: int = 2) -> list[GroundingArticle]:
        """The best ``k`` articles for a shard context, as prompt material."""
        hits = self.search(retrieval_query(ctx), k=k)
        return [GroundingArticle(a.title, a.url, a.body) for a, _ in hits]


def article_html(site: str, article_id: str, root: Path = KB_ROOT) -> str | None:
    """A minimal HTML page for one article, or None if there is no such article.

    For the site's ``/help/<id>`` route, so the links a nudge points at
    resolve. Everything is escaped: articles are plain text.
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]+", site) or not re.fullmatch(r"[A-Za-z0-9_-]+", article_id):
        return None
    path = root / site / f"{article_id}.md"
    if not path.is_file():
        return None
    a = parse_article(article_id, path.read_text(encoding="utf-8"))
    paras = "".join(f"<p>{html.escape(line)}</p>" for line in a.body.splitlines() if line.strip())
    title = html.escape(a.title)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<link rel="stylesheet" href="/demo.css"></head><body><main><h1>{title}</h1>{paras}'
        "</main></body></html>"
    )


def load_questions(
    site: str = "demo", root: Path = KB_ROOT, subset: str | None = None
) -> list[tuple[str, list[str]]]:
    """(query, acceptable article ids) pairs; context items become their derived query.

    ``subset``: None for all, ``"q"`` for visitor questions only, ``"ctx"`` for
    context-derived queries only.
    """
    data = json.loads((root / site / "questions.json").read_text(encoding="utf-8"))
    out = []
    for item in data["items"]:
        kind = "q" if "q" in item else "ctx"
        if subset is not None and kind != subset:
            continue
        query = item["q"] if kind == "q" else retrieval_query(item["ctx"])
        out.append((query, list(item["a"])))
    return out


def measure(
    site: str = "demo", root: Path = KB_ROOT, subset: str | None = None
) -> dict[str, dict[str, float]]:
    """hit@1, hit@3 and MRR of every method on the site's labelled questions.

    A hit is any article listed as acceptable for the question.
    """
    kb = KnowledgeBase.load(site, root)
    questions = load_questions(site, root, subset)
    results: dict[str, dict[str, float]] = {}
    for method in METHODS:
        h1 = h3 = rr = 0.0
        for query, ok in questions:
            ranked = [a.id for a, _ in kb.search(query, k=len(kb.articles), method=method)]
            rank = next((i + 1 for i, aid in enumerate(ranked) if aid in ok), None)
            if rank is not None:
                rr += 1.0 / rank
                h1 += rank == 1
                h3 += rank <= 3
        n = len(questions)
        results[method] = {"hit@1": h1 / n, "hit@3": h3 / n, "mrr": rr / n, "n": float(n)}
    return results


def best_method(results: Mapping[str, Mapping[str, float]]) -> str:
    """Highest MRR, then hit@1; ties go to the earlier (simpler) method in METHODS."""
    return max(
        METHODS,
        key=lambda m: (
            round(results[m]["mrr"], 6),
            round(results[m]["hit@1"], 6),
            -METHODS.index(m),
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print the retrieval comparison table (Markdown) for a site, default ``demo``."""
    args = list(sys.argv[1:] if argv is None else argv)
    site = args[0] if args else "demo"
    res = measure(site)
    parts = {"q": measure(site, subset="q"), "ctx": measure(site, subset="ctx")}
    nq, nc = int(parts["q"][METHODS[0]]["n"]), int(parts["ctx"][METHODS[0]]["n"])
    print(
        f"Retrieval on serve/apps/kb/{site}/questions.json: {nq} visitor questions, {nc} contexts\n"
    )
    print("| method | hit@1 | hit@3 | MRR | MRR questions | MRR contexts |")
    print("|---|---|---|---|---|---|")
    for m in METHODS:
        r = res[m]
        print(
            f"| {m} | {r['hit@1']:.3f} | {r['hit@3']:.3f} | {r['mrr']:.3f} "
            f"| {parts['q'][m]['mrr']:.3f} | {parts['ctx'][m]['mrr']:.3f} |"
        )
    print(f"\nwinner: {best_method(res)} (WINNER in serve/apps/knowledge.py: {WINNER})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
