"""The push pipeline: pack, upload, register.

1. **pack**: the format plugin turns an object or a file into a
   :class:`~modelvault.formats.container.Draft` and validates it; nothing is
   written yet;
2. **upload**: every blob is hashed, then stored under its digest unless the
   store already has it; the manifest goes last;
3. **register**: one registry transaction records the version (or a new
   variant of it), its blob references and its aliases;
4. **signatures** a ``.mvpk`` carries (stored with its blobs in step 2) are
   attached to the registered variant, under a lease of their own, as
   ``mvault sign`` attaches them. Nothing here judges them: loads under a
   trust policy do (and an import under one checks them before step 2).

Steps 2 and 3 run under a :class:`~modelvault.maintenance.PushLease`: every
blob the push will reference is leased in the registry before the store is
asked whether it has it, so a concurrent ``gc`` never deletes a blob the push
decided to reuse; the registration hands the lease over in its transaction.
A crash between 2 and 3 leaves at worst orphan blobs, which ``mvault gc``
removes after a grace period.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import VersionExistsError
from .formats.container import Draft, finalize
from .formats.registry import get_plugin

if TYPE_CHECKING:
    from .formats.bundle import Bundle
    from .formats.manifest import Manifest
    from .maintenance import PushLease
    from .registry import Registry
    from .storage.base import BlobStore

__all__ = [
    "MANIFEST_MEDIA_TYPE",
    "PushRequest",
    "PushResult",
    "Upload",
    "attach_signatures",
    "attach_variant_signatures",
    "phase",
    "register",
    "upload_bundle",
    "upload_draft",
    "variant_input",
]

MANIFEST_MEDIA_TYPE = "application/vnd.modelvault.manifest.v1+msgpack"


@dataclass(frozen=True)
class PushRequest:
    """Where a container goes in the registry: a version, or a new variant of one."""

    name: str
    version: str
    aliases: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    description: str | None = None
    variant: bool = False


@dataclass(frozen=True)
class Upload:
    """What the store part of a push did."""

    manifest: Manifest
    bytes_uploaded: int = 0
    blobs_uploaded: int = 0
    blobs_skipped: int = 0
    #: Signature bundles stored with a ``.mvpk``'s blobs, as ``(digest, bytes)``.
    signatures: tuple[tuple[str, bytes], ...] = ()


@dataclass
class PushResult:
    """What a push did."""

    name: str
    version: str
    digest: str
    format: str
    created: bool
    variant_added: bool = False
    bytes_uploaded: int = 0
    blobs_uploaded: int = 0
    blobs_skipped: int = 0
    aliases: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # applied, even to an unchanged version
    signatures: int = 0  # attached from a bundle (new ones only)


def phase(progress: Any, name: str, total: int | None = None) -> None:
    """Tell a progress display that supports phases (``cli.progress.Transfer``) what runs now."""
    if progress is not None and hasattr(progress, "phase"):
        progress.phase(name, total)


def _name_roles(progress: Any, manifest: Manifest) -> None:
    if progress is not None and hasattr(progress, "roles"):
        progress.roles({b.digest: b.role for b in manifest.blobs})


def upload_draft(store: BlobStore, draft: Draft, lease: PushLease, progress: Any = None) -> Upload:
    """Hash the draft's blobs, lease them, store the ones the store lacks, then the manifest."""
    phase(progress, "hashing", draft.total_size)
    draft.compute_digests(
        getattr(progress, "advance", None) if hasattr(progress, "phase") else None
    )
    manifest = finalize(draft)  # validates everything before the first byte is stored
    _name_roles(progress, manifest)
    lease.protect([b.digest for b in draft.blobs if b.digest] + [manifest.digest])
    uploaded = n_up = n_skip = 0
    seen: set[str] = set()
    for b in draft.blobs:
        assert b.digest is not None
        if b.digest in seen:
            continue
        seen.add(b.digest)
        if lease.present(b.digest):
            n_skip += 1
            continue
        local = b.source.local_file()
        if local is not None:
            wrote = store.put_file(
                b.digest, local[0], offset=local[1], length=b.source.size, progress=progress
            )
        else:
            wrote = store.put_stream(b.digest, b.source.chunks(), b.source.size, progress=progress)
        if wrote:
            uploaded += b.source.size
            n_up += 1
        else:
            n_skip += 1
    if not lease.present(manifest.digest):
        store.put_bytes(manifest.digest, manifest.encode())
    return Upload(manifest, uploaded, n_up, n_skip)


