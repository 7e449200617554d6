"""Signed versions end to end: mvault signs, model_signing verifies, the policy refuses.

The oracle for the signature format is the ``model_signing`` package's own CLI,
run as a separate process on the files ``mvault pull --signature`` writes.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelvault import Vault
from modelvault.digest import digest_bytes
from modelvault.errors import SignatureError, UntrustedError
from modelvault.formats.files import FilesPlugin
from modelvault.registry.signatures import SIGNATURE_ROLE


def _oms_verify(sig: Path, pub: Path, model: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "model_signing", "verify", "key"),
            *("--signature", str(sig), "--public_key", str(pub), str(model)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("mvault: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def loads(monkeypatch):
    """Every call of the files plugin's load: a refused version must never reach it."""
    calls = []
    real = FilesPlugin.load

    def spy(self, source, **kw):
        calls.append(source.manifest.digest)
        return real(self, source, **kw)

    monkeypatch.setattr(FilesPlugin, "load", spy)
    return calls


def test_push_sign_pull_and_model_signing_verifies(mvault, model_dir, keys, tmp_path):
    k = keys("release")
    r = mvault("push", "team/enc:1.0.0", str(model_dir), "--sign", str(k.private))
    assert r.code == 0, r.err
    assert "signed team/enc:1.0.0" in r.out and "key:sha256:" in r.out

    out = tmp_path / "pulled"
    r = mvault("pull", "team/enc:1.0.0", "-o", str(out), "--signature")
    assert r.code == 0, r.err
    assert (out / "model.sig").is_file()
    assert (out / "team_enc" / "weights.bin").read_bytes() == (
        model_dir / "weights.bin"
    ).read_bytes()

    ok = _oms_verify(out / "model.sig", k.public, out)
    assert ok.returncode == 0 and "Verification succeeded" in ok.stdout, ok.stderr

    # The independent tool checks the bytes, and the key: both must fail when wrong.
    other = keys("other")
    assert _oms_verify(out / "model.sig", other.public, out).returncode != 0
    (out / "team_enc" / "config.json").write_text('{"layers": 3}\n')
    bad = _oms_verify(out / "model.sig", k.public, out)
    assert bad.returncode != 0 and "config.json" in bad.stderr


def test_statement_is_oms_and_covers_manifest_and_every_blob(mvault, model_dir, keys):
    k = keys("release")
    assert mvault("push", "enc:1.0.0", str(model_dir), "--sign", str(k.private)).code == 0
    info = Vault().resolve("enc:1.0.0")
    (variant,) = info.variants
    sig = next(b for b in variant.blobs if b.role == SIGNATURE_ROLE)
    bundle = json.loads(Vault().store.read_range(sig.digest, 0, sig.size))
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    envelope = bundle["dsseEnvelope"]
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://model_signing/signature/v1.0"
    pred = statement["predicate"]
    assert pred["serialization"]["hash_type"] == "sha256"
    names = {r["name"] for r in pred["resources"]}
    assert names == {"enc/weights.bin", "enc/config.json", "enc/serve.sh"}
    mv = pred["modelvault"]
    assert (mv["name"], mv["version"], mv["manifest"]) == ("enc", "1.0.0", variant.manifest_digest)
    blob_digests = {b.digest for b in variant.blobs if b.role not in ("manifest", SIGNATURE_ROLE)}
    assert set(mv["blobs"]) == blob_digests and len(blob_digests) == 3


def test_policy_allows_signed_and_refuses_unsigned_before_deserializing(
    mvault, model_dir, keys, trust, tmp_path, loads
):
    k = keys("release")
    assert mvault("push", "enc:1.0.0", str(model_dir), "--sign", str(k.private)).code == 0
    assert mvault("push", "enc:2.0.0", str(model_dir / "weights.bin")).code == 0
    trust(f'[[trust]]\nmodels = ["enc"]\nkeys = ["{k.public}"]\n')

    path = Vault().load("enc:1.0.0")
    assert (Path(path) / "weights.bin").read_bytes() == (model_dir / "weights.bin").read_bytes()
    assert len(loads) == 1

    with pytest.raises(
        UntrustedError, match=r"enc:2\.0\.0 .* is not signed; .* expects a signature by key:sha256:"
    ):
        Vault().load("enc:2.0.0")
    assert len(loads) == 1  # nothing deserialized

    out = tmp_path / "never"
    r = mvault("pull", "enc:2.0.0", "-o", str(out))
    assert r.code == 5 and "is not signed" in _one_line(r.err)
    assert not out.exists()
    r = mvault("export", "enc:2.0.0", str(tmp_path / "x.mvpk"))
    assert r.code == 5 and not (tmp_path / "x.mvpk").exists()


def test_valid_signature_by_a_key_not_in_the_policy(mvault, model_dir, keys, trust, loads):
    allowed, stranger = keys("allowed"), keys("stranger")
    assert mvault("push", "enc:1.0.0", str(model_dir), "--sign", str(stranger.private)).code == 0
    trust(f'[[trust]]\nmodels = ["*"]\nkeys = ["{allowed.public}"]\n')
    r = mvault("pull", "enc:1.0.0", "-o", "/nonexistent/never")
    line = _one_line(r.err)
    assert r.code == 5 and "no valid signature by key:sha256:" in line and "not key:sha256:" in line
    with pytest.raises(UntrustedError):
        Vault().load("enc:1.0.0")
    assert loads == []


