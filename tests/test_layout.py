"""The layout keeps its promises: the pure core loads no I/O, and no package imports in a cycle.

The core (actors/core) is what training, replay and the shards share; it
must stay importable without an event loop, Ray, Redis or a network client.
The cycle check reads every import statement, those inside functions too,
so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("actors", "serve", "cluster", "training")
IO_MODULES = ("asyncio", "ray", "redis", "aiohttp", "websockets")


def test_the_pure_core_loads_no_io_module():
    core = sorted(
        f"actors.core.{p.stem}"
        for p in (ROOT / "actors" / "core").glob("*.py")
        if p.stem != "__init__"
    )
    assert len(core) >= 8, core
    code = (
        f"import sys\nimport {', '.join(core)}\n"
        f"print(','.join(m for m in {IO_MODULES!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"the core loaded {out.stdout.strip()}"


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports, anywhere in its body."""
    mods = _modules()

    def known(name: str) -> str | None:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in mods:
                return ".".join(parts[:i])
        return None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = known(name)
                # A module's own package (its __init__) is not a dependency edge.
                if target and target != m and not m.startswith(target + "."):
                    graph[m].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_in_a_cycle_not_even_lazily():
    graph = import_graph()
    assert "actors.core.events" in graph["serve.edge.protocol"]  # the graph sees imports
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_imports_nothing_outside_itself_but_the_keys_free_standard():
    graph = import_graph()
    outside = {
        (m, t)
        for m, targets in graph.items()
        if m.startswith("actors.core")
        for t in targets
        if not t.startswith("actors.core")
    }
    assert outside == set()
