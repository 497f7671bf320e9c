"""Origin allow-lists: a wildcard stands for whole DNS labels or any port, never part of a name."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.core.sites import Site, SiteConfigError, load_sites, parse_sites


def site(*origins: str) -> Site:
    return Site("shop", origins=origins)


@pytest.mark.parametrize(
    ("pattern", "origin", "allowed"),
    [
        # A wildcard is one whole label: never a suffix of a name.
        ("https://*.shop.com", "https://a.shop.com", True),
        ("https://*.shop.com", "https://A.Shop.COM", True),  # hosts compare without case
        ("https://*.shop.com", "https://evilshop.com", False),
        ("https://*.shop.com", "https://a.evilshop.com", False),
        ("https://*.shop.com", "https://shop.com", False),
        ("https://*.shop.com", "https://a.b.shop.com", False),  # one label, as in TLS
        ("https://*.*.shop.com", "https://a.b.shop.com", True),
        ("https://*.shop.com", "https://a.shop.com.evil.net", False),
        ("https://*.shop.com", "http://a.shop.com", False),  # the scheme is exact
        # Ports: none means the scheme's default; "*" any, the default included.
        ("http://127.0.0.1:*", "http://127.0.0.1:8080", True),
        ("http://127.0.0.1:*", "http://127.0.0.1", True),
        ("http://127.0.0.1:*", "http://127.0.0.10:8080", False),
        ("http://localhost:*", "http://localhost:3000", True),
        ("http://localhost:*", "http://localhost.evil.com:3000", False),
        ("https://shop.example", "https://shop.example", True),
        ("https://shop.example", "https://shop.example:443", True),
        ("https://shop.example", "https://shop.example:8443", False),
        ("https://shop.example:8443", "https://shop.example:8443", True),
        ("http://[::1]:*", "http://[::1]:8080", True),
        # What a browser never sends as an Origin is refused, whatever the pattern.
        ("http://127.0.0.1:*", "http://127.0.0.1:8080/", False),
        ("http://127.0.0.1:*", "http://127.0.0.1:8080\n", False),
        ("https://shop.example", "https://user@shop.example", False),
        ("https://shop.example", "null", False),
        ("https://shop.example", None, False),
        ("https://shop.example", "", False),
    ],
)
def test_origin_patterns(pattern, origin, allowed):
    assert site(pattern).origin_allowed(origin) is allowed


@pytest.mark.parametrize(
    "pattern",
    [
        "https://*shop.com",  # part of a label: matched evilshop.com under fnmatch
        "https://a*.shop.com",
        "https://shop.*",
        "https://*.com",
        "https://a.*.com",
        "*",
        "shop.com",
        "https://shop.com/",
        "https://shop.com:99999",
        "https://shop.com:8?",
    ],
)
def test_malformed_patterns_are_refused_at_start_up(pattern):
    with pytest.raises(SiteConfigError, match="origin pattern"):
        parse_sites({"sites": {"shop": {"origins": [pattern]}}})


def test_the_shipped_sites_file_still_loads_and_allows_its_origins():
    sites = load_sites(Path(__file__).resolve().parents[1] / "cluster" / "sites.toml")
    assert sites["demo"].origin_allowed("http://127.0.0.1:8080")
    assert sites["demo"].origin_allowed("http://localhost:8765")
    assert sites["loadtest"].origin_allowed("http://loadtest.local")
    assert not sites["loadtest"].origin_allowed("http://loadtest.local.evil.com")
