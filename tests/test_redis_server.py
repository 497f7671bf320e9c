"""Finding or starting a Redis: the one-command start must work where none runs."""

from __future__ import annotations

import pytest
import redis

from cluster.redis_server import RedisUnavailable, ensure_redis, start_embedded


def test_embedded_server_starts_answers_and_stops():
    server = start_embedded()
    try:
        assert server.embedded and server.url.startswith("redis://127.0.0.1:")
        r = redis.Redis.from_url(server.url)
        r.set("k", "v")
        assert r.get("k") == b"v"
        r.close()
    finally:
        server.stop()
    assert server.process.poll() is not None


def test_configured_url_that_does_not_answer_is_an_error_not_a_silent_switch():
    with pytest.raises(RedisUnavailable, match="does not answer"):
        ensure_redis("redis://127.0.0.1:1/0")


def test_configured_url_is_used(redis_url):
    assert ensure_redis(redis_url).url == redis_url
