"""Runtime configuration, read once from the environment.

Every knob an operator may turn lives here with its default, so the README's
configuration table and the code cannot drift apart: ``lifeline config``
prints this table from the same source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Settings:
    """What a Lifeline process needs to know about its surroundings."""

    redis_url: str = field(
        default_factory=lambda: _env("REDIS_URL", ""),
        metadata={
            "env": "REDIS_URL",
            "help": "Redis to use; empty: 127.0.0.1:6379 if it answers, else an embedded server",
        },
    )
    prefix: str = field(
        default_factory=lambda: _env("LIFELINE_PREFIX", "ll:"),
        metadata={
            "env": "LIFELINE_PREFIX",
            "help": "prefix of every Redis key (tests use their own)",
        },
    )
    host: str = field(
        default_factory=lambda: _env("LIFELINE_HOST", "127.0.0.1"),
        metadata={"env": "LIFELINE_HOST", "help": "address the gateway listens on"},
    )
    ws_port: int = field(
        default_factory=lambda: int(_env("LIFELINE_WS_PORT", "8765")),
        metadata={"env": "LIFELINE_WS_PORT", "help": "WebSocket port (0: any free port)"},
    )
    http_port: int = field(
        default_factory=lambda: int(_env("LIFELINE_HTTP_PORT", "8080")),
        metadata={
            "env": "LIFELINE_HTTP_PORT",
            "help": "HTTP port: client script, beacon, demo, metrics (0: any free port)",
        },
    )
    sites_file: str = field(
        default_factory=lambda: _env(
            "LIFELINE_SITES", str(PACKAGE_ROOT / "cluster" / "sites.toml")
        ),
        metadata={
            "env": "LIFELINE_SITES",
            "help": "per-site keys, origins and policy rules (TOML)",
        },
    )
    secret: str = field(
        default_factory=lambda: _env("LIFELINE_SECRET", "dev-secret-change-me"),
        metadata={"env": "LIFELINE_SECRET", "help": "HMAC key for session resume tokens"},
    )
    shards: int = field(
        default_factory=lambda: int(_env("LIFELINE_SHARDS", "0")),
        metadata={"env": "LIFELINE_SHARDS", "help": "SessionShard actors (0: one per CPU Ray has)"},
    )
    batch_window_ms: float = field(
        # 4 ms, measured (BENCHMARKS.md, session 8): at 10k events/s a shard's CPU
        # fell from ~30 to ~26.5 % of a core against 1.5 ms, with no worse tail.
        # A call has a fixed cost (an XGBoost prediction ~85 us plus the call's own
        # work, run on cold caches), so fewer, larger calls save CPU; the window adds
        # directly to the intervention latency, within its 50 ms budget.
        default_factory=lambda: float(_env("LIFELINE_BATCH_WINDOW_MS", "4")),
        metadata={
            "env": "LIFELINE_BATCH_WINDOW_MS",
            "help": "how long the gateway gathers events for one shard call",
        },
    )
    append_window_ms: float = field(
        # 2 ms, measured (BENCHMARKS.md, session 8): at 10k events/s, in a slow spell
        # of the VM, Redis took ~2 points of a core less and ack p99 fell in 6 of 7
        # alternated pairs (median 125 -> 77 ms). It adds up to 2 ms to every ack.
        default_factory=lambda: float(_env("LIFELINE_APPEND_WINDOW_MS", "2")),
        metadata={
            "env": "LIFELINE_APPEND_WINDOW_MS",
            "help": "how long the gateway gathers frames for one append round to Redis",
        },
    )
    idle_deactivate_s: float = field(
        default_factory=lambda: float(_env("LIFELINE_IDLE_DEACTIVATE_S", "1800")),
        metadata={
            "env": "LIFELINE_IDLE_DEACTIVATE_S",
            "help": "idle time after which a session is snapshotted and dropped from memory",
        },
    )
    anthropic_api_key: str = field(
        default_factory=lambda: _env("ANTHROPIC_API_KEY", ""),
        metadata={"env": "ANTHROPIC_API_KEY", "help": "key for LLM nudges; empty: templates only"},
    )
    anthropic_base_url: str = field(
        default_factory=lambda: _env("ANTHROPIC_BASE_URL", ""),
        metadata={
            "env": "ANTHROPIC_BASE_URL",
            "help": "Messages API endpoint (a local stand-in in tests)",
        },
    )
    llm_model: str = field(
        default_factory=lambda: _env("LIFELINE_LLM_MODEL", "claude-haiku-4-5"),
        metadata={"env": "LIFELINE_LLM_MODEL", "help": "model that writes nudges"},
    )

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(environment variable, default, meaning) for every setting."""
        out = []
        defaults = cls()
        for f in fields(cls):
            out.append((f.metadata["env"], str(getattr(defaults, f.name)), f.metadata["help"]))
        return out
