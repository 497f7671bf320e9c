"""Start the whole service in one process tree: Redis, Ray, shards, Serve, gateway, HTTP.

``lifeline up`` calls :func:`run`; the test suite calls :meth:`Stack.start`
inside its own event loop on the shared Ray cluster. Either way the parts
are the real ones: a Redis server (configured, local, or embedded), a Ray
cluster (joined if one is running, else started), SessionShard actors, and
the ``websockets`` + aiohttp servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from aiohttp import web

from actors.core.sites import Site, load_sites
from actors.shard.actor import SessionShard
from cluster import ray_sessions
from cluster.config import Settings, check_data_key, check_secret, redact_url
from cluster.keys import Keys
from cluster.listener_tls import server_context
from cluster.loops import bounded
from cluster.migrate import migrate
from cluster.processes import Supervised
from cluster.redis_client import cleartext_warning, redis_client
from cluster.redis_server import Persistence, RedisServer, ensure_redis, persistence
from cluster.resharding import ShardControl
from cluster.sealing import master_keys
from cluster.shard_actors import Placement, shard_index, shard_name, start_or_find
from cluster.shard_set import read_members
from cluster.tokens import token_keyring
from cluster.tracing import TraceConfig, tracing_for
from serve.console.app import build_console
from serve.console.context import ConsoleContext
from serve.edge.gateway import Gateway
from serve.edge.http import build_app
from serve.edge.ip_limits import ip_limits_of
from serve.edge.protocol import Limits

log = logging.getLogger("lifeline")

RAY_NAMESPACE = "lifeline"

# Ray starts its workers at nice 15 so that they cannot starve the raylet. Our
# workers are the hot path: at nice 15 a SessionShard got ~7 % of a core next
# to the nice-0 gateways and spent ~93 % of each batch waiting to be scheduled
# (batches of 5,000 events took 1.4 s for ~0.1 s of work). Only applies to a
# cluster this process starts; a joined cluster keeps its own setting.
RAY_SYSTEM_CONFIG = {"worker_niceness": 0}
ROOT = Path(__file__).resolve().parent.parent


def shard_count(settings: Settings) -> int:
    """One shard per CPU Ray has, unless configured."""
    if settings.shards > 0:
        return settings.shards
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


@dataclass
class Stack:
    """A running Lifeline: what the CLI serves and what the tests talk to."""

    settings: Settings
    redis: RedisServer | None = None
    shards: list[Any] = field(default_factory=list)
    gateway: Gateway | None = None
    sites: dict[str, Site] = field(default_factory=dict)
    runner: web.AppRunner | None = None
    http_port: int = 0
    console_runner: web.AppRunner | None = None
    console_port: int = 0
    ws_port: int = 0
    serve_handles: dict[str, Any] = field(default_factory=dict)
    extra: list[Any] = field(default_factory=list)  # things to stop (LLM stand-in server, ...)
    dashboard_url: str = ""
    processes: list[Supervised] = field(default_factory=list)  # extra gateway processes
    persistence: Persistence | None = None
    warnings: list[str] = field(default_factory=list)  # said at start-up, and again in the banner
    ray_record: Path | None = None  # this run's local Ray cluster (cluster/ray_sessions.py)
    control: ShardControl | None = None  # adds and removes shards (cluster/resharding.py)
    # Local: shards end with this process. Joined (RAY_ADDRESS): detached, found again by name
    # by the next run, stopped by `lifeline down` (cluster/shard_actors.py).
    placement: Placement = field(default_factory=Placement)
    found_shards: list[str] = field(default_factory=list)  # joined: already running at start
    _control_task: asyncio.Future | None = None

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    @property
    def http_url(self) -> str:
        return f"{self._scheme('http')}://{self.settings.host}:{self.http_port}"

    @property
    def console_url(self) -> str:
        return f"{self._scheme('http')}://{self.settings.console_host}:{self.console_port}"

    @property
    def ws_url(self) -> str:
        return f"{self._scheme('ws')}://{self.settings.host}:{self.ws_port}/ws"

    def _scheme(self, plain: str) -> str:
        """``ws``/``http``, or ``wss``/``https`` when the listeners have a certificate."""
        return plain + "s" if self.settings.tls_cert else plain

    async def start(
        self,
        limits: Limits | None = None,
        with_serve: bool = False,
        shard_name_suffix: str = "",
        gateways: int = 1,
    ) -> Stack:
        s = self.settings
        secret_warning = check_secret(s)  # raises off loopback with a key anyone can know
        if secret_warning:
            self._warn(secret_warning)
        data_key_warning = check_data_key(s)  # the same for the event log's master key
        if data_key_warning:
            self._warn(data_key_warning)
        self.redis = ensure_redis(s.redis_target, data_dir=s.data_dir)
        cleartext = cleartext_warning(self.redis.url)
        if cleartext:
            self._warn(cleartext)
        if self.redis.embedded:
            log.warning(
                "no Redis configured or answering at 127.0.0.1:6379: using an embedded one at %s "
                "(append-only file in %s)",
                self.redis.url,
                self.redis.workdir,
            )
        self.persistence = persistence(self.redis.url)
        persistence_warning = self.persistence.warning()
        if persistence_warning:
            self._warn(persistence_warning)
        self.sites = load_sites(s.sites_file)
        # Sessions an earlier release stored keep their events and resume where they were.
        await asyncio.to_thread(migrate, redis_client(self.redis.url), Keys(s.prefix))
        address = os.environ.get("RAY_ADDRESS") or None
        self.placement = Placement(detached=address is not None, namespace=RAY_NAMESPACE)
        if not ray.is_initialized():
            if address is None:  # a cluster of our own: first clear what a killed run left
                await asyncio.to_thread(ray_sessions.stop_stale, s.data_dir)
            ctx = ray.init(
                address=address,
                namespace=RAY_NAMESPACE,
                logging_level="WARNING",
                include_dashboard=None,
                _system_config=None if address else RAY_SYSTEM_CONFIG,
            )
            self.dashboard_url = ctx.dashboard_url or ""
            node = getattr(ray._private.worker, "_global_node", None)
            if address is None and node is not None and node.head:
                self.ray_record = ray_sessions.record(s.data_dir, node.get_session_dir_path())
        if with_serve:
            from serve.apps.deployments import deploy

            self.serve_handles = await asyncio.to_thread(deploy, s, self.redis.url, s.prefix)
        trace = TraceConfig.of(s)  # explicit: a joined Ray cluster's workers have their own env

        def start_named(name: str) -> Any:
            """The shard called ``name``: the running one on a joined cluster, else a new one."""
            i = shard_index(name)
            shard, found = start_or_find(
                self.placement,
                name,
                lambda options: SessionShard.options(**options).remote(
                    i,
                    self.redis_url,
                    s.prefix,
                    s.sites_file,
                    s.idle_deactivate_s,
                    with_serve,
                    trace,
                    master_keys(s),  # recovery opens the sealed log (a joined env may lack it)
                ),
            )
            if found:
                self.found_shards.append(name)
            return shard

        def make(i: int) -> tuple[str, Any]:
            """Start SessionShard number ``i`` (at start, and by ``lifeline shards add``)."""
            name = shard_name(i, shard_name_suffix)
            return name, start_named(name)

        names = await self._shard_names(shard_name_suffix)
        self.shards = [start_named(name) for name in names]
        if self.found_shards:
            log.warning(
                "found %d of %d shards running on the joined Ray cluster (%s): using them",
                len(self.found_shards),
                len(names),
                ", ".join(self.found_shards),
            )
        # Wait until every shard has loaded its model and opened its Serve handles:
        # the first visitor must not pay for either.
        await asyncio.gather(*(sh.warm_up.remote() for sh in self.shards))
        self.gateway = Gateway(
            self.redis.url,
            s.prefix,
            self.shards,
            self.sites,
            token_keyring(s),
            limits=limits,
            ip_limits=ip_limits_of(s),
            site_events_per_s=s.site_events_per_s,
            batch_window_ms=s.batch_window_ms,
            append_window_ms=s.append_window_ms,
            tracing=tracing_for("lifeline-gateway", trace),
            seal=s.encrypt_at_rest,
            master=master_keys(s),
            shard_names=names,
            replica_ack=s.replica_ack,
        )
        # The help chat streams answers from the ChatAssistant app; without Serve the
        # visitor gets fallback turns and the chat goes to the support queue.
        self.gateway.chat.assistant = self.serve_handles.get("assistant")
        self.control = ShardControl(
            self.gateway.redis, Keys(s.prefix), names, self.shards, make, self.gateway
        )
        self.control.changed = self._shards_changed
        await self.control.publish()  # before the gateways start: they follow it from there
        tls = server_context(s)  # None without a certificate; raises on a bad one, before listening
        self.ws_port = await self.gateway.start(s.host, s.ws_port, reuse_port=gateways > 1, ssl=tls)
        for _ in range(gateways - 1):
            await self._start_extra_gateway(names)
        self._control_task = asyncio.ensure_future(self.control.serve())
        self.runner, self.http_port = await _serve(
            build_app(self.gateway, self.ws_url), s.host, s.http_port, tls
        )
        console = ConsoleContext(
            s,
            self.redis.url,
            Keys(s.prefix),
            sites=self.sites,
            gateway=self.gateway,
            shard_info=self.shard_info,
            processes=self.gateway_states,
            status=self._status,
        )
        self.console_runner, self.console_port = await _serve(
            build_console(console), s.console_host, s.console_port, tls
        )
        return self

    async def _shard_names(self, suffix: str) -> list[str]:
        """The shards this run serves with.

        Joined: the set an earlier run left in Redis (resharded, maybe), so a
        restart finds the same actors; the first run on a cluster, and every
        local run, names ``shard_count`` new ones.
        """
        if self.placement.detached:
            client = redis_client(self.redis_url, aio=True)
            try:
                _, stored = await read_members(client, Keys(self.settings.prefix))
            finally:
                await client.aclose()
            if stored:
                return stored
        return [shard_name(i, suffix) for i in range(shard_count(self.settings))]

    def _shards_changed(self, shards: list[Any]) -> None:
        self.shards = shards

    async def add_shard(self) -> dict[str, Any]:
        """One more shard, in force at every gateway when this returns (cluster/resharding.py)."""
        assert self.control is not None
        return await self.control.add()

    async def remove_shard(self, name: str) -> dict[str, Any]:
        """Hand over shard ``name``'s sessions and stop it (cluster/resharding.py)."""
        assert self.control is not None
        return await self.control.remove(name)

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)

    async def _start_extra_gateway(self, shard_names: list[str]) -> None:
        """One more gateway process on the same WebSocket port (see cluster/gateway_worker.py).

        It is supervised (restarted with backoff when it dies, cluster/processes.py).
        Its settings, the Redis URL and the resume-token key among them, go
        through its environment: a command line is visible to every user in ``ps``.
        """
        env = {**os.environ, **self.settings.to_env(), "REDIS_URL": self.redis_url}
        env["LIFELINE_WS_PORT"] = str(self.ws_port)
        env["LIFELINE_PARENT_PID"] = str(os.getpid())  # it stops when we do (gateway_worker.py)
        argv = [sys.executable, "-m", "cluster.gateway_worker"]
        argv += ["--ray-address", ray.get_runtime_context().gcs_address]
        argv += ["--shards", ",".join(shard_names)]
        # The shards are named in this driver's namespace (a test run has its own).
        argv += ["--ray-namespace", ray.get_runtime_context().namespace]
        proc = Supervised(f"gateway process {len(self.processes) + 1}", argv, env, ROOT)
        await proc.start()
        self.processes.append(proc)

    def gateway_states(self) -> list[dict[str, Any]]:
        """Every gateway of this host and its state, for ``/healthz`` (all ``up``: healthy)."""
        main = {"name": "gateway 0 (main process)", "pid": os.getpid(), "state": "up"}
        if self.gateway is not None:
            main["id"] = self.gateway.id
            if not self.gateway.loops.healthy:  # a background loop keeps failing
                main["state"] = "failing"
        return [main, *(p.status() for p in self.processes)]

    def _status(self) -> dict[str, Any]:
        p = self.persistence
        return {
            "redis_url": redact_url(self.redis_url),
            "embedded_redis": bool(self.redis and self.redis.embedded),
            "redis_persistence": None
            if p is None
            else {"known": p.known, "aof": p.aof, "appendfsync": p.appendfsync, "save": p.rdb_save},
        }

    @property
    def prefix(self) -> str:
        return self.settings.prefix

    async def event_count(self, sid: str, site: str = "demo") -> int:
        """Events durably logged for a session (of the demo site unless told)."""
        assert self.gateway is not None
        return len(await self.gateway.store.read_events(site, sid))

    def side_gateway(self, redis_url: str | None = None, **options: Any) -> Gateway:
        """Another gateway over this stack's shards, by their names (tests and tools).

        It routes every session to the shard the stack's own gateway does: a ring of
        other names would send a session's events to another shard. ``options`` go to
        :class:`Gateway` (limits, budgets, ...); call its ``start`` and ``stop``.
        """
        assert self.gateway is not None and self.redis is not None
        s = self.settings
        return Gateway(
            redis_url or self.redis.url,
            s.prefix,
            list(self.gateway.shards.values()),
            self.sites,
            token_keyring(s),
            shard_names=list(self.gateway.shards),
            **options,
        )

    def shard_for(self, sid: str) -> Any:
        """The SessionShard actor that hosts ``sid``."""
        assert self.gateway is not None
        return self.gateway.shards[self.gateway.ring.owner(sid)]

    async def operator_count(self) -> int:
        """How many operators can sign in to the console."""
        assert self.redis is not None
        r = redis_client(self.redis.url)
        return int(await asyncio.to_thread(r.scard, Keys(self.prefix).operator("users")))

    async def shard_info(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(sh.ping.remote() for sh in self.shards)))

    async def stop(self) -> None:
        """Stop everything this stack started; no step may hold the rest up for long.

        Each step gets a bound: one that overruns (a socket that will not close, a
        shard call that never answers) is logged by name and left behind, so the
        steps after it (the shards' flush, Redis) still run.
        """
        if self._control_task is not None:
            self._control_task.cancel()
            await bounded("the shard-set control loop", self._control_task, STOP_STEP_S, log)
        await bounded(
            "gateway processes",
            asyncio.gather(*(p.stop() for p in self.processes)),
            STOP_STEP_S,
            log,
        )
        for runner in (self.console_runner, self.runner):
            if runner is not None:
                await bounded("an HTTP listener", runner.cleanup(), STOP_STEP_S, log)
        if self.gateway is not None:
            await bounded("the gateway", self.gateway.stop(), STOP_STEP_S, log)
        if self.shards:
            # A clean stop writes what the shards hold in memory (snapshots, console tallies).
            await bounded(
                "the shards' flush",
                asyncio.gather(*(sh.flush.remote() for sh in self.shards)),
                STOP_STEP_S,
                log,
            )
        if not self.placement.detached:  # joined: they outlive us (`lifeline down` stops them)
            for sh in self.shards:
                with contextlib.suppress(Exception):  # already gone
                    ray.kill(sh)
        for thing in self.extra:
            stop = getattr(thing, "stop", None)
            if stop is not None:
                result = stop()
                if asyncio.iscoroutine(result):
                    await bounded(type(thing).__name__, result, STOP_STEP_S, log)
        if self.redis is not None:
            self.redis.stop()
        ray_sessions.forget(self.ray_record)  # Ray stops its processes as this one exits


