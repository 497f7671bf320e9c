"""Finding or starting a Redis: the one-command start must work where none runs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis

from cluster.redis_server import (
    RedisUnavailable,
    _free_port,
    _redis_binary,
    answers,
    ensure_redis,
    persistence,
    start_embedded,
)

ROOT = Path(__file__).resolve().parent.parent


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


def test_error_for_a_configured_url_that_does_not_answer_hides_its_password():
    with pytest.raises(RedisUnavailable) as err:
        ensure_redis("redis://:hunter2@127.0.0.1:1/0")
    assert "hunter2" not in str(err.value) and "redis://:***@127.0.0.1:1/0" in str(err.value)


# -- durability of the embedded server (README, Durability) -------------------------------------


def test_embedded_server_writes_an_append_only_file_that_outlives_the_run(tmp_path):
    server = start_embedded(tmp_path)
    try:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        assert r.config_get("appendonly") == {"appendonly": "yes"}
        assert r.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert r.config_get("dir")["dir"] == str(tmp_path / "redis")
        r.set("acked", "event")
        r.close()
    finally:
        server.stop()
    again = start_embedded(tmp_path)  # the next `lifeline up`
    try:
        r = redis.Redis.from_url(again.url, decode_responses=True)
        assert r.get("acked") == "event"
        r.close()
    finally:
        again.stop()


def test_server_of_a_killed_owner_is_adopted_not_started_twice(tmp_path):
    # A `lifeline up` killed with SIGKILL leaves its embedded server running on the
    # data directory's append-only file; the next start must use that server, not
    # start a second one writing the same file.
    code = (
        "import os, signal, sys, redis\n"
        "from cluster.redis_server import start_embedded\n"
        f"s = start_embedded({str(tmp_path)!r})\n"
        "redis.Redis.from_url(s.url).set('before', 'kill')\n"
        "print(s.url, s.process.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    url, pid = out.stdout.split()
    left = psutil.Process(int(pid))
    try:
        adopted = start_embedded(tmp_path)
        try:
            assert adopted.url == url and adopted.adopted is not None
            assert adopted.adopted.pid == left.pid
            r = redis.Redis.from_url(adopted.url)
            assert r.get("before") == b"kill"
            r.close()
        finally:
            adopted.stop()
        assert not left.is_running() or left.status() == psutil.STATUS_ZOMBIE
    finally:
        if left.is_running():
            left.kill()


def test_server_of_a_running_owner_is_not_taken(tmp_path):
    server = start_embedded(tmp_path)
    try:
        with pytest.raises(RedisUnavailable, match="belongs to a running Lifeline"):
            start_embedded(tmp_path)
    finally:
        server.stop()


def _private_redis(tmp_path, *args: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [_redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
        + list(args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not answers(url, timeout=0.2):  # a child's port: nothing to await but polling
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    return proc, url


@pytest.mark.parametrize(
    ("args", "warned", "fragment"),
    [
        (("--save", "", "--appendonly", "no"), True, "no persistence"),
        (("--save", "900", "1", "--appendonly", "no"), True, "RDB snapshots only"),
        (("--save", "", "--appendonly", "yes", "--appendfsync", "no"), True, "appendfsync no"),
        (("--save", "", "--appendonly", "yes", "--appendfsync", "everysec"), False, ""),
        (("--save", "", "--appendonly", "yes", "--appendfsync", "always"), False, ""),
        (("--rename-command", "CONFIG", ""), True, "persistence unknown"),
    ],
)
def test_persistence_warning_says_what_an_ack_survives(tmp_path, args, warned, fragment):
    proc, url = _private_redis(tmp_path, *args)
    try:
        warning = persistence(url).warning()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert (warning is not None) is warned
    assert fragment in (warning or "")


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_nodes_settings():
    from cluster.config import redact_url
    from cluster.sentinel import BadSentinelURL, is_sentinel, parse

    url = "redis+sentinel://:s3cret@s1:26380,s2,[::1]:26381/lifeline/2?socket_timeout=1.5"
    assert is_sentinel(url) and not is_sentinel("redis://h:6379/0")
    s = parse(url)
    assert s.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert s.master == "lifeline" and not s.tls
    assert s.node == {"password": "s3cret", "db": 2, "socket_timeout": 1.5}
    assert s.sentinel_kwargs() == {"password": "s3cret", "socket_timeout": 1.5}  # no db
    assert parse("rediss+sentinel://s1:1/m").tls
    assert "s3cret" not in redact_url(url)
    from cluster.production import redis_has_credentials

    assert redis_has_credentials(url) and not redis_has_credentials("redis+sentinel://s1:1/m")
    for bad in ("redis+sentinel://s1:1", "redis+sentinel://s1:x/m", "redis+sentinel://s1/m/0/9"):
        with pytest.raises(BadSentinelURL):
            parse(bad)
