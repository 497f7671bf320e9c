"""Redis over TLS with an ACL user: a whole stack against it, and the password kept out of sight.

A second redis-server (Debian's, built with TLS) of this test's own listens
on a TLS port only, asks for a client certificate, and knows one user
(``lifeline``, with a password made here; the default user is off), all from
a configuration file, so its own command line holds no secret. A stack with
one shard and two gateway processes runs against it; events sent over a
real WebSocket must be stored through the gateway's own append connection
(serve/edge/resp.py), and the password must appear in no log, health
answer, command line of any process started, CLI output, or the Ray state
API's view of the actors and tasks. A wrong password and a wrong CA are
refused at start with a clear error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
import pytest
import pytest_asyncio
import ray

from cluster.config import Settings
from cluster.keys import Keys
from cluster.production import redis_tls_problems
from cluster.redis_client import RedisConfigError, cleartext_warning, redis_client
from cluster.redis_server import RedisUnavailable, _free_port, refusal
from cluster.stack import Stack
from serve.console.context import ConsoleContext
from serve.console.ops import health
from serve.dev.pyclient import LifelineClient
from tests.certs import TLSFiles, tls_files
from tests.test_gateway_hardening import clicks, until

ASYNC = pytest.mark.asyncio(loop_scope="session")

ORIGIN = "http://127.0.0.1:8080"
REDIS_SERVER = "/usr/bin/redis-server"  # Debian's, built with TLS (checked below)
ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class SecureRedis:
    port: int
    password: str
    tls: TLSFiles
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"rediss://lifeline:{self.password}@127.0.0.1:{self.port}/0"

    def settings(self, **overrides) -> Settings:
        values = dict(
            redis_url=self.url,
            redis_ca=str(self.tls.ca),
            redis_cert=str(self.tls.client_cert),
            redis_key=str(self.tls.client_key),
            prefix=f"llsec-{uuid.uuid4().hex[:8]}:",
            ws_port=0,
            http_port=0,
            console_port=0,
            shards=1,
        )
        return Settings(**(values | overrides))


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory) -> SecureRedis:
    """A redis-server on a TLS port only, mutual TLS, ACL user ``lifeline``, default user off."""
    assert Path(REDIS_SERVER).exists(), "Debian's redis-server is needed"
    tmp = tmp_path_factory.mktemp("secure-redis")
    tls = tls_files(tmp)
    password = "pw-" + secrets.token_hex(16)
    port = _free_port()
    conf = tmp / "redis.conf"
    conf.write_text(
        f"port 0\ntls-port {port}\nbind 127.0.0.1\n"
        f"tls-cert-file {tls.cert}\ntls-key-file {tls.key}\ntls-ca-cert-file {tls.ca}\n"
        "tls-auth-clients yes\n"
        'save ""\nappendonly no\n'
        f"dir {tmp}\nlogfile {tmp / 'redis.log'}\n"
        "user default off\n"
        f"user lifeline on >{password} ~* &* +@all\n"
    )
    conf.chmod(0o600)
    process = subprocess.Popen(
        [REDIS_SERVER, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    server = SecureRedis(port, password, tls, process)
    url = server.settings().redis_target
    deadline = time.monotonic() + 10
    while refusal(url, timeout=0.5) is not None:  # a child's port: no event to await
        assert process.poll() is None, (tmp / "redis.log").read_text()
        assert time.monotonic() < deadline, refusal(url)
        time.sleep(0.05)
    yield server
    process.terminate()
    process.wait(5)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def secure_stack(ray_cluster, secure_redis: SecureRedis) -> AsyncIterator[Stack]:
    """One shard, two gateway processes, the console: all against the TLS + ACL Redis."""
    stack = Stack(secure_redis.settings())
    await stack.start(shard_name_suffix=f"-sec-{uuid.uuid4().hex[:6]}", gateways=2)
    yield stack
    await stack.stop()


async def _indexed(stack: Stack, sid: str) -> None:
    """Wait until the shard has written ``sid`` into the session index (through its own client)."""
    reader = redis_client(stack.redis_url)
    key = Keys(stack.prefix).session_index("demo", "seen")
    try:
        await until(
            lambda: reader.zscore(key, sid) is not None, 30, what="the shard's session index"
        )
    finally:
        reader.close()


def _ray_views() -> tuple[list[bytes], list[bytes]]:
    """Every actor record and task event of the Ray cluster, as the GCS serves them (protobuf)."""
    from ray._private.state import state

    actors = list(state._connect_and_get_accessor().get_actor_table(None, None))
    tasks = [event.SerializeToString() for event in state._get_all_task_events()]
    return actors, tasks


def _actor(actor_id: str) -> dict:
    from ray._private.state import state

    return state.actor_table(actor_id)


def _tree() -> list[psutil.Process]:
    """This test process and every process it started (Ray's, the gateway's, Redis's)."""
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


@ASYNC
async def test_events_are_stored_over_tls_and_the_password_shows_nowhere(
    secure_stack: Stack, secure_redis: SecureRedis, caplog, capfd
) -> None:
    caplog.set_level(logging.DEBUG)
    started = time.time()
    password = secure_redis.password
    stack = secure_stack
    # The stack talks to that Redis and no other: it has no plain port, and no default user.
    assert stack.redis_url.startswith("rediss://lifeline:")

    # Both gateway processes listen on one port (SO_REUSEPORT): open sessions until this
    # process's gateway serves one, so that its append connection is the one checked.
    assert stack.gateway is not None
    sids: list[str] = []
    clients: list[LifelineClient] = []
    while stack.gateway.stats.connections == 0:
        assert len(clients) < 40, "the kernel never chose this process's gateway"
        sids.append(f"t-sec-{uuid.uuid4().hex[:12]}")
        clients.append(LifelineClient(stack.ws_url, "demo", sids[-1], ORIGIN))
        assert (await clients[-1].connect())["t"] == "welcome"
    for client in clients:
        await client.send_events(clicks(1, 6))
    for client in clients:
        await client.wait_acked(6)
        await client.close()
    for sid in sids:
        assert await stack.event_count(sid) == 6
    sid = sids[-1]

    # Those acks came from the gateway's own RESP connection (serve/edge/resp.py), over TLS.
    append = stack.gateway.store._nodes.caller("")._conn
    assert append is not None and not append.closed and append.transport is not None
    assert append.transport.get_extra_info("ssl_object") is not None
    # The shard read and wrote through the same Redis: its session index names the session.
    await _indexed(stack, sid)
    # The second gateway process joined the shards and Redis over TLS (else no "ready").
    assert [p["state"] for p in stack.gateway_states()] == ["up", "up"]

    # Health: the public /healthz, and the signed-in operator's detail, as the console builds it.
    async with aiohttp.ClientSession() as http, http.get(f"{stack.console_url}/healthz") as resp:
        public = await resp.text()
    ctx = ConsoleContext(
        stack.settings,
        stack.redis_url,
        Keys(stack.prefix),
        gateway=stack.gateway,
        shard_info=stack.shard_info,
        processes=stack.gateway_states,
        status=stack._status,
    )
    detail = await health(ctx)
    await ctx.redis.aclose()
    assert detail["redis"] is True and detail["redis_url"].startswith("rediss://lifeline:***@")
    for shown in (public, json.dumps(detail, default=str)):
        assert password not in shown

    # What Ray's state API and dashboard show of actors and tasks, read where they read it:
    # the GCS's actor records (runtime env, repr, death cause, ...) and task events, raw.
    # (The tests' Ray cluster runs no dashboard, so list_actors itself cannot be asked.)
    actors, tasks = await asyncio.to_thread(_ray_views)
    assert any(b"SessionShard" in a for a in actors) and tasks
    assert not [a for a in actors + tasks if password.encode() in a]

    # Command lines of every process started here (ps shows them to every user).
    for proc in _tree():
        try:
            argv = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        assert password not in argv, f"pid {proc.pid}: {proc.name()}"

    # Logs: this process's records, the gateway process's stderr, Ray's files (the shard's).
    out, err = capfd.readouterr()
    assert password not in out + err
    assert password not in caplog.text
    logs_dir = Path(ray._private.worker._global_node.get_logs_dir_path())
    scanned = 0
    for path in logs_dir.rglob("*"):
        if path.is_file() and path.stat().st_mtime >= started - 60:
            assert password.encode() not in path.read_bytes(), path
            scanned += 1
    assert scanned > 0


@ASYNC
async def test_a_restarted_shard_finds_the_redis_url_again(secure_stack: Stack) -> None:
    """A shard Ray restarts has the URL again (its creation arguments): it writes to Redis."""
    stack = secure_stack
    shard = stack.shards[0]
    actor_id = shard._actor_id.hex()
    before = _actor(actor_id)["NumRestarts"]
    ray.kill(shard, no_restart=False)
    # Generous timeouts: a restart starts a worker process and loads a model (a loaded
    # 2-core machine takes its time); a shard that cannot connect never gets there.
    await until(lambda: _actor(actor_id)["NumRestarts"] > before, 60, what="the shard's restart")
    await until(lambda: _actor(actor_id)["State"] == "ALIVE", 60, what="the shard alive again")
    sid = f"t-sec-after-{uuid.uuid4().hex[:12]}"
    client = LifelineClient(stack.ws_url, "demo", sid, ORIGIN)
    assert (await client.connect())["t"] == "welcome"
    await client.send_events(clicks(1, 3))
    await client.wait_acked(3)
    await client.close()
    await _indexed(stack, sid)  # the restarted shard wrote to Redis: it had the URL


def test_the_cli_prints_no_password(secure_redis: SecureRedis, monkeypatch, capsys) -> None:
    from cluster.cli import main

    monkeypatch.setenv("REDIS_URL", secure_redis.url)
    monkeypatch.setenv("LIFELINE_REDIS_CA", str(secure_redis.tls.ca))
    assert main(["config"]) == 0
    printed = capsys.readouterr().out
    assert "rediss://lifeline:***@127.0.0.1" in printed
    assert str(secure_redis.tls.ca) in printed
    assert secure_redis.password not in printed


@ASYNC
async def test_a_wrong_password_is_refused_at_start(secure_redis: SecureRedis) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    url = secure_redis.url.replace(secure_redis.password, wrong)
    stack = Stack(secure_redis.settings(redis_url=url))
    t0 = time.monotonic()
    with pytest.raises(RedisUnavailable, match="refused the user or password") as caught:
        await stack.start()
    assert time.monotonic() - t0 < 10
    assert wrong not in str(caught.value) and "lifeline:***@" in str(caught.value)


@ASYNC
async def test_a_certificate_from_another_ca_is_refused_at_start(
    secure_redis: SecureRedis, tmp_path: Path
) -> None:
    other = tls_files(tmp_path, "other")
    stack = Stack(secure_redis.settings(redis_ca=str(other.ca)))
    t0 = time.monotonic()
    with pytest.raises(RedisUnavailable, match="certificate did not verify") as caught:
        await stack.start()
    assert time.monotonic() - t0 < 10
    assert secure_redis.password not in str(caught.value)


def test_without_a_client_certificate_redis_refuses(secure_redis: SecureRedis) -> None:
    url = secure_redis.settings(redis_cert="", redis_key="").redis_target
    why = refusal(url, timeout=2.0)
    assert why is not None and secure_redis.password not in why


def test_tls_settings_fold_into_the_url_once() -> None:
    s = Settings(redis_url="rediss://u:p@redis.example:6380/0", redis_ca="/etc/ca.pem")
    assert s.redis_target == "rediss://u:p@redis.example:6380/0?ssl_ca_certs=%2Fetc%2Fca.pem"
    again = dataclasses.replace(s, redis_url=s.redis_target)  # a gateway process's environment
    assert again.redis_target == s.redis_target
    assert Settings(redis_url="", redis_ca="/etc/ca.pem").redis_target == ""


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://127.0.0.1:6379/0?ssl_ca_certs=/etc/ca.pem", "need a rediss:// URL"),
        ("rediss://127.0.0.1:6380/0?ssl_cert_reqs=none", "must stay 'required'"),
        ("rediss://127.0.0.1:6380/0?ssl_check_hostname=false", "cannot be turned off"),
        ("rediss://127.0.0.1:6380/0?ssl_certfile=/x.pem", "go together"),
        ("rediss://127.0.0.1:6380/0?ssl_ca_certs=/no/such/ca.pem", "names no readable file"),
        ("http://:secret-pw@127.0.0.1:6379/0", "scheme must be"),
    ],
)
def test_unsafe_or_broken_redis_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(RedisConfigError, match=why) as caught:
        redis_client(url)
    assert "secret-pw" not in str(caught.value)


