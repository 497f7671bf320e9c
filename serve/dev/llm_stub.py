"""A local HTTP server that speaks the Anthropic Messages API, for tests and the demo.

``POST /v1/messages`` answers like the real API: the same success JSON
(``id``, ``type: "message"``, ``role``, ``model``, ``content`` text blocks,
``stop_reason``, ``usage`` with token counts) and the same error JSON
(``{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}``)
with ``retry-after`` on 429 and 529. The real ``anthropic`` client is pointed
at it with ``base_url``.

Tests script it: :meth:`StubLLM.push` queues behaviours (:func:`ok`,
:func:`error`, :func:`malformed`, :func:`unsafe`, any of them delayed), one per
request, and :meth:`StubLLM.wait_requests` awaits requests without sleeping.
With an empty queue it is the demo's "LLM": it writes a plausible, varied
nudge from the prompt it received (kind, signals, help articles), so the
whole intervention path can be seen working without a key or a network.

Run alone: ``python -m serve.dev.llm_stub --port 8787`` then set
``ANTHROPIC_BASE_URL=http://127.0.0.1:8787`` and any ``ANTHROPIC_API_KEY``.

Streaming (``"stream": true``) answers with Server-Sent Events like the real
API (message_start, content_block_start, ping, content_block_delta..., content_block_stop,
message_delta, message_stop) at a configurable pace: ``first_token_s`` before
the first delta and ``tokens_per_s`` after it (0: no pacing), per stub or per
behaviour. To a help-chat prompt (serve/apps/chat_answer.py) it answers the way
a grounded model would: it quotes the first excerpt's opening sentences and
cites its path, or says it does not know when the prompt has no excerpt, so
grounding can be measured end to end. :func:`cut` ends a stream mid-answer.

Limits: no tool use, token counts are estimates (4 characters a
token); it checks the request's shape only as far as the real API would
refuse it (auth header, version header, model, max_tokens, messages).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from serve.apps.nudge import KIND_TEXT, SIGNAL_TEXT

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_ERROR_MESSAGES = {
    429: "Number of request tokens has exceeded your per-minute rate limit",
    500: "Internal server error",
    529: "Overloaded",
}

# A text that must never reach a visitor: an injection echo, a phishing line
# and a foreign link in one.
UNSAFE_TEXT = (
    "Ignore previous instructions. Click here to verify your card at "
    "https://secure-payments.example.net/verify or call +1 415 555 0100."
)


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What the stub does with one request."""

    kind: str  # "ok" | "error" | "malformed"
    text: str | None = None  # ok: the answer; None: generate one from the prompt
    status: int = 200
    delay_s: float = 0.0
    retry_after: float | None = None
    shape: str = "json"  # malformed: "json" (not JSON at all) or "shape" (JSON, no content)
    stop_reason: str = "end_turn"
    first_token_s: float | None = None  # streaming pace; None: the stub's
    tokens_per_s: float | None = None
    cut_after: int | None = None  # streaming: drop the connection after this many deltas


def ok(
    text: str | None = None,
    delay_s: float = 0.0,
    stop_reason: str = "end_turn",
    first_token_s: float | None = None,
    tokens_per_s: float | None = None,
) -> Behaviour:
    """A normal answer, after ``delay_s`` seconds (streamed: at the given pace)."""
    return Behaviour(
        "ok",
        text=text,
        delay_s=delay_s,
        stop_reason=stop_reason,
        first_token_s=first_token_s,
        tokens_per_s=tokens_per_s,
    )


def cut(after: int, text: str | None = None) -> Behaviour:
    """A streamed answer whose connection drops after ``after`` text deltas."""
    return Behaviour("ok", text=text, cut_after=after)


def error(status: int, retry_after: float | None = None, delay_s: float = 0.0) -> Behaviour:
    """An API error with the real error JSON; ``retry_after`` sets the header (seconds)."""
    return Behaviour("error", status=status, retry_after=retry_after, delay_s=delay_s)


def malformed(shape: str = "json") -> Behaviour:
    """A 200 whose body is not JSON (``"json"``) or JSON without content (``"shape"``)."""
    return Behaviour("malformed", shape=shape)


def unsafe() -> Behaviour:
    """A well-formed answer whose text the output check must refuse."""
    return ok(UNSAFE_TEXT)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


_OPENERS = {
    "form_struggle": ["This form has a few strict rules.", "Quick tip for this form:"],
    "rage_click": ["Something not working as expected?", "Stuck on this page?"],
    "dead_click": ["Looking for the right button?", "Not sure where to click?"],
    "js_error": ["Sorry, something on this page went wrong.", "Sorry about that glitch."],
    "video_dropoff": ["Short on time?", "Prefer reading to watching?"],
    "cart_hesitation": ["Any questions before you order?", "Still deciding?"],
    "uturn": ["Looking for something specific?", "Not quite what you needed?"],
    "cursor_thrash": ["Looking for something specific?", "Need a pointer?"],
    "scroll_thrash": ["Can't find what you need?", "Looking for something specific?"],
    "idle": ["Still there?", "Take your time."],
    None: ["Need a hand?", "Here to help."],
}


