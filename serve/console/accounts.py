"""Operator accounts, API tokens and signed-in sessions, stored in Redis.

Passwords are stored as scrypt hashes (``hashlib.scrypt``, n=2**14, r=8,
p=1: ~50 ms and 16 MiB per check, run in a thread), never in clear. API
tokens and session cookies are random 256-bit strings; Redis keeps only
their SHA-256 digests, so a copy of Redis grants no access. A session
expires after ``IDLE_S`` without a request and ``ABSOLUTE_S`` after sign-in,
whichever comes first. Failed sign-ins are counted per address and per
account name in a window (``LOGIN_WINDOW_S``); past ``MAX_FAILS_PER_ADDRESS``
or ``MAX_FAILS_PER_NAME`` the next attempt is refused before any password
is checked.

Roles: ``viewer`` (KPIs and charts), ``analyst`` (adds the session
explorer and exports), ``admin`` (everything, operators and audit
included) and ``support`` (viewer plus the help-chat queue). A token has
a role no higher than its owner's and a scope: ``read`` (GET only) or
``write``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from cluster.keys import Keys

ROLES = ("viewer", "analyst", "admin", "support")
# What each role may do: a route needing role R is open to operators whose role grants R.
GRANTS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"viewer"}),
    "analyst": frozenset({"viewer", "analyst"}),
    "support": frozenset({"viewer", "support"}),
    "admin": frozenset(ROLES),
}
SCOPES = ("read", "write")
NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # scrypt over megabytes of input would be a cheap way to burn our CPU

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
IDLE_S = 30 * 60
ABSOLUTE_S = 12 * 3600
LOGIN_WINDOW_S = 15 * 60
MAX_FAILS_PER_ADDRESS = 20
MAX_FAILS_PER_NAME = 5
TOKEN_PREFIX = "llt_"


class AccountError(ValueError):
    """A refused account change; ``code`` is machine-readable, the message is for people."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@dataclass(frozen=True)
class Operator:
    """Who is calling: an account's name and role, and the scope of the credential used."""

    name: str
    role: str
    scope: str = "write"
    via: str = "session"  # "session" (a browser's cookie) or "token"

    def may(self, role: str) -> bool:
        return role in GRANTS.get(self.role, frozenset())


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64) of ``password``."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a :func:`hash_password` result (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=32,
            maxmem=2**26,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


# Checked against when the name is unknown, so that a miss costs what a hit costs.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise AccountError("bad_name", "a name is 1-64 letters, digits or . _ @ -")


def check_role(role: str) -> None:
    if role not in ROLES:
        raise AccountError("bad_role", f"role must be one of {', '.join(ROLES)}")


def check_new_password(password: str) -> None:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(
            "weak_password", f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        )


def _text(h: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in h.items()}


