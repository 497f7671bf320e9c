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


def test_goals_name_the_custom_events_that_convert_besides_purchase():
    sites = parse_sites({"sites": {"shop": {"goals": ["signup", "lead"]}, "bare": {}}})
    shop, bare = sites["shop"], sites["bare"]
    assert shop.goals == ("signup", "lead")
    assert shop.conversion({"type": "purchase", "seq": 9, "ts": 1}) == "purchase"
    assert shop.conversion({"type": "custom", "name": "lead", "seq": 9, "ts": 1}) == "lead"
    assert shop.conversion({"type": "custom", "name": "newsletter", "seq": 9, "ts": 1}) is None
    assert shop.conversion({"type": "add_to_cart", "item": "x", "seq": 9, "ts": 1}) is None
    # Without goals a site still converts on purchase, and on nothing else.
    assert bare.conversion({"type": "purchase", "seq": 1, "ts": 1}) == "purchase"
    assert bare.conversion({"type": "custom", "name": "lead", "seq": 1, "ts": 1}) is None
    assert load_sites(Path(__file__).resolve().parents[1] / "cluster" / "sites.toml")[
        "demo"
    ].goals == ("lead",)


@pytest.mark.parametrize(
    ("goals", "why"),
    [
        ("signup", "list"),  # a string, not a list
        (["signup", 3], "list"),
        ([""], "1 to 64"),
        (["x" * 65], "1 to 64"),
        (["purchase"], "event type"),  # always a conversion, never a custom event
        (["add_to_cart"], "event type"),
        (["lead", "lead"], "twice"),
    ],
)
def test_malformed_goals_are_refused_at_start_up(goals, why):
    with pytest.raises(SiteConfigError, match=why):
        parse_sites({"sites": {"shop": {"goals": goals}}})


def test_the_help_chat_wait_for_a_person_is_a_site_setting():
    def site(**table):
        return parse_sites({"sites": {"s": {"origins": ["https://a.example"], **table}}})["s"]

    assert site().chat_wait_s == 120.0
    assert site(chat={"wait_s": 30}).chat_wait_s == 30.0
    shipped = Path(__file__).resolve().parents[1] / "cluster" / "sites.toml"
    assert load_sites(shipped)["demo"].chat_wait_s == 120.0
    for bad in ({"wait_s": 0}, {"wait_s": 7200}, {"wait_s": "soon"}, {"wait_s": True}, {"x": 1}):
        with pytest.raises(SiteConfigError, match="chat"):
            site(chat=bad)
