"""Certificates made for a test: a CA of its own, a server certificate for 127.0.0.1, a client one.

Shared by the tests that speak TLS (the public listeners, Redis over TLS);
``cryptography`` makes them in milliseconds (EC P-256), valid for a day.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TLSFiles:
    """PEM files written by :func:`tls_files`."""

    ca: Path
    cert: Path  # the server's, for 127.0.0.1
    key: Path
    client_cert: Path  # a client certificate signed by the same CA (mutual TLS)
    client_key: Path


def _write_key(path: Path, key: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def tls_files(tmp: Path, name: str = "test") -> TLSFiles:
    """A CA named ``name``, and a server and a client certificate it signed, written to ``tmp``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject: str, issuer: x509.Name | None, key, signer, role: str) -> x509.Certificate:
        name_ = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        b = (
            x509.CertificateBuilder()
            .subject_name(name_)
            .issuer_name(issuer or name_)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=role == "ca", path_length=None), critical=True)
        )
        if role == "server":
            b = b.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        if role == "client":
            b = b.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        return b.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    ca = build(f"{name}-ca", None, ca_key, ca_key, "ca")
    leaf = build("127.0.0.1", ca.subject, key, ca_key, "server")
    client = build(f"{name}-client", ca.subject, client_key, ca_key, "client")
    tmp.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(
        tmp / f"{name}-ca.crt",
        tmp / f"{name}-server.crt",
        tmp / f"{name}-server.key",
        tmp / f"{name}-client.crt",
        tmp / f"{name}-client.key",
    )
    pem = serialization.Encoding.PEM
    files.ca.write_bytes(ca.public_bytes(pem))
    files.cert.write_bytes(leaf.public_bytes(pem))
    files.client_cert.write_bytes(client.public_bytes(pem))
    _write_key(files.key, key)
    _write_key(files.client_key, client_key)
    return files


def pem_pair(tmp: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate for 127.0.0.1, server key), written to ``tmp``."""
    f = tls_files(tmp)
    return f.ca, f.cert, f.key