class Accounts:
    """Operators, tokens and sessions over an asyncio Redis client."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    # -- operators ------------------------------------------------------------

    async def add(self, name: str, role: str, password: str) -> None:
        """Create an operator; refuses a name in use."""
        check_name(name)
        check_role(role)
        check_new_password(password)
        hashed = await asyncio.to_thread(hash_password, password)
        key = self.keys.operator(f"user:{name}")
        fields = {"role": role, "password": hashed, "created": int(time.time())}
        if not await self.redis.hsetnx(key, "role", role):
            raise AccountError("exists", f"operator {name!r} exists")
        await self.redis.hset(key, mapping=fields)
        await self.redis.sadd(self.keys.operator("users"), name)

    async def get(self, name: str) -> dict[str, str] | None:
        h = await self.redis.hgetall(self.keys.operator(f"user:{name}"))
        return _text(h) if h else None

    async def list(self) -> list[dict[str, Any]]:
        """Every operator: name, role, created (never the password hash)."""
        names = sorted(n.decode() for n in await self.redis.smembers(self.keys.operator("users")))
        out = []
        for name in names:
            h = await self.get(name)
            if h:
                out.append({"name": name, "role": h["role"], "created": int(h.get("created", 0))})
        return out

    async def set_role(self, name: str, role: str) -> None:
        check_role(role)
        if await self.get(name) is None:
            raise AccountError("not_found", f"no operator {name!r}")
        await self.redis.hset(self.keys.operator(f"user:{name}"), "role", role)
        await self._end_sessions_of(name)  # the new role applies from the next sign-in

    async def set_password(self, name: str, password: str) -> None:
        check_new_password(password)
        if await self.get(name) is None:
            raise AccountError("not_found", f"no operator {name!r}")
        hashed = await asyncio.to_thread(hash_password, password)
        await self.redis.hset(self.keys.operator(f"user:{name}"), "password", hashed)
        await self._end_sessions_of(name)

    async def remove(self, name: str) -> None:
        """Delete an operator, its sessions and its tokens."""
        if await self.get(name) is None:
            raise AccountError("not_found", f"no operator {name!r}")
        await self._end_sessions_of(name)
        for digest in await self.redis.smembers(self.keys.operator(f"tokens:{name}")):
            await self.redis.delete(self.keys.operator(f"token:{digest.decode()}"))
        await self.redis.delete(
            self.keys.operator(f"user:{name}"),
            self.keys.operator(f"tokens:{name}"),
            self.keys.operator(f"sessions:{name}"),
        )
        await self.redis.srem(self.keys.operator("users"), name)

    async def admins(self) -> int:
        return sum(1 for o in await self.list() if o["role"] == "admin")

    # -- sign-in --------------------------------------------------------------

    async def limited(self, address: str, name: str) -> bool:
        """Whether sign-in from ``address`` or for ``name`` is refused for now (too many failures)."""
        a, n = await self.redis.mget(
            self.keys.operator(f"login:a:{address}"), self.keys.operator(f"login:n:{name}")
        )
        return int(a or 0) >= MAX_FAILS_PER_ADDRESS or int(n or 0) >= MAX_FAILS_PER_NAME

    async def _failed(self, address: str, name: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for key in (f"login:a:{address}", f"login:n:{name}"):
            pipe.incr(self.keys.operator(key))
            pipe.expire(self.keys.operator(key), LOGIN_WINDOW_S, nx=True)
        await pipe.execute()

    async def authenticate(self, name: str, password: str, address: str) -> Operator | None:
        """The operator if ``password`` is theirs; a failure is counted against name and address."""
        if not isinstance(name, str) or not isinstance(password, str):
            return None
        user = await self.get(name) if NAME_RE.match(name) else None
        stored = user["password"] if user else _DUMMY_HASH
        ok = await asyncio.to_thread(check_password, password[:MAX_PASSWORD], stored)
        if not (ok and user):
            await self._failed(address, name[:64])
            return None
        await self.redis.delete(self.keys.operator(f"login:n:{name}"))
        return Operator(name, user["role"])

    # -- browser sessions -----------------------------------------------------

    async def start_session(self, op: Operator) -> tuple[str, str]:
        """A new session for ``op``: (cookie value, CSRF token)."""
        cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        digest = _digest(cookie)
        key = self.keys.operator(f"session:{digest}")
        now = int(time.time())
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"name": op.name, "role": op.role, "csrf": csrf, "started": now})
        pipe.expire(key, IDLE_S)
        pipe.sadd(self.keys.operator(f"sessions:{op.name}"), digest)
        await pipe.execute()
        return cookie, csrf

    async def session(self, cookie: str) -> tuple[Operator, str] | None:
        """The operator and CSRF token of a live session (its idle timer restarts), or None."""
        if not cookie or len(cookie) > 128:
            return None
        key = self.keys.operator(f"session:{_digest(cookie)}")
        h = await self.redis.hgetall(key)
        if not h:
            return None
        s = _text(h)
        if time.time() - int(s["started"]) > ABSOLUTE_S:
            await self.redis.delete(key)
            return None
        await self.redis.expire(key, IDLE_S)
        return Operator(s["name"], s["role"]), s["csrf"]

    async def end_session(self, cookie: str) -> None:
        digest = _digest(cookie)
        h = await self.redis.hget(self.keys.operator(f"session:{digest}"), "name")
        await self.redis.delete(self.keys.operator(f"session:{digest}"))
        if h:
            await self.redis.srem(self.keys.operator(f"sessions:{h.decode()}"), digest)

    async def _end_sessions_of(self, name: str) -> None:
        key = self.keys.operator(f"sessions:{name}")
        digests = await self.redis.smembers(key)
        if digests:
            await self.redis.delete(
                *(self.keys.operator(f"session:{d.decode()}") for d in digests), key
            )

    # -- API tokens -----------------------------------------------------------

    async def issue_token(
        self, name: str, role: str | None = None, scope: str = "read", ttl_days: int = 90
    ) -> str:
        """A new API token for operator ``name`` (role at most theirs); shown once, stored hashed."""
        user = await self.get(name)
        if user is None:
            raise AccountError("not_found", f"no operator {name!r}")
        role = role or user["role"]
        check_role(role)
        if role not in GRANTS[user["role"]]:
            raise AccountError("bad_role", f"a token of {name!r} cannot have role {role!r}")
        if scope not in SCOPES:
            raise AccountError("bad_scope", f"scope must be one of {', '.join(SCOPES)}")
        if not 1 <= int(ttl_days) <= 365:
            raise AccountError("bad_ttl", "a token lives 1 to 365 days")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = _digest(token)
        key = self.keys.operator(f"token:{digest}")
        expires = int(time.time()) + int(ttl_days) * 86400
        fields = {"name": name, "role": role, "scope": scope, "expires": expires}
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)
        pipe.expireat(key, expires)
        pipe.sadd(self.keys.operator(f"tokens:{name}"), digest)
        await pipe.execute()
        return token

    async def token(self, token: str) -> Operator | None:
        """The operator a bearer token acts as, or None (unknown, expired, or owner gone)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        h = await self.redis.hgetall(self.keys.operator(f"token:{_digest(token)}"))
        if not h:
            return None
        t = _text(h)
        owner = await self.get(t["name"])
        if owner is None or t["role"] not in GRANTS[owner["role"]]:
            return None  # the owner lost the role the token was issued with
        return Operator(t["name"], t["role"], scope=t["scope"], via="token")

    async def revoke_tokens(self, name: str) -> int:
        key = self.keys.operator(f"tokens:{name}")
        digests = await self.redis.smembers(key)
        for d in digests:
            await self.redis.delete(self.keys.operator(f"token:{d.decode()}"))
        await self.redis.delete(key)
        return len(digests)
