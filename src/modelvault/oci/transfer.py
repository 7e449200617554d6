"""Push a version to an OCI registry, and pull one from it into the vault.

push: resolve the version; open each variant through the load pipeline (its
manifest verified against the registry's digest); then, in parallel, largest
first, each blob once, and no byte of a blob the repository already has: one
never hashed here is hashed first (BLAKE3, checked against the manifest, and
sha256, the name OCI gives it, in one read), skipped when the repository has
it (``HEAD``), mounted when another repository of the registry holds it, else
sent (one ``PUT`` up to 64 MiB, ``PATCH`` chunks above); one whose sha256 is
remembered from an earlier push or pull is asked for before it is read and,
if it must be sent, hashed while it is sent (:class:`HashingTap`), the BLAKE3
checked before the upload is completed.
The manifests go last, the tag last of all.

pull: fetch the manifest (or index) the tag names, check its sha256, refuse
anything that is not a model artifact; download every layer the store lacks
in parallel ranged parts straight into the store's staging directory, both
digests computed as the bytes land (:mod:`.download`); check each layer's
sha256 and BLAKE3; only then let the store adopt the files and register the
version, in one registry transaction. A failure at any point registers
nothing and leaves nothing in the store's staging directory or the cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ..digest import damaged, digest_bytes
from ..errors import (
    ArtifactError,
    ArtifactNotFoundError,
    InvalidArgumentError,
    ModelVaultError,
    UnsafePathError,
)
from ..formats.manifest import Manifest
from ..maintenance import PushLease
from ..storage._io import remove_quietly
from ._hashing import HashingTap
from .client import CHUNK, MAX_MANIFEST_BYTES, RegistryClient, read_all, with_query
from .download import Layer, download
from .layout import (
    A_DIGEST,
    A_NAME,
    A_ROLE,
    A_VERSION,
    ACCEPT,
    FILEPATH,
    INDEX_MEDIA_TYPE,
    MANIFEST_LAYER_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    Descriptor,
    ImageManifest,
    VariantPlan,
    build_index,
    build_manifest,
    parse_image_manifest,
    parse_index,
)
from .reference import Reference, parse_reference, tag_for_version
from .referrers import fetch_signatures, push_signatures

if TYPE_CHECKING:
    from ..vault import Vault

__all__ = ["OCIPullResult", "OCIPushResult", "pull_version", "push_version"]

_READ_BLOCK = 4 * 1024 * 1024
# Pull parts: small enough that the first byte not yet written (where the
# hashes wait) advances at the speed of all parts together, large enough
# that a request's round trip is noise.
_PULL_PART = 16 * 1024 * 1024
_MAX_CONFIG = 4 * 1024 * 1024
_MOUNT_HINTS = 20_000


@dataclass
class OCIPushResult:
    """What a push to a registry did; ``digest`` is the sha256 of what the tag now names."""

    reference: str
    digest: str
    media_type: str
    variants: int
    blobs_uploaded: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    bytes_uploaded: int = 0
    #: Signature referrers the variants have from modelvault after the push.
    signatures: int = 0


@dataclass
class OCIPullResult:
    """What a pull from a registry did."""

    reference: str
    digest: str
    name: str
    version: str
    variants: list[str] = field(default_factory=list)
    created: bool = False
    blobs_downloaded: int = 0
    blobs_skipped: int = 0
    bytes_downloaded: int = 0
    #: Signature bundles found as referrers and recorded with the version.
    signatures: int = 0


def hash_both(path: Path, offset: int, size: int) -> tuple[str, str]:
    """(sha256, blake3) of ``size`` bytes of ``path`` from ``offset``: one read, two hashing threads."""
    if size <= _READ_BLOCK:  # small: not worth two threads
        with open(path, "rb", buffering=0) as f:
            data = os.pread(f.fileno(), size, offset)
        if len(data) != size:
            raise damaged("", f"{len(data)} bytes", where=str(path))
        return digest_bytes(data, "sha256"), digest_bytes(data, "blake3")
    tap = HashingTap(offset, size)
    try:
        with open(path, "rb", buffering=0) as f:
            pos = offset
            while pos < offset + size:
                block = os.pread(f.fileno(), min(_READ_BLOCK, offset + size - pos), pos)
                if not block:
                    raise damaged("", f"{pos - offset} bytes", where=str(path))
                tap(pos, block)
                pos += len(block)
        got = tap.digests()
        return got["sha256"], got["blake3"]
    finally:
        tap.close()


# ---------------------------------------------------------------------------
# mount hints: which repository of a registry last received a blob


def _hints_path() -> Path:
    from ..config import settings

    return settings().cache_dir / "oci-mounts.json"


def _load_hints() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(_hints_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_hints(registry: str, repo: str, digests: Sequence[str]) -> None:
    # A hint only: a failure to record it costs a future upload, nothing else.
    try:
        hints = _load_hints()
        mine = hints.setdefault(registry, {})
        for d in digests:
            mine[d] = repo
        while len(mine) > _MOUNT_HINTS:
            mine.pop(next(iter(mine)))
        path = _hints_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(hints))
        os.replace(tmp, path)
    except OSError:
        pass


def _shas_path() -> Path:
    from ..config import settings

    return settings().cache_dir / "oci-sha256.json"


def _load_shas() -> dict[str, str]:
    """blake3 -> sha256 of blobs pushed or pulled before: lets a push ask before it reads."""
    try:
        data = json.loads(_shas_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_shas(pairs: Iterable[tuple[str, str]]) -> None:
    # A hint as well: its entries are only sha256s computed here while pushing
    # or verified while pulling; a lost one costs a push the question (HEAD)
    # before sending a large blob, never a byte of it.
    try:
        known = _load_shas()
        known.update(pairs)
        while len(known) > _MOUNT_HINTS:
            known.pop(next(iter(known)))
        path = _shas_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, path)
    except OSError:
        pass


# ---------------------------------------------------------------------------
# push


def push_version(
    vault: Vault,
    spec: str,
    ref: str | Reference,
    *,
    plain_http: bool | None = None,
    workers: int = 8,
    progress: Any = None,
    client: RegistryClient | None = None,
) -> OCIPushResult:
    """Push the version ``spec`` names to ``ref`` (``oci://registry/repo[:tag]``).

    The tag defaults to the version (``+`` becomes ``_``, which tags allow).
    """
    if isinstance(ref, str):
        ref = parse_reference(ref, default_tag=None)
    if ref.digest:
        raise InvalidArgumentError(f"{ref}: push to a tag, not a digest")
    info = vault.resolve(spec)
    tag = ref.tag or tag_for_version(info.version)
    description = getattr(info, "description", None)
    client = client or RegistryClient(ref.registry, plain_http=plain_http)
    repo = ref.repository
    opened: list[tuple[Any, Manifest]] = []
    files: dict[str, tuple[Path, int, int]] = {}  # blake3 -> where the store holds it
    for variant in info.variants:
        source = vault.pipeline.open(variant)
        m = source.manifest
        opened.append((variant, m))
        for i, blob in enumerate(m.blobs):
            if blob.digest not in files:
                loc = source.locate(i)
                files[blob.digest] = (loc.path, loc.offset, loc.size)
    result = OCIPushResult(str(ref.with_target(tag=tag)), "", "", len(opened))
    mounts = _load_hints().get(ref.registry, {})
    known = _load_shas()
    shas: dict[str, str] = {}  # blake3 -> sha256 of what is now in the repository

    def present(sha: str) -> str | None:
        if client.blob_size(repo, sha) is not None:
            return "skipped"
        other = mounts.get(sha)
        if other and other != repo and client.mount_blob(repo, sha, other):
            return "mounted"
        return None

    def send_file(b3: str) -> tuple[str, int]:
        path, offset, size = files[b3]
        remembered = known.get(b3)
        if remembered is None:
            # Never hashed here: both digests first (one read, the BLAKE3
            # checked), so the registry is asked before any byte is sent and a
            # blob it holds (pushed from another machine) costs a read here and
            # not a byte on the wire.
            sha, got = hash_both(path, offset, size)
            if got != b3:  # the store's copy is damaged
                raise damaged(b3, got, where=str(path))
        else:
            sha = remembered
        if outcome := present(sha):
            shas[b3] = sha
            return outcome, 0
        if remembered is None:
            # The registry checks the sha256 at the closing PUT: bytes changed
            # since the hash are refused there.
            client.upload_blob(repo, sha, path, offset, size, progress=progress)
            shas[b3] = sha
            return "uploaded", size
        # Remembered from an earlier push or pull, and the registry lacks it: hash
        # it as it is read for sending (one pass), the BLAKE3 checked before the
        # upload is completed (a remembered sha256 is a hint, so the one sent is
        # the one computed now).
        tap = HashingTap(offset, size)
        try:
            shas[b3] = str(
                client.upload_blob(
                    repo,
                    None,
                    path,
                    offset,
                    size,
                    progress=progress,
                    tap=tap,
                    seal=lambda: tap.seal(b3, str(path)),
                )
            )
        finally:
            tap.close()
        return "uploaded", size

    def send_data(sha: str, data: bytes) -> tuple[str, int]:
        if outcome := present(sha):
            return outcome, 0
        client.request(
            "PUT",
            _monolithic(client, repo, sha),
            scope=f"repository:{repo}:pull,push",
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
            body=data,
            ok=(201,),
            what=f"upload of {sha}",
        ).read()
        return "uploaded", len(data)

    def count(outcomes: Sequence[tuple[str, int]]) -> None:
        for outcome, sent in outcomes:
            result.bytes_uploaded += sent
            if outcome == "skipped":
                result.blobs_skipped += 1
            elif outcome == "mounted":
                result.blobs_mounted += 1
            else:
                result.blobs_uploaded += 1

    if progress is not None:
        progress.start(sum(s for _, _, s in files.values()), f"push {repo}:{tag}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # the largest first, so that the longest upload is not the last to start
        order = sorted(files, key=lambda d: -files[d][2])
        count(list(pool.map(send_file, order)))
        plans: list[VariantPlan] = []
        kinds: list[str] = []
        datas: dict[str, bytes] = {}
        for variant, m in opened:
            plan = build_manifest(
                m,
                [shas[b.digest] for b in m.blobs],
                info.model,
                info.version,
                variant.kind,
                description,
            )
            plans.append(plan)
            kinds.append(variant.kind)
            for lp in plan.layers:
                if lp.blob_index is None and lp.data is not None:
                    datas[lp.descriptor.digest] = lp.data
            datas[plan.config_descriptor.digest] = plan.config
        count(list(pool.map(lambda sha: send_data(sha, datas[sha]), list(datas))))
    if progress is not None:
        progress.finish()
    every = [*shas.values(), *datas]
    if len(plans) == 1:
        body, media_type = plans[0].body, MANIFEST_MEDIA_TYPE
    else:
        for plan in plans:  # children first: an index may only name manifests that exist
            client.put_manifest(
                repo, digest_bytes(plan.body, "sha256"), plan.body, MANIFEST_MEDIA_TYPE
            )
        body, media_type = build_index(plans, kinds, info.model, info.version), INDEX_MEDIA_TYPE
    client.put_manifest(repo, tag, body, media_type)
    _save_hints(ref.registry, repo, every)
    _save_shas(shas.items())
    result.digest = digest_bytes(body, "sha256")
    result.media_type = media_type
    try:
        result.signatures = _push_signatures(vault, client, repo, opened, plans, send_data)
    except ModelVaultError as exc:
        raise ArtifactError(
            f"pushed {info.ref} to {result.reference}, but not its signatures: {exc.message}",
            hint=exc.hint or f"push it again to send them: mvault push {result.reference} {spec}",
        ) from exc
    return result


def _push_signatures(
    vault: Vault,
    client: RegistryClient,
    repo: str,
    opened: Sequence[tuple[Any, Manifest]],
    plans: Sequence[VariantPlan],
    send_data: Any,
) -> int:
    """Every stored signature of every variant, as referrers of its image manifest
    (read back from the store and hashed first: a damaged one is not sent)."""
    from ..signing import claimed_signer, variant_signatures

    count = 0
    for (variant, m), plan in zip(opened, plans):
        sigs = variant_signatures(vault.store, variant)
        if not sigs:
            continue
        subject = Descriptor(
            MANIFEST_MEDIA_TYPE, digest_bytes(plan.body, "sha256"), len(plan.body), {}
        )
        count += push_signatures(
            client,
            repo,
            subject,
            m.digest,
            [(d, data, claimed_signer(data)) for d, data in sigs],
            send_data,
        )
    return count


def _monolithic(client: RegistryClient, repo: str, sha: str) -> str:
    return with_query(client._start_upload(repo), digest=sha)


# ---------------------------------------------------------------------------
# pull


def _fetch_manifest(client: RegistryClient, ref: Reference, desc: Descriptor | None) -> bytes:
    target = desc.digest if desc else ref.target
    try:
        data, _ = client.get_manifest(ref.repository, target, ACCEPT)
    except ArtifactNotFoundError:
        if desc is None:
            raise
        raise ArtifactNotFoundError(
            f"the index at {ref} names manifest {desc.digest}, which {ref.registry} does not have"
        ) from None
    expected = desc.digest if desc else ref.digest
    actual = digest_bytes(data, "sha256")
    if expected and actual != expected:
        raise damaged(
            expected, actual, where=f"manifest {ref.repository}@{expected} from {ref.registry}"
        )
    if desc is not None and len(data) != desc.size:
        raise ArtifactError(
            f"manifest {desc.digest} is {len(data)} bytes; the index says {desc.size}"
        )
    return data


def _small_blob(client: RegistryClient, repo: str, desc: Descriptor, limit: int) -> bytes:
    if desc.size > limit:
        raise ArtifactError(
            f"blob {desc.digest} is {desc.size} bytes; at most {limit} expected here"
        )
    data = read_all(client.open_blob(repo, desc.digest), limit, f"blob {desc.digest}")
    actual = digest_bytes(data, "sha256")
    if actual != desc.digest or len(data) != desc.size:
        raise damaged(
            desc.digest, actual, where=f"blob {repo}@{desc.digest} from {client.registry}"
        )
    return data


def _safe_relpath(text: str) -> PurePosixPath:
    p = PurePosixPath(text)
    if not text or p.is_absolute() or any(part in ("..", "") for part in p.parts) or "\\" in text:
        raise UnsafePathError(f"layer file path {text!r:.120} would escape the target directory")
    return p


def pull_version(
    vault: Vault,
    ref: str | Reference,
    *,
    name: str | None = None,
    version: str | None = None,
    aliases: Sequence[str] = (),
    plain_http: bool | None = None,
    workers: int = 8,
    progress: Any = None,
    client: RegistryClient | None = None,
) -> OCIPullResult:
    """Import the model artifact ``ref`` names as a version of the vault.

    An artifact modelvault pushed comes back as the very variants it was
    (same manifest digests); another tool's ModelPack artifact of raw layers
    is imported as files (a single ``.safetensors`` layer as tensors), and
    then needs ``name`` and ``version`` unless its config names them.
    """
    from ..config import settings
    from ..registry import SemVer, validate_name

    if isinstance(ref, str):
        ref = parse_reference(ref)
    client = client or RegistryClient(ref.registry, plain_http=plain_http)
    repo = ref.repository
    top = _fetch_manifest(client, ref, None)
    top_digest = digest_bytes(top, "sha256")
    try:
        top_type = json.loads(top).get("mediaType")
    except (ValueError, AttributeError):
        raise ArtifactError(f"the manifest at {ref} is not JSON") from None
    annotations: dict[str, str] = {}
    if top_type == INDEX_MEDIA_TYPE:
        descs, annotations = parse_index(top, f"index at {ref}")
        bodies = [_fetch_manifest(client, ref, d) for d in descs]
    else:
        bodies = [top]
    images = [parse_image_manifest(b, f"manifest at {ref}") for b in bodies]
    annotations = {**images[0].annotations, **annotations}
    native = all(
        any(layer.media_type == MANIFEST_LAYER_MEDIA_TYPE for layer in im.layers) for im in images
    )
    name = name or annotations.get(A_NAME)
    version = version or annotations.get(A_VERSION)
    cache_dir = settings().cache_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".oci-pull-", dir=cache_dir))
    result = OCIPullResult(str(ref), top_digest, name or "", version or "")
    try:
        if native:
            if not name or not version:
                raise ArtifactError(
                    f"{ref} does not say which model version it is", hint="pass NAME:VERSION"
                )
            validate_name("model", name)
            version = str(SemVer.parse(version))
            manifests = [_native_manifest(client, repo, im) for im in images]
            # Signatures first: under a trust policy, what they say is checked
            # before a byte of the weights is downloaded.
            signatures = [fetch_signatures(client, repo, digest_bytes(b, "sha256")) for b in bodies]
            _check_policy(name, version, manifests, signatures)
            from ..push import attach_variant_signatures, variant_input

            with PushLease(vault.registry, vault.store) as lease:
                _pull_native(
                    vault, client, repo, images, manifests, tmp, workers, progress, result, lease
                )
                lease.keep_alive()
                info, created = vault.registry.register_version(
                    name,
                    version,
                    [variant_input(m) for m in manifests],
                    aliases=list(aliases),
                    lease=lease.id,
                )
                if created:
                    lease.handed_over()
            if not created:
                for a in aliases:
                    vault.registry.set_alias(name, a, info.version)
            for m, sigs in zip(manifests, signatures):
                result.signatures += attach_variant_signatures(
                    vault.registry, vault.store, name, info.version, m.digest, sigs
                )
            result.name, result.version, result.created = name, info.version, created
            result.variants = [m.digest for m in manifests]
        else:
            if len(images) != 1:
                raise ArtifactError(
                    f"{ref} is an index of {len(images)} manifests not written by modelvault; pull one of them by digest"
                )
            pushed = _pull_foreign(
                vault,
                client,
                repo,
                images[0],
                tmp,
                workers,
                progress,
                result,
                name,
                version,
                aliases,
            )
            result.name, result.version, result.created = (
                pushed.name,
                pushed.version,
                pushed.created,
            )
            result.variants = [pushed.digest]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _check_policy(
    name: str,
    version: str,
    manifests: Sequence[Manifest],
    signatures: Sequence[Sequence[tuple[str, bytes]]],
) -> None:
    """With a trust policy, each variant's signatures are checked as a ``.mvpk``
    import checks them (:func:`~modelvault.signing.check_import`)."""
    from ..signing import check_import, current_policy

    policy = current_policy()
    if policy is None:
        return
    for m, sigs in zip(manifests, signatures):
        check_import(policy, name, version, m, sigs)


def _native_manifest(client: RegistryClient, repo: str, im: ImageManifest) -> Manifest:
    """The modelvault manifest layer of one image manifest, checked against every layer."""
    layer = next(d for d in im.layers if d.media_type == MANIFEST_LAYER_MEDIA_TYPE)
    data = _small_blob(client, repo, layer, MAX_MANIFEST_BYTES * 8)
    m = Manifest.decode(data)
    want = layer.annotations.get(A_DIGEST)
    if want and m.digest != want:
        raise damaged(want, m.digest, where=f"modelvault manifest layer {layer.digest}")
    blob_layers = [
        d for d in im.layers if d.annotations.get(A_ROLE) not in ("manifest", "tensor-table")
    ]
    if len(blob_layers) != len(m.blobs):
        raise ArtifactError(
            f"manifest {m.digest} lists {len(m.blobs)} blobs; the artifact has {len(blob_layers)} blob layers"
        )
    for i, (ref, d) in enumerate(zip(m.blobs, blob_layers)):
        if d.annotations.get(A_DIGEST) != ref.digest or d.size != ref.size:
            raise ArtifactError(
                f"layer {i} ({d.digest}) is not blob {ref.digest} of manifest {m.digest} (digest or size differs)"
            )
    return m


def _pull_native(
    vault: Vault,
    client: RegistryClient,
    repo: str,
    images: Sequence[ImageManifest],
    manifests: Sequence[Manifest],
    tmp: Path,
    workers: int,
    progress: Any,
    result: OCIPullResult,
    lease: PushLease,
) -> None:
    store = vault.store
    # Leased before the store is asked: a concurrent gc never deletes a blob reused here.
    lease.protect([b.digest for m in manifests for b in m.blobs] + [m.digest for m in manifests])
    want: dict[str, Descriptor] = {}  # blake3 -> layer
    for im, m in zip(images, manifests):
        for ref, d in zip(
            m.blobs,
            [d for d in im.layers if d.annotations.get(A_ROLE) not in ("manifest", "tensor-table")],
        ):
            if ref.digest in want or lease.present(ref.digest):
                result.blobs_skipped += ref.digest not in want
                continue
            want[ref.digest] = d
    # Written where the store adopts them from (its own directory for a local
    # store: a rename, no copy), hashed as they arrive, checked, then adopted.
    stage = store.staging_dir() or tmp
    tag = uuid.uuid4().hex[:12]
    layers = [Layer(d, stage / f".oci-{tag}-{i:06d}.part") for i, d in enumerate(want.values())]
    try:
        if progress is not None:
            progress.start(sum(d.size for d in want.values()), f"pull {repo}")
        try:
            download(
                client,
                repo,
                layers,
                workers=workers,
                part=min(CHUNK, _PULL_PART),
                progress=progress,
            )
        finally:
            if progress is not None:
                progress.finish()
        for b3_want, layer in zip(want, layers):
            where = f"layer {repo}@{layer.desc.digest} from {client.registry}"
            if layer.sha256 != layer.desc.digest:
                raise damaged(layer.desc.digest, layer.sha256, where=where)
            if layer.blake3 != b3_want:
                raise damaged(b3_want, layer.blake3, where=where)
        # Everything verified: only now does anything reach the store.
        with ThreadPoolExecutor(max_workers=workers) as pool:  # an fsync each: in parallel
            list(
                pool.map(
                    lambda it: store.adopt(it[0], it[1].path, it[1].desc.size), zip(want, layers)
                )
            )
    finally:
        for layer in layers:
            remove_quietly(layer.path)
    result.blobs_downloaded = len(layers)
    result.bytes_downloaded = sum(la.desc.size for la in layers)
    _save_shas((b3, la.desc.digest) for b3, la in zip(want, layers))
    for m in manifests:
        if not lease.present(m.digest):
            store.put_bytes(m.digest, m.encode())


def _pull_foreign(
    vault: Vault,
    client: RegistryClient,
    repo: str,
    im: ImageManifest,
    tmp: Path,
    workers: int,
    progress: Any,
    result: OCIPullResult,
    name: str | None,
    version: str | None,
    aliases: Sequence[str],
) -> Any:
    config = _small_blob(client, repo, im.config, _MAX_CONFIG)
    try:
        descriptor = json.loads(config).get("descriptor") or {}
    except (ValueError, AttributeError):
        raise ArtifactError(f"the config of {repo} is not a JSON object") from None
    name = name or (descriptor.get("name") if isinstance(descriptor, dict) else None)
    version = version or (descriptor.get("version") if isinstance(descriptor, dict) else None)
    if not name or not version:
        raise ArtifactError(
            f"oci://{client.registry}/{repo} does not say which model version it is",
            hint="pass NAME:VERSION",
        )
    root = tmp / "files"
    items: list[Layer] = []
    for i, d in enumerate(im.layers):
        if not d.media_type.endswith(".raw"):
            raise ArtifactError(
                f"layer {i} is {d.media_type}; modelvault imports raw (.raw) ModelPack layers"
            )
        rel = _safe_relpath(
            d.annotations.get(FILEPATH)
            or d.annotations.get("org.opencontainers.image.title")
            or f"layer{i}"
        )
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        items.append(Layer(d, path, want_blake3=False))
    if len({la.path for la in items}) != len(items):
        raise ArtifactError(f"two layers of {repo} name the same file path")
    download(client, repo, items, workers=workers, part=min(CHUNK, _PULL_PART), progress=progress)
    for la in items:
        if la.sha256 != la.desc.digest:
            raise damaged(
                la.desc.digest,
                la.sha256,
                where=f"layer {repo}@{la.desc.digest} from {client.registry}",
            )
    result.blobs_downloaded = len(items)
    result.bytes_downloaded = sum(la.desc.size for la in items)
    source = items[0].path if len(items) == 1 else root
    return vault.push(source, name, version, aliases=list(aliases))
