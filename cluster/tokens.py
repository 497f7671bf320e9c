"""Signed, expiring, rotatable tokens: the one place that signs what the service hands out.

A token binds a *purpose* (``"resume"`` for a session's resume token; the
visitor token of the data-rights work uses ``"visitor"``), a site and an id
(a session or visitor id) to an expiry, under a key that has an id::

    <kid>.<expiry, unix seconds, base 36>.<HMAC-SHA256, first 32 hex digits>

The client treats it as opaque. Rotation: the current key signs, previous keys
(``LIFELINE_SECRET_PREVIOUS``) still verify until the operator removes them;
a token naming a key no longer configured is refused as ``retired``, one past
its expiry as ``expired``, any other mismatch as ``mismatch``.

Cost: one HMAC to verify, one to sign; no I/O (the hello path calls both).
Limit: expiry is checked against this machine's clock; gateways' clocks must
agree to within what an operator accepts as slack on the expiry.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cluster.config import Settings

KID_RE = re.compile(r"[A-Za-z0-9_-]{1,16}")
MAX_TOKEN_LEN = 16 + 1 + 8 + 1 + 32  # kid, expiry (base 36 fits 8 digits until 2059+), mac
DAY_S = 86400


class KeyringError(ValueError):
    """A key setting that cannot be used (malformed id, duplicate id, empty key)."""


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


@dataclass(frozen=True)
class Keyring:
    """The current signing key and the previous ones that still verify."""

    kid: str
    key: bytes
    previous: dict[str, bytes] = field(default_factory=dict)
    ttl_s: float = 30 * DAY_S

    def __post_init__(self) -> None:
        if not KID_RE.fullmatch(self.kid):
            raise KeyringError(f"key id {self.kid!r}: 1-16 of A-Z a-z 0-9 _ -")
        for kid in self.previous:
            if not KID_RE.fullmatch(kid):
                raise KeyringError(f"previous key id {kid!r}: 1-16 of A-Z a-z 0-9 _ -")
        if self.kid in self.previous:
            raise KeyringError(f"key id {self.kid!r} is both current and previous")

    @classmethod
    def parse(
        cls, secret: str, kid: str = "1", previous: str = "", ttl_days: float = 30
    ) -> Keyring:
        """From the settings: ``previous`` is ``id:key,id:key`` (a key may not contain a comma)."""
        prev: dict[str, bytes] = {}
        for item in filter(None, (p.strip() for p in previous.split(","))):
            pid, colon, pkey = item.partition(":")
            if not colon or not pkey:
                raise KeyringError("LIFELINE_SECRET_PREVIOUS entries are id:key")
            prev[pid] = pkey.encode()
        return cls(kid, secret.encode(), prev, ttl_days * DAY_S)

    def _mac(self, key: bytes, purpose: str, site: str, ident: str, exp: str) -> str:
        msg = f"{purpose}|{site}|{ident}|{exp}".encode()
        return hmac.new(key, msg, hashlib.sha256).hexdigest()[:32]

    def sign(self, purpose: str, site: str, ident: str, now: float | None = None) -> str:
        """A token for (purpose, site, ident) under the current key, valid ``ttl_s`` from now."""
        exp = _b36(int((time.time() if now is None else now) + self.ttl_s))
        return f"{self.kid}.{exp}.{self._mac(self.key, purpose, site, ident, exp)}"

    def check(
        self, token: str, purpose: str, site: str, ident: str, now: float | None = None
    ) -> str | None:
        """None if ``token`` is valid for (purpose, site, ident); else why not.

        The reasons are machine-readable: ``malformed``, ``retired`` (signed by
        a key no longer configured), ``mismatch`` (wrong signature: another
        session, site, purpose or a forgery), ``expired``. The signature is
        checked before the expiry, so ``expired`` is said only of a genuine token.
        """
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LEN or not token.isascii():
            return "malformed"
        kid, _, rest = token.partition(".")
        exp, _, mac = rest.partition(".")
        if not mac or not exp.isalnum():
            return "malformed"
        key = self.key if kid == self.kid else self.previous.get(kid)
        if key is None:
            return "retired"
        if not hmac.compare_digest(
            mac.encode(), self._mac(key, purpose, site, ident, exp).encode()
        ):
            return "mismatch"
        if int(exp, 36) < (time.time() if now is None else now):
            return "expired"
        return None


def token_keyring(settings: Settings) -> Keyring:
    """The keyring the settings describe (LIFELINE_SECRET, _SECRET_ID, _SECRET_PREVIOUS, _TOKEN_DAYS)."""
    return Keyring.parse(
        settings.secret, settings.secret_id, settings.secret_previous, settings.token_days
    )
