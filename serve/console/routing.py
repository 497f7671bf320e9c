"""A console route and the role it needs: what every console module declares its ``ROUTES`` with."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    """One console route: ``role`` is the least role allowed (None: anyone, signed in or not)."""

    method: str
    path: str
    handler: Handler
    role: str | None = "viewer"
