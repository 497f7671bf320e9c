"""The LLM client shell of the nudge writer: budget, retries, breaker, cache, metrics.

:class:`NudgeLLM` turns a prompt into a checked text, or into a reason why
there is none, within a hard budget measured from the triggering event
(2.5 s by default, minus a margin for the trip back to the browser):

* the real ``anthropic.AsyncAnthropic`` client, with its own retries switched
  off (``max_retries=0``) because they do not know our deadline;
* our retry loop: retryable errors (429, 5xx, 529, connection errors) are
  retried with full-jitter exponential backoff, honouring ``retry-after``,
  and only when the wait plus a useful attempt still fits in the budget;
* every attempt is bounded by the time left (``asyncio.wait_for``: the
  HTTP client's own timeouts are per socket operation, not per request);
* a :class:`~serve.apps.breaker.CircuitBreaker` that opens on consecutive
  failures, so an outage costs one dictionary lookup per nudge, not a
  timeout;
* a Redis cache of checked texts keyed by the situation (see
  :func:`serve.apps.nudge.cache_key`), with a TTL;
* token and cost accounting as OpenTelemetry metrics, and the same figures
  as plain counters from :meth:`NudgeLLM.stats`.

Limits: one instance per event loop (one Serve replica); the breaker and the
counters are per instance, so with N replicas the breaker opens per replica.
Costs are estimates from configured per-million-token prices.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import anthropic
from opentelemetry import metrics
from opentelemetry.metrics import MeterProvider

from serve.apps.breaker import CircuitBreaker
from serve.apps.nudge import CheckResult

log = logging.getLogger("lifeline.llm")

# Outcomes of one generate() call (the "outcome" metric attribute).
OK = "ok"
CACHE_HIT = "cache_hit"
DISABLED = "disabled"
BREAKER_OPEN = "breaker_open"
EXPIRED = "expired"  # the budget was gone before or during the attempts
RATE_LIMITED = "rate_limited"
OVERLOADED = "overloaded"
SERVER_ERROR = "server_error"
CLIENT_ERROR = "client_error"
CONNECTION_ERROR = "connection_error"
MALFORMED = "malformed"
REJECTED = "rejected"


@dataclass(frozen=True)
class LLMSettings:
    """What the nudge writer's LLM client needs; defaults suit claude-haiku-4-5."""

    api_key: str = ""
    base_url: str = ""  # empty: the SDK's default endpoint
    model: str = "claude-haiku-4-5"
    budget_s: float = 2.5  # from the triggering event to the text in the browser
    delivery_margin_s: float = 0.15  # kept back for replica -> shard -> gateway -> browser
    min_attempt_s: float = 0.2  # never start an attempt with less time than this left
    max_tokens: int = 120
    cache_ttl_s: int = 6 * 3600
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0
    backoff_base_s: float = 0.1
    backoff_cap_s: float = 1.0
    redis_timeout_s: float = 0.05  # a slow cache is skipped, never waited for
    # USD per million tokens (claude-haiku-4-5 list prices when written); for
    # the cost metric only, so a stale price skews a dashboard, not a bill.
    price_input_per_mtok: float = 1.0
    price_output_per_mtok: float = 5.0

    @property
    def enabled(self) -> bool:
        """LLM nudges need a key; without one the writer uses templates only."""
        return bool(self.api_key)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> LLMSettings:
        """Build from a dict (a Serve app's ``args``), ignoring unknown keys."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in names})

    def describe(self) -> str:
        """A log line saying whether LLM nudges are on; never prints the key."""
        if not self.enabled:
            return "LLM nudges DISABLED (no ANTHROPIC_API_KEY): templates only"
        where = self.base_url or "api.anthropic.com"
        return f"LLM nudges ENABLED: model {self.model} at {where}, budget {self.budget_s:.1f}s"


@dataclass(slots=True)
class LLMResult:
    """What :meth:`NudgeLLM.generate` produced: a checked text, or why not."""

    text: str | None
    source: str | None  # "llm" | "cache" | None
    outcome: str
    attempts: int = 0
    reason: str | None = None  # check failure reason, status code, ...
    elapsed_s: float = 0.0


@dataclass
class _Counters:
    requests: int = 0
    attempts: int = 0
    llm_texts: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_errors: int = 0
    rejected: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)


def retry_after_s(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` / ``retry-after``), if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(raw) if raw else None
        if parsed is None:
            return None
        return max(0.0, parsed.timestamp() - time.time())


def _classify(exc: BaseException) -> tuple[str, bool, str]:
    """(outcome, retryable, short reason) for an exception from one attempt."""
    if isinstance(exc, anthropic.RateLimitError):
        return RATE_LIMITED, True, "429"
    if isinstance(exc, anthropic.APIStatusError):
        code = exc.status_code
        if code == 529:
            return OVERLOADED, True, "529"
        if code >= 500 or code in (408, 409):
            return SERVER_ERROR, True, str(code)
        return CLIENT_ERROR, False, str(code)
    if isinstance(exc, (anthropic.APIConnectionError, ConnectionError, OSError)):
        return CONNECTION_ERROR, True, type(exc).__name__
    # JSONDecodeError (body not JSON), APIResponseValidationError.
    return MALFORMED, False, type(exc).__name__


def _extract_text(message: Any) -> tuple[str | None, str]:
    """The answer's text, or None and why (missing content, truncated, refused)."""
    content = getattr(message, "content", None)
    if not isinstance(content, list) or not content:
        return None, "no_content"
    parts = [getattr(b, "text", None) for b in content if getattr(b, "type", None) == "text"]
    if not parts or not all(isinstance(p, str) for p in parts):
        return None, "no_text"
    stop = getattr(message, "stop_reason", None)
    if stop == "max_tokens":
        return None, "truncated"
    if stop == "refusal":
        return None, "refusal"
    return "".join(parts), ""


