"""The Ray Serve deployments the session shards call, their start-up, and the shard-side helper.

* :class:`NudgeWriter` (app ``nudge``): ``write(ctx)`` returns an
  LLM-written nudge (``source`` ``"llm"`` or ``"cache"``) grounded in the
  site's help articles, or the template when the LLM is off, slow, failing
  or says something the output check refuses.
* :class:`Recommender` (app ``recommender``): ``recommend(ctx)``
  answers from the site's session-kNN model, batched across concurrent
  callers with ``@serve.batch``; models are published to Redis by
  ``training/recommender_data.py``.
* :func:`deploy` starts both as named Serve applications (options from
  ``serve/apps/serve_config.yaml``) and returns their handles.
* :class:`FollowUps` is what a shard uses to call them without ever waiting:
  it schedules the call and pushes an ``update`` frame if (and only if) the
  answer arrives within the 2.5 s budget of the triggering event.

Replicas ask for no CPU (``num_cpus: 0``): they mostly wait on the network or
do sub-millisecond lookups, and the 2-core machine's CPUs belong to the
session shards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import msgpack
from ray import serve
from ray.serve.handle import DeploymentHandle

from actors.core.kinds import KIND
from cluster.tracing import Carrier, TraceConfig, Tracing, span, tracing_for
from serve.apps.knowledge import KB_ROOT, KnowledgeBase
from serve.apps.llm import LLMSettings, NudgeLLM, client_settings
from serve.apps.nudge import (
    KINDS,
    build_prompt,
    cache_key,
    check_output,
    link_guide,
    personalization_allowed,
    render_template,
)
from serve.apps.recommender import (
    RecommenderService,
    SessionKNN,
    catalog_from_json,
    catalog_key,
    cold_start_model,
    model_key,
)
from serve.apps.serve_config import (  # re-exported: tests and tools read them here
    CONFIG_PATH,  # noqa: F401
    deployment_options,
    load_serve_config,
)
from serve.apps.serve_config import app_args as _app_args

log = logging.getLogger("lifeline.serve")

# App names; the shards look the deployments up by these (actors/shard/actor.py).
APP_NUDGE = "nudge"
APP_RECOMMENDER = "recommender"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
BUDGET_S = 2.5  # trigger -> text in the browser: later text is not worth showing


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _metrics_text(reader: Any) -> str:
    """Prometheus text exposition of an OpenTelemetry in-memory reader's current data."""
    data = reader.get_metrics_data()
    lines: list[str] = []
    if data is None:
        return ""
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    labels = ",".join(f'{k}="{v}"' for k, v in sorted(p.attributes.items()))
                    lab = "{" + labels + "}" if labels else ""
                    if hasattr(p, "sum") and hasattr(p, "count"):  # histogram
                        lines.append(f"{metric.name}_count{lab} {p.count}")
                        lines.append(f"{metric.name}_sum{lab} {p.sum}")
                    else:
                        lines.append(f"{metric.name}{lab} {p.value}")
    return "\n".join(lines) + ("\n" if lines else "")


class _BreakerMetrics:
    """A replica's LLM circuit breaker in Ray's metrics (Prometheus, the Ray dashboard).

    Exported by Ray as ``ray_lifeline_nudge_breaker_open`` (1 while open or
    half-open, as of the replica's last request) and
    ``ray_lifeline_nudge_breaker_opens_total``, one series per replica process.
    """

    def __init__(self) -> None:
        from ray.util import metrics

        self.open = metrics.Gauge(
            "lifeline_nudge_breaker_open", "1 while the LLM circuit breaker refuses calls"
        )
        self.opens = metrics.Counter(
            "lifeline_nudge_breaker_opens", "times the LLM circuit breaker opened"
        )
        self.open.set(0)
        self._seen = 0

    def update(self, breaker: Any) -> None:
        if breaker.opens > self._seen:
            self.opens.inc(breaker.opens - self._seen)
            self._seen = breaker.opens
        self.open.set(0 if breaker.state == "closed" else 1)


