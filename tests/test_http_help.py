"""The demo server's help pages: every guide a nudge can link to resolves (serve/edge/http.py)."""

from __future__ import annotations

import html

from aiohttp.test_utils import TestClient, TestServer

from serve.apps.knowledge import KnowledgeBase
from serve.edge.http import build_app


async def test_every_help_article_a_nudge_can_link_resolves():
    # The help route needs no gateway: the real app, on an ephemeral port, without the service.
    app = build_app(gateway=None, ws_url="ws://127.0.0.1:1/ws")  # type: ignore[arg-type]
    articles = KnowledgeBase.load("demo").articles
    assert articles
    async with TestClient(TestServer(app)) as client:
        for a in articles:
            r = await client.get(a.url)
            assert r.status == 200, a.url
            assert f"<h1>{html.escape(a.title)}</h1>" in await r.text()
        assert (await client.get("/help/no-such-article")).status == 404
