"""Signatures travel to an OCI registry as referrers, and come back under a trust policy.

The registry is the CNCF distribution (no referrers API), so what is checked
here is the distribution spec's fallback: the ``sha256-<hex>`` tag's index,
read raw from the registry. ``model_signing``'s own CLI verifies the files a
signed version pulls to after its round trip through the registry.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from modelvault import Vault
from modelvault.digest import digest_bytes
from modelvault.oci.client import RegistryClient
from modelvault.oci.layout import ACCEPT, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, Descriptor
from modelvault.oci.referrers import (
    SIGNATURE_ARTIFACT_TYPE,
    fallback_tag,
    referrer_manifest,
)
from modelvault.oci.transfer import _monolithic
from modelvault.registry.signatures import SIGNATURE_ROLE
from tests.signing.conftest import keys, trust  # noqa: F401  (fixtures)
from tests.signing.test_signing import _oms_verify
from tests.signing.test_signing import _one_line as _error_line

from .registry import RunningRegistry

REPO = "team/enc"


def _client(reg: RunningRegistry) -> RegistryClient:
    return RegistryClient(reg.host)


def _tagged(reg: RunningRegistry, tag: str) -> tuple[str, bytes]:
    data, _ = _client(reg).get_manifest(REPO, tag, ACCEPT)
    return digest_bytes(data, "sha256"), data


def _referrers(reg: RunningRegistry, subject: str) -> list[dict[str, Any]]:
    data, _ = _client(reg).get_manifest(REPO, fallback_tag(subject), [INDEX_MEDIA_TYPE])
    index = json.loads(data)
    assert index["mediaType"] == INDEX_MEDIA_TYPE
    return list(index["manifests"])


def _put_blob(reg: RunningRegistry, data: bytes) -> str:
    c = _client(reg)
    sha = digest_bytes(data, "sha256")
    c.request(
        "PUT",
        _monolithic(c, REPO, sha),
        scope=f"repository:{REPO}:pull,push",
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
        body=data,
        ok=(201,),
    ).read()
    return sha


def _replace_referrers(reg: RunningRegistry, subject: str, bodies: list[bytes]) -> None:
    """Write the fallback index by hand, as anyone with push rights could (the
    entries annotated as modelvault's, so a pull takes them as its own)."""
    c = _client(reg)
    entries = []
    for body in bodies:
        c.put_manifest(REPO, digest_bytes(body, "sha256"), body, MANIFEST_MEDIA_TYPE)
        entries.append(
            {
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": digest_bytes(body, "sha256"),
                "size": len(body),
                "artifactType": SIGNATURE_ARTIFACT_TYPE,
                "annotations": json.loads(body)["annotations"],
            }
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": entries})
    c.put_manifest(REPO, fallback_tag(subject), index.encode(), INDEX_MEDIA_TYPE)


def _foreign_referrer(
    reg: RunningRegistry, subject: str, artifact_type: str, content: bytes
) -> dict[str, Any]:
    """Another tool's referrer of ``subject`` (one layer, no modelvault annotations),
    pushed to the registry; its descriptor as an index lists it."""
    layer = _put_blob(reg, content)
    empty = _put_blob(reg, b"{}")
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": artifact_type,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": empty,
                "size": 2,
            },
            "layers": [{"mediaType": artifact_type, "digest": layer, "size": len(content)}],
            "subject": _subject(reg, subject).to_json(),
        }
    ).encode()
    _client(reg).put_manifest(REPO, digest_bytes(body, "sha256"), body, MANIFEST_MEDIA_TYPE)
    return {
        "mediaType": MANIFEST_MEDIA_TYPE,
        "digest": digest_bytes(body, "sha256"),
        "size": len(body),
        "artifactType": artifact_type,
    }


def _elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    from modelvault import config

    home = tmp_path / name
    monkeypatch.setenv("MVAULT_HOME", str(home))
    config.reload()
    return home


def _stored_blobs(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file() and "blobs" in p.parts]