class NudgeLLM:
    """Budgeted, cached, breaker-guarded text generation for one event loop.

    ``redis``: a ``redis.asyncio.Redis`` for the response cache, or None.
    ``clock`` is wall time (the budget starts at an epoch-ms trigger);
    ``monotonic`` drives the breaker. Both, plus ``rng`` and ``sleep``, are
    injectable for tests.
    """

    def __init__(
        self,
        settings: LLMSettings,
        redis: Any | None = None,
        meter_provider: MeterProvider | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self._clock = clock
        self._rng = rng
        self._sleep = sleep
        self.breaker = CircuitBreaker(
            settings.breaker_failures, settings.breaker_reset_s, monotonic
        )
        self._counters = _Counters()
        self._client: anthropic.AsyncAnthropic | None = None
        if settings.enabled:
            self._client = anthropic.AsyncAnthropic(
                api_key=settings.api_key,
                base_url=settings.base_url or None,
                max_retries=0,  # our loop retries, inside the budget
                timeout=settings.budget_s,
            )
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("lifeline.nudge")
        self._m_requests = meter.create_counter(
            "lifeline_llm_requests", description="nudge generations by outcome"
        )
        self._m_attempts = meter.create_counter(
            "lifeline_llm_attempts", description="HTTP attempts to the Messages API by result"
        )
        self._m_tokens = meter.create_counter(
            "lifeline_llm_tokens", unit="{token}", description="tokens billed, by direction"
        )
        self._m_cost = meter.create_counter(
            "lifeline_llm_cost_usd", unit="USD", description="estimated LLM cost"
        )
        self._m_cache = meter.create_counter(
            "lifeline_llm_cache", description="response cache lookups by result"
        )
        self._m_latency = meter.create_histogram(
            "lifeline_llm_attempt_latency", unit="ms", description="latency of one API attempt"
        )
        meter.create_observable_gauge(
            "lifeline_llm_breaker_open",
            callbacks=[self._observe_breaker],
            description="1 while the circuit breaker refuses calls",
        )

    def _observe_breaker(self, _options: Any) -> list[metrics.Observation]:
        return [metrics.Observation(0 if self.breaker.state == "closed" else 1)]

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def deadline(self, trigger_ms: int) -> float:
        """Epoch seconds by which a text must be ready to still reach the browser in time."""
        s = self.settings
        return trigger_ms / 1000.0 + s.budget_s - s.delivery_margin_s

    def stats(self) -> dict[str, Any]:
        """Plain counters (the same figures as the metrics) plus breaker state."""
        out = asdict(self._counters)
        out["outcomes"] = dict(self._counters.outcomes)
        out["breaker_state"] = self.breaker.state
        out["breaker_opens"] = self.breaker.opens
        out["enabled"] = self.enabled
        return out

    def _failed(self) -> None:
        """Count a failed attempt on the breaker; say so once when it opens."""
        opens = self.breaker.opens
        self.breaker.record_failure()
        if self.breaker.opens != opens:
            log.warning(
                "LLM circuit breaker OPEN after %d consecutive failures: templates only for %.0f s",
                self.breaker.consecutive_failures,
                self.settings.breaker_reset_s,
            )

    def _finish(self, result: LLMResult, started: float) -> LLMResult:
        result.elapsed_s = self._clock() - started
        c = self._counters
        c.outcomes[result.outcome] = c.outcomes.get(result.outcome, 0) + 1
        self._m_requests.add(1, {"outcome": result.outcome})
        return result

    async def _cache_get(self, key: str) -> str | None:
        if self.redis is None:
            return None
        try:
            raw = await asyncio.wait_for(self.redis.get(key), self.settings.redis_timeout_s)
        except Exception as exc:  # a slow or broken cache must not cost a nudge
            self._counters.cache_errors += 1
            self._m_cache.add(1, {"result": "error"})
            log.debug("cache get failed: %s", type(exc).__name__)
            return None
        if raw is None:
            self._counters.cache_misses += 1
            self._m_cache.add(1, {"result": "miss"})
            return None
        self._counters.cache_hits += 1
        self._m_cache.add(1, {"result": "hit"})
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)

    async def _cache_put(self, key: str, text: str) -> None:
        if self.redis is None:
            return
        try:
            await asyncio.wait_for(
                self.redis.set(key, text.encode("utf-8"), ex=self.settings.cache_ttl_s),
                self.settings.redis_timeout_s,
            )
        except Exception as exc:
            self._counters.cache_errors += 1
            self._m_cache.add(1, {"result": "error"})
            log.debug("cache set failed: %s", type(exc).__name__)

    def _account(self, message: Any) -> None:
        usage = getattr(message, "usage", None)
        tin = getattr(usage, "input_tokens", 0) or 0
        tout = getattr(usage, "output_tokens", 0) or 0
        if not isinstance(tin, int) or not isinstance(tout, int):
            return
        s = self.settings
        cost = tin * s.price_input_per_mtok / 1e6 + tout * s.price_output_per_mtok / 1e6
        c = self._counters
        c.input_tokens += tin
        c.output_tokens += tout
        c.cost_usd += cost
        self._m_tokens.add(tin, {"direction": "input", "model": s.model})
        self._m_tokens.add(tout, {"direction": "output", "model": s.model})
        self._m_cost.add(cost, {"model": s.model})

    async def generate(
        self,
        system: str,
        user: str,
        *,
        trigger_ms: int,
        check: Callable[[str], CheckResult],
        cache_key: str | None = None,
    ) -> LLMResult:
        """A checked text for this prompt, from the cache or the LLM, before the deadline.

        ``check`` vets every text (cached ones too) before it is returned; a
        refused text is neither returned nor cached. Never raises for API,
        cache or content problems: the outcome says what happened and the
        caller keeps its template. Returns by the deadline (plus scheduling
        jitter) whatever the server does.
        """
        started = self._clock()
        self._counters.requests += 1
        if not self.enabled:
            return self._finish(LLMResult(None, None, DISABLED), started)
        deadline = self.deadline(trigger_ms)
        if deadline - self._clock() < self.settings.min_attempt_s:
            return self._finish(LLMResult(None, None, EXPIRED), started)
        if cache_key is not None:
            cached = await self._checked_cache(cache_key, check)
            if cached is not None:
                return self._finish(cached, started)
        result = await self._ask(system, user, deadline, check, cache_key)
        return self._finish(result, started)

    async def _checked_cache(
        self, cache_key: str, check: Callable[[str], CheckResult]
    ) -> LLMResult | None:
        """The cached text for this prompt if there is one and it still passes ``check``.

        A cached text that no longer passes (the rules changed) is ignored, so
        it is generated again.
        """
        cached = await self._cache_get(cache_key)
        if cached is None:
            return None
        verdict = check(cached)
        return LLMResult(verdict.text, "cache", CACHE_HIT) if verdict.ok else None

    async def _ask(
        self,
        system: str,
        user: str,
        deadline: float,
        check: Callable[[str], CheckResult],
        cache_key: str | None,
    ) -> LLMResult:
        """Attempts at the LLM, retried while the error allows and the deadline leaves time.

        Ends with the first text (checked, see :meth:`_accept`), an error that
        retrying will not cure, an open breaker, or a deadline too near for
        another attempt.
        """
        s = self.settings
        attempts = 0
        last_outcome, last_reason = EXPIRED, None
        while True:
            remaining = deadline - self._clock()
            if remaining < s.min_attempt_s:
                outcome = last_outcome if attempts else EXPIRED
                return LLMResult(None, None, outcome, attempts, last_reason)
            if not self.breaker.allow():
                return LLMResult(None, None, BREAKER_OPEN, attempts)
            attempts += 1
            self._counters.attempts += 1
            t0 = time.perf_counter()
            try:
                message = await self._create(system, user, remaining)
            except asyncio.TimeoutError:
                # The whole budget went on this attempt: the text is dropped
                # even if it arrives later, and the slowness counts as a failure.
                self._failed()
                self._m_attempts.add(1, {"result": "timeout"})
                return LLMResult(None, None, EXPIRED, attempts, "timeout")
            except asyncio.CancelledError:
                self.breaker.abandon()  # our caller gave up; frees a half-open probe slot
                raise
            except (anthropic.APIError, ValueError, OSError) as exc:
                # API errors, bodies that are not JSON (ValueError), sockets.
                # Anything else is a bug of ours and propagates.
                self._m_latency.record((time.perf_counter() - t0) * 1000, {"result": "error"})
                outcome, retryable, reason = _classify(exc)
                self._m_attempts.add(1, {"result": reason})
                self._failed()
                last_outcome, last_reason = outcome, reason
                if not retryable:
                    return LLMResult(None, None, outcome, attempts, reason)
                delay = self._retry_delay(exc, attempts)
                if self._clock() + delay + s.min_attempt_s > deadline:
                    return LLMResult(None, None, outcome, attempts, reason)
                self._counters.retries += 1
                await self._sleep(delay)
                continue
            self._m_latency.record((time.perf_counter() - t0) * 1000, {"result": "ok"})
            self._m_attempts.add(1, {"result": "ok"})
            self.breaker.record_success()
            return await self._accept(message, attempts, deadline, check, cache_key)

    async def _create(self, system: str, user: str, remaining: float) -> Any:
        """One Messages API call, cut off after ``remaining`` seconds (raises TimeoutError)."""
        s = self.settings
        return await asyncio.wait_for(
            self._client.messages.create(  # type: ignore[union-attr]
                model=s.model,
                max_tokens=s.max_tokens,
                system=system,
                messages=[{"role": "user", "content": user}],
                timeout=remaining,
            ),
            timeout=remaining,
        )

    def _retry_delay(self, exc: Exception, attempts: int) -> float:
        """How long to wait before attempt ``attempts + 1`` after a retryable ``exc``.

        Honour the server's wait (plus a little jitter so replicas do not
        come back in lock-step); else full-jitter backoff.
        """
        s = self.settings
        wait = retry_after_s(exc)
        backoff = self._rng() * min(s.backoff_cap_s, s.backoff_base_s * 2 ** (attempts - 1))
        return wait * (1.0 + 0.1 * self._rng()) if wait is not None else backoff

    async def _accept(
        self,
        message: Any,
        attempts: int,
        deadline: float,
        check: Callable[[str], CheckResult],
        cache_key: str | None,
    ) -> LLMResult:
        """The outcome of an answered attempt: its text, or why it is not used.

        The text is used (and cached) if it is well formed, passes ``check``
        and came before the deadline.
        """
        self._account(message)
        text, why = _extract_text(message)
        if text is None:
            return LLMResult(None, None, MALFORMED, attempts, why)
        verdict = check(text)
        if not verdict.ok:
            self._counters.rejected += 1
            log.info("LLM text rejected: %s", verdict.reason)  # the reason, never the text
            return LLMResult(None, None, REJECTED, attempts, verdict.reason)
        if self._clock() > deadline:
            return LLMResult(None, None, EXPIRED, attempts, "late")
        if cache_key is not None:
            await self._cache_put(cache_key, verdict.text)
        self._counters.llm_texts += 1
        return LLMResult(verdict.text, "llm", OK, attempts)

    async def aclose(self) -> None:
        """Close the HTTP client (the Redis client belongs to the caller)."""
        if self._client is not None:
            await self._client.close()


def client_settings(cls: Any, settings: Any, overrides: Mapping[str, Any] | None = None) -> Any:
    """``cls`` (:class:`LLMSettings`, the assistant's settings) from the process settings.

    The key, the API's URL and the model come from :class:`cluster.config.Settings`;
    config-file ``overrides`` (a Serve app's args) win, except for the key, which
    only the environment gives.
    """
    base = {
        "api_key": getattr(settings, "anthropic_api_key", ""),
        "base_url": getattr(settings, "anthropic_base_url", ""),
        "model": getattr(settings, "llm_model", cls.model),
    }
    base.update({k: v for k, v in (overrides or {}).items() if k != "api_key"})
    return cls.from_mapping(base)
