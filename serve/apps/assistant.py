"""The help-chat assistant: a Ray Serve deployment that streams grounded answers.

``ChatAssistant.answer(req)`` is an async generator (call it through
``handle.options(stream=True).answer.remote(req)``) yielding
``{"t": "delta", "text"}`` pieces of the answer as they pass the checks, then
always exactly one ``{"t": "final", ...}``:

* ``text``: the whole answer, authoritative (the UI shows it in place of the
  deltas; with ``replace: true`` what was streamed must be replaced, e.g. a
  stream that broke off mid-answer was followed by a fallback);
* ``citations``: ``[{"title", "url"}]`` of the site's help articles the answer used;
* ``source``: ``llm``, ``no_answer`` (the knowledge base has no answer),
  ``fallback`` (model unavailable or its answer refused by the checks) or
  ``error`` (bad request; ``reason`` says which, nothing is stored);
* ``reason``: why not ``llm`` (an outcome of serve/apps/llm.py, a check reason,
  a refusal code of actors/core/chat.py);
* ``offer_person`` (offer the visitor a person) and ``handoff`` (a person was
  promised: the caller moves the chat to waiting_for_person).

``req``: ``{"site", "sid", "text"}`` plus ``"ctx"`` (the session's context as a
shard gives it to the nudge writer: page type and path, signals, cart,
segment, consent) and ``"person_available"``. Without ``personalization`` in
``ctx["consent"]`` no session fact reaches the prompt. A caller that keeps the
transcript itself (the gateway's chat relay, serve/chat/relay.py) passes
``"history"`` (the earlier turns) and ``"remember": false``: the memory is then
neither read nor written here.

The I/O shell of serve/apps/chat_answer.py: retrieval with the measured
retrieval method (serve/apps/knowledge.py ``WINNER``), the conversation memory
(serve/apps/chat_memory.py), the real ``anthropic`` streaming client with its
own retries off, our retries within a first-token budget (only before any
text was shown), the circuit breaker (serve/apps/breaker.py), the nudges'
output checks (sentence by sentence, :class:`serve.apps.chat_answer.SentenceGate`).

Limits: one breaker per replica; a stream that stalls after its first token
is cut at ``idle_s`` and ends with a fallback; the visitor's text is
redacted (e-mails, digit runs) before it is stored or sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anthropic
from ray import serve

from actors.core.chat import ChatLimits
from actors.core.retention import Retention
from actors.core.sites import Site, load_sites
from serve.apps.breaker import CircuitBreaker
from serve.apps.chat_answer import (
    ARTICLES_K,
    GateRefused,
    SentenceGate,
    answer_check,
    answer_score,
    build_chat_prompt,
    citations,
    fallback,
    is_follow_up,
    no_answer,
    redact,
    titled,
)
from serve.apps.chat_answer import NO_ANSWER_BELOW as DEFAULT_THRESHOLD
from serve.apps.chat_memory import ChatMemory
from serve.apps.knowledge import KB_ROOT, Article, KnowledgeBase
from serve.apps.llm import _classify, client_settings, retry_after_s
from serve.apps.nudge import personalization_allowed

log = logging.getLogger("lifeline.assistant")

APP_ASSISTANT = "assistant"


@dataclass(frozen=True)
class AssistantSettings:
    """What the assistant needs; defaults suit claude-haiku-4-5 in a chat."""

    api_key: str = ""
    base_url: str = ""
    model: str = "claude-haiku-4-5"
    max_tokens: int = 300
    first_token_s: float = 6.0  # question -> first checked text, retries included
    idle_s: float = 5.0  # longest pause between deltas once streaming
    total_s: float = 30.0
    min_attempt_s: float = 0.5
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0
    backoff_base_s: float = 0.2
    backoff_cap_s: float = 1.5
    no_answer_below: float = DEFAULT_THRESHOLD
    memory_ttl_s: int | None = None  # None: the site's chats retention (actors/core/retention.py)

    @property
    def enabled(self) -> bool:
        return bool(self.api_key)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> AssistantSettings:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in names})


class _Failed(Exception):
    """An attempt at the model failed; ``outcome`` / ``reason`` as serve/apps/llm.py names them."""

    def __init__(self, outcome: str, reason: str, retryable: bool, exc: BaseException | None):
        super().__init__(reason)
        self.outcome, self.reason, self.retryable, self.exc = outcome, reason, retryable, exc


def _final(
    text: str,
    source: str,
    reason: str | None,
    citations: list[dict[str, str]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    out = {"t": "final", "text": text, "source": source, "reason": reason}
    out["citations"] = citations or []
    out["offer_person"] = bool(extra.get("offer_person", False))
    out["handoff"] = bool(extra.get("handoff", False))
    out["replace"] = bool(extra.get("replace", False))
    return out


class Assistant:
    """The assistant for one event loop; the Serve deployment wraps one (testable alone)."""

    def __init__(
        self,
        settings: AssistantSettings,
        redis: Any,
        prefix: str,
        site_hosts: dict[str, list[str]] | None = None,
        kb_root: Path = KB_ROOT,
        limits: ChatLimits | None = None,
        sites: dict[str, Site] | None = None,
    ) -> None:
        """``sites``: the sites file's sites, whose ``chats`` retention is each chat
        memory's TTL (a site not in it: the default)."""
        self.settings = settings
        self.limits = limits or ChatLimits()
        self.site_hosts = {k: list(v) for k, v in (site_hosts or {}).items()}
        self.memory = None
        if redis is not None:
            known = sites or {}
            self.memory = ChatMemory(
                redis,
                prefix,
                settings.memory_ttl_s,
                retention=lambda site: known[site].retention if site in known else Retention(),
            )
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s)
        self.client: anthropic.AsyncAnthropic | None = None
        if settings.enabled:
            self.client = anthropic.AsyncAnthropic(
                api_key=settings.api_key,
                base_url=settings.base_url or None,
                max_retries=0,  # our loop retries, inside the first-token budget
                timeout=settings.total_s,
            )
        self._kbs: dict[str, KnowledgeBase] = {}
        self.kb_root = kb_root
        for folder in sorted(kb_root.iterdir()) if kb_root.is_dir() else []:
            if folder.is_dir():
                kb = KnowledgeBase.load(folder.name, kb_root).prepare()
                self._kbs[folder.name] = kb.prepare("tfidf_char")
        self.counts: dict[str, int] = {}
        # Request -> first checked text shown, and request -> first raw token from the
        # model (the difference is what the sentence gate holds back), per answer.
        self.ttft_ms: deque[float] = deque(maxlen=10_000)
        self.model_ttft_ms: deque[float] = deque(maxlen=10_000)

    def _kb(self, site: str) -> KnowledgeBase:
        kb = self._kbs.get(site)
        if kb is None:
            kb = self._kbs[site] = KnowledgeBase.load(site, self.kb_root)
        return kb

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    async def _history(self, site: str, sid: str) -> list[dict[str, Any]]:
        if self.memory is None:
            return []
        try:
            return await self.memory.history(site, sid)
        except Exception as exc:  # an answer without memory beats no answer
            log.warning("chat memory read failed: %s", type(exc).__name__)
            return []

    async def _remember(self, site: str, sid: str, question: str, final: dict[str, Any]) -> None:
        if self.memory is None:
            return
        now = time.time()
        turns = [{"role": "visitor", "text": question, "ts": now}]
        turns.append({"role": "assistant", "text": final["text"], "ts": now})
        try:
            await self.memory.append(site, sid, turns)
        except Exception as exc:
            log.warning("chat memory write failed: %s", type(exc).__name__)

    def _retrieve(
        self, kb: KnowledgeBase, question: str, history: list[dict[str, Any]]
    ) -> list[Article]:
        """The articles for this question (none: the help articles have no answer).

        A follow-up that points back ("is it free?") is searched together with
        the visitor's previous question, which says what "it" is.
        """
        query = question
        prev = [t["text"] for t in history if t.get("role") == "visitor" and t.get("text")]
        if prev and is_follow_up(question):
            query = f"{prev[-1]} {question}"
        if answer_score(kb, query) < self.settings.no_answer_below:
            return []
        return [a for a, _ in kb.search(query, k=ARTICLES_K)]

    async def answer(self, req: Any) -> AsyncIterator[dict[str, Any]]:
        """Stream one answer (see the module docstring); never ends without a final message."""
        started = time.perf_counter()
        self._count("requests")
        site, sid, text = (
            req.get(k) if isinstance(req, dict) else None for k in ("site", "sid", "text")
        )
        if not all(isinstance(v, str) and v for v in (site, sid)):
            yield _final("", "error", "bad_request")
            return
        if not isinstance(text, str) or not text.strip():
            yield _final("", "error", "empty_message")
            return
        if len(text) > self.limits.max_chars:
            yield _final("", "error", "message_too_long")
            return
        question = redact(text.strip())
        ctx = req.get("ctx") if isinstance(req.get("ctx"), dict) else {}
        ctx = dict(ctx, site=site) if personalization_allowed(ctx.get("consent")) else None
        person = bool(req.get("person_available"))
        kb = self._kb(site)
        given = req.get("history")
        history = (
            [t for t in given if isinstance(t, dict)]
            if isinstance(given, list)
            else await self._history(site, sid)
        )
        articles = self._retrieve(kb, question, history)
        final: dict[str, Any]
        if not articles:
            final = _final(**no_answer(person), source="no_answer", reason="no_article")
        else:
            final = None  # type: ignore[assignment]
            async for item in self._generate(
                site, question, history, articles, ctx, person, started
            ):
                if item["t"] == "final":
                    final = item
                else:
                    yield item
        self._count(f"source.{final['source']}")
        if req.get("remember", True):
            await self._remember(site, sid, question, final)
        yield final

    async def _generate(
        self,
        site: str,
        question: str,
        history: list[dict[str, Any]],
        articles: list[Article],
        ctx: dict[str, Any] | None,
        person: bool,
        started: float,
    ) -> AsyncIterator[dict[str, Any]]:
        def fail(reason: str, shown: bool) -> dict[str, Any]:
            fb = fallback(articles[0] if articles else None, person)
            return _final(**fb, source="fallback", reason=reason, replace=shown)

        if self.client is None:
            yield fail("disabled", False)
            return
        system, messages = build_chat_prompt(question, history, articles, ctx)
        sources = [question] + [f"{a.title} {a.url} {a.body}" for a in articles]
        check = answer_check(sources, self.site_hosts.get(site, []))
        known = self._kb(site).articles  # the site's articles an answer may name by path
        s = self.settings
        deadline = time.monotonic() + s.first_token_s
        attempts = 0
        shown = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining < s.min_attempt_s:
                yield fail("expired", shown)
                return
            if not self.breaker.allow():
                yield fail("breaker_open", shown)
                return
            attempts += 1
            gate = SentenceGate(check)  # retries only come before anything was shown
            try:
                async with contextlib.aclosing(
                    self._attempt(system, messages, gate, deadline, started)
                ) as pieces:
                    async for piece, stop in pieces:
                        if piece:
                            if not shown:
                                self.ttft_ms.append((time.perf_counter() - started) * 1000.0)
                            shown = True
                            yield {"t": "delta", "text": titled(piece, known)}
                        if stop is not None:
                            self.breaker.record_success()
                            # A refused whole answer raises GateRefused: handled below.
                            tail, verdict = gate.finish(truncated=stop == "max_tokens")
                            if tail:
                                yield {"t": "delta", "text": titled(tail, known)}
                            cites = citations(verdict.text, known)
                            yield _final(titled(verdict.text, known), "llm", None, cites)
                            return
            except GateRefused as e:
                self.breaker.record_success()  # the service worked; its text did not pass
                log.info("chat answer refused by the checks: %s", e.reason)
                yield fail(e.reason, shown)
                return
            except _Failed as f:
                self.breaker.record_failure()
                if shown or not f.retryable:
                    yield fail(f.reason, shown)
                    return
                delay = retry_after_s(f.exc) if f.exc is not None else None
                if delay is None:
                    delay = random.random() * min(
                        s.backoff_cap_s, s.backoff_base_s * 2 ** (attempts - 1)
                    )
                if time.monotonic() + delay + s.min_attempt_s > deadline:
                    yield fail(f.reason, shown)
                    return
                self._count("retries")
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                self.breaker.abandon()
                raise

    async def _attempt(
        self,
        system: str,
        messages: list[dict[str, str]],
        gate: SentenceGate,
        deadline: float,
        started: float,
    ) -> AsyncIterator[tuple[str, str | None]]:
        """One streamed call: yields (checked text to show, None)..., then ("", stop_reason).

        Raises :class:`_Failed` for API, connection and timeout failures.
        """
        s = self.settings
        assert self.client is not None
        manager = self.client.messages.stream(
            model=s.model, max_tokens=s.max_tokens, system=system, messages=messages
        )
        got_text = False
        try:
            stream = await asyncio.wait_for(
                manager.__aenter__(), max(0.01, deadline - time.monotonic())
            )
        except asyncio.TimeoutError as exc:
            raise _Failed("expired", "timeout", True, None) from exc
        except (anthropic.APIError, ValueError, OSError) as exc:
            outcome, retryable, reason = _classify(exc)
            raise _Failed(outcome, reason, retryable, exc) from exc
        try:
            deltas = stream.text_stream.__aiter__()
            while True:
                wait = s.idle_s if got_text else max(0.01, deadline - time.monotonic())
                try:
                    delta = await asyncio.wait_for(deltas.__anext__(), wait)
                except StopAsyncIteration:
                    break
                if delta and not got_text:
                    got_text = True
                    self.model_ttft_ms.append((time.perf_counter() - started) * 1000.0)
                piece = gate.feed(delta)
                if piece:
                    yield piece, None
            message = await stream.get_final_message()
            yield "", message.stop_reason or "end_turn"
        except asyncio.TimeoutError as exc:
            raise _Failed(
                "expired", "stalled" if got_text else "timeout", not got_text, None
            ) from exc
        except (anthropic.APIError, ValueError, OSError) as exc:
            outcome, retryable, reason = _classify(exc)
            raise _Failed(outcome, reason, retryable, exc) from exc
        finally:
            await manager.__aexit__(None, None, None)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts)
        out["breaker_state"] = self.breaker.state
        out["enabled"] = self.client is not None
        return out

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.close()


