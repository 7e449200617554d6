"""How a modelvault version is laid out as a CNCF ModelPack artifact, and read back.

One variant is one OCI image manifest (``artifactType``
``application/vnd.cncf.model.manifest.v1+json``, config
``application/vnd.cncf.model.config.v1+json``) whose layers are, in order:

1. each blob of the modelvault manifest, unchanged, as a
   ``application/vnd.cncf.model.weight.v1.raw`` layer (raw bytes, so another
   tool reads the file at ``org.cncf.model.filepath`` as it is);
2. where the variant has tensors, ``modelvault/tensors.json``
   (``weight.config.v1.raw``): each weight layer's tensor table (name, dtype,
   shape, strides, byte offset), so the raw layers can be read without
   modelvault;
3. ``modelvault/manifest.msgpack``, the modelvault manifest itself
   (``application/vnd.modelvault.manifest.v1+msgpack``), so a pull rebuilds the
   very variant, same BLAKE3 digest.

Every layer carries ``org.modelvault.digest`` (its BLAKE3 digest); a pull
checks both digests. A version with several variants is an OCI image index,
one manifest per variant, each descriptor annotated with the variant's
requirements in the ``org.modelvault.*`` namespace. ``docs/FORMAT.md``
("OCI artifacts") is the specification.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ArtifactError
from ..formats.manifest import Manifest

__all__ = [
    "ANNOTATION_PREFIX",
    "ARTIFACT_TYPE",
    "CONFIG_MEDIA_TYPE",
    "INDEX_MEDIA_TYPE",
    "MANIFEST_LAYER_MEDIA_TYPE",
    "MANIFEST_MEDIA_TYPE",
    "Descriptor",
    "LayerPlan",
    "VariantPlan",
    "build_config",
    "build_index",
    "build_manifest",
    "canonical_json",
    "index_entries",
    "parse_image_manifest",
    "parse_index",
    "requirement_annotations",
    "tensor_table",
]

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.cncf.model.config.v1+json"
WEIGHT_RAW = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG_RAW = "application/vnd.cncf.model.weight.config.v1.raw"
MANIFEST_LAYER_MEDIA_TYPE = "application/vnd.modelvault.manifest.v1+msgpack"
FILEPATH = "org.cncf.model.filepath"
ANNOTATION_PREFIX = "org.modelvault."
A_DIGEST = "org.modelvault.digest"
A_ROLE = "org.modelvault.role"
A_MEDIA_TYPE = "org.modelvault.media-type"
A_MANIFEST = "org.modelvault.manifest"
A_FORMAT = "org.modelvault.format"
A_KIND = "org.modelvault.kind"
A_REQUIREMENTS = "org.modelvault.requirements"
A_NAME = "org.modelvault.name"
A_VERSION = "org.modelvault.version"
TITLE = "org.opencontainers.image.title"
OCI_VERSION = "org.opencontainers.image.version"
MANIFEST_PATH = "modelvault/manifest.msgpack"
TENSORS_PATH = "modelvault/tensors.json"
#: Media types a pull accepts as "the thing a tag names".
ACCEPT = [INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE]


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces: the same version always gives the same manifest digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest says of one blob or manifest."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class LayerPlan:
    """One layer to push: its descriptor, and the modelvault blob (index) or bytes behind it."""

    descriptor: Descriptor
    blob_index: int | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class VariantPlan:
    """One variant as an image manifest: config, layers, and the manifest's own bytes."""

    manifest: Manifest
    config: bytes
    layers: tuple[LayerPlan, ...]
    body: bytes

    @property
    def config_descriptor(self) -> Descriptor:
        from ..digest import digest_bytes

        return Descriptor(
            CONFIG_MEDIA_TYPE, digest_bytes(self.config, "sha256"), len(self.config), {}
        )


def blob_paths(manifest: Manifest) -> list[str]:
    """A file path per blob, unique within the variant: its role, numbered when repeated."""
    counts: dict[str, int] = {}
    for b in manifest.blobs:
        counts[b.role] = counts.get(b.role, 0) + 1
    seen: dict[str, int] = {}
    out = []
    for b in manifest.blobs:
        n = seen.get(b.role, 0)
        seen[b.role] = n + 1
        out.append(b.role if counts[b.role] == 1 else f"{b.role}.{n}")
    return out


def tensor_table(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """Per weight layer's file path: its tensors, where they lie and how to read them."""
    paths = blob_paths(manifest)
    out: dict[str, dict[str, Any]] = {}
    for t in manifest.tensors:
        out.setdefault(paths[t.blob], {})[t.name] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "strides": list(t.strides),
            "offset": t.offset,
            "nbytes": t.nbytes,
            "byteorder": "little",
        }
    return out


