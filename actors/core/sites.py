"""Per-site configuration: site keys, allowed origins, detector and policy rules.

The sites file is TOML, one table per site::

    [sites.demo]
    origins = ["http://127.0.0.1:*", "http://localhost:*"]
    goals = ["lead"]
    [sites.demo.policy]
    cooldown_s = 60
    [sites.demo.detectors]
    rage_clicks = 3

An origin pattern is ``scheme://host[:port]``, parsed, never globbed as a
string. In the host, ``*`` stands for exactly one whole DNS label (as in a
TLS certificate): ``https://*.shop.com`` allows ``https://a.shop.com`` but
neither ``https://a.b.shop.com`` (write ``https://*.*.shop.com`` for that) nor
``https://shop.com`` nor ``https://evilshop.com``. Wildcard labels come
first and are followed by at least two literal ones; a ``*`` inside a label
(``https://*shop.com``), after one (``https://shop.*``) or before a single
one (``https://*.com``) is refused at start-up. A port of ``*`` allows any
port, the scheme's default included; no port means the scheme's default
(80 for http, 443 for https). Hosts compare case-insensitively; write
internationalised names in their ASCII (``xn--``) form, as browsers send them.

A site's ``[policy]`` table may set ``dismissed_days`` (default 30; 0 turns
it off): a returning visitor with personalisation consent is not offered again
a kind of intervention they dismissed in an earlier visit within that many
days (their profile's memory, actors/core/profile.py).

A site's ``retention`` table says how many days each kind of its data is
kept (``events``, ``sessions``, ``decisions``, ``profiles``, ``consent``: the
proof of consents and erasures); left out, a kind keeps the default of
cluster/keys.py. Fractions of a day are allowed (a test's seconds). The
keys' TTLs are set from it where each kind is written (:class:`Retention`).
``consent_policy`` names the version of the site's consent text that
grants are recorded against (any short string, ``""`` by default).

A site's ``goals`` name the ``custom`` events (``lifeline.track("signup")``)
that count as conversions besides ``purchase``, which always does
(:meth:`Site.conversion`; the outcome report measures them).

Unknown keys are errors, so a typo in a rule is caught at start-up rather
than silently ignored. Pure: parsing only, no I/O beyond reading the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli (pyproject.toml)
    import tomli as tomllib

from actors.core.detectors import DetectorConfig
from actors.core.events import EVENT_TYPES
from actors.core.policy import PolicyConfig
from actors.core.retention import Retention

_SITE_KEYS = {
    "origins",
    "policy",
    "detectors",
    "name",
    "goals",
    "retention",
    "consent_policy",
    "dev_only",
    "chat",
}
CHAT_KEYS = {"wait_s"}
MAX_CHAT_WAIT_S = 3600.0
MAX_POLICY_LEN = 64
PURCHASE = "purchase"  # the conversion every site has: the ``purchase`` event
MAX_GOAL_LEN = 64  # the tracking client cuts a custom event's name to this

# scheme://host[:port], used with fullmatch (no path, no user info, no trailing
# newline). The host is an IPv6 literal or dot-separated labels; whether a
# label is valid is checked per label below.
_ORIGIN_RE = re.compile(
    r"([a-z][a-z0-9+.-]*)://(\[[0-9a-f:.]+\]|[a-z0-9_.*-]+)(?::(\*|[0-9]{1,5}))?", re.IGNORECASE
)
_LABEL_RE = re.compile(r"[a-z0-9_-]+")  # a DNS label (underscores tolerated), lower case
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
ANY_PORT = -1


def _split_origin(text: str, wildcards: bool) -> tuple[str, tuple[str, ...], int | None] | None:
    """(scheme, host labels, port) of an origin or a pattern, or None if it is not one.

    The port is the scheme's default when none is given (None for a scheme
    without one), ANY_PORT for a pattern's ``*``. With ``wildcards``, a host
    label may be ``*``.
    """
    m = _ORIGIN_RE.fullmatch(text)
    if m is None:
        return None
    scheme, host, port_text = m.group(1).lower(), m.group(2).lower(), m.group(3)
    if host.startswith("["):
        labels: tuple[str, ...] = (host,)
    else:
        labels = tuple(host.split("."))
        for label in labels:
            if not (_LABEL_RE.fullmatch(label) or (wildcards and label == "*")):
                return None
    if port_text is None:
        port = _DEFAULT_PORTS.get(scheme)
    elif port_text == "*":
        if not wildcards:
            return None
        port = ANY_PORT
    else:
        port = int(port_text)
        if not 0 < port < 65536:
            return None
    return scheme, labels, port


@dataclass(frozen=True)
class OriginPattern:
    """One allowed-origin pattern of a site, parsed (see the module docstring)."""

    scheme: str
    labels: tuple[str, ...]  # "*" stands for any one label
    port: int | None  # ANY_PORT: any

    @classmethod
    def parse(cls, text: str) -> OriginPattern:
        """Parse a pattern; ValueError says what is wrong with it."""
        if not isinstance(text, str):
            raise ValueError(f"origin pattern {text!r} is not a string")
        parts = _split_origin(text, wildcards=True)
        if parts is None:
            raise ValueError(
                f"origin pattern {text!r} is not scheme://host[:port], where '*' stands for a "
                "whole host label ('https://*.shop.com', not 'https://*shop.com') or any port"
            )
        scheme, labels, port = parts
        literal = labels[labels.count("*") :]
        if "*" in literal or ("*" in labels and len(literal) < 2):
            # "https://shop.*" or "https://*.com" would let in sites nobody meant.
            raise ValueError(
                f"origin pattern {text!r}: '*' labels must come first, followed by at "
                "least two literal labels ('https://*.shop.com')"
            )
        return cls(scheme, labels, port)

    def matches(self, scheme: str, labels: tuple[str, ...], port: int | None) -> bool:
        if scheme != self.scheme or len(labels) != len(self.labels):
            return False
        if self.port != ANY_PORT and port != self.port:
            return False
        return all(p == "*" or p == label for p, label in zip(self.labels, labels, strict=True))


@dataclass(frozen=True)
class Site:
    """One site that may send events."""

    key: str
    name: str = ""
    origins: tuple[str, ...] = ()
    detectors: DetectorConfig = field(default_factory=DetectorConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    goals: tuple[str, ...] = ()  # custom events that count as conversions, besides purchase
    retention: Retention = field(default_factory=Retention)
    consent_policy: str = ""  # the version of the consent text grants are recorded against
    # The help chat's ``[sites.X.chat]`` table: ``wait_s``, how long a visitor waits for a
    # person before being told no one came and offered to leave a message.
    chat_wait_s: float = 120.0
    # A site for development and benchmarks only (the ``loadtest`` site): production mode
    # (cluster/production.py) refuses to start while the sites file has one.
    dev_only: bool = False
    patterns: tuple[OriginPattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Parsed once, here: a malformed pattern fails at start-up (ValueError).
        object.__setattr__(self, "patterns", tuple(OriginPattern.parse(o) for o in self.origins))
        _check_goals(self.goals)
        if not isinstance(self.consent_policy, str) or len(self.consent_policy) > MAX_POLICY_LEN:
            raise ValueError(f"consent_policy must be a string of at most {MAX_POLICY_LEN}")

    def conversion(self, event: dict[str, Any]) -> str | None:
        """The goal a (validated) event reaches: ``purchase``, one of ``goals``, or None."""
        etype = event["type"]
        if etype == PURCHASE:
            return PURCHASE
        if etype == "custom" and event["name"] in self.goals:
            return event["name"]
        return None

    def origin_allowed(self, origin: str | None) -> bool:
        """True if ``origin`` matches the allow-list.

        No Origin header (not a browser), ``null`` (a sandboxed or file page)
        and anything that is not ``scheme://host[:port]`` are refused.
        """
        if not origin:
            return False
        parts = _split_origin(origin, wildcards=False)
        return parts is not None and any(p.matches(*parts) for p in self.patterns)


def _check_goals(goals: Any) -> None:
    """Goals are distinct custom-event names; an event type's name never arrives as one."""
    if not isinstance(goals, tuple) or not all(isinstance(g, str) for g in goals):
        raise ValueError(f"goals must be a list of custom event names, got {goals!r}")
    for g in goals:
        if not 0 < len(g) <= MAX_GOAL_LEN:
            raise ValueError(f"goal {g!r}: a name of 1 to {MAX_GOAL_LEN} characters")
        if g in EVENT_TYPES:
            # purchase always counts; the others are events of their own type, never custom
            raise ValueError(f"goal {g!r} is an event type, not a custom event's name")
    if len(set(goals)) != len(goals):
        raise ValueError(f"goals {list(goals)} name a goal twice")


