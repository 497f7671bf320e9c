"""TLS on the public listeners (cluster/listener_tls.py): wss and https with a CA made here.

A second gateway over the shared stack's shards and Redis listens with a
certificate signed by a CA this test makes (``cryptography``, as tests/test_link.py);
real clients trust only that CA and speak wss and https to it.
"""

from __future__ import annotations

import dataclasses
import json
import ssl
import uuid
from pathlib import Path

import aiohttp
import pytest
import websockets

from cluster.listener_tls import TLSConfigError, server_context
from cluster.stack import _serve
from cluster.tokens import token_keyring
from serve.edge.http import build_app
from tests.certs import pem_pair

pytestmark = pytest.mark.asyncio(loop_scope="session")
ORIGIN = "http://127.0.0.1:8080"


async def test_wss_and_https_with_a_certificate_from_files(lifeline_stack, tmp_path: Path):
    ca, cert, key = pem_pair(tmp_path)
    s = dataclasses.replace(lifeline_stack.settings, tls_cert=str(cert), tls_key=str(key))
    tls = server_context(s)
    assert tls is not None
    gw = lifeline_stack.side_gateway()
    port = await gw.start("127.0.0.1", 0, ssl=tls)
    ws_url = f"wss://127.0.0.1:{port}/ws"
    runner, http_port = await _serve(build_app(gw, ws_url), "127.0.0.1", 0, tls)
    client_tls = ssl.create_default_context(cafile=str(ca))
    try:
        sid = "tls-" + uuid.uuid4().hex[:12]
        async with websockets.connect(ws_url + "?site=demo", origin=ORIGIN, ssl=client_tls) as ws:
            await ws.send(json.dumps({"t": "hello", "v": 1, "sid": sid, "consent": ["analytics"]}))
            welcome = json.loads(await ws.recv())
        assert welcome["t"] == "welcome" and welcome["sid"] == sid
        assert token_keyring(s).check(welcome["token"], "resume", "demo", sid) is None

        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{http_port}/", ssl=client_tls) as r:
                assert r.status == 200
                assert r.headers["Strict-Transport-Security"].startswith("max-age=")
                assert (
                    f"connect-src 'self' wss://127.0.0.1:{port}"
                    in r.headers["Content-Security-Policy"]
                )
                assert ws_url in await r.text()  # the page is told to use wss
            # A client that does not trust the CA is refused: it is TLS, with this certificate.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"https://127.0.0.1:{http_port}/", ssl=ssl.create_default_context())
            # Plain HTTP to the TLS port gets no page.
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{http_port}/") as r:
                    await r.read()
    finally:
        await runner.cleanup()
        await gw.stop()


def test_half_a_certificate_setting_is_refused(lifeline_stack, tmp_path: Path) -> None:
    s = lifeline_stack.settings
    with pytest.raises(TLSConfigError, match="both"):
        server_context(dataclasses.replace(s, tls_cert=str(tmp_path / "x.crt"), tls_key=""))
    with pytest.raises(TLSConfigError, match="do not load"):
        server_context(dataclasses.replace(s, tls_cert="/nonexistent", tls_key="/nonexistent"))
    assert server_context(dataclasses.replace(s, tls_cert="", tls_key="")) is None