def _param_size(n: Any) -> str | None:
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return None
    for scale, letter in ((10**15, "Q"), (10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}{letter}"
    return None


def build_config(
    manifest: Manifest, name: str, version: str, diff_ids: Sequence[str], description: str | None
) -> bytes:
    """The ModelPack config (``docs/config.md``): descriptor, config, modelfs."""
    descriptor: dict[str, Any] = {"name": name, "version": version}
    if description:
        descriptor["description"] = description
    cfg: dict[str, Any] = {"format": manifest.plugin}
    dtypes = sorted({t.dtype for t in manifest.tensors})
    if dtypes:
        cfg["precision"] = ",".join(dtypes)
    size = _param_size(manifest.metadata.get("parameters"))
    if size:
        cfg["paramSize"] = size
    return canonical_json(
        {
            "descriptor": descriptor,
            "config": cfg,
            "modelfs": {"type": "layers", "diffIds": list(diff_ids)},
        }
    )


def requirement_annotations(manifest: Manifest, kind: str) -> dict[str, str]:
    """The ``org.modelvault.*`` annotations that say where a variant runs."""
    target = dict(manifest.target)
    out = {
        A_MANIFEST: manifest.digest,
        A_FORMAT: manifest.plugin,
        A_KIND: kind,
        A_REQUIREMENTS: canonical_json(target).decode(),
    }
    ccs = target.get("compute_capabilities")
    if isinstance(ccs, list):
        out["org.modelvault.compute-capability"] = ",".join(str(c) for c in ccs)
    elif isinstance(ccs, Mapping) and "min" in ccs:
        out["org.modelvault.compute-capability"] = f">={ccs['min']}"
    for key, ann in (
        ("tensorrt", "org.modelvault.tensorrt"),
        ("torch_tensorrt_abi", "org.modelvault.torch-tensorrt-abi"),
        ("platform", "org.modelvault.platform"),
        ("device", "org.modelvault.device"),
    ):
        if target.get(key) is not None:
            out[ann] = str(target[key])
    return out


def build_manifest(
    manifest: Manifest,
    sha256s: Sequence[str],
    name: str,
    version: str,
    kind: str,
    description: str | None = None,
) -> VariantPlan:
    """The image manifest of one variant; ``sha256s`` are its blobs' sha256 digests, in order."""
    from ..digest import digest_bytes

    paths = blob_paths(manifest)
    layers: list[LayerPlan] = []
    for i, (ref, sha) in enumerate(zip(manifest.blobs, sha256s, strict=True)):
        ann = {
            FILEPATH: paths[i],
            TITLE: paths[i],
            A_DIGEST: ref.digest,
            A_ROLE: ref.role,
            A_MEDIA_TYPE: ref.media_type,
        }
        layers.append(LayerPlan(Descriptor(WEIGHT_RAW, sha, ref.size, ann), blob_index=i))
    if manifest.tensors:
        table = canonical_json(tensor_table(manifest))
        ann = {
            FILEPATH: TENSORS_PATH,
            TITLE: TENSORS_PATH,
            A_DIGEST: digest_bytes(table),
            A_ROLE: "tensor-table",
        }
        layers.append(
            LayerPlan(
                Descriptor(WEIGHT_CONFIG_RAW, digest_bytes(table, "sha256"), len(table), ann),
                data=table,
            )
        )
    encoded = manifest.encode()
    ann = {
        FILEPATH: MANIFEST_PATH,
        TITLE: MANIFEST_PATH,
        A_DIGEST: manifest.digest,
        A_ROLE: "manifest",
    }
    layers.append(
        LayerPlan(
            Descriptor(
                MANIFEST_LAYER_MEDIA_TYPE, digest_bytes(encoded, "sha256"), len(encoded), ann
            ),
            data=encoded,
        )
    )
    config = build_config(
        manifest, name, version, [lp.descriptor.digest for lp in layers], description
    )
    annotations = {
        **requirement_annotations(manifest, kind),
        A_NAME: name,
        A_VERSION: version,
        TITLE: name,
        OCI_VERSION: version,
    }
    cfg_desc = Descriptor(CONFIG_MEDIA_TYPE, digest_bytes(config, "sha256"), len(config), {})
    body = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "config": cfg_desc.to_json(),
            "layers": [lp.descriptor.to_json() for lp in layers],
            "annotations": annotations,
        }
    )
    return VariantPlan(manifest, config, tuple(layers), body)


def _platform(target: Mapping[str, Any]) -> dict[str, str] | None:
    # The index's platform field is what container tooling filters on.
    plat = target.get("platform")
    if not isinstance(plat, str) or "_" not in plat:
        return None
    os_name, _, arch = plat.partition("_")
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(arch, arch)
    return {"os": os_name, "architecture": arch}