class SiteConfigError(ValueError):
    """The sites file is missing or malformed; the message says where."""


def parse_sites(data: dict[str, Any], source: str = "<sites>") -> dict[str, Site]:
    sites = data.get("sites")
    if not isinstance(sites, dict) or not sites:
        raise SiteConfigError(f"{source}: expected at least one [sites.<key>] table")
    out: dict[str, Site] = {}
    for key, table in sites.items():
        if not isinstance(table, dict):
            raise SiteConfigError(f"{source}: [sites.{key}] must be a table")
        unknown = set(table) - _SITE_KEYS
        if unknown:
            raise SiteConfigError(f"{source}: [sites.{key}] has unknown keys {sorted(unknown)}")
        try:
            out[key] = Site(
                key=key,
                name=str(table.get("name", key)),
                origins=tuple(table.get("origins", ())),
                detectors=DetectorConfig.from_mapping(table.get("detectors")),
                policy=PolicyConfig.from_mapping(table.get("policy")),
                goals=_as_tuple(table.get("goals", ())),
                retention=Retention.from_mapping(table.get("retention")),
                consent_policy=table.get("consent_policy", ""),
                dev_only=_as_bool(table.get("dev_only", False)),
                chat_wait_s=_chat_wait_s(table.get("chat", {})),
            )
        except (TypeError, ValueError) as exc:
            raise SiteConfigError(f"{source}: [sites.{key}]: {exc}") from exc
    return out


