"""Keys, certificates and trust files made with the real ``cryptography`` package."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.cli.conftest import Result, mvault  # noqa: F401  (re-exported fixture)
from tests.e2e.conftest import model_dir  # noqa: F401


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key: ec.EllipticCurvePrivateKey


def _write_pair(d: Path, name: str) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    priv = d / f"{name}.pem"
    pub = d / f"{name}.pub"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return KeyPair(priv, pub, key)


@pytest.fixture
def keys(tmp_path: Path) -> Callable[[str], KeyPair]:
    d = tmp_path / "keys"
    d.mkdir()
    return lambda name: _write_pair(d, name)


@dataclass(frozen=True)
class CertSet:
    root: Path
    leaf: Path
    key: Path


@pytest.fixture
def certs(tmp_path: Path) -> Callable[..., CertSet]:
    """A root CA and a code-signing leaf for ``identity``, valid between the given days from now."""

    def make(identity: str, start_days: int = -1, end_days: int = 30) -> CertSet:
        d = tmp_path / f"pki-{identity.split('@')[0]}-{start_days}-{end_days}"
        d.mkdir()
        now = dt.datetime.now(dt.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelvault test root")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=400))
            .not_valid_after(now + dt.timedelta(days=400))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        pair = _write_pair(d, "leaf")
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "release")]))
            .issuer_name(ca_name)
            .public_key(pair.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=start_days))
            .not_valid_after(now + dt.timedelta(days=end_days))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(identity)]), critical=False)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        (d / "root.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (d / "leaf.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        return CertSet(d / "root.pem", d / "leaf.crt", pair.private)

    return make


@pytest.fixture
def trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """Write a trust file and put it in force through MVAULT_TRUST."""
    from modelvault import config

    def write(text: str) -> Path:
        p = tmp_path / "trust.toml"
        p.write_text(text)
        monkeypatch.setenv("MVAULT_TRUST", str(p))
        config.reload()
        return p

    return write


__all__ = ["CertSet", "KeyPair", "Result"]
