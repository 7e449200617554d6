"""Sigstore keyless signing and verification: what can be checked with no network.

A keyless signature needs Fulcio, Rekor and the Sigstore trust root, none of
which this machine reaches, so a keyless signature that verifies is not made
here (docs/SECURITY.md says so). What is checked: the policy's
``[[trust.sigstore]]`` tables and their faults; a keyless bundle is routed to
Sigstore's own verifier (``model_signing``'s), refused with one line naming
the identity it carries when the policy allows another, or none, and with one
line saying why when the trust root cannot be had; ``mvault sign --sigstore``
fails with one line and attaches nothing when it cannot sign.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from modelvault import Vault
from modelvault.errors import SignatureError, UntrustedError
from modelvault.push import attach_variant_signatures
from modelvault.registry.signatures import SIGNATURE_ROLE
from modelvault.signing import claimed_signer, load_policy
from modelvault.signing.oms import SigstoreIdentity, is_keyless, verify_bundle

ISSUER = "https://token.actions.githubusercontent.com"
IDENTITY = "https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def keyless_bundle(identity: str = IDENTITY) -> bytes:
    """A bundle shaped like a Sigstore keyless one (a short-lived certificate for an
    OIDC identity, one Rekor entry with its inclusion proof), well formed and
    parseable by Sigstore, whose certificate and log entry no trust root vouches for."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sigstore.dev")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(minutes=10))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "m", "digest": {"sha256": "00" * 32}}],
        "predicateType": "https://model_signing/signature/v1.0",
        "predicate": {},
    }
    entry = {
        "logIndex": "7",
        "logId": {"keyId": _b64(b"k" * 32)},
        "kindVersion": {"kind": "dsse", "version": "0.0.1"},
        "integratedTime": str(int(now.timestamp())),
        "inclusionPromise": {"signedEntryTimestamp": _b64(b"s" * 64)},
        "inclusionProof": {
            "logIndex": "7",
            "rootHash": _b64(b"r" * 32),
            "treeSize": "8",
            "hashes": [_b64(b"h" * 32)],
            "checkpoint": {"envelope": "rekor.sigstore.dev - 1\n8\ncg==\n"},
        },
        "canonicalizedBody": _b64(b"{}"),
    }
    return json.dumps(
        {
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "certificate": {"rawBytes": _b64(cert.public_bytes(serialization.Encoding.DER))},
                "tlogEntries": [entry],
            },
            "dsseEnvelope": {
                "payload": _b64(json.dumps(statement).encode()),
                "payloadType": "application/vnd.in-toto+json",
                "signatures": [{"sig": _b64(b"x" * 64)}],
            },
        }
    ).encode()


def _policy(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "trust.toml"
    p.write_text('[[trust]]\nmodels = ["*"]\n' + body)
    return p


def test_a_sigstore_identity_in_the_policy_is_read(tmp_path: Path) -> None:
    (tmp_path / "trust.json").write_text("{}")
    policy = load_policy(
        _policy(
            tmp_path,
            f'[[trust.sigstore]]\nidentity = "{IDENTITY}"\nissuer = "{ISSUER}"\n'
            'trust_config = "trust.json"\n',
        )
    )
    (rule,) = policy.rules
    assert rule.sigstore == (SigstoreIdentity(IDENTITY, ISSUER, False, tmp_path / "trust.json"),)
    assert rule.describe() == f"sigstore:{IDENTITY} ({ISSUER})"


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (f'[[trust.sigstore]]\nidentity = "{IDENTITY}"\n', "needs identity and issuer"),
        ('[[trust.sigstore]]\nidentity = ""\nissuer = "https://x"\n', "needs identity and issuer"),
        (f'[[trust.sigstore]]\nidentity = "a"\nissuer = "{ISSUER}"\ncolour = 1\n', "colour"),
        ('[[trust.sigstore]]\nidentity = "a"\nissuer = "http://plain"\n', "not an https:// URL"),
        (
            f'[[trust.sigstore]]\nidentity = "a"\nissuer = "{ISSUER}"\nstaging = "yes"\n',
            "true or false",
        ),
        (
            f'[[trust.sigstore]]\nidentity = "a"\nissuer = "{ISSUER}"\ntrust_config = "none.json"\n',
            "is not a file",
        ),
        ('sigstore = "me"\n', "must be \\[\\[trust.sigstore\\]\\] tables"),
        (
            f'[[trust.sigstore]]\nidentity = "a"\nissuer = "{ISSUER}"\nstaging = true\n'
            'trust_config = "t.json"\n',
            "exclusive",
        ),
    ],
    ids=[
        "no-issuer",
        "empty-identity",
        "unknown-key",
        "http-issuer",
        "staging-type",
        "no-config",
        "not-a-table",
        "staging-and-config",
    ],
)
def test_broken_sigstore_tables_are_one_line(tmp_path: Path, body: str, match: str) -> None:
    with pytest.raises(SignatureError, match=match) as err:
        load_policy(_policy(tmp_path, body))
    assert "\n" not in str(err.value)


