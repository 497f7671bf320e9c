"""Python 3.10 is supported (pyproject says ``requires-python >= 3.10``): nothing 3.11-only.

The suite runs on 3.11, so the 3.10 paths are checked from here: the sites
file loads with ``tomllib`` absent (as on 3.10, through the ``tomli``
fallback), pyproject installs that fallback on 3.10, and no module of the
service uses a standard-library name that 3.10 lacks.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # running on 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("actors", "serve", "cluster", "training")

# Standard-library names added in Python 3.11 (What's New in Python 3.11), by module.
NEW_IN_311 = {
    "tomllib": None,  # the whole module
    "enum": {"StrEnum", "ReprEnum", "verify", "EnumCheck", "global_enum"},
    "typing": {
        "Self",
        "LiteralString",
        "Never",
        "assert_never",
        "assert_type",
        "reveal_type",
        "Required",
        "NotRequired",
        "TypeVarTuple",
        "Unpack",
        "dataclass_transform",
    },
    "asyncio": {"TaskGroup", "timeout", "timeout_at", "Timeout", "Runner", "Barrier"},
    "datetime": {"UTC"},
    "contextlib": {"chdir"},
    "hashlib": {"file_digest"},
    "operator": {"call"},
    "logging": {"getLevelNamesMapping"},
}
NEW_BUILTINS_311 = {"ExceptionGroup", "BaseExceptionGroup"}


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """True if ``node`` sits in a ``try`` whose handler catches the import's failure."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
            for h in node.handlers
        ):
            return True
    return False


def uses_of_311_names(source: str) -> list[str]:
    """Every 3.11-only name ``source`` imports or reads, unless imported under a fallback."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                whole_module = alias.name in NEW_IN_311 and NEW_IN_311[alias.name] is None
                if whole_module and not _guarded(node, parents):
                    found.append(f"import {alias.name} (line {node.lineno})")
        elif isinstance(node, ast.ImportFrom) and node.module in NEW_IN_311:
            new = NEW_IN_311[node.module]
            for alias in node.names:
                if (new is None or alias.name in new) and not _guarded(node, parents):
                    found.append(f"from {node.module} import {alias.name} (line {node.lineno})")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            new = NEW_IN_311.get(node.value.id)
            if new and node.attr in new:
                found.append(f"{node.value.id}.{node.attr} (line {node.lineno})")
        elif isinstance(node, ast.Name) and node.id in NEW_BUILTINS_311:
            found.append(f"{node.id} (line {node.lineno})")
        elif type(node).__name__ == "TryStar":
            found.append(f"except* (line {node.lineno})")
    return found


def test_the_scanner_sees_what_it_looks_for():
    # The scan below can only fail if its detector works: check it on known snippets.
    assert uses_of_311_names("import tomllib\n")
    assert uses_of_311_names("from typing import Self\n")
    assert uses_of_311_names(
        "import asyncio\nasync def f():\n    async with asyncio.TaskGroup():\n        pass\n"
    )
    assert not uses_of_311_names(
        "try:\n    import tomllib\nexcept ModuleNotFoundError:\n    import tomli as tomllib\n"
    )


def test_no_module_of_the_service_needs_python_311():
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            uses = uses_of_311_names(path.read_text())
            if uses:
                found[str(path.relative_to(ROOT))] = uses
    assert not found, f"3.11-only names in a project that claims 3.10: {found}"


def test_sites_file_loads_without_tomllib_as_on_python_310():
    # A fresh interpreter in which `import tomllib` fails, as it does on 3.10.
    code = (
        "import sys; sys.modules['tomllib'] = None\n"
        "from actors.core.sites import load_sites\n"
        "sites = load_sites('cluster/sites.toml')\n"
        "assert 'demo' in sites, sorted(sites)\n"
        "print('loaded', len(sites))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("loaded ")


def test_pyproject_installs_the_fallback_where_python_310_is_claimed():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    deps = [d.replace(" ", "").replace('"', "'") for d in project["dependencies"]]
    assert any(d.startswith("tomli") and "python_version<'3.11'" in d for d in deps), deps
