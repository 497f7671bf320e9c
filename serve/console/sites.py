"""The Sites page's back end: keys, origins, goals, policy and detector rules, edited live.

``GET /api/sites`` (viewer) lists every site in force, each value with where
it comes from: ``file`` (cluster/sites.toml), ``override`` (stored from
here) or ``default`` (left out of the table). ``PUT /api/sites/{key}``
(admin) stores a site's whole table (the JSON shape of the file's
``[sites.KEY]``), checked by the file's own parser first: a table it refuses
is a 400 with its message and changes nothing. ``DELETE /api/sites/{key}``
(admin) drops the override, bringing the file's table back. Both are in the
audit log with the table before and after.

Gateways and shards apply a change within about a second, without a
restart (:mod:`cluster.site_rules` says what takes effect when).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from aiohttp import web

from actors.core.sites import Site, SiteConfigError, parse_sites, read_sites_file
from cluster import site_rules
from serve.console.audit import record_action
from serve.console.auth import error, json_body
from serve.console.routing import Route

FILE, OVERRIDE, DEFAULT = "file", "override", "default"


async def _file_tables(request: web.Request) -> dict[str, Any]:
    """The sites file's tables (site key -> table), read afresh: the file is the baseline."""
    path = request.app["ctx"].settings.sites_file
    return (await asyncio.to_thread(read_sites_file, path)).get("sites", {})


def describe(key: str, site: Site, table: dict[str, Any], origin: str) -> dict[str, Any]:
    """One site as the console shows it; ``origin`` says where ``table`` comes from."""

    def valued(name: str, value: Any, given: dict[str, Any]) -> dict[str, Any]:
        return {"value": value, "from": origin if name in given else DEFAULT}

    def rules(config: Any, given: Any) -> dict[str, Any]:
        given = given if isinstance(given, dict) else {}
        return {k: valued(k, v, given) for k, v in dataclasses.asdict(config).items()}

    return {
        "key": key,
        "source": origin,
        "name": valued("name", site.name, table),
        "origins": valued("origins", list(site.origins), table),
        "goals": valued("goals", list(site.goals), table),
        "consent_policy": valued("consent_policy", site.consent_policy, table),
        "retention": {
            k: valued(
                k, days, table.get("retention") if isinstance(table.get("retention"), dict) else {}
            )
            for k, days in site.retention.days().items()
        },
        "policy": rules(site.policy, table.get("policy")),
        "detectors": rules(site.detectors, table.get("detectors")),
        "table": table,
    }


async def list_sites(request: web.Request) -> web.Response:
    """``GET /api/sites``: every site in force, each value with its source."""
    ctx = request.app["ctx"]
    try:
        files = await _file_tables(request)
        baseline = parse_sites({"sites": files}, ctx.settings.sites_file)
    except SiteConfigError as exc:
        return error(500, "sites_file", str(exc))
    version, overrides = await site_rules.read_overrides(ctx.redis, ctx.keys)
    out = []
    for key in sorted(baseline.keys() | overrides.keys()):
        table = overrides.get(key)
        if table is not None:
            try:
                out.append(describe(key, site_rules.validate(key, table), table, OVERRIDE))
                continue
            except SiteConfigError as exc:  # the gateways and shards skip it too
                if key not in baseline:
                    continue
                entry = describe(key, baseline[key], files[key], FILE)
                entry["override_refused"] = str(exc)
                out.append(entry)
                continue
        out.append(describe(key, baseline[key], files[key], FILE))
    return web.json_response({"version": version, "file": ctx.settings.sites_file, "sites": out})


async def put_site(request: web.Request) -> web.Response:
    """``PUT /api/sites/{key}``: store the site's whole table; 400 with the parser's message."""
    ctx = request.app["ctx"]
    key = request.match_info["key"]
    table = await json_body(request)
    if isinstance(table, web.Response):
        return table
    try:
        site = site_rules.validate(key, table)
    except SiteConfigError as exc:
        return error(400, "invalid_site", str(exc))
    before = await _current_table(request, key)
    version = await site_rules.store_override(ctx.redis, ctx.keys, key, table)
    await record_action(
        request, "site edited", site=key, before=before, after=table, version=version
    )
    return web.json_response(
        {"version": version, "site": describe(key, site, table, OVERRIDE)}, status=200
    )


async def delete_override(request: web.Request) -> web.Response:
    """``DELETE /api/sites/{key}``: drop the override; the file's table (if any) is in force."""
    ctx = request.app["ctx"]
    key = request.match_info["key"]
    _, overrides = await site_rules.read_overrides(ctx.redis, ctx.keys)
    if key not in overrides:
        return error(
            404, "no_override", f"site {key!r} has no override: the file's table is in force"
        )
    removed, version = await site_rules.remove_override(ctx.redis, ctx.keys, key)
    files = await _file_tables(request)
    await record_action(
        request,
        "site override removed",
        site=key,
        before=overrides[key],
        after=files.get(key),
        version=version,
    )
    return web.json_response({"version": version, "removed": removed, "file_table": files.get(key)})


async def _current_table(request: web.Request, key: str) -> dict[str, Any] | None:
    """The table in force for ``key`` before an edit: its override, else the file's, else None."""
    ctx = request.app["ctx"]
    _, overrides = await site_rules.read_overrides(ctx.redis, ctx.keys)
    if overrides.get(key) is not None:
        return overrides[key]
    return (await _file_tables(request)).get(key)


ROUTES = (
    Route("GET", "/api/sites", list_sites, "viewer"),
    Route("PUT", "/api/sites/{key}", put_site, "admin"),
    Route("DELETE", "/api/sites/{key}", delete_override, "admin"),
)
