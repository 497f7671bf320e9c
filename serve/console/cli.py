"""``lifeline operators``: console accounts and API tokens from the command line, audited.

The first admin can only be made here (the console needs one to sign in).
A password is read from the terminal (asked twice), or from standard input
with ``--password-stdin`` (scripts); it never goes on the command line,
where ``ps`` shows it to every user. A token is printed once and stored
only as its digest.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import secrets
import sys

from cluster.config import Settings
from cluster.keys import Keys
from cluster.redis_server import ensure_redis


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise SystemExit("lifeline operators: the passwords differ")
    return first


async def _run(args: argparse.Namespace) -> int:
    from cluster.redis_client import redis_client
    from serve.console import audit
    from serve.console.accounts import AccountError, Accounts

    s = Settings()
    server = ensure_redis(s.redis_target, data_dir=s.data_dir)
    client = redis_client(server.url, aio=True)
    keys = Keys(s.prefix)
    accounts = Accounts(client, keys)
    who = f"cli:{getpass.getuser()}"
    try:
        if args.op_command == "add":
            await accounts.add(args.name, args.role, _password(args))
            await audit.append(
                client,
                keys.audit,
                who,
                "operator added",
                "local",
                {"operator": args.name, "role": args.role},
            )
            print(f"operator {args.name} ({args.role}) added")
        elif args.op_command == "list":
            for o in await accounts.list():
                print(f"{o['name']:<24} {o['role']}")
        elif args.op_command == "remove":
            await accounts.remove(args.name)
            await audit.append(
                client, keys.audit, who, "operator removed", "local", {"operator": args.name}
            )
            print(f"operator {args.name} removed")
        elif args.op_command == "token":
            if args.create and await accounts.get(args.name) is None:
                # A service account: no one signs in with it (its password is never known).
                await accounts.add(args.name, args.role or "viewer", secrets.token_urlsafe(32))
                await audit.append(
                    client,
                    keys.audit,
                    who,
                    "operator added",
                    "local",
                    {"operator": args.name, "role": args.role or "viewer", "service": True},
                )
            token = await accounts.issue_token(args.name, args.role, args.scope, args.days)
            await audit.append(
                client,
                keys.audit,
                who,
                "token issued",
                "local",
                {"operator": args.name, "scope": args.scope},
            )
            print(token)
    except AccountError as exc:
        print(f"lifeline operators: {exc} ({exc.code})", file=sys.stderr)
        return 1
    finally:
        await client.aclose()
        if server.embedded:
            server.stop()
    return 0


def _operators(args: argparse.Namespace) -> int:
    if not getattr(args, "op_command", None):
        print("usage: lifeline operators {add,list,remove,token} ...", file=sys.stderr)
        return 2
    return asyncio.run(_run(args))


def add_commands(sub: argparse._SubParsersAction) -> None:
    from serve.console.accounts import ROLES, SCOPES

    ops = sub.add_parser(
        "operators",
        help="console accounts: add, list, remove, token",
        description="Operator accounts of the console (in the Redis `lifeline up` uses).",
    )
    ops.set_defaults(func=_operators)
    osub = ops.add_subparsers(dest="op_command", metavar="ACTION")
    add = osub.add_parser("add", help="create an operator (asks for the password)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    osub.add_parser("list", help="operators and their roles")
    rm = osub.add_parser("remove", help="delete an operator, its sessions and tokens")
    rm.add_argument("name")
    tok = osub.add_parser("token", help="print a new API token for an operator (shown once)")
    tok.add_argument("name")
    tok.add_argument("--role", choices=ROLES, help="at most the operator's (default: theirs)")
    tok.add_argument("--scope", choices=SCOPES, default="read")
    tok.add_argument("--days", type=int, default=90, help="lifetime in days (1-365)")
    tok.add_argument(
        "--create",
        action="store_true",
        help="create NAME first if missing, as a service account (--role, no usable password)",
    )
