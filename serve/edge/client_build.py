"""The tracking client as browsers get it: the minified build, stamped with its source's digest.

``serve/static/lifeline.js`` is the readable source; ``lifeline.min.js`` is
the same file through terser (``python loadtests/client_size.py``, a
development-time step that needs node; the service does not). The build's
first line names the first 12 hex digits of the source's SHA-256, so a
test (tests/test_ops_client_js.py) and the server can tell, without node or
network, whether the build is older than the source:

    /*! Lifeline client v1 src:dd85f23bc99a */

12 digits, not 64: the build must stay within 8 KB gzipped and is 4 bytes
under; 48 bits tell an edited source from its build, which is all this is
for (it is not an integrity check against tampering).

Limit: the stamp says which source the build was made from, not that the
build was made faithfully; the test rebuilds with terser, where terser is at
hand, and compares byte for byte.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("lifeline.http")

STATIC = Path(__file__).resolve().parents[1] / "static"  # serve/static: the browser assets
SOURCE = "lifeline.js"
BUILD = "lifeline.min.js"
# Every script of the client, by the path it is served at: (source, build). The tracker is
# within its 8 KB budget because the cards' code (lifeline-ui.js) and the help chat's
# (lifeline-chat.js) load on demand.
SCRIPTS = {
    "/lifeline.js": (SOURCE, BUILD),
    "/lifeline-ui.js": ("lifeline-ui.js", "lifeline-ui.min.js"),
    "/lifeline-chat.js": ("lifeline-chat.js", "lifeline-chat.min.js"),
}
BANNER = "/*! Lifeline client v1 src:{digest} */"
_STAMP = re.compile(rb"\A/\*! Lifeline client v1 src:([0-9a-f]{12}) \*/\n")


def source_digest(source: bytes) -> str:
    """The digest a build of ``source`` carries in its banner."""
    return hashlib.sha256(source).hexdigest()[:12]


def stamp(minified: bytes, source: bytes) -> bytes:
    """``minified`` with its first line (terser keeps the source's ``/*!`` banner) stamped."""
    first, _, rest = minified.partition(b"\n")
    if not first.startswith(b"/*!"):  # no banner kept: put ours in front
        rest = minified
    return BANNER.format(digest=source_digest(source)).encode() + b"\n" + rest


def stamped_digest(minified: bytes) -> str | None:
    """The source digest a build names, or ``None`` if it names none."""
    found = _STAMP.match(minified)
    return found[1].decode() if found else None


def is_fresh(source: bytes, minified: bytes) -> bool:
    """True if ``minified`` was built from exactly ``source``."""
    return stamped_digest(minified) == source_digest(source)


@dataclass(frozen=True)
class ClientScript:
    """What ``GET /lifeline.js`` serves: the body, its gzip -9 form, and their ETags."""

    body: bytes
    gzipped: bytes
    etag: str
    minified: bool

    @property
    def gzip_etag(self) -> str:
        return self.etag[:-1] + '-gz"'


def load(static: Path = STATIC, source_name: str = SOURCE, build_name: str = BUILD) -> ClientScript:
    """A client script to serve: the minified build if it matches the source, else the source.

    A stale build (the source edited, the build not redone) would serve old
    behaviour under new code; the readable source is correct, only larger,
    so it is served instead, with a warning.
    """
    source = (static / source_name).read_bytes()
    try:
        build = (static / build_name).read_bytes()
    except FileNotFoundError:
        build = b""
    minified = bool(build) and is_fresh(source, build)
    if not minified:
        log.warning(
            "%s is missing or older than %s: serving the readable source (%d bytes); "
            "rebuild with `python loadtests/client_size.py`",
            build_name,
            source_name,
            len(source),
        )
    body = build if minified else source
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    return ClientScript(body, gzip.compress(body, compresslevel=9, mtime=0), etag, minified)