def test_a_keyless_bundle_goes_to_sigstore_s_verifier() -> None:
    data = keyless_bundle()
    assert is_keyless(data)
    assert claimed_signer(data) == f"sigstore:{IDENTITY}"
    # Allowed identity: Sigstore's verifier runs, and (no network, no trust
    # configuration) cannot have the trust root: one line that says so.
    with pytest.raises(SignatureError, match="Sigstore trust root could not be had") as err:
        verify_bundle(data, sigstore=[SigstoreIdentity(IDENTITY, ISSUER)])
    assert "network or a trust_config" in str(err.value)
    # Another identity, or none allowed: refused before anything is fetched.
    with pytest.raises(SignatureError, match=f"signed by sigstore:{IDENTITY}, not sigstore:other"):
        verify_bundle(data, sigstore=[SigstoreIdentity("other", ISSUER)])
    with pytest.raises(SignatureError, match="no Sigstore identity is allowed"):
        verify_bundle(data, keys=[ec.generate_private_key(ec.SECP256R1()).public_key()])


def test_a_keyless_bundle_sigstore_cannot_read_is_refused() -> None:
    obj = json.loads(keyless_bundle())
    del obj["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]
    with pytest.raises(SignatureError, match="not a readable Sigstore bundle"):
        verify_bundle(json.dumps(obj).encode(), sigstore=[SigstoreIdentity(IDENTITY, ISSUER)])


def test_under_a_policy_a_version_signed_only_keyless_offline_does_not_load(
    mvault: Any, model_dir: Path, trust: Any, tmp_path: Path
) -> None:
    assert mvault("push", "enc:1.0.0", str(model_dir)).code == 0
    v = Vault()
    info = v.resolve("enc:1.0.0")
    data = keyless_bundle()
    from modelvault.digest import digest_bytes

    assert attach_variant_signatures(
        v.registry,
        v.store,
        "enc",
        "1.0.0",
        info.variants[0].manifest_digest,
        [(digest_bytes(data), data)],
    )
    trust(
        f'[[trust]]\nmodels = ["enc"]\n[[trust.sigstore]]\nidentity = "{IDENTITY}"\nissuer = "{ISSUER}"\n'
    )
    with pytest.raises(UntrustedError, match="Sigstore trust root could not be had"):
        Vault().load("enc:1.0.0")
    r = mvault("verify", "enc@1.0.0", "--signatures")
    assert r.code == 5
    assert f"sigstore:{IDENTITY}" in r.out  # the signer named: the record, from the bundle


def test_sign_sigstore_that_cannot_sign_attaches_nothing(mvault: Any, model_dir: Path) -> None:
    assert mvault("push", "enc:1.0.0", str(model_dir)).code == 0
    r = mvault("sign", "enc:1.0.0", "--sigstore", "--identity-token", "not-a-jwt")
    assert r.code != 0
    lines = [ln for ln in r.err.splitlines() if ln.startswith("mvault: error:")]
    assert len(lines) == 1 and "Sigstore keyless signing failed" in lines[0], r.err
    (variant,) = Vault().resolve("enc:1.0.0").variants
    assert not [b for b in variant.blobs if b.role == SIGNATURE_ROLE]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ([], "needs --key KEY or --sigstore"),
        (["--identity-token", "t", "--key", "k.pem"], "go with --sigstore"),
        (["--sigstore", "--key", "k.pem"], "without a key"),
        (["--sigstore", "--trust-config", "nope.json"], "is not a file"),
    ],
    ids=["neither", "token-without-sigstore", "both", "missing-trust-config"],
)
def test_sign_option_mistakes_are_one_line(
    mvault: Any, model_dir: Path, args: list[str], match: str
) -> None:
    assert mvault("push", "enc:1.0.0", str(model_dir)).code == 0
    r = mvault("sign", "enc:1.0.0", *args)
    assert r.code != 0
    lines = [ln for ln in r.err.splitlines() if ln.startswith("mvault: error:")]
    assert len(lines) == 1 and match in lines[0], r.err