@serve.deployment(name="NudgeWriter", ray_actor_options={"num_cpus": 0})
class NudgeWriter:
    """Writes LLM nudges within the budget; falls back to the template on any trouble.

    ``llm``: :class:`serve.apps.llm.LLMSettings` fields as a dict. ``site_hosts``:
    per site, the host names links may point to (site-relative paths are
    always allowed). ``prefix`` namespaces the Redis cache keys.
    """

    def __init__(
        self,
        llm: dict[str, Any],
        redis_url: str,
        prefix: str,
        site_hosts: dict[str, list[str]] | None = None,
        kb_root: str | None = None,
        tracing: dict[str, Any] | None = None,
    ) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        self.settings = LLMSettings.from_mapping(llm)
        self.prefix = prefix
        self.site_hosts = {k: list(v) for k, v in (site_hosts or {}).items()}
        self.kb_root = Path(kb_root) if kb_root else KB_ROOT
        self._kbs: dict[str, KnowledgeBase] = {}
        # Spans of the follow-ups a shard traces (cluster/tracing.py); None: tracing off.
        self.tracing = tracing_for("lifeline-serve", TraceConfig(**tracing) if tracing else None)
        self.redis = None
        if redis_url:
            from cluster.redis_client import redis_client

            self.redis = redis_client(redis_url, aio=True, socket_timeout=1.0)
        # Our own meter provider: the replica's metrics are read by `metrics()`
        # (the gateway's /metrics can append them) whatever the global setup is.
        self._reader = InMemoryMetricReader()
        self.llm = NudgeLLM(
            self.settings, self.redis, meter_provider=MeterProvider(metric_readers=[self._reader])
        )
        self._breaker_metrics = _BreakerMetrics()
        # Every site's knowledge base is indexed now: built lazily, the first
        # visitor's nudge paid for it (and for importing scikit-learn) out of its 2.5 s.
        for folder in sorted(self.kb_root.iterdir()) if self.kb_root.is_dir() else []:
            if folder.is_dir():
                self._kbs[folder.name] = KnowledgeBase.load(folder.name, self.kb_root).prepare()
        log.warning("NudgeWriter replica: %s", self.settings.describe())

    def _kb(self, site: str) -> KnowledgeBase:
        kb = self._kbs.get(site)
        if kb is None:
            kb = self._kbs[site] = KnowledgeBase.load(site, self.kb_root)
        return kb

    async def write(
        self, ctx: dict[str, Any], trace: Carrier | None = None
    ) -> dict[str, Any] | None:
        """A nudge for one intervention context, by the budget's end.

        Returns None when no LLM nudge may be written for it (no
        personalisation consent, malformed context): the shard keeps its
        template. Otherwise ``{"text", "source", "reason"}`` with source
        ``"llm"``, ``"cache"`` or ``"template"`` (reason: why not the LLM),
        and ``"link"`` (``{"url", "title"}``) when the text names one of the
        site's help articles: the text then shows its title, not its path.
        ``trace``: the W3C context of the shard's follow-up span, when it is traced.
        """
        with span(self.tracing, "lifeline.serve.nudge", trace) as s:
            out = await self._write(ctx, traced=s is not None)
            if s is not None:
                s.set_attribute("lifeline.source", out["source"] if out else "none")
                if out:
                    s.set_attribute("lifeline.reason", out.get("reason") or "")
            return out

    async def _write(self, ctx: dict[str, Any], traced: bool) -> dict[str, Any] | None:
        if not isinstance(ctx, dict) or ctx.get("kind") not in KINDS:
            return None
        if not personalization_allowed(ctx.get("consent")):
            return None
        site = ctx.get("site") if isinstance(ctx.get("site"), str) else ""
        template = ctx.get("template")
        if not isinstance(template, str) or not template:
            template = render_template(ctx["kind"], ctx.get("signals"), ctx.get("page_type"))
        trigger_ms = ctx.get("trigger_ms")
        if not isinstance(trigger_ms, (int, float)) or isinstance(trigger_ms, bool):
            return {"text": template, "source": "template", "reason": "no_trigger_time"}
        if not self.llm.enabled:
            return {"text": template, "source": "template", "reason": "disabled"}
        self._breaker_metrics.update(self.llm.breaker)
        if self.llm.breaker.state == "open":
            # Checked here too so an outage costs no retrieval or prompt work.
            return {"text": template, "source": "template", "reason": "breaker_open"}
        articles = self._kb(site).grounding(ctx, k=2)
        system, user = build_prompt(ctx, articles)
        sources = [template] + [f"{a.title} {a.url} {a.text}" for a in articles]
        hosts = self.site_hosts.get(site, [])
        with (
            self.tracing.span("lifeline.serve.llm")
            if traced and self.tracing is not None
            else contextlib.nullcontext()
        ) as s:
            result = await self.llm.generate(
                system,
                user,
                trigger_ms=int(trigger_ms),
                check=lambda text: check_output(text, hosts, sources),
                cache_key=cache_key(self.prefix, ctx),
            )
            if s is not None:
                s.set_attribute("lifeline.outcome", str(result.outcome))
        self._breaker_metrics.update(self.llm.breaker)
        if result.text is None:
            return {"text": template, "source": "template", "reason": result.outcome}
        # After the check and the cache: a cached text gets its link the same way.
        text, link = link_guide(result.text, ((a.title, a.url) for a in self._kb(site).articles))
        out = {"text": text, "source": result.source, "reason": result.outcome}
        if link is not None:
            out["link"] = link
        return out

    async def stats(self) -> dict[str, Any]:
        """This replica's counters: requests, outcomes, tokens, cost, cache, breaker."""
        return self.llm.stats()

    async def metrics(self) -> str:
        """This replica's OpenTelemetry metrics as Prometheus text."""
        return _metrics_text(self._reader)

    async def llm_enabled(self) -> bool:
        return self.llm.enabled