STOP_STEP_S = 10.0  # the longest one stop step may take (Stack.stop)


async def _serve(
    app: web.Application, host: str, port: int, tls: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0: any free port; ``tls``: https); its runner and port."""
    # Long responses (the console's live stream) get 2 s to end, not aiohttp's 60.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def dashboard_auth() -> str:
    """How an operator signs in to the dashboard, when Ray's token authentication is on."""
    token = Path.home() / ".ray" / "auth_token"
    return (
        f"  (sign in with the token in {token}, or `ray get-auth-token`)" if token.exists() else ""
    )


async def run(
    settings: Settings, with_serve: bool = True, llm_stub: bool = False, gateways: int = 1
) -> None:
    """Serve until interrupted (the ``lifeline up`` command)."""
    stack = Stack(settings)
    if llm_stub and not settings.anthropic_api_key:
        from serve.dev.llm_stub import start_stub_server

        stub = await start_stub_server("127.0.0.1", 0)
        stack.extra.append(stub)
        os.environ["ANTHROPIC_BASE_URL"] = stub.url
        os.environ["ANTHROPIC_API_KEY"] = "local-stand-in"
        settings = Settings()
        stack.settings = settings
        log.warning(
            "LLM nudges come from the local Messages API stand-in at %s (no real key set)", stub.url
        )
    # Ctrl-C or SIGTERM from the first moment, start-up included (which takes
    # ~25 s): the start is cancelled and whatever already runs is stopped.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def listen() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

    listen()
    starting = asyncio.ensure_future(stack.start(with_serve=with_serve, gateways=gateways))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starting
        print("Stopping: interrupted during start-up.", flush=True)
        await stack.stop()
        return
    stopping.cancel()
    starting.result()  # a failed start raises here
    listen()  # again: ray.init put in a SIGTERM handler of its own
    info = await stack.shard_info()
    redis_note = (
        f" (embedded, append-only file in {stack.redis.workdir})"
        if stack.redis and stack.redis.embedded
        else ""
    )
    warnings = "".join(f"  WARNING       {w}\n" for w in stack.warnings)
    if not await stack.operator_count():
        warnings += (
            "  (no console operators yet: `lifeline operators add NAME --role admin` makes the "
            "first)\n"
        )
    print(
        f"""
Lifeline is running.
  demo shop     {stack.http_url}/
  client script {stack.http_url}/lifeline.js
  WebSocket     {stack.ws_url}?site=demo  ({gateways} gateway process{"es" if gateways > 1 else ""})
  console       {stack.console_url}/   (health /healthz, metrics /metrics)
  Redis         {redact_url(stack.redis_url)}{redis_note}
  shards        {len(info)} (model {info[0]["model"] if info else "?"})
  Ray dashboard {"http://" + stack.dashboard_url if stack.dashboard_url else "not running (see `ray status`)"}{dashboard_auth()}
{warnings}Press Ctrl-C to stop.
""",
        flush=True,
    )
    await stop.wait()
    await stack.stop()
