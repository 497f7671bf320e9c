"""The Models page's back end: the registry, its plots, and promotion and roll-back (admin).

``GET /api/models`` (viewer): every registered version with its training
figures (from its registry metadata), which is live, the challenger, what a
roll-back would bring back, and the promotion history (with the guard's
figures). ``GET /api/models/{version}/plots/{name}`` (viewer): one of the
version's training-report plots (PNG), stored with it at registration
(``lifeline train``, :meth:`training.registry.ModelRegistry.save_plots`);
for a version registered before plots were kept, the report folder that
names it, if this host has one.

``POST /api/models/{version}/promote`` and ``POST /api/models/rollback``
(admin) run the promotion guard of ``lifeline promote``
(:func:`training.promotion.promote_guarded`: the candidate against the live
model on the live event log's newest sessions), with ``force`` as an
explicit field of the JSON body, and are audited, refusals too. A
promotion moves ``model:live``; the shards poll it every second and swap
between batches. A roll-back promotes the version that was live before the
live one.

Limits: the guard replays the live event log in this process (in a worker
thread; seconds for a few thousand sessions, longer for a big log), and
one promotion runs at a time (a second one meanwhile gets 409).
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from actors.core.features import FEATURE_SCHEMA_HASH
from cluster.config import PACKAGE_ROOT
from cluster.redis_client import redis_client
from serve.console.audit import record_action
from serve.console.auth import error, json_body
from serve.console.routing import Route
from training.registry import PLOT_NAME, ModelRegistry, SchemaMismatch, UnknownVersion

REPORTS = PACKAGE_ROOT / "reports"  # where `lifeline train` writes reports by default
HISTORY = 50
# What the list shows of a version's metadata (the rest, feature names and drift
# reference among them, is large and for the shards).
SHOWN = (
    "version",
    "created",
    "created_ms",
    "size_bytes",
    "sha256",
    "data",
    "metrics",
    "metrics_by_source",
    "label",
    "label_definition",
    "horizon_s",
    "split",
    "params",
    "best_iteration",
    "threshold",
    "command",
)
GUARD_FIELDS = {
    "force": bool,
    "test_frac": float,
    "auc_tolerance": float,
    "brier_tolerance": float,
}
_promoting = threading.Lock()  # one guarded promotion at a time, whatever the event loop


@functools.lru_cache(maxsize=8)
def _registry(redis_url: str, prefix: str) -> ModelRegistry:
    """The registry (synchronous: it is shared with the CLI; called in worker threads)."""
    return ModelRegistry(redis_client(redis_url), prefix)


def registry(request: web.Request) -> ModelRegistry:
    ctx = request.app["ctx"]
    return _registry(ctx.redis_url, ctx.keys.prefix)


def _listing(reg: ModelRegistry) -> dict[str, Any]:
    challenger = reg.challenger()
    versions = []
    for meta in reg.list():
        entry = {k: meta[k] for k in SHOWN if k in meta}
        entry["live"] = meta["live"]
        entry["challenger"] = challenger is not None and challenger[0] == meta["version"]
        entry["schema_ok"] = meta.get("feature_schema") == FEATURE_SCHEMA_HASH
        entry["plots"] = reg.plot_names(meta["version"]) or _report_plot_names(meta["version"])
        versions.append(entry)
    live = reg.live()
    return {
        "live": live,
        "serving": live or "bundled",  # the shards score with the bundled model until a promotion
        "challenger": {"version": challenger[0], "share": challenger[1]} if challenger else None,
        "rollback_to": reg.previous_live(),
        "feature_schema": FEATURE_SCHEMA_HASH,
        "versions": versions,
        "history": reg.history(HISTORY),
    }


async def list_models(request: web.Request) -> web.Response:
    """``GET /api/models``."""
    return web.json_response(await asyncio.to_thread(_listing, registry(request)))


def _report_dir(version: str) -> Path | None:
    """The report folder whose report names ``version`` as registered (older versions)."""
    needle = f"Registered as model version `{version}`."
    for report in sorted(REPORTS.glob("*/report.md")):
        try:
            if needle in report.read_text(encoding="utf-8"):
                return report.parent
        except OSError:
            continue
    return None


def _report_plot_names(version: str) -> list[str]:
    folder = _report_dir(version)
    if folder is None:
        return []
    from training.evaluate import report_plots

    return sorted(report_plots(folder / "report.md"))


def _plot(reg: ModelRegistry, version: str, name: str) -> bytes | None:
    png = reg.plot(version, name)
    if png is not None:
        return png
    folder = _report_dir(version)
    if folder is None or name not in _report_plot_names(version):
        return None
    return (folder / name).read_bytes()


async def plot(request: web.Request) -> web.StreamResponse:
    """``GET /api/models/{version}/plots/{name}``: a PNG of the version's training report."""
    version, name = request.match_info["version"], request.match_info["name"]
    if not PLOT_NAME.fullmatch(name):
        return error(400, "bad_plot_name", "a plot is named like 'roc.png'")
    png = await asyncio.to_thread(_plot, registry(request), version, name)
    if png is None:
        return error(404, "no_plot", f"no plot {name!r} is kept for model {version!r}")
    # A version's plots never change: the browser may keep them.
    return web.Response(
        body=png, content_type="image/png", headers={"Cache-Control": "private, max-age=86400"}
    )


