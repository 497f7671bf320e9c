"""Per-address limits on the gateway's sockets: concurrent connections and new handshakes per second.

O(1) per accepted socket (a dict lookup and a token bucket); nothing per frame.
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


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.split("%")[0]).is_loopback
    except ValueError:
        return False


@dataclass
class IpLimits:
    """Admits or refuses a new socket of an address; ``release`` when it closes."""

    connections: int = 512  # open sockets per address at once
    handshakes_per_s: float = 20.0  # new sockets per address, sustained
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
        bucket = self.buckets.get(ip)
        if bucket is None:
            if len(self.buckets) >= MAX_TRACKED:
                self._prune(now)
            bucket = self.buckets[ip] = TokenBucket(self.handshakes_per_s, self.burst, now)
        if not bucket.take(1, now):
            return "handshake_rate"
        self.open[ip] = n + 1
        return None

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


def ip_limits_of(settings: Settings) -> IpLimits:
    """The limits the settings describe (LIFELINE_CONNS_PER_IP, LIFELINE_HANDSHAKES_PER_IP_S)."""
    rate = settings.handshakes_per_ip_s
    return IpLimits(settings.conns_per_ip, rate, 5 * rate)