# An answer mostly waits on the model's stream (seconds), so one replica holds
# many at once; Serve's default of 5 ongoing requests queued the 6th chat
# behind whole answers (loadtests/chat_latency.py: client TTFT p50 5.5 s at 20 chats).
@serve.deployment(name="ChatAssistant", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
class ChatAssistant:
    """The Serve shell of :class:`Assistant` (one per replica); see the module docstring."""

    def __init__(
        self,
        settings: dict[str, Any],
        redis_url: str,
        prefix: str,
        site_hosts: dict[str, list[str]] | None = None,
        kb_root: str | None = None,
        sites_file: str | None = None,
    ) -> None:
        redis = None
        if redis_url:
            from cluster.redis_client import redis_client

            redis = redis_client(redis_url, aio=True, socket_timeout=1.0)
        self.assistant = Assistant(
            AssistantSettings.from_mapping(settings),
            redis,
            prefix,
            site_hosts,
            Path(kb_root) if kb_root else KB_ROOT,
            sites=load_sites(sites_file) if sites_file else None,
        )
        where = self.assistant.settings.base_url or "api.anthropic.com"
        state = "ENABLED" if self.assistant.client is not None else "DISABLED (fallbacks only)"
        log.warning("ChatAssistant replica: model %s at %s %s", settings.get("model"), where, state)

    async def answer(self, req: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream ``{"t": "delta"}`` items then one ``{"t": "final"}`` (module docstring)."""
        async for item in self.assistant.answer(req):
            yield item

    async def ttft(self, reset: bool = False) -> dict[str, list[float]]:
        """This replica's milliseconds from request to first shown text and to the model's first token."""
        a = self.assistant
        out = {"shown": list(a.ttft_ms), "model": list(a.model_ttft_ms)}
        if reset:
            a.ttft_ms.clear()
            a.model_ttft_ms.clear()
        return out

    async def stats(self) -> dict[str, Any]:
        return self.assistant.stats()


def assistant_settings(settings: Any, overrides: dict[str, Any] | None = None) -> AssistantSettings:
    """Assistant settings from the process :class:`cluster.config.Settings` plus overrides."""
    return client_settings(AssistantSettings, settings, overrides)


def assistant_handle() -> Any:
    """The running ChatAssistant app's handle (a gateway process joining a cluster), or None."""
    try:
        return serve.get_app_handle(APP_ASSISTANT)
    except Exception:  # not deployed (``lifeline up --no-serve``, tests): fallback turns
        return None


def assistant_app(args: dict[str, Any]) -> Any:
    """Application builder for ``serve run`` / ``serve deploy`` with serve_config.yaml."""
    from cluster.config import Settings

    s = Settings()
    return ChatAssistant.bind(
        asdict(assistant_settings(s, args.get("assistant"))),
        args.get("redis_url", s.redis_target),
        args.get("prefix", s.prefix),
        args.get("site_hosts"),
        sites_file=str(s.sites_file),
    )


def deploy_assistant(
    settings: Any,
    redis_url: str,
    prefix: str,
    *,
    site_hosts: dict[str, list[str]] | None = None,
    overrides: dict[str, Any] | None = None,
    name: str = APP_ASSISTANT,
    config_path: Path | str | None = None,
) -> Any:
    """Start the assistant as a named Serve app (after ``ray.init``); returns its handle.

    Options and args from ``serve_config.yaml`` (app ``assistant``); ``overrides``
    replace its ``assistant`` settings. Stream answers with
    ``handle.options(stream=True).answer.remote(req)``.
    """
    from serve.apps.serve_config import app_args as _app_args
    from serve.apps.serve_config import deployment_options, load_serve_config

    config = load_serve_config(config_path)
    args = _app_args(config, APP_ASSISTANT)
    chosen = dict(args.get("assistant") or {}) | dict(overrides or {})
    serve.start(proxy_location=config.get("proxy_location", "Disabled"))
    app = ChatAssistant.options(**deployment_options(config, APP_ASSISTANT, "ChatAssistant")).bind(
        asdict(assistant_settings(settings, chosen)),
        redis_url,
        prefix,
        site_hosts or args.get("site_hosts"),
        sites_file=str(settings.sites_file),
    )
    return serve.run(app, name=name, route_prefix=None)
