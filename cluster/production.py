"""Production mode's start-up checks: every unsafe setting, found at once, before anything starts.

``lifeline up --production`` (and any start whose gateway or console binds
beyond loopback: :func:`cluster.config.is_production`) calls
:func:`production_problems` and refuses to start if it returns anything,
printing the whole list, so an operator fixes everything in one round.

What is checked (docs/SECURITY.md, the production checklist, says what is not):
the resume-token keys (not the public default, long enough, previous keys
too), the event log's master key, no development-only site (``loadtest``),
at least one operator account, TLS for every listener bound beyond loopback
(or a stated proxy that terminates it; the console's Secure cookie then also
works), a Redis URL with a password or ACL user, and TLS settings that work
(:func:`redis_tls_problems`).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from actors.core.sites import SiteConfigError, load_sites
from cluster.config import DEV_DATA_KEY, DEV_SECRET, Settings, is_loopback, redact_url
from cluster.keys import Keys
from cluster.listener_tls import TLSConfigError, server_context
from cluster.redis_client import RedisConfigError, check_url, redis_client
from cluster.tokens import KeyringError, token_keyring

MIN_SECRET = 32  # characters; `secrets.token_urlsafe(32)` gives 43


def redis_has_credentials(url: str) -> bool:
    """True if ``url`` names a password (``redis://:pw@``, ``redis://user:pw@``, ``?password=``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.password:
        return True
    return any(k.lower() == "password" and v for k, v in parse_qsl(parts.query))


def redis_tls_problems(settings: Settings) -> list[str]:
    """A Redis URL or TLS setting that cannot work or turns verification off; empty when none.

    (A missing file, a client certificate without its key, TLS options on a
    ``redis://`` URL, ``ssl_cert_reqs=none``: cluster/redis_client.py.)
    Plain ``redis://`` to another machine is warned about at start
    (:func:`cluster.redis_client.cleartext_warning`), not refused.
    """
    try:
        check_url(settings.redis_target)
    except RedisConfigError as exc:
        return [str(exc)]
    return []


def _key_problems(settings: Settings) -> list[str]:
    out = []
    if settings.secret == DEV_SECRET or len(settings.secret) < MIN_SECRET:
        what = "the public development default" if settings.secret == DEV_SECRET else "too short"
        out.append(
            f"LIFELINE_SECRET is {what}: set at least {MIN_SECRET} random characters "
            "(`python -c 'import secrets; print(secrets.token_urlsafe(32))'`), the same on "
            "every gateway"
        )
    try:
        ring = token_keyring(settings)
    except KeyringError as exc:
        out.append(f"resume-token keys: {exc}")
    else:
        short = [kid for kid, key in ring.previous.items() if len(key) < MIN_SECRET]
        if short:
            out.append(f"LIFELINE_SECRET_PREVIOUS: keys {short} are under {MIN_SECRET} characters")
    if settings.data_key == DEV_DATA_KEY or not settings.data_key.strip(", "):
        out.append("LIFELINE_DATA_KEY is the public development default (or empty): set your own")
    return out


def _site_problems(settings: Settings) -> list[str]:
    try:
        sites = load_sites(settings.sites_file)
    except SiteConfigError as exc:
        return [f"sites file: {exc}"]
    dev = sorted(k for k, s in sites.items() if s.dev_only)
    if not dev:
        return []
    return [
        f"the sites file ({settings.sites_file}) lists development-only sites {dev}: their keys "
        "are public and the load tests drive them; set LIFELINE_SITES to a file without them"
    ]


def _tls_problems(settings: Settings) -> list[str]:
    exposed = [
        f"{name}={host}"
        for name, host in (
            ("LIFELINE_HOST", settings.host),
            ("LIFELINE_CONSOLE_HOST", settings.console_host),
        )
        if not is_loopback(host)
    ]
    if settings.tls_cert or settings.tls_key:
        try:
            server_context(settings)
        except TLSConfigError as exc:
            return [str(exc)]
        return []
    if not exposed or settings.tls_terminated_by_proxy:
        return []
    return [
        f"{', '.join(exposed)} {'is' if len(exposed) == 1 else 'are'} reachable from other "
        "machines without TLS: visitors' events and the console's cookie (Secure, so useless "
        "over plain HTTP) would cross the network in clear. Set LIFELINE_TLS_CERT and "
        "LIFELINE_TLS_KEY, or put a TLS-terminating proxy in front and state it with "
        "LIFELINE_TLS_TERMINATED_BY_PROXY=1"
    ]


def _redis_problems(settings: Settings, operators: int | None) -> list[str]:
    out = []
    if not settings.redis_url:
        out.append(
            "REDIS_URL is not set: production needs a Redis of your own with a password or "
            "ACL user (redis://user:password@host:6379/0, or rediss:// for TLS)"
        )
    elif not redis_has_credentials(settings.redis_url):
        out.append(
            f"REDIS_URL={redact_url(settings.redis_url)} has no password or ACL user: anyone "
            "who reaches Redis reads every visitor's events"
        )
    if settings.redis_url:
        out += redis_tls_problems(settings)
    if operators == 0:
        out.append(
            "no operator account exists: create an admin first "
            "(`lifeline operators add NAME --role admin`)"
        )
    return out


def count_operators(settings: Settings) -> int | None:
    """Operator accounts in the configured Redis; None if there is no Redis URL or it does not answer."""
    if not settings.redis_url:
        return None
    import redis

    try:
        client = redis_client(settings.redis_target, socket_timeout=3, socket_connect_timeout=3)
        try:
            return int(client.scard(Keys(settings.prefix).operator("users")))
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return None


def production_problems(settings: Settings, operators: int | None = None) -> list[str]:
    """Every reason production mode refuses these settings; empty when it may start.

    ``operators``: the number of operator accounts (:func:`count_operators`),
    or None when Redis could not be asked (then that is said, not guessed).
    """
    problems = _key_problems(settings) + _site_problems(settings) + _tls_problems(settings)
    problems += _redis_problems(settings, operators)
    if operators is None and settings.redis_url and redis_has_credentials(settings.redis_url):
        problems.append(
            f"REDIS_URL={redact_url(settings.redis_url)} does not answer: cannot check that "
            "an operator account exists"
        )
    return problems
