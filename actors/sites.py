"""Per-site configuration: site keys, allowed origins, detector and policy rules.

The sites file is TOML, one table per site::

    [sites.demo]
    origins = ["http://127.0.0.1:*", "http://localhost:*"]
    [sites.demo.policy]
    cooldown_s = 60
    [sites.demo.detectors]
    rage_clicks = 3

Origins are matched with shell-style wildcards (``*`` for "any port").
Unknown keys are errors, so a typo in a rule is caught at start-up rather
than silently ignored. Pure: parsing only, no I/O beyond reading the file.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli (pyproject.toml)
    import tomli as tomllib

from actors.detectors import DetectorConfig
from actors.policy import PolicyConfig

_SITE_KEYS = {"origins", "policy", "detectors", "name"}


@dataclass(frozen=True)
class Site:
    """One site that may send events."""

    key: str
    name: str = ""
    origins: tuple[str, ...] = ()
    detectors: DetectorConfig = field(default_factory=DetectorConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def origin_allowed(self, origin: str | None) -> bool:
        """True if ``origin`` matches the allow-list (no Origin header: not a browser, refused)."""
        if not origin:
            return False
        return any(fnmatch.fnmatchcase(origin, pattern) for pattern in self.origins)


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
            )
        except (TypeError, ValueError) as exc:
            raise SiteConfigError(f"{source}: [sites.{key}]: {exc}") from exc
    return out


def load_sites(path: str | Path) -> dict[str, Site]:
    """Read and check the sites file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError as exc:
        raise SiteConfigError(f"sites file not found: {p}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SiteConfigError(f"{p}: {exc}") from exc
    return parse_sites(data, str(p))
