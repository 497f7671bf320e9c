"""GET /lifeline.js serves the minified client within its 8 KB budget, cacheably, never stale;
GET /lifeline-ui.js and /lifeline-chat.js (the cards' and the help chat's code, which the
tracker loads on demand) the same way."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from serve.edge import client_build
from serve.edge.http import build_app

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "serve" / "static"
BUDGET = 8 * 1024


def app():
    # /lifeline.js needs no gateway: the real app, on an ephemeral port, without the service.
    return build_app(gateway=None, ws_url="ws://127.0.0.1:1/ws")  # type: ignore[arg-type]


async def test_lifeline_js_is_the_minified_build_gzipped_within_budget():
    async with TestClient(TestServer(app()), auto_decompress=False) as client:
        r = await client.get("/lifeline.js", headers={"Accept-Encoding": "gzip, deflate"})
        raw = await r.read()
        assert r.status == 200
        assert r.headers["Content-Encoding"] == "gzip"
        assert r.headers["Content-Type"].startswith("application/javascript")
        assert len(raw) < BUDGET, len(raw)
        assert gzip.decompress(raw) == (STATIC / "lifeline.min.js").read_bytes()
        plain = await client.get("/lifeline.js", headers={"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in plain.headers
        assert await plain.read() == (STATIC / "lifeline.min.js").read_bytes()


async def test_lifeline_js_is_cacheable_and_revalidates_with_304():
    async with TestClient(TestServer(app()), auto_decompress=False) as client:
        for encoding in ("gzip", "identity"):
            r = await client.get("/lifeline.js", headers={"Accept-Encoding": encoding})
            etag = r.headers["ETag"]
            assert etag.startswith('"') and etag.endswith('"')
            assert "max-age=" in r.headers["Cache-Control"]
            assert "no-cache" not in r.headers["Cache-Control"]
            assert r.headers["Vary"] == "Accept-Encoding"
            again = await client.get(
                "/lifeline.js", headers={"Accept-Encoding": encoding, "If-None-Match": etag}
            )
            assert again.status == 304 and await again.read() == b""
            assert again.headers["ETag"] == etag
        other = await client.get("/lifeline.js", headers={"If-None-Match": '"not-this-one"'})
        assert other.status == 200 and await other.read()


@pytest.mark.parametrize("source_name,build_name", list(client_build.SCRIPTS.values()))
def test_the_committed_build_was_made_from_the_committed_source(source_name, build_name):
    source = (STATIC / source_name).read_bytes()
    build = (STATIC / build_name).read_bytes()
    assert client_build.stamped_digest(build) == client_build.source_digest(source), (
        f"{build_name} is stale: rebuild it with `python loadtests/client_size.py` "
        "(needs terser: `npm install terser`)"
    )
    if source_name == "lifeline.js":  # the budget is the tracker's: the cards load on demand
        assert len(gzip.compress(build, compresslevel=9, mtime=0)) <= BUDGET


@pytest.mark.parametrize("name", ["lifeline-ui", "lifeline-chat"])
async def test_the_on_demand_modules_are_served_minified_beside_the_tracker(name):
    async with TestClient(TestServer(app()), auto_decompress=False) as client:
        r = await client.get(f"/{name}.js", headers={"Accept-Encoding": "gzip"})
        assert r.status == 200 and r.headers["Content-Type"].startswith("application/javascript")
        assert gzip.decompress(await r.read()) == (STATIC / f"{name}.min.js").read_bytes()
        tracker = await client.get("/lifeline.js")
        assert r.headers["ETag"] != tracker.headers["ETag"]


def test_an_edited_source_makes_the_build_stale():
    source = (STATIC / "lifeline.js").read_bytes()
    build = (STATIC / "lifeline.min.js").read_bytes()
    assert client_build.is_fresh(source, build)
    assert not client_build.is_fresh(source + b"\n", build)
    assert not client_build.is_fresh(source, build.split(b"\n", 1)[1])  # no stamp at all


def test_a_stale_build_is_not_served(tmp_path):
    shutil.copy(STATIC / "lifeline.min.js", tmp_path / "lifeline.min.js")
    (tmp_path / "lifeline.js").write_bytes((STATIC / "lifeline.js").read_bytes() + b"// edit\n")
    served = client_build.load(tmp_path)
    assert not served.minified and served.body.endswith(b"// edit\n")
    fresh = client_build.load(STATIC)
    assert fresh.minified and fresh.body == (STATIC / "lifeline.min.js").read_bytes()


def _terser() -> list[str] | None:
    if os.environ.get("TERSER"):
        return [os.environ["TERSER"]]
    if shutil.which("terser"):
        return ["terser"]
    return None


def test_rebuilding_with_terser_gives_the_committed_build(tmp_path):
    # The stamp is not taken on trust: rebuild with terser (tests/run.sh installs it) and compare.
    assert _terser() is not None, "terser is not installed: run tests through tests/run.sh"
    shutil.copy(STATIC / "lifeline.js", tmp_path / "lifeline.js")
    code = (
        "import sys, runpy; sys.argv = ['client_size.py'];"
        "import loadtests.client_size as c;"
        f"from pathlib import Path; c.SRC = Path({str(tmp_path / 'lifeline.js')!r});"
        f"c.MIN = Path({str(tmp_path / 'lifeline.min.js')!r}); assert c.minify()"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
    assert (tmp_path / "lifeline.min.js").read_bytes() == (STATIC / "lifeline.min.js").read_bytes()
    # and every module it loads on demand (the cards, the help chat)
    for source_name, build_name in client_build.SCRIPTS.values():
        if source_name == "lifeline.js":
            continue
        shutil.copy(STATIC / source_name, tmp_path / source_name)
        code = (
            "import loadtests.client_size as c; from pathlib import Path;"
            f"assert c.minify(Path({str(tmp_path / source_name)!r}), "
            f"Path({str(tmp_path / build_name)!r}))"
        )
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
        rebuilt = (tmp_path / build_name).read_bytes()
        assert rebuilt == (STATIC / build_name).read_bytes(), build_name
