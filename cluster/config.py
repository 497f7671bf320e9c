"""Runtime configuration, read once from the environment.

Every knob an operator may turn lives here with its default, so the README's
configuration table and the code cannot drift apart: ``lifeline config``
prints this table from the same source.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

PACKAGE_ROOT = Path(__file__).resolve().parent.parent

# The resume-token key a fresh checkout runs with. It is public (it is in this
# file), so a token signed with it proves nothing: a service reachable from
# other machines refuses to start with it (check_secret).
DEV_SECRET = "dev-secret-change-me"
# The event log's public development master key (cluster/sealing.py; check_data_key).
DEV_DATA_KEY = "dev-data-key-change-me"


class InsecureSettings(RuntimeError):
    """A setting that would let others in; the message says what to set."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "lifeline")


@dataclass(frozen=True)
class Settings:
    """What a Lifeline process needs to know about its surroundings."""

    redis_url: str = field(
        default_factory=lambda: _env("REDIS_URL", ""),
        metadata={
            "env": "REDIS_URL",
            "help": "Redis to use: redis://, rediss://, or redis+sentinel://host:port,host:port/"
            "<master>[/db] (cluster/sentinel.py); empty: 127.0.0.1:6379 if it answers, else an "
            "embedded server",
            "url": True,
        },
    )
    redis_wait_replicas: int = field(
        default_factory=lambda: int(_env("LIFELINE_REDIS_WAIT_REPLICAS", "0")),
        metadata={
            "env": "LIFELINE_REDIS_WAIT_REPLICAS",
            "help": "events are acked only once this many Redis replicas have them (WAIT); "
            "0: once the primary has (README, what an acknowledgement promises)",
        },
    )
    redis_wait_ms: int = field(
        default_factory=lambda: int(_env("LIFELINE_REDIS_WAIT_MS", "100")),
        metadata={
            "env": "LIFELINE_REDIS_WAIT_MS",
            "help": "how long an append round waits for LIFELINE_REDIS_WAIT_REPLICAS; fewer "
            "in time: the round is not acked (overloaded, the client resends)",
        },
    )
    redis_ca: str = field(
        default_factory=lambda: _env("LIFELINE_REDIS_CA", ""),
        metadata={
            "env": "LIFELINE_REDIS_CA",
            "help": "PEM CA certificate(s) that signed Redis's certificate, for a rediss:// "
            "REDIS_URL (verification is always on; empty: the system's trust store)",
        },
    )
    redis_cert: str = field(
        default_factory=lambda: _env("LIFELINE_REDIS_CERT", ""),
        metadata={
            "env": "LIFELINE_REDIS_CERT",
            "help": "PEM client certificate for Redis's mutual TLS (with LIFELINE_REDIS_KEY)",
        },
    )
    redis_key: str = field(
        default_factory=lambda: _env("LIFELINE_REDIS_KEY", ""),
        metadata={"env": "LIFELINE_REDIS_KEY", "help": "PEM private key of LIFELINE_REDIS_CERT"},
    )
    prefix: str = field(
        default_factory=lambda: _env("LIFELINE_PREFIX", "ll:"),
        metadata={
            "env": "LIFELINE_PREFIX",
            "help": "prefix of every Redis key (tests use their own)",
        },
    )
    host: str = field(
        default_factory=lambda: _env("LIFELINE_HOST", "127.0.0.1"),
        metadata={"env": "LIFELINE_HOST", "help": "address the gateway listens on"},
    )
    ws_port: int = field(
        default_factory=lambda: int(_env("LIFELINE_WS_PORT", "8765")),
        metadata={"env": "LIFELINE_WS_PORT", "help": "WebSocket port (0: any free port)"},
    )
    http_port: int = field(
        default_factory=lambda: int(_env("LIFELINE_HTTP_PORT", "8080")),
        metadata={
            "env": "LIFELINE_HTTP_PORT",
            "help": "public HTTP port: client script, beacon, demo shop (0: any free port)",
        },
    )
    console_host: str = field(
        default_factory=lambda: _env("LIFELINE_CONSOLE_HOST", "127.0.0.1"),
        metadata={
            "env": "LIFELINE_CONSOLE_HOST",
            "help": "address the operator console (and /metrics, /healthz) listens on",
        },
    )
    console_port: int = field(
        default_factory=lambda: int(_env("LIFELINE_CONSOLE_PORT", "8090")),
        metadata={
            "env": "LIFELINE_CONSOLE_PORT",
            "help": "operator console port: pages, API, /metrics, /healthz (0: any free port)",
        },
    )
    sites_file: str = field(
        default_factory=lambda: _env(
            "LIFELINE_SITES", str(PACKAGE_ROOT / "cluster" / "sites.toml")
        ),
        metadata={
            "env": "LIFELINE_SITES",
            "help": "per-site keys, origins and policy rules (TOML)",
        },
    )
    secret: str = field(
        default_factory=lambda: _env("LIFELINE_SECRET", DEV_SECRET),
        metadata={
            "env": "LIFELINE_SECRET",
            "help": "HMAC key for session resume tokens (the default is refused off loopback)",
            "secret": True,
        },
    )
    production: bool = field(
        default_factory=lambda: _env("LIFELINE_PRODUCTION", "0") not in ("0", "false", ""),
        metadata={
            "env": "LIFELINE_PRODUCTION",
            "help": "1: production mode (`lifeline up --production`); it is also on whenever "
            "the gateway or console binds beyond loopback (cluster/production.py)",
        },
    )
    tls_cert: str = field(
        default_factory=lambda: _env("LIFELINE_TLS_CERT", ""),
        metadata={
            "env": "LIFELINE_TLS_CERT",
            "help": "PEM certificate (chain) for the gateway's WebSocket and HTTP listeners and "
            "the console: wss/https; empty: plain ws/http",
        },
    )
    tls_key: str = field(
        default_factory=lambda: _env("LIFELINE_TLS_KEY", ""),
        metadata={"env": "LIFELINE_TLS_KEY", "help": "PEM private key of LIFELINE_TLS_CERT"},
    )
    tls_terminated_by_proxy: bool = field(
        default_factory=lambda: (
            _env("LIFELINE_TLS_TERMINATED_BY_PROXY", "0") not in ("0", "false", "")
        ),
        metadata={
            "env": "LIFELINE_TLS_TERMINATED_BY_PROXY",
            "help": "1: a reverse proxy in front terminates TLS (wss/https) for every listener "
            "bound beyond loopback; production mode requires this stated",
        },
    )
    conns_per_ip: int = field(
        default_factory=lambda: int(_env("LIFELINE_CONNS_PER_IP", "512")),
        metadata={
            "env": "LIFELINE_CONNS_PER_IP",
            "help": "open WebSocket connections one address may hold (loopback exempt)",
        },
    )
    handshakes_per_ip_s: float = field(
        default_factory=lambda: float(_env("LIFELINE_HANDSHAKES_PER_IP_S", "20")),
        metadata={
            "env": "LIFELINE_HANDSHAKES_PER_IP_S",
            "help": "new requests per second from one address (WebSocket connections, "
            "beacons, data-rights requests: one budget), burst 5x (loopback exempt)",
        },
    )
    site_events_per_s: float = field(
        default_factory=lambda: float(_env("LIFELINE_SITE_EVENTS_PER_S", "50000")),
        metadata={
            "env": "LIFELINE_SITE_EVENTS_PER_S",
            "help": "events/s one site may send through one gateway process, burst 2 s "
            "(0: no budget); over it: rate_limited with limit=site, nothing acked",
        },
    )
    secret_id: str = field(
        default_factory=lambda: _env("LIFELINE_SECRET_ID", "1"),
        metadata={
            "env": "LIFELINE_SECRET_ID",
            "help": "id of LIFELINE_SECRET, written into every token it signs (1-16 of A-Z a-z "
            "0-9 _ -); change it with the key when rotating",
        },
    )
    secret_previous: str = field(
        default_factory=lambda: _env("LIFELINE_SECRET_PREVIOUS", ""),
        metadata={
            "env": "LIFELINE_SECRET_PREVIOUS",
            "help": "retired-but-still-accepted token keys, id:key,id:key; a token whose key id "
            "is in neither setting is refused",
            "secret": True,
        },
    )
    token_days: float = field(
        default_factory=lambda: float(_env("LIFELINE_TOKEN_DAYS", "30")),
        metadata={
            "env": "LIFELINE_TOKEN_DAYS",
            "help": "days a resume token stays valid (each hello issues a fresh one)",
        },
    )
    data_key: str = field(
        default_factory=lambda: _env("LIFELINE_DATA_KEY", DEV_DATA_KEY),
        metadata={
            "env": "LIFELINE_DATA_KEY",
            "help": "master key(s) wrapping the per-visitor data keys of the event log, "
            "comma-separated, the first current (the default is refused off loopback)",
            "secret": True,
        },
    )
    encrypt_at_rest: bool = field(
        default_factory=lambda: _env("LIFELINE_ENCRYPT_AT_REST", "1") not in ("0", "false", ""),
        metadata={
            "env": "LIFELINE_ENCRYPT_AT_REST",
            "help": "1: seal logged events with their visitor's data key; 0: log plaintext "
            "(sealed entries stay readable)",
        },
    )
    data_dir: str = field(
        default_factory=lambda: _env("LIFELINE_DATA_DIR", _default_data_dir()),
        metadata={
            "env": "LIFELINE_DATA_DIR",
            "help": "the embedded Redis's append-only file and lifeline up's run records",
        },
    )
    shards: int = field(
        default_factory=lambda: int(_env("LIFELINE_SHARDS", "0")),
        metadata={"env": "LIFELINE_SHARDS", "help": "SessionShard actors (0: one per CPU Ray has)"},
    )
    batch_window_ms: float = field(
        # 4 ms, measured (BENCHMARKS.md, the batch window's A/B): at 10k events/s a shard's CPU
        # fell from ~30 to ~26.5 % of a core against 1.5 ms, with no worse tail.
        # A call has a fixed cost (an XGBoost prediction ~85 us plus the call's own
        # work, run on cold caches), so fewer, larger calls save CPU; the window adds
        # directly to the intervention latency, within its 50 ms budget.
        default_factory=lambda: float(_env("LIFELINE_BATCH_WINDOW_MS", "4")),
        metadata={
            "env": "LIFELINE_BATCH_WINDOW_MS",
            "help": "how long the gateway gathers events for one shard call",
        },
    )
    append_window_ms: float = field(
        # 2 ms, measured (BENCHMARKS.md, the append window's A/B): at 10k events/s, in a slow spell
        # of the VM, Redis took ~2 points of a core less and ack p99 fell in 6 of 7
        # alternated pairs (median 125 -> 77 ms). It adds up to 2 ms to every ack.
        default_factory=lambda: float(_env("LIFELINE_APPEND_WINDOW_MS", "2")),
        metadata={
            "env": "LIFELINE_APPEND_WINDOW_MS",
            "help": "how long the gateway gathers frames for one append round to Redis",
        },
    )
    idle_deactivate_s: float = field(
        default_factory=lambda: float(_env("LIFELINE_IDLE_DEACTIVATE_S", "1800")),
        metadata={
            "env": "LIFELINE_IDLE_DEACTIVATE_S",
            "help": "idle time after which a session is snapshotted and dropped from memory",
        },
    )
    anthropic_api_key: str = field(
        default_factory=lambda: _env("ANTHROPIC_API_KEY", ""),
        metadata={
            "env": "ANTHROPIC_API_KEY",
            "help": "key for LLM nudges; empty: templates only",
            "secret": True,
        },
    )
    anthropic_base_url: str = field(
        default_factory=lambda: _env("ANTHROPIC_BASE_URL", ""),
        metadata={
            "env": "ANTHROPIC_BASE_URL",
            "help": "Messages API endpoint (a local stand-in in tests)",
        },
    )
    llm_model: str = field(
        default_factory=lambda: _env("LIFELINE_LLM_MODEL", "claude-haiku-4-5"),
        metadata={"env": "LIFELINE_LLM_MODEL", "help": "model that writes nudges"},
    )

    trace_sample: float = field(
        default_factory=lambda: float(_env("LIFELINE_TRACE_SAMPLE", "0.01")),
        metadata={
            "env": "LIFELINE_TRACE_SAMPLE",
            "help": "share of events traced from the gateway on (every intervention is traced "
            "too) when an OTLP endpoint is set; 0: tracing off",
        },
    )
    trace_endpoint: str = field(
        default_factory=lambda: _traces_endpoint(os.environ),
        metadata={
            "env": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "help": "OTLP/HTTP traces URL (else OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces); "
            "empty: tracing off",
            "url": True,
        },
    )

    @property
    def replica_ack(self) -> tuple[int, int] | None:
        """(replicas, timeout ms) an append round waits for (``WAIT``), or None: the primary's ack."""
        if self.redis_wait_replicas <= 0:
            return None
        return self.redis_wait_replicas, max(1, self.redis_wait_ms)

    @property
    def redis_target(self) -> str:
        """``REDIS_URL`` with the TLS file settings folded in: what every client is opened with.

        The CA, client certificate and key become redis-py's ``ssl_ca_certs``,
        ``ssl_certfile`` and ``ssl_keyfile`` query options (an option the URL
        already names stays as it is), so the one URL string carries all a
        process or actor needs (cluster/redis_client.py checks it). Empty when
        no URL is configured.
        """
        if not self.redis_url:
            return ""
        extra = [
            (option, path)
            for option, path in (
                ("ssl_ca_certs", self.redis_ca),
                ("ssl_certfile", self.redis_cert),
                ("ssl_keyfile", self.redis_key),
            )
            if path
        ]
        parts = urlsplit(self.redis_url)
        named = {k.lower() for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
        extra = [(k, v) for k, v in extra if k not in named]
        if not extra:
            return self.redis_url
        query = "&".join(q for q in (parts.query, urlencode(extra)) if q)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(environment variable, current value, meaning) for every setting, secrets redacted."""
        return cls().describe_values()

    def describe_values(self) -> list[tuple[str, str, str]]:
        """(environment variable, value fit to print, meaning) for every setting of this one.

        Secrets never appear: a key says whether it is set (and whether it is
        the public development default), a URL loses its password.
        """
        out = []
        for f in fields(self):
            value = _env_value(getattr(self, f.name))
            if f.metadata.get("secret"):
                if not value:
                    value = "(not set)"
                elif value in (DEV_SECRET, DEV_DATA_KEY):
                    value = "(development default)"
                else:
                    value = "(set)"
            elif f.metadata.get("url"):
                value = redact_url(value)
            out.append((f.metadata["env"], value, f.metadata["help"]))
        return out

    def to_env(self) -> dict[str, str]:
        """These settings as the environment variables that reproduce them in a child process.

        Secrets go to children this way, never on their command line, where
        ``ps`` shows them to every user of the machine.
        """
        return {f.metadata["env"]: _env_value(getattr(self, f.name)) for f in fields(self)}


def _env_value(value: object) -> str:
    # A flag as the variable that reads back as it (str(False) would read back as on).
    return ("1" if value else "0") if isinstance(value, bool) else str(value)


def _traces_endpoint(env: Mapping[str, str]) -> str:
    """Where spans go, as the OpenTelemetry SDK reads it: the traces URL as is, else the base + /v1/traces."""
    specific = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if specific:
        return specific
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    return base.rstrip("/") + "/v1/traces" if base else ""


def redact_url(url: str) -> str:
    """``url`` fit to print or log: its password (userinfo or ``?password=``) becomes ``***``.

    ``redis://:pw@host:6379/0`` -> ``redis://:***@host:6379/0``; a user name
    stays, so an operator can still tell which account is used.
    """
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL at all: show nothing of it rather than risk a secret
        return "(unparseable URL)"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if colon else f"***@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() == "password" for k, _ in pairs):
            query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def is_loopback(host: str) -> bool:
    """True if listening on ``host`` is reachable from this machine only.

    ``0.0.0.0``, ``::`` and names that resolve to any other address are not;
    a name that does not resolve counts as not loopback (refuse rather than guess).
    """
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos
    )


def is_production(settings: Settings) -> bool:
    """The one predicate for production mode: asked for, or a listener reachable from elsewhere.

    Production mode refuses to start on any unsafe setting (cluster/production.py);
    development (everything on loopback) starts with warnings instead.
    """
    return (
        settings.production
        or not is_loopback(settings.host)
        or not is_loopback(settings.console_host)
    )


def check_secret(settings: Settings) -> str | None:
    """Refuse a resume-token key anyone can know, unless only this machine can connect.

    Raises :class:`InsecureSettings` when ``LIFELINE_SECRET`` is unset (the
    public development default) or empty and the service listens beyond
    loopback; returns a warning to show loudly when it listens on loopback
    only (a development start); ``None`` when the key is the operator's own.
    """
    if settings.secret and settings.secret != DEV_SECRET:
        return None
    what = "empty" if not settings.secret else "the public development default"
    if not is_loopback(settings.host):
        raise InsecureSettings(
            f"LIFELINE_SECRET is {what}, and LIFELINE_HOST={settings.host} is reachable from "
            "other machines: anyone could forge a resume token for any session. Set "
            "LIFELINE_SECRET to a long random value (e.g. `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`), the same on every gateway."
        )
    return (
        f"LIFELINE_SECRET is {what}: resume tokens can be forged by anyone who can connect. "
        f"Accepted only because LIFELINE_HOST={settings.host} is loopback (development); "
        "set LIFELINE_SECRET before serving anyone else."
    )


def check_data_key(settings: Settings) -> str | None:
    """Refuse a master key anyone can know for the event log, unless only this machine can connect.

    Like :func:`check_secret`, for ``LIFELINE_DATA_KEY`` (cluster/sealing.py):
    raises :class:`InsecureSettings` when it is the public development
    default (or empty) and the service listens beyond loopback; a warning on
    loopback; ``None`` when the key is the operator's own.
    """
    if settings.data_key.strip(", ") and settings.data_key != DEV_DATA_KEY:
        return None
    what = "empty" if not settings.data_key.strip(", ") else "the public development default"
    if not is_loopback(settings.host):
        raise InsecureSettings(
            f"LIFELINE_DATA_KEY is {what}, and LIFELINE_HOST={settings.host} is reachable from "
            "other machines: the event log's data keys would be wrapped by a key anyone knows. "
            "Set LIFELINE_DATA_KEY to a long random value (e.g. `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`), the same on every process, and keep it "
            "outside Redis and its backups."
        )
    return (
        f"LIFELINE_DATA_KEY is {what}: the event log's data keys are wrapped by a public key. "
        f"Accepted only because LIFELINE_HOST={settings.host} is loopback (development); "
        "set LIFELINE_DATA_KEY before serving anyone else."
    )