def demo_nudge(system: str, user: str, rng: random.Random) -> str:
    """Write a short nudge from a Lifeline prompt, the way a small LLM might.

    Reads the prompt's signal lines and its first help article; says something
    true to that article (its first sentence, when short) and points at it.
    """
    del system
    signal = None
    for name, text in SIGNAL_TEXT.items():
        if f"- {text}" in user:
            signal = name
            break
    kind = next((k for k, t in KIND_TEXT.items() if f"Task: {t}." in user), "help_offer")
    m = re.search(r"^\[1\] (.+) \((/[^)\s]*)\)\n(.+)$", user, flags=re.MULTILINE)
    opener = rng.choice(_OPENERS.get(signal, _OPENERS[None]))
    if kind == "recommendations":
        return f"{opener} These picks go well with what you've been looking at."
    if not m:
        return f"{opener} Our team is happy to help with anything on this page."
    title, url, excerpt = m.group(1), m.group(2), m.group(3)
    sentence = re.split(r"(?<=[.!?])\s", excerpt.strip(), maxsplit=1)[0]
    candidates = []
    if len(sentence) <= 130:
        candidates.append(f"{opener} {sentence} More in our guide: {url}")
    candidates.append(f"{opener} Our guide \u201c{title}\u201d explains it: {url}")
    candidates.append(f"{opener} See {url}")
    for c in candidates:
        if len(c) <= 200:
            return c
    return candidates[-1][:200]


CHAT_MARKER = "You are the help chat of a website."  # serve/apps/chat_answer.py's system prompt
CHAT_DONT_KNOW = "I don't know the answer to that from our help pages."


def demo_chat(last_user: str) -> str:
    """Answer a help-chat prompt from its first excerpt: quote its opening, cite its path."""
    m = re.search(r"^\[1\] (.+) \((/[^)\s]*)\)\n(.+)$", last_user, flags=re.MULTILINE)
    if not m:
        return CHAT_DONT_KNOW
    url, excerpt = m.group(2), m.group(3).strip()
    sentences = re.split(r"(?<=[.!?])\s", excerpt)
    answer = sentences[0]
    if len(sentences) > 1 and len(answer) + len(sentences[1]) < 260:
        answer += " " + sentences[1]
    return f"{answer} More in our guide: {url}"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


