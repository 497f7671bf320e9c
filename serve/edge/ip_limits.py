"""Per-address limits on the gateway: concurrent sockets, and new requests per second.

One :class:`IpLimits` per gateway holds both. Its rate bucket is an
address's budget of *new requests* of every kind: socket handshakes
(:meth:`IpLimits.admit`), beacons and data-rights requests
(:meth:`IpLimits.take`, serve/edge/http.py, serve/edge/rights_http.py). One
shared bucket rather than one per endpoint: an address that alternates
between the socket and the beacon gets no more than one budget, and a page's
normal use (one socket, a beacon as it hides) costs two tokens of a burst of
five seconds' worth.

O(1) per accepted socket or request (a dict lookup and a token bucket); nothing per frame.
Loopback peers are exempt by default: the load tests open thousands of sockets
from 127.0.0.1, and a proxy on the same machine makes every visitor look like
loopback (then the proxy must limit per client; docs/SECURITY.md). Memory is
bounded: buckets that are full again (an address quiet for a while) are dropped
when the table passes ``MAX_TRACKED`` addresses.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from serve.edge.protocol import TokenBucket

if TYPE_CHECKING:
    from cluster.config import Settings

MAX_TRACKED = 50_000
RETRY_AFTER = {"Retry-After": "1"}  # an HTTP refusal's header, as a refused socket's


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.split("%")[0]).is_loopback
    except ValueError:
        return False


@dataclass
class IpLimits:
    """Admits or refuses a new socket (``release`` when it closes) or request of an address."""

    connections: int = 512  # open sockets per address at once
    handshakes_per_s: float = 20.0  # new sockets, beacons and data requests per address, sustained
    burst: float = 100.0
    exempt_loopback: bool = True
    open: dict[str, int] = field(default_factory=dict)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def admit(self, ip: str, now: float | None = None) -> str | None:
        """None if ``ip`` may open one more socket (it is counted); else which limit refused it."""
        if self.exempt_loopback and _is_loopback(ip):
            return None
        now = time.monotonic() if now is None else now
        n = self.open.get(ip, 0)
        if n >= self.connections:
            return "connections"
        if not self._bucket(ip, now).take(1, now):
            return "handshake_rate"
        self.open[ip] = n + 1
        return None

    def take(self, ip: str, now: float | None = None) -> str | None:
        """None if ``ip`` may make one more request that holds no socket (a beacon, a
        data-rights request): it spends the same per-address rate as a handshake;
        else ``"address_rate"``, the limit that refused it."""
        if self.exempt_loopback and _is_loopback(ip):
            return None
        now = time.monotonic() if now is None else now
        return None if self._bucket(ip, now).take(1, now) else "address_rate"

    def _bucket(self, ip: str, now: float) -> TokenBucket:
        """The address's request-rate bucket (made full on first use)."""
        bucket = self.buckets.get(ip)
        if bucket is None:
            if len(self.buckets) >= MAX_TRACKED:
                self._prune(now)
            bucket = self.buckets[ip] = TokenBucket(self.handshakes_per_s, self.burst, now)
        return bucket

    def release(self, ip: str) -> None:
        n = self.open.get(ip, 0) - 1
        if n > 0:
            self.open[ip] = n
        else:
            self.open.pop(ip, None)

    def _prune(self, now: float) -> None:
        for ip, b in list(self.buckets.items()):
            if ip not in self.open:
                b.take(0, now)  # refill to now
                if b.tokens >= b.burst:
                    del self.buckets[ip]


def address_refusal(limits: IpLimits, ip: str | None) -> dict[str, str] | None:
    """The 429 body refusing an HTTP request of ``ip`` over its address's rate, or None.

    ``{"code": "rate_limited", "limit": "address", "detail": ...}``: the same
    code as the other rate limits, ``limit`` naming which one refused.
    """
    if limits.take(ip or "?") is None:
        return None
    return {
        "code": "rate_limited",
        "limit": "address",
        "detail": "too many requests from this address: try again in a second",
    }


def ip_limits_of(settings: Settings) -> IpLimits:
    """The limits the settings describe (LIFELINE_CONNS_PER_IP, LIFELINE_HANDSHAKES_PER_IP_S)."""
    rate = settings.handshakes_per_ip_s
    return IpLimits(settings.conns_per_ip, rate, 5 * rate)
