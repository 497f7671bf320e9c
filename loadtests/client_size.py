"""Measure the tracking client's size: minified and gzipped, against the 8 KB budget.

    python loadtests/client_size.py            # minify with terser if it is at hand, then measure
    python loadtests/client_size.py --check    # measure the committed lifeline.min.js only

Minifying needs terser from npm at development time only (``npx terser``, or
TERSER=/path/to/terser); the service serves the committed lifeline.min.js at
/lifeline.js and needs no build step and no node. The build's banner is
stamped with the source's digest (serve/edge/client_build.py), which
tests/test_ops_client_js.py checks: rebuild here after editing lifeline.js.
Exits 1 when over budget.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from serve.edge.client_build import SCRIPTS, is_fresh, stamp  # noqa: E402

SRC = ROOT / "serve" / "static" / "lifeline.js"
MIN = ROOT / "serve" / "static" / "lifeline.min.js"
STATIC = ROOT / "serve" / "static"
# The modules the tracker loads on demand (the cards, the help chat): built the same way,
# outside the tracker's budget.
ON_DEMAND = [(STATIC / src, STATIC / build) for src, build in SCRIPTS.values() if src != SRC.name]
BUDGET = 8 * 1024
TERSER_ARGS = ["--ecma", "2020", "--compress", "passes=3", "--mangle", "--comments", "/^!/"]


def terser_command() -> list[str] | None:
    if os.environ.get("TERSER"):
        return [os.environ["TERSER"]]
    if shutil.which("terser"):
        return ["terser"]
    if shutil.which("npx"):
        probe = subprocess.run(
            ["npx", "--no-install", "terser", "--version"], capture_output=True, text=True
        )
        if probe.returncode == 0:
            return ["npx", "--no-install", "terser"]
    return None


def minify(src: Path | None = None, out: Path | None = None) -> bool:
    """Minify ``src`` (default: the tracker) to ``out`` and stamp it; False without terser."""
    src, out = src or SRC, out or MIN
    cmd = terser_command()
    if cmd is None:
        return False
    subprocess.run([*cmd, str(src), *TERSER_ARGS, "-o", str(out)], check=True)
    out.write_bytes(stamp(out.read_bytes(), src.read_bytes()))
    return True


def gz(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--check", action="store_true", help="do not minify; measure the committed min file"
    )
    args = ap.parse_args()
    fresh = False if args.check else minify() and all(minify(s, m) for s, m in ON_DEMAND)
    if not MIN.exists():
        print("no lifeline.min.js and no terser to make one (npm install terser)", file=sys.stderr)
        return 2
    if not is_fresh(SRC.read_bytes(), MIN.read_bytes()):
        print(
            "warning: lifeline.min.js was not built from this lifeline.js; rerun without --check",
            file=sys.stderr,
        )
    src, mini = SRC.read_bytes(), MIN.read_bytes()
    size = gz(mini)
    print(f"lifeline.js      {len(src):6d} B source, {gz(src):5d} B gzipped")
    print(
        f"lifeline.min.js  {len(mini):6d} B minified, {size:5d} B minified+gzipped (gzip -9)"
        f"{' (freshly minified)' if fresh else ''}"
    )
    print(
        f"budget           {BUDGET:6d} B: {'within' if size <= BUDGET else 'OVER'} ({BUDGET - size:+d} B)"
    )
    for src_path, min_path in ON_DEMAND:
        if min_path.exists():
            m = min_path.read_bytes()
            stale = "" if is_fresh(src_path.read_bytes(), m) else " (STALE: rerun without --check)"
            print(
                f"{min_path.name:<20} {len(m):5d} B minified, {gz(m):5d} B minified+gzipped, on demand{stale}"
            )
    return 0 if size <= BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