def test_model_no_rule_names_is_refused(mvault, model_dir, keys, trust):
    k = keys("release")
    assert mvault("push", "other:1.0.0", str(model_dir), "--sign", str(k.private)).code == 0
    trust(f'[[trust]]\nmodels = ["resnet*"]\nkeys = ["{k.public}"]\n')
    with pytest.raises(SignatureError, match="allows no signer for model 'other'"):
        Vault().load("other:1.0.0")


def _sig_of(vault, spec):
    (variant,) = vault.resolve(spec).variants
    b = next(b for b in variant.blobs if b.role == SIGNATURE_ROLE)
    return variant, vault.store.read_range(b.digest, 0, b.size)


def _attach(vault, spec, data):
    info = vault.resolve(spec)
    (variant,) = info.variants
    d = digest_bytes(data)
    vault.store.put_bytes(d, data)
    vault.registry.attach_signature(
        info.model, info.version, variant.manifest_digest, d, len(data), "test"
    )


def test_signature_over_another_version(mvault, model_dir, keys, trust, tmp_path, loads):
    k = keys("release")
    assert mvault("push", "enc:1.0.0", str(model_dir), "--sign", str(k.private)).code == 0
    # Same bytes, another version: identical manifest, so only the signed name/version differ.
    assert mvault("push", "enc:1.0.1", str(model_dir)).code == 0
    v = Vault()
    _, data = _sig_of(v, "enc:1.0.0")
    _attach(v, "enc:1.0.1", data)
    trust(f'[[trust]]\nmodels = ["enc"]\nkeys = ["{k.public}"]\n')
    with pytest.raises(UntrustedError, match=r"the signature is for enc:1\.0\.0, not enc:1\.0\.1"):
        Vault().load("enc:1.0.1")
    assert loads == []


