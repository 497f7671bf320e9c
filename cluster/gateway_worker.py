"""An extra gateway process: same WebSocket port (SO_REUSEPORT), same shards, same Redis.

``lifeline up --gateways N`` starts N-1 of these next to the main process,
which also serves HTTP. Each joins the running Ray cluster, looks the shards
up by name, and accepts sockets on the shared port; the kernel spreads new
connections over the processes. A session lives on whichever process holds
its socket; the Lua append keeps its sequence numbers exact even when a
resume lands on another process.

Started by :mod:`cluster.stack`, not by hand, and restarted by it when it
dies (cluster/processes.py): it prints ``ready`` on stdout once it
listens, and stops on SIGTERM. Every setting, the Redis URL and the
resume-token key among them, comes from the environment the stack gives
it (``Settings.to_env``), never from the command line, which ``ps`` shows
to every user of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Get SIGTERM when the process that started us dies, even by SIGKILL (Linux only).

    A gateway left behind by a killed ``lifeline up`` would hold its port and
    a Ray connection to a cluster that is gone; the next ``lifeline up`` could
    not tell it from a live one.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    expected = os.environ.get("LIFELINE_PARENT_PID")
    if expected and os.getppid() != int(expected):  # the parent died before prctl took effect
        sys.exit(1)


async def serve(args: argparse.Namespace) -> None:
    import ray

    from actors.core.sites import load_sites
    from cluster.config import Settings, check_data_key, check_secret
    from cluster.listener_tls import server_context
    from cluster.sealing import master_keys
    from cluster.stack import RAY_NAMESPACE
    from cluster.tokens import token_keyring
    from cluster.tracing import TraceConfig, tracing_for
    from serve.edge.gateway import Gateway
    from serve.edge.ip_limits import ip_limits_of

    settings = Settings()
    check_secret(settings)  # the stack checked the same settings; a hand start is refused too
    check_data_key(settings)
    ray.init(
        address=args.ray_address,
        namespace=args.ray_namespace or RAY_NAMESPACE,
        logging_level="WARNING",
    )
    # The set in force now (a restart after `lifeline shards add` must not use the first one),
    # once Redis is in this release's key layout.
    names = await current_names(settings) or args.shards.split(",")
    shards = [ray.get_actor(name) for name in names]
    gateway = Gateway(
        settings.redis_target,
        settings.prefix,
        shards,
        load_sites(settings.sites_file),
        token_keyring(settings),
        ip_limits=ip_limits_of(settings),
        site_events_per_s=settings.site_events_per_s,
        batch_window_ms=settings.batch_window_ms,
        append_window_ms=settings.append_window_ms,
        tracing=tracing_for("lifeline-gateway", TraceConfig.of(settings)),
        seal=settings.encrypt_at_rest,
        master=master_keys(settings),
        shard_names=names,
        replica_ack=settings.replica_ack,
    )
    from serve.apps.assistant import assistant_handle

    gateway.chat.assistant = await asyncio.to_thread(assistant_handle)  # None: fallback turns
    await gateway.start(
        settings.host, settings.ws_port, reuse_port=True, ssl=server_context(settings)
    )
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gateway.stop()


async def current_names(settings) -> list[str]:
    """The shard names stored in Redis (cluster/shard_set.py), [] if none are; first waits
    for Redis to be in this release's key layout (cluster/migrate.py)."""
    from cluster.keys import Keys
    from cluster.migrate import await_layout
    from cluster.redis_client import redis_client
    from cluster.shard_set import read_members

    redis = redis_client(settings.redis_target, aio=True)
    try:
        await await_layout(redis, Keys(settings.prefix))
        return (await read_members(redis, Keys(settings.prefix)))[1]
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ray-address", required=True)
    ap.add_argument("--shards", required=True, help="comma-separated shard actor names")
    ap.add_argument("--ray-namespace", default="", help="the shards' namespace (default: lifeline)")
    args = ap.parse_args(argv)
    die_with_parent()
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