def _guard_options(body: dict[str, Any]) -> dict[str, Any] | str:
    """The guard's options from a request body, or what is wrong with them."""
    unknown = sorted(set(body) - set(GUARD_FIELDS))
    if unknown:
        return f"unknown fields {unknown}; known: {sorted(GUARD_FIELDS)}"
    out: dict[str, Any] = {}
    for name, kind in GUARD_FIELDS.items():
        if name not in body:
            continue
        value = body[name]
        if kind is bool:
            if not isinstance(value, bool):
                return f"{name} must be true or false"
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name} must be a number"
        elif not (0.0 <= value < 1.0 and math.isfinite(value)) or (
            name == "test_frac" and value == 0
        ):
            return f"{name} must be in [0, 1) (test_frac above 0)"
        out[name] = value
    return out


def _promote(reg: ModelRegistry, ref: str | None, options: dict[str, Any], prefix: str) -> Any:
    """Resolve and promote (worker thread); ``ref`` None: roll back. A str result is a 409."""
    if not _promoting.acquire(blocking=False):
        return "busy"
    try:
        from training import promotion  # pandas and xgboost: loaded on the first promotion

        version = reg.resolve(ref) if ref is not None else reg.previous_live()
        if version is None:
            return "nothing"
        rows = functools.partial(promotion.live_rows, reg.r, prefix)
        return promotion.promote_guarded(reg, version, rows, **options)
    finally:
        _promoting.release()


async def _guarded(request: web.Request, ref: str | None, action: str) -> web.Response:
    body = await json_body(request) if request.can_read_body else {}
    if isinstance(body, web.Response):
        return body
    options = _guard_options(body)
    if isinstance(options, str):
        return error(400, "bad_request", options)
    ctx = request.app["ctx"]
    try:
        result = await asyncio.to_thread(_promote, registry(request), ref, options, ctx.keys.prefix)
    except UnknownVersion as exc:
        return error(404, "unknown_version", str(exc))
    except SchemaMismatch as exc:
        await record_action(request, f"{action} refused", version=ref, reason="feature schema")
        return error(409, "schema_mismatch", str(exc))
    if result == "busy":
        return error(409, "busy", "another promotion is being checked; try again when it is done")
    if result == "nothing":
        return error(409, "nothing_to_roll_back", "no earlier live version is recorded")
    summary = result.summary()
    force = bool(options.get("force", False))
    await record_action(
        request,
        action if result.promoted else f"{action} refused",
        version=result.version,
        previous=result.previous,
        decision=result.decision,
        verdict=summary["verdict"],
        force=force,
    )
    if not result.promoted:
        return web.json_response(
            {"code": "refused", "detail": "; ".join(summary["reasons"]), **summary}, status=409
        )
    return web.json_response(summary)


async def promote(request: web.Request) -> web.Response:
    """``POST /api/models/{version}/promote``; body ``{"force": false}`` (optional)."""
    return await _guarded(request, request.match_info["version"], "model promoted")


async def rollback(request: web.Request) -> web.Response:
    """``POST /api/models/rollback``: promote the version live before the live one."""
    return await _guarded(request, None, "model rolled back")


ROUTES = (
    Route("GET", "/api/models", list_models, "viewer"),
    Route("GET", r"/api/models/{version}/plots/{name}", plot, "viewer"),
    Route("POST", "/api/models/rollback", rollback, "admin"),
    Route("POST", "/api/models/{version}/promote", promote, "admin"),
)