def _rewrite(data: bytes, change) -> bytes:
    bundle = json.loads(data)
    change(bundle)
    return json.dumps(bundle).encode()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("truncated", "not a readable Sigstore bundle"),
        ("reordered", "key:sha256:"),
        ("payload-cut", "key:sha256:"),
        ("no-signature", "not a readable Sigstore bundle"),
    ],
)
def test_damaged_envelope_is_refused(mvault, model_dir, keys, trust, loads, case, message):
    k = keys("release")
    assert mvault("push", "enc:1.0.0", str(model_dir)).code == 0
    assert mvault("push", "enc:1.0.0", str(model_dir), "--sign", str(k.private)).code == 0
    v = Vault()
    _, data = _sig_of(v, "enc:1.0.0")

    def reorder(b):
        statement = json.loads(base64.b64decode(b["dsseEnvelope"]["payload"]))
        statement["predicate"]["resources"].reverse()
        b["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()

    def cut(b):
        raw = base64.b64decode(b["dsseEnvelope"]["payload"])
        b["dsseEnvelope"]["payload"] = base64.b64encode(raw[: len(raw) // 2]).decode()

    def strip(b):
        b["dsseEnvelope"]["signatures"] = []

    bad = {
        "truncated": data[: len(data) // 2],
        "reordered": _rewrite(data, reorder),
        "payload-cut": _rewrite(data, cut),
        "no-signature": _rewrite(data, strip),
    }[case]
    # Replace the good signature by the damaged one.
    with v.registry.engine.begin() as conn:
        from sqlalchemy import delete

        from modelvault.registry.schema import VariantBlob

        conn.execute(delete(VariantBlob).where(VariantBlob.role == SIGNATURE_ROLE))
    _attach(v, "enc:1.0.0", bad)
    trust(f'[[trust]]\nmodels = ["enc"]\nkeys = ["{k.public}"]\n')
    r = mvault("pull", "enc:1.0.0", "-o", "/nonexistent/never")
    line = _one_line(r.err)
    assert r.code == 5 and "no valid signature" in line and message in line
    with pytest.raises(UntrustedError):
        Vault().load("enc:1.0.0")
    assert loads == []


def test_signature_whose_digest_list_omits_a_blob(mvault, model_dir, keys, trust, loads, tmp_path):
    from modelvault.signing import claims, load_signing_key
    from modelvault.signing.oms import sign_files

    k = keys("release")
    assert mvault("push", "enc:1.0.0", str(model_dir)).code == 0
    v = Vault()
    info = v.resolve("enc:1.0.0")
    (variant,) = info.variants
    from modelvault.loader import read_manifest

    manifest, raw = read_manifest(v.store, variant.manifest_digest)
    c = claims(info, manifest, raw)
    omitted = c["blobs"].pop()
    data = sign_files(load_signing_key(k.private), tmp_path, {"x": "00" * 32}, c)
    _attach(v, "enc:1.0.0", data)
    trust(f'[[trust]]\nmodels = ["enc"]\nkeys = ["{k.public}"]\n')
    with pytest.raises(UntrustedError, match=f"does not cover blob {omitted}"):
        Vault().load("enc:1.0.0")
    assert loads == []


def test_certificate_signer_identity_and_expiry(mvault, model_dir, certs, trust, tmp_path):
    good = certs("release@example.com")
    r = mvault(
        "push",
        "enc:1.0.0",
        str(model_dir),
        "--sign",
        str(good.key),
        "--certificate",
        str(good.leaf),
    )
    assert r.code == 0, r.err
    assert "cert:release@example.com" in r.out
    trust(
        '[[trust]]\nmodels = ["enc"]\n[[trust.certificates]]\n'
        f'roots = ["{good.root}"]\nidentity = "release@example.com"\n'
    )
    assert (Path(Vault().load("enc:1.0.0")) / "config.json").is_file()

    trust(
        '[[trust]]\nmodels = ["enc"]\n[[trust.certificates]]\n'
        f'roots = ["{good.root}"]\nidentity = "someone@example.com"\n'
    )
    with pytest.raises(
        UntrustedError, match=r"identity 'release@example\.com' is not 'someone@example\.com'"
    ):
        Vault().load("enc:1.0.0")

    # An expired certificate signs nothing, and registers nothing.
    expired = certs("old@example.com", start_days=-30, end_days=-1)
    r = mvault(
        "push",
        "enc:2.0.0",
        str(model_dir),
        "--sign",
        str(expired.key),
        "--certificate",
        str(expired.leaf),
    )
    assert r.code == 5 and "not now" in _one_line(r.err)
    assert "2.0.0" not in mvault("ls", "enc").out

    # One that expired after signing is refused at load (no timestamp proves when it signed).
    import datetime as dt

    from modelvault.signing.oms import verify_bundle

    _, data = _sig_of(Vault(), "enc:1.0.0")
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=60)
    with pytest.raises(SignatureError, match=r"valid from .* not now"):
        verify_bundle(data, certificates=[((good.root,), "release@example.com")], now=later)


def test_policy_file_with_a_syntax_error(mvault, model_dir, keys, trust, loads):
    k = keys("release")
    assert mvault("push", "enc:1.0.0", str(model_dir), "--sign", str(k.private)).code == 0
    trust('[[trust]\nmodels = ["enc"\n')
    r = mvault("pull", "enc:1.0.0", "-o", "/nonexistent/never")
    line = _one_line(r.err)
    assert r.code == 5 and "is not valid TOML" in line and "line 1" in line
    trust('[[trust]]\nmodels = ["enc"]\nkeys = ["missing.pub"]\n')
    r = mvault("pull", "enc:1.0.0", "-o", "/nonexistent/never")
    assert r.code == 5 and "cannot read public key" in _one_line(r.err)
    assert loads == []


def test_key_file_that_is_not_a_key(mvault, model_dir, tmp_path, keys):
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    r = mvault("push", "enc:1.0.0", str(model_dir), "--sign", str(junk))
    assert r.code == 5 and "is not a PEM private key" in _one_line(r.err)
    assert "enc" not in mvault("ls").out  # nothing registered

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ed = tmp_path / "ed.pem"
    ed.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    r = mvault("push", "enc:1.0.0", str(model_dir), "--sign", str(ed))
    assert r.code == 5 and "ECDSA key on P-256" in _one_line(r.err)
    assert "enc" not in mvault("ls").out
    pub = keys("k").public
    r = mvault("sign", "enc:1.0.0", "--key", str(pub))
    assert r.code == 5 and "is not a PEM private key" in _one_line(r.err)


def test_verify_signatures_command(mvault, model_dir, keys, tmp_path):
    k, other = keys("release"), keys("other")
    assert mvault("push", "enc:1.0.0", str(model_dir)).code == 0
    r = mvault("verify", "enc:1.0.0", "--signatures", "--key", str(k.public))
    assert r.code == 5 and "is not signed" in r.err
    r = mvault("sign", "enc:1.0.0", "--key", str(k.private), "--json")
    assert r.code == 0 and json.loads(r.out)[0]["added"] is True
    # ECDSA signatures are randomized: signing again records a second, also valid, one.
    again = mvault("sign", "enc:1.0.0", "--key", str(other.private), "--json")
    assert json.loads(again.out)[0]["signer"] != json.loads(r.out)[0]["signer"]
    r = mvault("verify", "enc:1.0.0", "--signatures", "--key", str(k.public), "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["variants"][0]["ok"] and report["variants"][0]["signer"].startswith("key:sha256:")
    stranger = keys("stranger")
    r = mvault("verify", "enc:1.0.0", "--signatures", "--key", str(stranger.public))
    assert r.code == 5 and "UNTRUSTED" in r.out
    r = mvault("verify", "enc:1.0.0", "--signatures")
    assert r.code == 2 and "needs signers" in r.err
    # The signature bundle is a blob of the version: the ordinary verify re-hashes it.
    r = mvault("verify", "enc:1.0.0", "--json")
    assert json.loads(r.out)["checked"] == 6  # 3 files, the manifest, two signatures