def test_signatures_ride_as_referrers_and_verify_after_the_round_trip(
    registry: RunningRegistry,
    mvault: Any,
    model_dir: Path,
    keys: Any,  # noqa: F811
    trust: Any,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k = keys("release")
    assert mvault("push", "enc:1.0.0", str(model_dir), "--sign", str(k.private)).code == 0
    r = mvault("push", registry.url(f"{REPO}:1.0.0"), "enc@1.0.0", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["signatures"] == 1

    # What the registry holds, read raw: the tag schema's index names one
    # signature artifact whose subject is the tagged manifest and whose layer
    # is the stored bundle, byte for byte.
    subject, _ = _tagged(registry, "1.0.0")
    (entry,) = _referrers(registry, subject)
    assert entry["artifactType"] == SIGNATURE_ARTIFACT_TYPE
    ref_bytes, _ = _client(registry).get_manifest(REPO, entry["digest"], [MANIFEST_MEDIA_TYPE])
    ref = json.loads(ref_bytes)
    assert ref["subject"]["digest"] == subject
    assert ref["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    (layer,) = ref["layers"]
    bundle = _client(registry).open_blob(REPO, layer["digest"]).read()
    (variant,) = Vault().resolve("enc:1.0.0").variants
    sig = next(b for b in variant.blobs if b.role == SIGNATURE_ROLE)
    assert bundle == Vault().store.read_range(sig.digest, 0, sig.size)
    assert json.loads(bundle)["mediaType"] == SIGNATURE_ARTIFACT_TYPE

    # Pushed again: nothing new, the index still lists the one referrer.
    assert mvault("push", registry.url(f"{REPO}:1.0.0"), "enc@1.0.0").code == 0
    assert len(_referrers(registry, subject)) == 1

    # A serving node with a policy: the pull checks the signature before the
    # weights come down, records it, and the load and the OMS tool accept it.
    node = _elsewhere(tmp_path, monkeypatch, "node")
    trust(f'[[trust]]\nmodels = ["enc"]\nkeys = ["{k.public}"]\n')
    r = mvault("pull", registry.url(f"{REPO}:1.0.0"), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["signatures"] == 1
    assert _stored_blobs(node)  # (what the hostile cases check stays empty)
    assert mvault("verify", "enc@1.0.0", "--signatures").code == 0
    assert Path(Vault().load("enc:1.0.0")).is_dir()
    out = tmp_path / "signed"
    assert mvault("pull", "enc:1.0.0", "-o", str(out), "--signature").code == 0
    ok = _oms_verify(out / "model.sig", k.public, out)
    assert ok.returncode == 0 and "Verification succeeded" in ok.stdout, ok.stderr


def test_a_second_signer_is_merged_into_the_fallback_index(
    registry: RunningRegistry,
    mvault: Any,
    model_dir: Path,
    keys: Any,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = keys("a"), keys("b")
    assert mvault("push", "enc:1.0.0", str(model_dir), "--sign", str(a.private)).code == 0
    assert mvault("push", registry.url(f"{REPO}:1.0.0"), "enc@1.0.0").code == 0
    subject, _ = _tagged(registry, "1.0.0")
    # Another tool's referrer in the same index (an SBOM): kept by the merge,
    # left alone by a pull.
    sbom = _foreign_referrer(
        registry, subject, "application/spdx+json", b'{"spdxVersion": "SPDX-2.3"}'
    )
    # and a cosign-style bundle referrer: the signature type, not modelvault's
    cosign = _foreign_referrer(
        registry, subject, SIGNATURE_ARTIFACT_TYPE, b'{"mediaType": "cosign"}'
    )
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [*_referrers(registry, subject), sbom, cosign],
    }
    _client(registry).put_manifest(
        REPO, fallback_tag(subject), json.dumps(index).encode(), INDEX_MEDIA_TYPE
    )
    assert mvault("sign", "enc:1.0.0", "--key", str(b.private)).code == 0
    r = mvault("push", registry.url(f"{REPO}:1.0.0"), "enc@1.0.0", "--json")
    assert r.code == 0 and json.loads(r.out)["signatures"] == 2
    listed = _referrers(registry, subject)
    assert sbom in listed and cosign in listed and len(listed) == 4
    signers = {
        e["annotations"]["org.modelvault.signer"]
        for e in listed
        if e["artifactType"] == SIGNATURE_ARTIFACT_TYPE and "annotations" in e
    }
    assert len(signers) == 2 and all(s.startswith("key:sha256:") for s in signers)
    _elsewhere(tmp_path, monkeypatch, "node")
    r = mvault("pull", registry.url(f"{REPO}:1.0.0"), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["signatures"] == 2


def test_an_unsigned_version_pushes_no_referrers_and_imports_unsigned(
    registry: RunningRegistry,
    mvault: Any,
    model_dir: Path,
    keys: Any,  # noqa: F811
    trust: Any,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert mvault("push", "enc:1.0.0", str(model_dir)).code == 0
    r = mvault("push", registry.url(f"{REPO}:1.0.0"), "enc@1.0.0", "--json")
    assert r.code == 0 and json.loads(r.out)["signatures"] == 0
    subject, _ = _tagged(registry, "1.0.0")
    with pytest.raises(Exception, match="404"):
        _referrers(registry, subject)
    _elsewhere(tmp_path, monkeypatch, "node")
    trust(f'[[trust]]\nmodels = ["enc"]\nkeys = ["{keys("k").public}"]\n')
    # Imported like any push (as a bundle without signatures is); the load refuses it.
    assert mvault("pull", registry.url(f"{REPO}:1.0.0")).code == 0
    r = mvault("pull", "enc:1.0.0", "-o", str(tmp_path / "x"))
    assert r.code != 0 and "is not signed" in _error_line(r.err)


def _pushed_signed(
    registry: RunningRegistry, mvault: Any, model_dir: Path, key: Any, version: str = "1.0.0"
) -> tuple[str, bytes]:
    """A signed version pushed to the registry: its subject digest and its bundle."""
    assert mvault("push", f"enc:{version}", str(model_dir), "--sign", str(key.private)).code == 0
    assert mvault("push", registry.url(f"{REPO}:{version}"), f"enc@{version}").code == 0
    subject, _ = _tagged(registry, version)
    (entry,) = _referrers(registry, subject)
    body, _ = _client(registry).get_manifest(REPO, entry["digest"], [MANIFEST_MEDIA_TYPE])
    (layer,) = json.loads(body)["layers"]
    return subject, _client(registry).open_blob(REPO, layer["digest"]).read()


def _subject(registry: RunningRegistry, digest: str) -> Descriptor:
    data, _ = _client(registry).get_manifest(REPO, digest, ACCEPT)
    return Descriptor(MANIFEST_MEDIA_TYPE, digest, len(data), {})


def _tampered(bundle: bytes) -> bytes:
    """The same bundle with one byte of its signature changed: valid JSON, valid
    base64, consistent sha256 once uploaded; only its meaning is wrong."""
    obj = json.loads(bundle)
    sig = bytearray(base64.b64decode(obj["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 1
    obj["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    "case",
    ["tampered", "another-version", "unknown-signer", "subject-elsewhere", "listed-digest-wrong"],
)
def test_hostile_referrers_are_refused_before_anything_is_stored(
    case: str,
    registry: RunningRegistry,
    mvault: Any,
    model_dir: Path,
    keys: Any,  # noqa: F811
    trust: Any,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k = keys("release")
    subject, bundle = _pushed_signed(registry, mvault, model_dir, k)
    desc = _subject(registry, subject)
    manifest = Vault().resolve("enc:1.0.0").variants[0].manifest_digest
    if case == "tampered":
        bad = _tampered(bundle)
        _put_blob(registry, bad)
        _replace_referrers(registry, subject, [referrer_manifest(desc, bad, manifest, "x")])
        expect = "no valid signature"
    elif case == "another-version":
        # v2's valid signature, attached to v1's manifest
        _, other = _pushed_signed(registry, mvault, model_dir, k, "2.0.0")
        _replace_referrers(registry, subject, [referrer_manifest(desc, other, manifest, "x")])
        expect = "the signature is for enc:2.0.0"
    elif case == "unknown-signer":
        stranger = keys("stranger")
        assert (
            mvault("push", "enc:3.0.0", str(model_dir), "--sign", str(stranger.private)).code == 0
        )
        expect = "no valid signature"
    elif case == "subject-elsewhere":
        # a referrer of v2, listed under v1's tag schema
        s2, other = _pushed_signed(registry, mvault, model_dir, k, "2.0.0")
        _replace_referrers(
            registry, subject, [referrer_manifest(_subject(registry, s2), other, manifest, "x")]
        )
        expect = "but its subject is"
    else:  # the index names a size the manifest does not have
        body = referrer_manifest(desc, bundle, manifest, "x")
        c = _client(registry)
        c.put_manifest(REPO, digest_bytes(body, "sha256"), body, MANIFEST_MEDIA_TYPE)
        entry = {
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": digest_bytes(body, "sha256"),
            "size": len(body) + 1,
            "artifactType": SIGNATURE_ARTIFACT_TYPE,
            "annotations": {"org.modelvault.manifest": manifest},
        }
        index = json.dumps(
            {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [entry]}
        )
        c.put_manifest(REPO, fallback_tag(subject), index.encode(), INDEX_MEDIA_TYPE)
        expect = "damaged"

    ref = registry.url(f"{REPO}:1.0.0")
    if case == "unknown-signer":
        assert mvault("push", registry.url(f"{REPO}:3.0.0"), "enc@3.0.0").code == 0
        ref = registry.url(f"{REPO}:3.0.0")
    home = _elsewhere(tmp_path, monkeypatch, "node")
    trust(f'[[trust]]\nmodels = ["enc"]\nkeys = ["{k.public}"]\n')
    r = mvault("pull", ref)
    assert r.code != 0
    assert expect in _error_line(r.err)
    assert mvault("ls", "--json").out.strip() in ("[]", "")  # nothing registered
    assert _stored_blobs(home) == []  # and no weight came down
