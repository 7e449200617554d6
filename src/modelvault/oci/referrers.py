"""A version's signatures in an OCI registry: one referrer artifact per OMS bundle.

Each signature bundle of a variant (``mvault sign``) travels as an OCI 1.1
artifact whose ``subject`` is the variant's image manifest, the way Sigstore
and Notary attach signatures to images:

* ``artifactType`` and the one layer's media type are the Sigstore bundle's
  (``application/vnd.dev.sigstore.bundle.v0.3+json``), the layer is the bundle
  as stored, and the config is the OCI empty descriptor (``{}``);
* annotations name the variant's modelvault manifest and the signer the
  bundle claims (for display; a load verifies the bundle itself).

A registry with the referrers API (``GET /v2/<name>/referrers/<digest>``)
answers a manifest ``PUT`` that has a ``subject`` with the ``OCI-Subject``
header and lists the referrers itself. One without it (the CNCF distribution
2.x, Harbor before 2.8) gets the distribution spec's fallback: an image index
under the tag ``sha256-<hex of the subject>`` listing the referrers, which the
pusher reads, merges and writes back. A pull asks the API first and falls back
to that tag on a 404, and checks every referrer against its subject before a
byte of it is kept. ``docs/FORMAT.md`` (section 14) is the specification.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..digest import damaged, digest_bytes
from ..errors import ArtifactError, ArtifactNotFoundError
from .client import RegistryClient
from .layout import (
    A_DIGEST,
    A_MANIFEST,
    INDEX_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    Descriptor,
    _descriptor,
    _json,
    canonical_json,
    index_entries,
)

__all__ = [
    "EMPTY_CONFIG",
    "SIGNATURE_ARTIFACT_TYPE",
    "fallback_tag",
    "fetch_signatures",
    "push_signatures",
    "referrer_manifest",
]

SIGNATURE_ARTIFACT_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
#: The OCI empty descriptor's content (image spec, "Guidance for an empty descriptor").
EMPTY_CONFIG = b"{}"
A_SIGNER = "org.modelvault.signer"
#: Signatures one variant may carry, as in a bundle (``formats/_bundle_index.py``).
MAX_SIGNATURES = 64
#: A signature bundle is a few KiB (``signing.MAX_SIGNATURE``).
MAX_SIGNATURE = 1024 * 1024


def fallback_tag(subject_digest: str) -> str:
    """The referrers tag schema: ``<alg>-<hex>`` of the subject."""
    algo, _, hex_ = subject_digest.partition(":")
    return f"{algo}-{hex_}"


def referrer_manifest(
    subject: Descriptor, bundle: bytes, manifest_digest: str, signer: str
) -> bytes:
    """The image manifest of one signature referrer (canonical JSON: one digest per bundle)."""
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": SIGNATURE_ARTIFACT_TYPE,
            "config": {
                "mediaType": EMPTY_MEDIA_TYPE,
                "digest": digest_bytes(EMPTY_CONFIG, "sha256"),
                "size": len(EMPTY_CONFIG),
            },
            "layers": [
                {
                    "mediaType": SIGNATURE_ARTIFACT_TYPE,
                    "digest": digest_bytes(bundle, "sha256"),
                    "size": len(bundle),
                    "annotations": {A_DIGEST: digest_bytes(bundle)},
                }
            ],
            "subject": {
                "mediaType": subject.media_type,
                "digest": subject.digest,
                "size": subject.size,
            },
            "annotations": {A_MANIFEST: manifest_digest, A_SIGNER: signer},
        }
    )


def _entry(body: bytes, manifest_digest: str, signer: str) -> dict[str, Any]:
    """A referrer's descriptor as a referrers list (or the fallback index) holds it."""
    return {
        "mediaType": MANIFEST_MEDIA_TYPE,
        "digest": digest_bytes(body, "sha256"),
        "size": len(body),
        "artifactType": SIGNATURE_ARTIFACT_TYPE,
        "annotations": {A_MANIFEST: manifest_digest, A_SIGNER: signer},
    }


def push_signatures(
    client: RegistryClient,
    repo: str,
    subject: Descriptor,
    manifest_digest: str,
    signatures: Sequence[tuple[str, bytes, str]],
    send_blob: Callable[[str, bytes], Any],
) -> int:
    """Push ``(blake3, bundle, signer)`` signatures as referrers of ``subject``.

    ``send_blob(sha256, data)`` uploads a blob unless the repository has it.
    Returns how many referrers the subject has from modelvault afterwards.
    """
    if not signatures:
        return 0
    send_blob(digest_bytes(EMPTY_CONFIG, "sha256"), EMPTY_CONFIG)
    entries = []
    api = True
    for _b3, bundle, signer in signatures:
        send_blob(digest_bytes(bundle, "sha256"), bundle)
        body = referrer_manifest(subject, bundle, manifest_digest, signer)
        headers = client.put_manifest(repo, digest_bytes(body, "sha256"), body, MANIFEST_MEDIA_TYPE)
        # The referrers API acknowledges the subject; without it, the tag schema is ours to keep.
        api = api and (headers.get("OCI-Subject") or "").strip() == subject.digest
        entries.append(_entry(body, manifest_digest, signer))
    if not api:
        _merge_fallback(client, repo, subject.digest, entries)
    return len(entries)


