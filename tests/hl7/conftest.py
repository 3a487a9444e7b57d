"""Shared fixtures for the hl7 tests: sample messages, facilities, a live
server on 127.0.0.1 with port 0, and a throw-away PKI for TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hl7.facilities import FacilityConfig, load_facilities

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "samples" / "hl7"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


@pytest.fixture(scope="session")
def facilities() -> FacilityConfig:
    return load_facilities(ROOT / "config" / "facilities.yaml")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool, server: bool = False):
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def _write(path: Path, cert, key=None, key_path: Path | None = None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None and key_path is not None:
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def make_pki(d: Path) -> Pki:
    """A CA, a server and a client certificate it signed, and a self-signed stranger, in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca = _cert("Test CA", ca_key, None, None, ca=True)
    _write(d / "ca.pem", ca)
    paths = {}
    for name, issuer_key, issuer, server in (
        ("server", ca_key, ca, True),
        ("client", ca_key, ca, False),
        ("stranger", None, None, False),  # self-signed: not trusted by the server
    ):
        key = _key()
        cert = _cert(name, key, issuer.subject if issuer else None, issuer_key, ca=False, server=server)
        _write(d / f"{name}.pem", cert, key, d / f"{name}.key")
        paths[name] = (d / f"{name}.pem", d / f"{name}.key")
    return Pki(d / "ca.pem", *paths["server"], *paths["client"], *paths["stranger"])
