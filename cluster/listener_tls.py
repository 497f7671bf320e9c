"""TLS for the public listeners (gateway WebSocket and HTTP, console) from certificate files.

One server context, made once at start from ``LIFELINE_TLS_CERT`` and
``LIFELINE_TLS_KEY`` (PEM; the certificate file may hold the chain), handed
to ``create_server`` and aiohttp's ``TCPSite``. TLS 1.2 at least; Python's
default ciphers. Limit: a renewed certificate is read at the next start, not
on the fly (restart the gateways one by one).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cluster.config import Settings


class TLSConfigError(ValueError):
    """The certificate settings are incomplete or the files do not load."""


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The listeners' TLS context, or None when no certificate is configured.

    Raises :class:`TLSConfigError` when only one of the two files is set or they
    do not load (the message names the setting, never the key's content).
    """
    cert, key = settings.tls_cert, settings.tls_key
    if not cert and not key:
        return None
    if not (cert and key):
        raise TLSConfigError("set both LIFELINE_TLS_CERT and LIFELINE_TLS_KEY, or neither")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(
            f"LIFELINE_TLS_CERT={cert} / LIFELINE_TLS_KEY={key} do not load: {exc}"
        ) from exc
    return ctx
