"""Signatures carried inside ``.mvpk`` bundles: export takes them, import brings them back.

A bundle moves a signed version to another registry (an air-gapped site, a
customer); the trust policy there must accept it for what was signed and
refuse it for anything else. The oracle for what arrives is again the
``model_signing`` CLI, run on the files ``mvault pull --signature`` writes
from the importing registry.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelvault import Vault, config
from modelvault.errors import CorruptError, UntrustedError
from modelvault.formats.bundle import FLAG_DEFLATED_MANIFEST, FLAG_SIGNATURES, Bundle, write_bundle
from modelvault.formats.container import Draft, DraftBlob, FileSource
from modelvault.formats.files import FilesPlugin
from modelvault.registry.signatures import SIGNATURE_ROLE
from tests.signing.test_signing import _oms_verify, _one_line


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call of the files plugin's load: a refused version must never reach it."""
    calls: list[str] = []
    real = FilesPlugin.load

    def spy(self: Any, source: Any, **kw: Any) -> Any:
        calls.append(source.manifest.digest)
        return real(self, source, **kw)

    monkeypatch.setattr(FilesPlugin, "load", spy)
    return calls


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Switch to another, empty registry and store (another site)."""

    def go(name: str) -> None:
        monkeypatch.setenv("MVAULT_HOME", str(tmp_path / f"site-{name}"))
        config.reload()

    return go


def _flags(path: Path) -> int:
    return int(struct.unpack("<I", path.read_bytes()[12:16])[0])


def _rebundle(src: Path, dest: Path, signatures: list[bytes]) -> Path:
    """The same variant with other signatures, every checksum consistent."""
    b = Bundle.open(src)
    draft = Draft.from_manifest(b.manifest)
    for i, ref in enumerate(b.manifest.blobs):
        loc = b.locate(i)
        draft.blobs.append(
            DraftBlob(ref.role, ref.media_type, FileSource(loc.path, loc.offset, loc.size))
        )
    assert write_bundle(draft, dest, ref=b.ref, signatures=signatures).digest == b.digest
    return dest


def _signed_bundle(mvault: Any, model_dir: Path, key: Path, out: Path) -> Path:
    assert mvault("push", "team/enc:1.0.0", str(model_dir), "--sign", str(key)).code == 0
    r = mvault("export", "team/enc:1.0.0", str(out), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["signatures"] == 1
    return out


def test_signatures_travel_in_the_bundle_and_verify_after_import(
    mvault, model_dir, keys, trust, tmp_path, elsewhere, loads
):
    k = keys("release")
    bundle = _signed_bundle(mvault, model_dir, k.private, tmp_path / "enc.mvpk")
    (variant,) = Vault().resolve("team/enc:1.0.0").variants
    stored = {b.digest for b in variant.blobs if b.role == SIGNATURE_ROLE}
    opened = Bundle.open(bundle)
    assert {d for d, _ in opened.signatures} == stored
    assert _flags(bundle) == FLAG_SIGNATURES | FLAG_DEFLATED_MANIFEST
    r = mvault("inspect", str(bundle), "--json")
    assert r.code == 0, r.err
    (sig,) = json.loads(r.out)["signatures"]
    assert sig["claimed_signer"].startswith("key:sha256:") and sig["digest"] in stored

    elsewhere("site")
    r = mvault("import", str(bundle), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["signatures"] == 1
    (imported,) = Vault().resolve("team/enc:1.0.0").variants
    assert {b.digest for b in imported.blobs if b.role == SIGNATURE_ROLE} == stored
    assert any(e.kind == "signature.add" for e in Vault().registry.events("team/enc"))
    r = mvault("verify", "team/enc:1.0.0", "--signatures", "--key", str(k.public))
    assert r.code == 0, r.err

    trust(f'[[trust]]\nmodels = ["team/*"]\nkeys = ["{k.public}"]\n')
    loaded = Path(Vault().load("team/enc:1.0.0"))
    assert (loaded / "weights.bin").read_bytes() == (model_dir / "weights.bin").read_bytes()
    assert len(loads) == 1
    out = tmp_path / "pulled"
    assert mvault("pull", "team/enc:1.0.0", "-o", str(out), "--signature").code == 0
    ok = _oms_verify(out / "model.sig", k.public, out)
    assert ok.returncode == 0 and "Verification succeeded" in ok.stdout, ok.stderr

    # Importing again adds nothing; exporting from here gives the same bytes.
    r = mvault("import", str(bundle), "--json")
    assert r.code == 0 and json.loads(r.out)["signatures"] == 0
    assert mvault("export", "team/enc:1.0.0", str(tmp_path / "again.mvpk")).code == 0
    assert (tmp_path / "again.mvpk").read_bytes() == bundle.read_bytes()


def _bad_signature(
    case: str, good: bytes, mvault: Any, model_dir: Path, keys: Any, k: Any
) -> bytes:
    if case == "wrong-bytes":  # a valid-looking envelope whose signature is not the signer's
        doc = json.loads(good)
        sig = bytearray(base64.b64decode(doc["dsseEnvelope"]["signatures"][0]["sig"]))
        sig[-1] ^= 0x01
        doc["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
        return json.dumps(doc).encode()
    if case == "another-model":  # signed by the right key, for another model
        other = model_dir.parent / "other"
        other.mkdir()
        (other / "w.bin").write_bytes(b"other weights")
        assert mvault("push", "team/other:1.0.0", str(other), "--sign", str(k.private)).code == 0
        (v,) = Vault().resolve("team/other:1.0.0").variants
        b = next(b for b in v.blobs if b.role == SIGNATURE_ROLE)
        return Vault().store.read_range(b.digest, 0, b.size)
    assert case == "stranger"  # a valid signature by a key the policy does not name
    stranger = keys("stranger")
    assert mvault("sign", "team/enc:1.0.0", "--key", str(stranger.private), "--json").code == 0
    (v,) = Vault().resolve("team/enc:1.0.0").variants
    sigs = [b for b in v.blobs if b.role == SIGNATURE_ROLE]
    data = [Vault().store.read_range(b.digest, 0, b.size) for b in sigs]
    return next(d for d in data if d != good)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong-bytes", "no valid signature by key:sha256:"),
        ("another-model", r"the signature is for team/other:1\.0\.0, not team/enc:1\.0\.0"),
        ("stranger", r"signed by key:sha256:\w+, not key:sha256:"),
    ],
)
def test_a_bundle_with_a_wrong_signature_is_refused_after_import(
    mvault, model_dir, keys, trust, tmp_path, elsewhere, loads, case, message
):
    k = keys("release")
    bundle = _signed_bundle(mvault, model_dir, k.private, tmp_path / "enc.mvpk")
    ((_, good),) = Bundle.open(bundle).signatures
    bad = _bad_signature(case, good, mvault, model_dir, keys, k)
    forged = _rebundle(bundle, tmp_path / "forged.mvpk", [bad])
    assert mvault("inspect", str(forged)).code == 0  # intact bytes: only a policy can tell

    # Imported where no policy is in force yet; the serving node's policy refuses it.
    elsewhere("site")
    assert mvault("import", str(forged)).code == 0
    trust(f'[[trust]]\nmodels = ["team/*"]\nkeys = ["{k.public}"]\n')
    with pytest.raises(UntrustedError, match=message):
        Vault().load("team/enc:1.0.0")
    r = mvault("pull", "team/enc:1.0.0", "-o", str(tmp_path / "never"))
    assert r.code == 5
    line = _one_line(r.err)
    assert "team/enc:1.0.0" in line and "trust policy" in line
    assert not (tmp_path / "never").exists() and loads == []

    # Imported where the policy is in force: refused before anything is stored.
    elsewhere("strict")
    r = mvault("import", str(forged))
    assert r.code == 5 and "no valid signature" in _one_line(r.err)
    assert Vault().list() == [] and list(Vault().store.list()) == []
    assert mvault("import", str(bundle)).code == 0  # the genuine bundle imports there


def test_signature_bytes_changed_without_fixing_the_checksums(
    mvault, model_dir, keys, tmp_path, elsewhere
):
    bundle = _signed_bundle(mvault, model_dir, keys("release").private, tmp_path / "enc.mvpk")
    data = bytearray(bundle.read_bytes())
    at = data.find(b'"dsseEnvelope"')
    assert at > 0
    data[at + 2] ^= 0x20  # inside the index, which its CRC-32 covers
    bad = tmp_path / "bad.mvpk"
    bad.write_bytes(bytes(data))
    elsewhere("site")
    r = mvault("import", str(bad))
    assert r.code == 5 and "bundle index is damaged (checksum mismatch)" in _one_line(r.err)
    assert Vault().list() == []
    with pytest.raises(CorruptError):
        Bundle.open(bad)


def test_bundles_without_signatures_still_import(
    mvault, model_dir, keys, trust, tmp_path, elsewhere, loads
):
    k = keys("release")
    assert mvault("push", "enc:1.0.0", str(model_dir)).code == 0
    plain = tmp_path / "plain.mvpk"
    assert mvault("export", "enc:1.0.0", str(plain)).code == 0
    assert mvault("sign", "enc:1.0.0", "--key", str(k.private)).code == 0
    # Left out on request, the bundle is byte for byte the unsigned one: no
    # signatures flag, old layout (0x2 only: its 1.2 manifest is deflated).
    stripped = tmp_path / "stripped.mvpk"
    r = mvault("export", "enc:1.0.0", str(stripped), "--no-signatures", "--json")
    assert r.code == 0 and json.loads(r.out)["signatures"] == 0
    assert stripped.read_bytes() == plain.read_bytes() and _flags(plain) == FLAG_DEFLATED_MANIFEST
    assert "signatures" not in json.loads(mvault("inspect", str(plain), "--json").out)

    elsewhere("site")
    r = mvault("import", str(plain), "--json")
    assert r.code == 0 and json.loads(r.out)["signatures"] == 0
    assert Path(Vault().load("enc:1.0.0")).is_dir()
    # Under a policy it imports like any push, and loads once signed, not before.
    trust(f'[[trust]]\nmodels = ["*"]\nkeys = ["{k.public}"]\n')
    assert mvault("import", str(plain), "enc:2.0.0").code == 0
    with pytest.raises(UntrustedError, match="is not signed"):
        Vault().load("enc:2.0.0")
    assert mvault("sign", "enc:2.0.0", "--key", str(k.private)).code == 0
    assert Path(Vault().load("enc:2.0.0")).is_dir()
    assert len(loads) == 2


@pytest.mark.parametrize("name", ["files.mvpk", "files-1.1.mvpk"])
def test_committed_bundles_from_before_signatures_import(mvault, tmp_path, name):
    """Files written before bundles carried signatures (the golden files, format 1.0 and 1.1)."""
    golden = Path(__file__).resolve().parents[1] / "formats" / "golden" / name
    assert _flags(golden) == 0
    r = mvault("import", str(golden), "old:1.0.0", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["signatures"] == 0
    assert mvault("pull", "old:1.0.0", "-o", str(tmp_path / "out")).code == 0
    again = tmp_path / "again.mvpk"
    assert mvault("export", "old:1.0.0", str(again)).code == 0
    assert _flags(again) == 0 and Bundle.open(again).digest == Bundle.open(golden).digest


def test_an_imported_signature_names_the_version_it_was_signed_as(
    mvault, model_dir, keys, trust, tmp_path, elsewhere
):
    """Importing under another name or version keeps the signature, which then vouches
    for nothing: a signature is over a name and a version, not only the bytes."""
    k = keys("release")
    bundle = _signed_bundle(mvault, model_dir, k.private, tmp_path / "enc.mvpk")
    elsewhere("site")
    assert mvault("import", str(bundle), "team/enc:2.0.0").code == 0
    trust(f'[[trust]]\nmodels = ["team/*"]\nkeys = ["{k.public}"]\n')
    with pytest.raises(UntrustedError, match=r"is for team/enc:1\.0\.0, not team/enc:2\.0\.0"):
        Vault().load("team/enc:2.0.0")
    r = mvault("import", str(bundle), "team/enc:3.0.0")
    assert r.code == 5 and "not team/enc:3.0.0" in _one_line(r.err)