def _merge_fallback(
    client: RegistryClient, repo: str, subject_digest: str, entries: list[dict[str, Any]]
) -> None:
    tag = fallback_tag(subject_digest)
    existing: list[dict[str, Any]] = []
    try:
        data, _ = client.get_manifest(repo, tag, [INDEX_MEDIA_TYPE])
    except ArtifactNotFoundError:
        pass
    else:
        obj = _json(data, f"referrers index {repo}:{tag}")
        listed = obj.get("manifests")
        if isinstance(listed, list):
            existing = [e for e in listed if isinstance(e, dict)]
    merged = {str(e.get("digest")): e for e in existing}
    for e in entries:
        merged[e["digest"]] = e
    body = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [merged[k] for k in sorted(merged)],
        }
    )
    client.put_manifest(repo, tag, body, INDEX_MEDIA_TYPE)


@dataclass(frozen=True)
class _Listed:
    descriptor: Descriptor
    artifact_type: str | None


def _from_api(client: RegistryClient, repo: str, subject_digest: str, what: str) -> bytes | None:
    """The referrers API's answer, or None where the registry has no such API (a 404,
    or 400/405/501 from one that routes the path elsewhere, or a page that is not
    an index)."""
    try:
        resp = client.request(
            "GET",
            f"/v2/{repo}/referrers/{subject_digest}?artifactType={SIGNATURE_ARTIFACT_TYPE}",
            scope=f"repository:{repo}:pull",
            headers={"Accept": INDEX_MEDIA_TYPE},
            what=what,
        )
    except ArtifactNotFoundError:
        return None
    except ArtifactError as exc:
        if any(f" {code} " in str(exc) for code in (400, 405, 501)):
            return None
        raise
    data = resp.read(1 << 22)
    ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip()
    return data if ctype in (INDEX_MEDIA_TYPE, "application/json") else None


def _list(client: RegistryClient, repo: str, subject_digest: str) -> list[_Listed]:
    """The signature referrers of ``subject_digest``: from the API, or else the fallback tag."""
    what = f"referrers of {repo}@{subject_digest}"
    data = _from_api(client, repo, subject_digest, what)
    if data is None:
        tag = fallback_tag(subject_digest)
        try:
            data, _ = client.get_manifest(repo, tag, [INDEX_MEDIA_TYPE])
        except ArtifactNotFoundError:
            return []
        what = f"referrers index {repo}:{tag}"
    _, listed = index_entries(data, what)
    out = []
    for i, e in enumerate(listed):
        # Other tools' referrers (an SBOM, a cosign bundle) are not ours to judge:
        # only signature entries modelvault wrote (annotated with the variant's
        # manifest) are parsed, and then checked strictly.
        if not isinstance(e, dict) or e.get("artifactType") != SIGNATURE_ARTIFACT_TYPE:
            continue
        ann = e.get("annotations")
        if not isinstance(ann, dict) or A_MANIFEST not in ann:
            continue
        out.append(_Listed(_descriptor(e, f"{what} entry {i}"), SIGNATURE_ARTIFACT_TYPE))
    return out


def fetch_signatures(
    client: RegistryClient, repo: str, subject_digest: str
) -> list[tuple[str, bytes]]:
    """The signature bundles attached to ``subject_digest``, as ``(blake3, bytes)``.

    Every referrer is checked before its bundle is kept: its manifest hashes to
    the digest listed, it is a signature artifact whose ``subject`` is this
    manifest, and its one layer hashes to what the manifest says. Other
    artifact types (an SBOM, a cosign image signature) are left alone.
    """
    from .transfer import _small_blob

    found = [
        x for x in _list(client, repo, subject_digest) if x.artifact_type == SIGNATURE_ARTIFACT_TYPE
    ]
    if len(found) > MAX_SIGNATURES:
        raise ArtifactError(
            f"{repo}@{subject_digest} has {len(found)} signature referrers; at most {MAX_SIGNATURES} are read"
        )
    out: dict[str, bytes] = {}
    for x in found:
        d = x.descriptor
        where = f"signature referrer {repo}@{d.digest}"
        data, _ = client.get_manifest(repo, d.digest, [MANIFEST_MEDIA_TYPE])
        actual = digest_bytes(data, "sha256")
        if actual != d.digest or len(data) != d.size:
            raise damaged(d.digest, actual, where=f"{where} from {client.registry}")
        obj = _json(data, where)
        if obj.get("artifactType") != SIGNATURE_ARTIFACT_TYPE:
            raise ArtifactError(
                f"{where} is listed as a signature but is a {obj.get('artifactType')!r:.80}"
            )
        subject = _descriptor(obj.get("subject"), f"{where}'s subject")
        if subject.digest != subject_digest:
            raise ArtifactError(
                f"{where} is listed for {subject_digest} but its subject is {subject.digest}"
            )
        layers = obj.get("layers")
        if not isinstance(layers, list) or len(layers) != 1:
            raise ArtifactError(f"{where} must have exactly one layer, the signature bundle")
        layer = _descriptor(layers[0], f"{where} layer")
        if layer.media_type != SIGNATURE_ARTIFACT_TYPE:
            raise ArtifactError(
                f"{where}'s layer is a {layer.media_type!r:.80}, not a signature bundle"
            )
        bundle = _small_blob(client, repo, layer, MAX_SIGNATURE)
        try:
            json.loads(bundle)
        except (ValueError, UnicodeDecodeError):
            raise ArtifactError(f"{where}'s bundle is not JSON") from None
        out[digest_bytes(bundle)] = bundle
    return sorted(out.items())