@serve.deployment(name="Recommender", ray_actor_options={"num_cpus": 0})
class Recommender:
    """Session-kNN recommendations per site, batched across concurrent requests.

    Models and catalogs are read from Redis (``serve.apps.recommender.model_key``
    / ``catalog_key``) on a site's first request and re-read when the
    published version changes (checked at most every ``refresh_s``, in the
    background). ``models``: optional preloaded ``{site: model bytes}`` (for
    benchmarks and tests without a published model). ``max_batch_size`` and
    ``batch_wait_s`` tune ``@serve.batch``. ``catalog_files``: ``{site: path}``
    of catalog JSON (relative paths from the repository root); until a model
    is published for such a site, a cold-start model from its catalog
    (categories, no co-visits) answers.
    """

    LATENCY_WINDOW = 10_000

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        refresh_s: float = 60.0,
        models: dict[str, bytes] | None = None,
        catalogs: dict[str, dict[str, dict[str, Any]]] | None = None,
        max_batch_size: int = 32,
        batch_wait_s: float = 0.0,
        catalog_files: dict[str, str] | None = None,
        tracing: dict[str, Any] | None = None,
    ) -> None:
        self.prefix = prefix
        self.tracing = tracing_for("lifeline-serve", TraceConfig(**tracing) if tracing else None)
        self.refresh_s = refresh_s
        # A batch is whatever queued while the previous one ran (wait 0): a
        # request costs ~0.1 ms of model time, so waiting for company would
        # only add latency at low load, and under load batches form anyway.
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_s)
        self.redis = None
        if redis_url:
            from cluster.redis_client import redis_client

            self.redis = redis_client(redis_url, aio=True, socket_timeout=2.0)
        self.service = RecommenderService(
            {s: SessionKNN.from_bytes(b) for s, b in (models or {}).items()}, catalogs or {}
        )
        self._pinned = set(self.service.models)  # preloaded: never replaced from Redis
        for site, path in (catalog_files or {}).items():
            full = Path(path) if Path(path).is_absolute() else PACKAGE_ROOT / path
            catalog = catalog_from_json(json.loads(full.read_text(encoding="utf-8")))
            self.service.catalogs[site] = catalog
            self.service.models.setdefault(site, cold_start_model(catalog))
        self._versions: dict[str, int] = {}
        self._checked: dict[str, float] = {}
        self._refreshing: set[str] = set()
        self._first_loads: dict[str, asyncio.Future[None]] = {}
        self._latency_ms: deque[float] = deque(maxlen=self.LATENCY_WINDOW)
        self._batch_sizes: deque[int] = deque(maxlen=self.LATENCY_WINDOW)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def _load(self, site: str) -> None:
        if self.redis is None or site in self._pinned:
            return
        raw_version = await self.redis.get(model_key(self.prefix, site) + ":version")
        version = int(raw_version) if raw_version is not None else 0
        self._checked[site] = time.monotonic()
        if version and version == self._versions.get(site):
            return
        data = await self.redis.get(model_key(self.prefix, site))
        if data is None:
            return
        model = SessionKNN.from_bytes(data)
        raw_cat = await self.redis.hgetall(catalog_key(self.prefix, site))
        self.service.models[site] = model
        if raw_cat:  # else keep the catalog file's, if any
            self.service.catalogs[site] = {
                k.decode(): msgpack.unpackb(v, raw=False) for k, v in raw_cat.items()
            }
        self._versions[site] = version
        log.info("recommender model for %s: version %s, %s items", site, version, model.items)

    async def _refresh(self, site: str) -> None:
        try:
            await self._load(site)
        except Exception:
            log.exception("recommender model refresh for %s failed; keeping the old one", site)
        finally:
            self._refreshing.discard(site)

    async def _ensure(self, site: str) -> None:
        if site in self._pinned:
            return
        first = self._first_loads.get(site)
        if first is None and site not in self._checked:
            # First request for this site: there is nothing to serve yet. One
            # load, awaited by every request that arrives before it ends (else
            # those served meanwhile got an empty or half-loaded answer).
            first = asyncio.ensure_future(self._load(site))
            self._first_loads[site] = first
            first.add_done_callback(lambda _: self._first_loads.pop(site, None))
        if first is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(first)
            self._checked.setdefault(site, time.monotonic())
        elif (
            time.monotonic() - self._checked[site] > self.refresh_s and site not in self._refreshing
        ):
            self._refreshing.add(site)
            task = asyncio.create_task(self._refresh(site))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _batched(self, ctxs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # One call for all requests queued meanwhile: the per-call overhead is
        # paid once per batch (the model lookups themselves are ~0.1 ms).
        self._batch_sizes.append(len(ctxs))
        return self.service.recommend_many(ctxs)

    async def recommend(self, ctx: dict[str, Any], trace: Carrier | None = None) -> dict[str, Any]:
        """``{"items": [{"id", "name", "url", "score"}]}`` for ``{"site", "recent_items", "cart_items", "k"}``.

        ``trace``: the W3C context of the shard's follow-up span, when it is traced.
        """
        with span(self.tracing, "lifeline.serve.recommend", trace) as s:
            out = await self._recommend(ctx)
            if s is not None:
                s.set_attribute("lifeline.items", len(out.get("items") or []))
            return out

    async def _recommend(self, ctx: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        site = ctx.get("site") if isinstance(ctx, dict) else None
        if not isinstance(site, str):
            return {"items": []}
        await self._ensure(site)
        out = await self._batched(ctx)
        self._latency_ms.append((time.perf_counter() - t0) * 1000.0)
        return out

    async def reload(self, site: str) -> int:
        """Re-read a site's model now; returns the version loaded (0: none published)."""
        await self._load(site)
        return self._versions.get(site, 0)

    async def latency(self, reset: bool = False) -> dict[str, Any]:
        """p50/p99 of the last requests' time inside this replica, and batch sizes."""
        lat = list(self._latency_ms)
        sizes = list(self._batch_sizes)
        out = {
            "requests": len(lat),
            "p50_ms": _percentile(lat, 0.50),
            "p99_ms": _percentile(lat, 0.99),
            "batches": len(sizes),
            "mean_batch": (sum(sizes) / len(sizes)) if sizes else 0.0,
            "max_batch": max(sizes) if sizes else 0,
        }
        if reset:
            self._latency_ms.clear()
            self._batch_sizes.clear()
        return out


def llm_settings(settings: Any, overrides: Mapping[str, Any] | None = None) -> LLMSettings:
    """LLM settings from the process :class:`cluster.config.Settings` plus config-file overrides."""
    return client_settings(LLMSettings, settings, overrides)


def nudge_app(args: dict[str, Any]) -> Any:
    """Application builder for ``serve run`` / ``serve deploy`` with serve_config.yaml."""
    from cluster.config import Settings

    s = Settings()
    return NudgeWriter.bind(
        asdict(llm_settings(s, args.get("llm"))),
        args.get("redis_url", s.redis_target),
        args.get("prefix", s.prefix),
        args.get("site_hosts"),
        tracing=asdict(TraceConfig.of(s)),
    )


def recommender_app(args: dict[str, Any]) -> Any:
    """Application builder for ``serve run`` / ``serve deploy`` with serve_config.yaml."""
    from cluster.config import Settings

    s = Settings()
    rest = {k: v for k, v in args.items() if k not in ("redis_url", "prefix")}
    return Recommender.bind(
        args.get("redis_url", s.redis_target),
        args.get("prefix", s.prefix),
        tracing=asdict(TraceConfig.of(s)),
        **rest,
    )


def deploy(
    settings: Any,
    redis_url: str,
    prefix: str,
    *,
    site_hosts: dict[str, list[str]] | None = None,
    config_path: Path | str | None = None,
    recommender_models: dict[str, bytes] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, DeploymentHandle]:
    """Start the deployments as named Serve apps; returns ``{"nudge", "recommender", "assistant"}``
    handles (the help chat's assistant: serve/apps/assistant.py).

    Call from a process connected to the Ray cluster (after ``ray.init``).
    Replica counts and autoscaling come from ``serve_config.yaml``; no HTTP
    proxy is started (shards use the handles). Logs whether LLM nudges are
    enabled or templates only. ``overrides``: per app name, args that
    replace the config file's (e.g. ``{"lifeline-recommender": {"batch_wait_s": 0.002}}``).
    """
    config = load_serve_config(config_path)
    tracing = asdict(TraceConfig.of(settings)) if hasattr(settings, "trace_sample") else None
    serve.start(proxy_location=config.get("proxy_location", "Disabled"))
    nudge_args = _app_args(config, APP_NUDGE) | dict((overrides or {}).get(APP_NUDGE, {}))
    llm = llm_settings(settings, nudge_args.get("llm"))
    log.warning("Lifeline nudge writer: %s", llm.describe())
    rec_args = _app_args(config, APP_RECOMMENDER) | dict((overrides or {}).get(APP_RECOMMENDER, {}))
    nudge_app_ = NudgeWriter.options(**deployment_options(config, APP_NUDGE, "NudgeWriter")).bind(
        asdict(llm),
        redis_url,
        prefix,
        site_hosts or nudge_args.get("site_hosts"),
        tracing=tracing,
    )
    rec_app_ = Recommender.options(
        **deployment_options(config, APP_RECOMMENDER, "Recommender")
    ).bind(redis_url, prefix, models=recommender_models, tracing=tracing, **rec_args)
    from serve.apps.assistant import APP_ASSISTANT, ChatAssistant, assistant_settings

    chat_args = _app_args(config, APP_ASSISTANT) | dict((overrides or {}).get(APP_ASSISTANT, {}))
    chat_app_ = ChatAssistant.options(
        **deployment_options(config, APP_ASSISTANT, "ChatAssistant")
    ).bind(
        asdict(assistant_settings(settings, chat_args.get("assistant"))),
        redis_url,
        prefix,
        site_hosts or chat_args.get("site_hosts"),
    )
    # The apps in one call: their replicas start in parallel (seconds saved at start-up).
    nudge, recommender, assistant = serve.run_many(
        [
            serve.RunTarget(nudge_app_, name=APP_NUDGE, route_prefix=None),
            serve.RunTarget(rec_app_, name=APP_RECOMMENDER, route_prefix=None),
            serve.RunTarget(chat_app_, name=APP_ASSISTANT, route_prefix=None),
        ]
    )
    return {"nudge": nudge, "recommender": recommender, "assistant": assistant}


def get_handles() -> dict[str, DeploymentHandle]:
    """Handles to the running apps, for code inside actors (e.g. a shard's __init__)."""
    return {
        "nudge": serve.get_app_handle(APP_NUDGE),
        "recommender": serve.get_app_handle(APP_RECOMMENDER),
    }


Push = Callable[[dict[str, Any]], Awaitable[None]]


class FollowUps:
    """Shard-side: call the deployments in the background, push updates that arrive in time.

    ``nudge()`` and ``recommend()`` only schedule a task and return at once,
    so an event's ack and score never wait for a deployment. The task awaits
    the deployment for what is left of the budget (2.5 s from the trigger),
    cancels the request if time runs out, and calls ``push`` with an
    ``update`` frame only for an answer that arrived in time and differs from
    the template. At most ``max_in_flight`` calls run at once; beyond that new
    ones are dropped (counted), so a stuck deployment cannot pile up tasks.
    ``observe(follow_up, outcome, seconds)``, if given, hears how long each
    call was waited for (``nudge`` or ``recommend``; ``ok``, ``late`` or
    ``failed``): the shards make it a histogram. Must be used from within a
    running event loop.
    """

    def __init__(
        self,
        nudge: DeploymentHandle | None,
        recommender: DeploymentHandle | None,
        budget_s: float = BUDGET_S,
        max_in_flight: int = 256,
        clock: Callable[[], float] = time.time,
        tracing: Tracing | None = None,
        observe: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.nudge_handle = nudge
        self.tracing = tracing  # the shard's: a follow-up given a trace context gets a span
        self._observe = observe
        self.recommender_handle = recommender
        self.budget_s = budget_s
        self.max_in_flight = max_in_flight
        self._clock = clock
        self._tasks: set[asyncio.Task[Any]] = set()
        self.counts: dict[str, int] = {
            "scheduled": 0,
            "pushed": 0,
            "template_only": 0,
            "late": 0,
            "failed": 0,
            "dropped": 0,
        }

    async def _push(self, push: Push, frame: dict[str, Any]) -> None:
        try:
            await push(frame)
        except Exception as exc:  # the socket may be gone by now; nothing to do
            self.counts["failed"] += 1
            log.debug("pushing an update failed: %s", type(exc).__name__)
            return
        self.counts["pushed"] += 1

    def _spawn(self, coro: Awaitable[Any]) -> bool:
        if len(self._tasks) >= self.max_in_flight:
            self.counts["dropped"] += 1
            close = getattr(coro, "close", None)
            if close is not None:
                close()
            return False
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.counts["scheduled"] += 1
        return True

    async def _call(
        self, what: str, method: Any, ctx: dict[str, Any], trigger_ms: int, traced: bool = False
    ) -> Any:
        remaining = trigger_ms / 1000.0 + self.budget_s - self._clock()
        if remaining <= 0:
            self.counts["late"] += 1
            return None
        # Traced: the deployment's span joins this one's trace (W3C traceparent as an argument).
        carrier = self.tracing.inject() if traced and self.tracing is not None else None
        started = time.perf_counter()
        response = method.remote(ctx, carrier) if carrier else method.remote(ctx)

        async def _result() -> Any:
            return await response

        outcome = "ok"
        try:
            return await asyncio.wait_for(_result(), remaining)
        except asyncio.TimeoutError:
            response.cancel()
            self.counts["late"] += 1
            outcome = "late"
        except Exception as exc:  # a failed replica must never hurt the shard
            self.counts["failed"] += 1
            outcome = "failed"
            log.debug("deployment call failed: %s", type(exc).__name__)
        finally:
            if self._observe is not None:
                self._observe(what, outcome, time.perf_counter() - started)
        return None

    def nudge(
        self, sid: str, ctx: dict[str, Any], push: Push, trace: Carrier | None = None
    ) -> bool:
        """Ask the NudgeWriter for a richer text; push ``{"t": "update", ..., "text", "source"[, "link"]}``.

        ``trace``: the W3C context of the decision's span, when it is traced.
        """
        if self.nudge_handle is None:
            return False

        async def run() -> None:
            with span(self.tracing, "lifeline.follow_up.nudge", trace) as s:
                await send(s is not None)

        async def send(traced: bool) -> None:
            out = await self._call(
                "nudge", self.nudge_handle.write, ctx, int(ctx.get("trigger_ms", 0)), traced
            )
            if not out or out.get("source") not in ("llm", "cache"):
                if out is not None:
                    self.counts["template_only"] += 1
                return
            frame = {"t": "update", "sid": sid, "iid": ctx.get("iid"), "text": out["text"]}
            frame["source"] = out["source"]
            if out.get("link"):
                frame["link"] = out["link"]  # the help guide the text names, for the client to link
            await self._push(push, frame)

        return self._spawn(run())

    def recommend(
        self,
        sid: str,
        iid: str,
        ctx: dict[str, Any],
        trigger_ms: int,
        push: Push,
        trace: Carrier | None = None,
    ) -> bool:
        """Ask the Recommender for items; push ``{"t": "update", ..., "items": [{"id", "name", "url"}]}``."""
        if self.recommender_handle is None:
            return False

        async def run() -> None:
            with span(self.tracing, "lifeline.follow_up.recommend", trace) as s:
                await send(s is not None)

        async def send(traced: bool) -> None:
            out = await self._call(
                "recommend", self.recommender_handle.recommend, ctx, trigger_ms, traced
            )
            items = (out or {}).get("items") or []
            if not items:
                return
            frame_items = [{"id": i["id"], "name": i["name"], "url": i["url"]} for i in items]
            await self._push(push, {"t": "update", "sid": sid, "iid": iid, "items": frame_items})

        return self._spawn(run())

    def start(
        self,
        kind: str,
        sid: str,
        iid: str,
        ctx: dict[str, Any],
        trigger_ms: int,
        push: Push,
        trace: Carrier | None = None,
    ) -> bool:
        """Start the follow-up the intervention kind declares (``actors.core.kinds``).

        ``trace``: W3C headers of the decision's span, for a traced intervention.
        """
        if KIND[kind].follow_up == "recommend":
            return self.recommend(sid, iid, ctx, trigger_ms, push, trace)
        return self.nudge(sid, ctx, push, trace)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float = BUDGET_S + 0.5) -> None:
        """Wait for the calls in flight (e.g. before a shard deactivates)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