def _chat_wait_s(table: Any) -> float:
    """``[sites.X.chat] wait_s``: seconds, more than 0 and at most an hour (default 120)."""
    if not isinstance(table, dict) or set(table) - CHAT_KEYS:
        raise ValueError(f"chat must be a table with only {sorted(CHAT_KEYS)}")
    wait = table.get("wait_s", 120.0)
    if isinstance(wait, bool) or not isinstance(wait, (int, float)):
        raise TypeError("chat.wait_s must be a number of seconds")
    if not 0 < wait <= MAX_CHAT_WAIT_S:
        raise ValueError(f"chat.wait_s must be more than 0 and at most {MAX_CHAT_WAIT_S:g}")
    return float(wait)


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("dev_only must be true or false")
    return value


def _as_tuple(value: Any) -> Any:
    """A TOML list as a tuple; anything else as it is, for :func:`_check_goals` to refuse."""
    return tuple(value) if isinstance(value, list) else value


def read_sites_file(path: str | Path) -> dict[str, Any]:
    """The sites file as TOML data, unchecked (:func:`parse_sites` checks it)."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError as exc:
        raise SiteConfigError(f"sites file not found: {p}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SiteConfigError(f"{p}: {exc}") from exc


def load_sites(path: str | Path) -> dict[str, Site]:
    """Read and check the sites file."""
    return parse_sites(read_sites_file(path), str(path))
