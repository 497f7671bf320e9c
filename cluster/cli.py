"""The ``lifeline`` command.

``lifeline up`` starts everything (Redis if none, Ray, shards, Serve,
gateway, demo shop) and prints where to point a browser; ``lifeline config``
prints every setting; training adds ``train``, ``evaluate``, ``models``,
``promote``, ``export`` and ``paper`` (see ``lifeline COMMAND --help``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys


def _up(args: argparse.Namespace) -> int:
    if args.ws_port is not None:
        os.environ["LIFELINE_WS_PORT"] = str(args.ws_port)
    if args.http_port is not None:
        os.environ["LIFELINE_HTTP_PORT"] = str(args.http_port)
    if args.console_port is not None:
        os.environ["LIFELINE_CONSOLE_PORT"] = str(args.console_port)
    if args.production:
        os.environ["LIFELINE_PRODUCTION"] = "1"  # children read it too (Settings.to_env)
    from cluster.config import (
        InsecureSettings,
        Settings,
        check_data_key,
        check_secret,
        is_production,
    )
    from cluster.stack import run

    if is_production(Settings()):
        from cluster.production import count_operators, production_problems

        # Every problem at once, before anything starts: one round of fixes, not one per run.
        problems = production_problems(Settings(), count_operators(Settings()))
        if problems:
            print(
                "lifeline up: refusing to start (production mode), fix all of these:\n"
                + "\n".join(f"  - {p}" for p in problems),
                file=sys.stderr,
                flush=True,
            )
            return 2
    try:  # before anything starts: a refused start leaves nothing behind
        check_secret(Settings())
        check_data_key(Settings())
    except InsecureSettings as exc:
        print(f"lifeline up: refusing to start: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        import uvloop  # the C event loop: socket writes and callbacks cost much less than in asyncio's

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(
        run(
            Settings(),
            with_serve=not args.no_serve,
            llm_stub=not args.no_llm_stub,
            gateways=args.gateways,
        )
    )
    return 0


def _datakeys(args: argparse.Namespace) -> int:
    from cluster.config import Settings
    from cluster.keys import Keys
    from cluster.redis_client import redis_client
    from cluster.redis_server import ensure_redis
    from cluster.sealing import master_keys, rewrap

    settings = Settings()
    r = redis_client(ensure_redis(settings.redis_target).url)
    counts = rewrap(r, Keys(settings.prefix), master_keys(settings))
    print(" ".join(f"{k}={v}" for k, v in counts.items()))
    # Keys no configured master key opens: keep the old master key until they are 0.
    return 1 if counts["unopenable"] else 0


def _shards(args: argparse.Namespace) -> int:
    """``lifeline shards list|add|remove NAME``: asks the running ``lifeline up`` (over Redis)."""
    import json

    from cluster.config import Settings
    from cluster.keys import Keys
    from cluster.redis_client import redis_client
    from cluster.shard_set import read_members, request

    settings = Settings()

    async def ask() -> dict:
        redis = redis_client(settings.redis_target, aio=True)
        keys = Keys(settings.prefix)
        try:
            if args.action == "list":  # what the gateways follow; no running stack needed
                version, names = await read_members(redis, keys)
                return {"ok": True, "op": "list", "shards": names, "version": version}
            if args.action == "remove" and not args.name:
                return {"ok": False, "error": "name_required"}
            try:
                return await request(redis, keys, args.action, args.name or "", args.timeout)
            except TimeoutError as exc:
                return {"ok": False, "error": "no_answer", "detail": str(exc)}
        finally:
            await redis.aclose()

    outcome = asyncio.run(ask())
    print(json.dumps(outcome))
    return 0 if outcome.get("ok") else 1


def _config(args: argparse.Namespace) -> int:
    from cluster.config import Settings

    rows = Settings.describe()  # secrets and URL passwords come redacted
    width = max(len(env) for env, _, _ in rows)
    for env, value, help_ in rows:
        print(f"{env:<{width}}  {value:<28}  {help_}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lifeline",
        description="Real-time exit-risk scoring and in-page interventions for live web sessions.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="start the service with its demo shop and print the URLs",
        description="Start Redis (embedded if none answers), a local Ray cluster, the "
        "session shards, the Serve deployments, the WebSocket gateway and "
        "the demo shop. Runs until Ctrl-C.",
    )
    up.add_argument(
        "--production",
        action="store_true",
        help="refuse to start on any unsafe setting (also on whenever a listener binds "
        "beyond loopback; docs/SECURITY.md)",
    )
    up.add_argument(
        "--ws-port", type=int, help="WebSocket port (default $LIFELINE_WS_PORT or 8765)"
    )
    up.add_argument("--http-port", type=int, help="HTTP port (default $LIFELINE_HTTP_PORT or 8080)")
    up.add_argument(
        "--console-port",
        type=int,
        help="operator console, /metrics and /healthz (default $LIFELINE_CONSOLE_PORT or 8090)",
    )
    up.add_argument(
        "--gateways",
        type=int,
        default=1,
        help="gateway processes sharing the WebSocket port (SO_REUSEPORT); one event loop "
        "saturates first, so use one per core the gateway may have (default 1)",
    )
    up.add_argument(
        "--no-serve",
        action="store_true",
        help="do not start the Serve deployments (templated interventions only)",
    )
    up.add_argument(
        "--no-llm-stub",
        action="store_true",
        help="without ANTHROPIC_API_KEY, do not start the local Messages API stand-in "
        "(nudges stay templated)",
    )
    up.set_defaults(func=_up)

    cfg = sub.add_parser("config", help="print every setting, its current value and meaning")
    cfg.set_defaults(func=_config)

    sh = sub.add_parser(
        "shards",
        help="list the session shards, or add or remove one while the service runs",
        description="`list` prints the shard set the gateways follow; `add` starts one more "
        "shard and `remove NAME` hands a shard's sessions over to the others and stops it. "
        "The running `lifeline up` (same LIFELINE_PREFIX and Redis) does the work and "
        "answers with JSON; the sessions that move are activated from Redis by their new "
        "shard, losing and repeating nothing.",
    )
    sh.add_argument("action", choices=["list", "add", "remove"])
    sh.add_argument("name", nargs="?", help="the shard to remove (as `list` names it)")
    sh.add_argument("--timeout", type=float, default=150.0, help="seconds to wait for the answer")
    sh.set_defaults(func=_shards)

    dk = sub.add_parser(
        "datakeys",
        help="the event log's data keys: re-wrap them under the current master key",
        description="Encryption at rest (cluster/sealing.py). `rewrap`: re-wrap every data key "
        "in Redis under the first key of LIFELINE_DATA_KEY, the second step of a master-key "
        "rotation (put the new key first, keep the old after it, restart, rewrap, then drop "
        "the old key and restart).",
    )
    dk.add_argument("action", choices=["rewrap"])
    dk.set_defaults(func=_datakeys)

    from serve.console.cli import add_commands as add_operator_commands

    add_operator_commands(sub)
    try:
        from training.cli import add_commands
    except ImportError as exc:  # training's extras missing: the service still runs
        logging.getLogger("lifeline").debug("training commands unavailable: %s", exc)
    else:
        add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("lifeline").setLevel(logging.INFO)
    logging.getLogger("websockets").setLevel(
        logging.WARNING
    )  # one line per socket is noise at scale
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
