"""The shard link over real TCP sockets: calls, refusals, failures, drops and reconnects.

The shard's Ray handle is replaced by an object with the same ``link_address.remote()``
(the link learns its address from it and nothing else); the Ray side, a shard killed
and restarted by Ray mid-stream, is tested in ``test_spine.py``.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest

from actors.shard.link import (
    MAX_FRAME,
    REQUEST,
    LinkDown,
    LinkServer,
    LinkTLS,
    ShardFailed,
    ShardLink,
)


class _Address:
    def __init__(self, shard: FakeShard) -> None:
        self.shard = shard

    def options(self, **options: object) -> _Address:
        self.shard.options = options
        return self

    async def remote(self) -> tuple[str, int, str]:
        self.shard.asked += 1
        return self.shard.address


class FakeShard:
    """Stands in for the actor handle: hands out the current server's address."""

    def __init__(self, server: LinkServer) -> None:
        self.address = server.address()
        self.asked = 0
        self.options: dict[str, object] = {}  # the Ray call options the link asked with
        self.link_address = _Address(self)


def echo(batch: bytes, gateway: str, sent_at: float) -> bytes:
    if batch == b"boom":
        raise ValueError("a bug")
    return msgpack.packb([batch, gateway, sent_at, threading.current_thread().name])


async def test_calls_carry_the_batch_the_gateway_and_the_send_time():
    server = LinkServer(echo)
    link = ShardLink(FakeShard(server), "gw-1")
    try:
        replies = [msgpack.unpackb(await link.call(b"batch-%d" % i, 100.0 + i)) for i in range(3)]
        big = b"x" * 300_000  # more than one read on either side
        assert msgpack.unpackb(await link.call(big, 1.0))[0] == big
    finally:
        link.close()
        server.close()
    assert replies == [
        [b"batch-%d" % i, "gw-1", 100.0 + i, "shard-link"] for i in range(3)
    ]  # handled on the link's own thread


async def test_a_wrong_token_is_refused():
    server = LinkServer(echo)
    shard = FakeShard(server)
    host, port, _ = shard.address
    shard.address = (host, port, "not-the-token")
    link = ShardLink(shard, "gw-1")
    try:
        with pytest.raises(LinkDown):
            await link.call(b"batch", 1.0)
    finally:
        link.close()
        server.close()


async def test_a_failing_batch_is_reported_and_the_link_stays_up():
    server = LinkServer(echo)
    shard = FakeShard(server)
    link = ShardLink(shard, "gw-1")
    try:
        with pytest.raises(ShardFailed, match="ValueError: a bug"):
            await link.call(b"boom", 1.0)
        assert msgpack.unpackb(await link.call(b"next", 2.0))[0] == b"next"
    finally:
        link.close()
        server.close()
    assert shard.asked == 1  # one connection served both calls
    # Asked without Ray's own retries: the gateway polls a restarting shard itself.
    assert shard.options == {"max_task_retries": 0}


async def test_a_dropped_link_fails_the_call_and_the_next_call_finds_the_new_shard():
    first = LinkServer(echo)
    second: LinkServer | None = None
    shard = FakeShard(first)
    link = ShardLink(shard, "gw-1")
    try:
        assert msgpack.unpackb(await link.call(b"a", 1.0))[0] == b"a"
        first.close()  # the shard dies
        with pytest.raises(LinkDown):
            await link.call(b"b", 2.0)
        second = LinkServer(echo)  # Ray restarted it, elsewhere
        shard.address = second.address()
        assert msgpack.unpackb(await link.call(b"b", 2.0))[0] == b"b"
        assert shard.asked >= 2
    finally:
        link.close()
        first.close()
        if second is not None:
            second.close()


async def test_an_oversized_frame_closes_the_connection():
    server = LinkServer(echo)
    host, port, token = server.address()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        hello = msgpack.packb([token, "gw-1"])
        writer.write(REQUEST.pack(len(hello), 0, 0.0) + hello)
        writer.write(REQUEST.pack(MAX_FRAME + 1, 1, 0.0))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing answered
    finally:
        writer.close()
        server.close()


# -- TLS, as Ray's own TLS settings ask for it --------------------------------------------


def _ca(name: str, tmp: Path) -> tuple[Path, Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def _node_tls(ca: tuple[Path, Any, Any], name: str, tmp: Path) -> LinkTLS:
    """A node certificate and key signed by ``ca``, as Ray's TLS set-up makes one per node."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_path, ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (tmp / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return LinkTLS(str(tmp / f"{name}.crt"), str(tmp / f"{name}.key"), str(ca_path))


async def test_with_rays_tls_settings_the_link_is_mutual_tls_and_refuses_other_clients(tmp_path):
    cluster = _ca("cluster-ca", tmp_path)
    server = LinkServer(echo, tls=_node_tls(cluster, "shard-node", tmp_path))
    shard = FakeShard(server)
    links = {
        "ok": ShardLink(shard, "gw-tls", _node_tls(cluster, "gateway-node", tmp_path)),
        "plain": ShardLink(shard, "gw-plain"),
        "stranger": ShardLink(
            shard, "gw-other", _node_tls(_ca("other-ca", tmp_path), "intruder", tmp_path)
        ),
    }
    try:
        reply = msgpack.unpackb(await links["ok"].call(b"over tls", 5.0))
        # A plain-TCP client, and one whose certificate another CA signed, get no reply.
        for name in ("plain", "stranger"):
            with pytest.raises(LinkDown):
                await asyncio.wait_for(links[name].call(b"let me in", 6.0), 10)
        # The refusals did not touch the good connection.
        again = msgpack.unpackb(await links["ok"].call(b"still here", 7.0))
    finally:
        for link in links.values():
            link.close()
        server.close()
    assert reply == [b"over tls", "gw-tls", 5.0, "shard-link"]
    assert again[:3] == [b"still here", "gw-tls", 7.0]


def test_tls_settings_come_from_rays_environment_and_a_half_set_up_refuses_to_start():
    assert LinkTLS.from_env({}) is None
    assert LinkTLS.from_env({"RAY_USE_TLS": "0", "RAY_TLS_CA_CERT": "ca"}) is None
    names = {"RAY_TLS_SERVER_CERT": "c", "RAY_TLS_SERVER_KEY": "k", "RAY_TLS_CA_CERT": "ca"}
    assert LinkTLS.from_env({"RAY_USE_TLS": "1", **names}) == LinkTLS("c", "k", "ca")
    with pytest.raises(ValueError, match="RAY_TLS_SERVER_KEY"):
        LinkTLS.from_env(
            {"RAY_USE_TLS": "true", "RAY_TLS_SERVER_CERT": "c", "RAY_TLS_CA_CERT": "a"}
        )