def upload_bundle(
    store: BlobStore, bundle: Bundle, lease: PushLease, progress: Any = None
) -> Upload:
    """Lease a verified bundle's blobs and signatures, store those the store lacks, then
    its manifest (a store that refuses writes refuses here, before anything is registered)."""
    manifest = bundle.manifest
    signatures = tuple(bundle.signatures)
    _name_roles(progress, manifest)
    lease.protect(
        [ref.digest for ref in manifest.blobs] + [d for d, _ in signatures] + [manifest.digest]
    )
    uploaded = n_up = n_skip = 0
    for i, ref in enumerate(manifest.blobs):
        if lease.present(ref.digest):
            n_skip += 1
            continue
        loc = bundle.locate(i)
        if store.put_file(
            ref.digest, loc.path, offset=loc.offset, length=loc.size, progress=progress
        ):
            uploaded += ref.size
            n_up += 1
    for digest, data in signatures:
        if not lease.present(digest):
            store.put_bytes(digest, data)
    if not lease.present(manifest.digest):
        store.put_bytes(manifest.digest, bundle.manifest_bytes)
    return Upload(manifest, uploaded, n_up, n_skip, signatures)


def attach_signatures(
    registry: Registry, store: BlobStore, result: PushResult, upload: Upload
) -> PushResult:
    """Step 4: record the signatures a bundle carried against the variant just registered."""
    result.signatures = attach_variant_signatures(
        registry, store, result.name, result.version, result.digest, upload.signatures
    )
    return result


def attach_variant_signatures(
    registry: Registry,
    store: BlobStore,
    name: str,
    version: str,
    manifest_digest: str,
    signatures: Sequence[tuple[str, bytes]],
) -> int:
    """Store ``(digest, bundle)`` signatures and record them against one variant of a
    registered version (from a bundle, an OCI pull); how many were new.

    A lease of its own, as ``mvault sign`` takes: the push's was handed over by
    the registration, and a ``gc`` must not take a signature before its reference.
    """
    from .maintenance import PushLease
    from .signing import claimed_signer

    if not signatures:
        return 0
    added = 0
    with PushLease(registry, store) as lease:
        lease.protect([d for d, _ in signatures])
        for digest, data in signatures:
            if not lease.present(digest):
                store.put_bytes(digest, data)
            lease.keep_alive()
            added += registry.attach_signature(
                name, version, manifest_digest, digest, len(data), claimed_signer(data)
            )
    return added


def variant_input(manifest: Manifest) -> Any:
    """What the registry records of one variant: its manifest digest, kind, requirements, blobs."""
    from .registry import VariantInput

    try:
        plugin_kind = get_plugin(manifest.plugin).kind
    except Exception:  # a plugin not installed here: the manifest says what it is
        plugin_kind = str(manifest.target.get("kind", "portable"))
    blobs = [(b.digest, b.size, b.role, b.media_type) for b in manifest.blobs]
    encoded = manifest.encode()
    blobs.append((manifest.digest, len(encoded), "manifest", MANIFEST_MEDIA_TYPE))
    return VariantInput(
        manifest_digest=manifest.digest,
        format=manifest.plugin,
        kind=plugin_kind,
        requirements=dict(manifest.target),
        size=manifest.total_size + len(encoded),
        blobs=blobs,
    )


def _same_content(
    registry: Registry, store: BlobStore, name: str, version: str, manifest: Manifest
) -> tuple[Any, bool, Manifest] | None:
    """The existing version, when one of its variants holds exactly ``manifest``
    (same canonical msgpack) under another stored encoding; else None."""
    from .loader import read_manifest

    info = registry.resolve(f"{name}:{version}")
    for v in info.variants:
        try:
            have, _ = read_manifest(store, v.manifest_digest)
        except Exception:  # unreadable here: not evidence of sameness
            continue
        if have.same_content(manifest):
            return info, False, have
    return None


def register(
    registry: Registry,
    upload: Upload,
    request: PushRequest,
    lease: PushLease,
    progress: Any = None,
) -> PushResult:
    """Record the uploaded container as ``request`` says, in one transaction with the lease."""
    phase(progress, "registering")
    manifest = upload.manifest
    vin = variant_input(manifest)
    version = request.version
    aliases = list(request.aliases)
    labels = dict(request.labels)
    lease.keep_alive()
    if request.variant:
        registry.add_variant(request.name, version, vin, lease=lease.id)
        created = False
        if labels:
            registry.set_labels(request.name, version, labels)
    else:
        try:
            info, created = registry.register_version(
                request.name,
                version,
                [vin],
                aliases=aliases,
                labels=labels,
                description=request.description,
                lease=lease.id,
            )
        except VersionExistsError:
            # The same content deflated by another zlib build (another machine) is
            # another digest: the version is unchanged, not in conflict.
            same = _same_content(registry, lease.store, request.name, version, manifest)
            if same is None:
                raise
            info, created, manifest = same
        version = info.version
    if created or request.variant:
        lease.handed_over()  # the registration deleted the lease in its transaction
    if not created:  # a new version got its aliases in the same transaction
        for a in aliases:
            registry.set_alias(request.name, a, version)
    return PushResult(
        request.name,
        version,
        manifest.digest,
        manifest.plugin,
        created=created,
        variant_added=request.variant,
        bytes_uploaded=upload.bytes_uploaded,
        blobs_uploaded=upload.blobs_uploaded,
        blobs_skipped=upload.blobs_skipped,
        aliases=aliases,
        labels=labels,
    )