def build_index(
    plans: Sequence[VariantPlan], kinds: Sequence[str], name: str, version: str
) -> bytes:
    """The image index of a version with several variants."""
    from ..digest import digest_bytes

    entries = []
    for plan, kind in zip(plans, kinds, strict=True):
        entry: dict[str, Any] = {
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "digest": digest_bytes(plan.body, "sha256"),
            "size": len(plan.body),
            "annotations": requirement_annotations(plan.manifest, kind),
        }
        plat = _platform(plan.manifest.target)
        if plat:
            entry["platform"] = plat
        entries.append(entry)
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "manifests": entries,
            "annotations": {A_NAME: name, A_VERSION: version, TITLE: name, OCI_VERSION: version},
        }
    )


# ---------------------------------------------------------------------------
# reading: untrusted JSON from a registry


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{what} is not a JSON object")
    return obj


def _descriptor(obj: Any, what: str) -> Descriptor:
    from ..digest import parse_digest

    if not isinstance(obj, dict):
        raise ArtifactError(f"{what} is not a descriptor")
    mt, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
    if not isinstance(mt, str) or not isinstance(digest, str):
        raise ArtifactError(f"{what} lacks mediaType or digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ArtifactError(f"{what} has no valid size")
    try:
        algo, _ = parse_digest(digest)
    except Exception:
        raise ArtifactError(f"{what} has digest {digest!r:.80}, which is not a digest") from None
    if algo != "sha256":
        raise ArtifactError(f"{what} uses {algo}; modelvault reads sha256 OCI artifacts")
    ann = obj.get("annotations") or {}
    if not isinstance(ann, dict) or not all(isinstance(v, str) for v in ann.values()):
        raise ArtifactError(f"{what} has annotations that are not strings")
    return Descriptor(mt, digest, size, ann)


@dataclass(frozen=True)
class ImageManifest:
    """A parsed image manifest of a model artifact."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str]


def parse_image_manifest(data: bytes, what: str) -> ImageManifest:
    """Parse an image manifest; refuse anything that is not a model artifact."""
    obj = _json(data, what)
    if obj.get("schemaVersion") != 2:
        raise ArtifactError(f"{what} has schemaVersion {obj.get('schemaVersion')!r}, not 2")
    mt = obj.get("mediaType", MANIFEST_MEDIA_TYPE)
    if mt != MANIFEST_MEDIA_TYPE:
        raise ArtifactError(f"{what} is a {mt}, not an OCI image manifest")
    config = _descriptor(obj.get("config"), f"{what}'s config")
    # The image spec: without artifactType, the config's media type is the artifact's type.
    kind = obj.get("artifactType") or config.media_type
    if kind not in (ARTIFACT_TYPE, CONFIG_MEDIA_TYPE):
        raise ArtifactError(
            f"{what} is an artifact of type {kind!r:.100}, not a model ({ARTIFACT_TYPE})"
        )
    layers_raw = obj.get("layers")
    if not isinstance(layers_raw, list) or not layers_raw:
        raise ArtifactError(f"{what} has no layers")
    layers = tuple(_descriptor(x, f"{what} layer {i}") for i, x in enumerate(layers_raw))
    ann = obj.get("annotations") or {}
    if not isinstance(ann, dict):
        raise ArtifactError(f"{what}'s annotations are not a map")
    return ImageManifest(config, layers, {str(k): str(v) for k, v in ann.items()})


def index_entries(data: bytes, what: str) -> tuple[dict[str, Any], list[Any]]:
    """An image index as JSON, and its ``manifests`` list; ArtifactError if it is none."""
    obj = _json(data, what)
    entries = obj.get("manifests")
    if obj.get("schemaVersion") != 2 or not isinstance(entries, list):
        raise ArtifactError(f"{what} is not an OCI image index")
    return obj, entries


def parse_index(data: bytes, what: str) -> tuple[list[Descriptor], dict[str, str]]:
    """The model manifests an image index lists (others, such as signatures, skipped)."""
    obj, entries = index_entries(data, what)
    out = []
    for i, e in enumerate(entries):
        d = _descriptor(e, f"{what} entry {i}")
        kind = e.get("artifactType")
        if d.media_type == MANIFEST_MEDIA_TYPE and kind in (None, ARTIFACT_TYPE):
            out.append(d)
    if not out:
        raise ArtifactError(f"{what} lists no model manifest (artifactType {ARTIFACT_TYPE})")
    ann = obj.get("annotations") or {}
    return out, {str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {}