def test_plain_redis_to_another_machine_is_warned_about_and_broken_tls_refused(
    tmp_path: Path,
) -> None:
    plain = "redis://u:pw-plain@10.1.2.3:6379/0"
    warning = cleartext_warning(plain)
    assert warning is not None and "in clear" in warning and "pw-plain" not in warning
    for quiet in ("rediss://u:pw@10.1.2.3:6380/0", "redis://u:pw@127.0.0.1:6379/0", "unix:///r.s"):
        assert cleartext_warning(quiet) is None
    # Production mode refuses TLS settings that cannot work, and lets plain redis:// start
    # (with the warning above): only the operator knows whether the network is private.
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    assert redis_tls_problems(Settings(redis_url=plain)) == []
    tls = Settings(redis_url="rediss://u:pw@10.1.2.3:6380/0", redis_ca=str(ca))
    assert redis_tls_problems(tls) == []
    broken = Settings(redis_url="redis://u:pw@127.0.0.1:6379/0", redis_ca=str(ca))
    assert "need a rediss:// URL" in redis_tls_problems(broken)[0]
    missing = Settings(redis_url="rediss://u:pw@10.1.2.3:6380/0", redis_ca=str(tmp_path / "no"))
    assert "LIFELINE_REDIS_CA" in redis_tls_problems(missing)[0]


def test_every_redis_client_is_opened_by_the_one_function() -> None:
    """No module but cluster/redis_client.py builds a redis-py client or pool itself."""
    needles = ("from_url(", "Redis(", "ConnectionPool(", "StrictRedis")
    offenders = []
    for folder in ("actors", "cluster", "serve", "training", "loadtests"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "cluster" / "redis_client.py":
                continue
            text = path.read_text()
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in needles if n in text]
    assert offenders == []
