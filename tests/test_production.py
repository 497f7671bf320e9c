"""Production mode refuses unsafe settings, all listed at once (cluster/production.py, cluster/cli.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cluster.config import PACKAGE_ROOT, Settings, is_production
from cluster.keys import Keys
from cluster.production import count_operators, production_problems, redis_has_credentials
from cluster.redis_client import redis_client
from serve.console.accounts import Accounts

GOOD_SECRET = "s" * 43
SITES = '[sites.shop]\nname = "Shop"\norigins = ["https://shop.example"]\n'


def _settings(tmp_path: Path, **changes: object) -> Settings:
    sites = tmp_path / "sites.toml"
    sites.write_text(SITES)
    base = Settings(
        redis_url="redis://lifeline:hunter2-redis@127.0.0.1:6379/0",
        secret=GOOD_SECRET,
        data_key="d" * 43,
        sites_file=str(sites),
        production=True,
        host="127.0.0.1",
        console_host="127.0.0.1",
    )
    return dataclasses.replace(base, **changes)


def test_predicate_is_on_when_asked_or_bound_beyond_loopback(tmp_path: Path) -> None:
    dev = _settings(tmp_path, production=False)
    assert not is_production(dev)
    assert is_production(_settings(tmp_path))
    assert is_production(dataclasses.replace(dev, host="0.0.0.0"))
    assert is_production(dataclasses.replace(dev, console_host="::"))


def test_safe_settings_pass(tmp_path: Path) -> None:
    assert production_problems(_settings(tmp_path), operators=1) == []
    exposed = _settings(tmp_path, host="0.0.0.0", tls_terminated_by_proxy=True)
    assert production_problems(exposed, operators=1) == []


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    bad = dataclasses.replace(
        Settings(),  # the development defaults: public keys, the sites file with loadtest
        production=True,
        host="0.0.0.0",
        redis_url="redis://127.0.0.1:6379/0",
        secret_previous="old:short",
    )
    problems = "\n".join(production_problems(bad, operators=0))
    for needle in (
        "LIFELINE_SECRET is the public development default",
        "LIFELINE_SECRET_PREVIOUS",
        "LIFELINE_DATA_KEY",
        "['loadtest']",
        "LIFELINE_TLS_TERMINATED_BY_PROXY",
        "has no password",
        "no operator account",
    ):
        assert needle in problems
    assert len(production_problems(bad, operators=0)) == 7


def test_short_secret_and_bad_key_ids_are_refused(tmp_path: Path) -> None:
    assert "too short" in production_problems(_settings(tmp_path, secret="x" * 31), 1)[0]
    assert "key id" in production_problems(_settings(tmp_path, secret_id="no spaces"), 1)[0]


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("redis://127.0.0.1:6379/0", False),
        ("redis://user@127.0.0.1:6379/0", False),
        ("redis://:pw@127.0.0.1:6379/0", True),
        ("rediss://user:pw@redis.internal:6380/0", True),
        ("redis://127.0.0.1:6379/0?password=pw", True),
    ],
)
def test_redis_credentials(url: str, ok: bool) -> None:
    assert redis_has_credentials(url) is ok


def test_operator_accounts_are_counted_in_the_real_redis(redis_url: str, prefix: str) -> None:
    # The shared test Redis's default user has no password, so any password authenticates.
    parts = urlsplit(redis_url)
    url = f"redis://default:any-password@{parts.hostname}:{parts.port or 6379}/0"
    s = Settings(redis_url=url, prefix=prefix)
    assert count_operators(s) == 0

    async def add() -> None:
        client = redis_client(url, aio=True, max_connections=64)
        try:
            await Accounts(client, Keys(prefix)).add("root", "admin", "a-long-password-1")
        finally:
            await client.aclose()

    asyncio.run(add())
    assert count_operators(s) == 1
    assert count_operators(Settings(redis_url="redis://:pw@127.0.0.1:1/0", prefix=prefix)) is None


def test_cli_refuses_with_the_whole_list_and_no_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIFELINE_", "REDIS_URL"))}
    env.update(
        PYTHONPATH=str(PACKAGE_ROOT),
        LIFELINE_SECRET="short-but-secret-value",
        REDIS_URL="redis://127.0.0.1:1/0?password=topsecret-pw",
        LIFELINE_DATA_DIR=str(tmp_path),
    )
    out = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "up", "--production"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "refusing to start (production mode)" in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("  - ")]
    assert len(lines) >= 4  # secret, data key, loadtest site, Redis not answering
    assert "short-but-secret-value" not in out.stderr + out.stdout
    assert "topsecret-pw" not in out.stderr + out.stdout