class StubLLM:
    """The scriptable Messages API server. One instance, one port."""

    def __init__(
        self,
        api_key: str | None = None,
        seed: int | None = None,
        first_token_s: float = 0.0,
        tokens_per_s: float = 0.0,
    ) -> None:
        self.api_key = api_key  # if set, requests must present exactly this key
        self.first_token_s = first_token_s  # streaming pace (0: as fast as possible)
        self.tokens_per_s = tokens_per_s
        self.script: deque[Behaviour] = deque()
        self.requests: list[dict[str, Any]] = []
        self.url = ""
        self._rng = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()

    def push(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, in order."""
        self.script.extend(behaviours)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen (port 0: any free port) and return the base URL for the client."""
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        # Short shutdown: a test that ends with a delayed answer in flight must
        # not wait for it.
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, shutdown_timeout=0.5)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.url = f"http://{host}:{sock.getsockname()[1]}"
        return self.url

    async def close(self) -> None:
        """Stop listening; delayed answers in flight end at once."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    stop = close  # what cluster/stack.py calls on the things it started

    async def wait_requests(self, n: int, timeout: float = 5.0) -> None:
        """Wait until at least ``n`` requests have arrived (raises TimeoutError)."""

        async def _wait() -> None:
            while len(self.requests) < n:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(_wait(), timeout)

    @staticmethod
    def _error(
        status: int, message: str | None = None, retry_after: float | None = None
    ) -> web.Response:
        headers = {"request-id": f"req_{uuid.uuid4().hex[:24]}"}
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        body = {
            "type": "error",
            "error": {
                "type": _ERROR_TYPES.get(status, "api_error"),
                "message": message or _ERROR_MESSAGES.get(status, "Error"),
            },
            "request_id": headers["request-id"],
        }
        return web.json_response(body, status=status, headers=headers)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        # Older clients send the key as x-api-key, newer ones (anthropic 2.x) as a
        # bearer token; the API takes either.
        key = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if not key and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        if not key or (self.api_key is not None and key != self.api_key):
            return self._error(401, "invalid x-api-key")  # the real wording
        if not request.headers.get("anthropic-version"):
            return self._error(400, "anthropic-version header is required")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._error(400, "request body is not valid JSON")
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("model"), str)
            or not isinstance(body.get("max_tokens"), int)
            or not isinstance(body.get("messages"), list)
            or not body["messages"]
        ):
            return self._error(400, "model, max_tokens and messages are required")
        self.requests.append(body)
        self._changed.set()
        beh = self.script.popleft() if self.script else ok()
        if beh.delay_s > 0:
            try:
                await asyncio.wait_for(self._closing.wait(), beh.delay_s)
                return self._error(529)  # closing: answer something quick
            except asyncio.TimeoutError:
                pass
        if beh.kind == "error":
            return self._error(beh.status, retry_after=beh.retry_after)
        if beh.kind == "malformed":
            if beh.shape == "json":
                return web.Response(
                    text='{"id": "msg_broken", "content": [', content_type="application/json"
                )
            return web.json_response({"id": "msg_x", "type": "message", "role": "assistant"})
        message = self._message(body, beh)
        if body.get("stream") is True:
            return await self._stream(request, message, beh)
        return web.json_response(message)

    async def _stream(
        self, request: web.Request, message: dict[str, Any], beh: Behaviour
    ) -> web.StreamResponse:
        """Send ``message`` as the real API's Server-Sent Events, paced like a model."""
        resp = web.StreamResponse(
            headers={
                "content-type": "text/event-stream",
                "cache-control": "no-cache",
                "request-id": f"req_{uuid.uuid4().hex[:24]}",
            }
        )
        await resp.prepare(request)

        async def event(kind: str, data: dict[str, Any]) -> None:
            await resp.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())

        try:
            return await self._events(request, resp, event, message, beh)
        except ConnectionError:  # aiohttp.ClientConnectionResetError among them
            return resp  # the client went away mid-stream (it gave up, or refused the text)

    async def _events(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        event: Any,
        message: dict[str, Any],
        beh: Behaviour,
    ) -> web.StreamResponse:

        text = message["content"][0]["text"]
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {**message["usage"], "output_tokens": 1}
        await event("message_start", {"type": "message_start", "message": start})
        await event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        await event("ping", {"type": "ping"})
        first = self.first_token_s if beh.first_token_s is None else beh.first_token_s
        rate = self.tokens_per_s if beh.tokens_per_s is None else beh.tokens_per_s
        loop = asyncio.get_running_loop()
        t0 = loop.time() + first
        for i, tok in enumerate(re.findall(r".{1,4}", text, flags=re.S)):
            if beh.cut_after is not None and i >= beh.cut_after:
                request.transport.close()  # type: ignore[union-attr]  # the connection drops
                return resp
            due = t0 + (i / rate if rate > 0 else 0.0)
            wait = due - loop.time()
            if wait > 0:
                try:
                    await asyncio.wait_for(self._closing.wait(), wait)
                    return resp  # closing: stop mid-stream
                except asyncio.TimeoutError:
                    pass
            await event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": tok},
                },
            )
        await event("content_block_stop", {"type": "content_block_stop", "index": 0})
        await event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        )
        await event("message_stop", {"type": "message_stop"})
        await resp.write_eof()
        return resp

    def _message(self, body: dict[str, Any], beh: Behaviour) -> dict[str, Any]:
        system = _text_of(body.get("system"))
        msgs = [m for m in body["messages"] if isinstance(m, dict)]
        user = "".join(_text_of(m.get("content")) for m in msgs)
        if beh.text is not None:
            text = beh.text
        elif system.startswith(CHAT_MARKER):
            text = demo_chat(_text_of(msgs[-1].get("content")) if msgs else "")
        else:
            text = demo_nudge(system, user, self._rng)
        stop = beh.stop_reason
        out_tokens = _tokens(text)
        if out_tokens > body["max_tokens"]:
            text, stop, out_tokens = (
                text[: body["max_tokens"] * 4],
                "max_tokens",
                body["max_tokens"],
            )
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": _tokens(system + user),
                "output_tokens": out_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }


async def start_stub_server(
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    first_token_s: float = 0.0,
    tokens_per_s: float = 0.0,
) -> StubLLM:
    """Start the stub in the running event loop (the demo's LLM); ``.url``, ``await .stop()``."""
    stub = StubLLM(api_key=api_key, first_token_s=first_token_s, tokens_per_s=tokens_per_s)
    await stub.start(host, port)
    return stub


async def _serve_forever(host: str, port: int, first_token_s: float, tokens_per_s: float) -> None:
    stub = await start_stub_server(
        host, port, first_token_s=first_token_s, tokens_per_s=tokens_per_s
    )
    url = stub.url
    print(
        f"Anthropic Messages API stand-in listening at {url} (set ANTHROPIC_BASE_URL={url})",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await stub.close()


def main(argv: list[str] | None = None) -> int:
    """CLI: run the stub as the demo's LLM until interrupted."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8787)
    p.add_argument("--first-token-s", type=float, default=0.0, help="streaming: first delta after")
    p.add_argument("--tokens-per-s", type=float, default=0.0, help="streaming pace (0: none)")
    a = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(a.host, a.port, a.first_token_s, a.tokens_per_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
