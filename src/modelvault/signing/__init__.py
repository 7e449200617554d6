"""Signed versions and the load policy.

``sign_version`` writes one OMS signature per variant (see :mod:`.oms`): the
bundle goes into the store under its BLAKE3 digest and the registry records it
as a ``signature`` blob of the variant. With ``MVAULT_TRUST`` set,
:func:`check_trust` runs in the load pipeline after the manifest is verified
and before any plugin reads a byte: a variant with no valid signature from a
signer the policy allows for the model is refused.

Nothing here imports ``model_signing`` or ``cryptography`` until a signature
is made or checked, so an unsigned, policy-free load pays nothing.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..digest import digest_bytes, digest_file, verify_bytes
from ..errors import SignatureError, UntrustedError
from ..registry.signatures import SIGNATURE_ROLE
from .oms import (
    SIGNATURE_FILE,
    Signed,
    SigningKey,
    SigstoreSigner,
    load_signing_key,
    parse_bundle,
)
from .policy import TrustPolicy, load_policy

__all__ = [
    "SIGNATURE_FILE",
    "SignResult",
    "Signed",
    "SigningKey",
    "SigstoreSigner",
    "TrustPolicy",
    "check_bundle",
    "check_import",
    "check_trust",
    "claimed_signer",
    "current_policy",
    "load_policy",
    "load_signing_key",
    "pull_signed",
    "sign_version",
    "variant_signatures",
]

#: Signature bundles are a few KiB; refuse to read anything much larger as one.
MAX_SIGNATURE = 1024 * 1024


@dataclass(frozen=True)
class SignResult:
    """One variant signed: the stored bundle and who signed it."""

    model: str
    version: str
    manifest_digest: str
    signature_digest: str
    signer: str
    files: dict[str, str]
    added: bool


def claims(info: Any, manifest: Any, manifest_bytes: bytes) -> dict[str, Any]:
    """What a signature says about one variant (strings only; see :func:`.oms.sign_files`)."""
    return {
        "name": info.model,
        "version": info.version,
        "manifest": manifest.digest,
        "manifestSha256": digest_bytes(manifest_bytes, "sha256"),
        "format": manifest.plugin,
        "blobs": sorted({b.digest for b in manifest.blobs}),
    }


def native_name(info: Any, plugin: Any, source: Any) -> str:
    """The file (or directory) name the signed native form has inside a pulled directory."""
    return str(info.model).replace("/", "_") + str(plugin.native_suffix(source))


def _hash_tree(root: pathlib.Path) -> dict[str, str]:
    files: dict[str, str] = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = pathlib.Path(dirpath) / n
            if p.is_symlink() or not p.is_file():
                raise SignatureError(f"{p}: only regular files can be signed")
            files[p.relative_to(root).as_posix()] = digest_file(p, "sha256").split(":", 1)[1]
    return files


def sign_version(pipeline: Any, spec: str, key: SigningKey | SigstoreSigner) -> list[SignResult]:
    """Sign every variant of the version ``spec`` names; the key was checked by the caller."""
    from ..formats.registry import get_plugin
    from ..loader import read_manifest

    info = pipeline.resolve(spec)
    results = []
    for variant in info.variants:
        # Signing reads the variant without a policy: the signer vouches for it here.
        source = pipeline.open(variant, enforce=False)
        manifest, raw = read_manifest(pipeline.store, variant.manifest_digest)
        plugin = get_plugin(manifest.plugin)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=".mvault-sign-"))
        try:
            plugin.export_native(source, tmp / native_name(info, plugin, source))
            files = _hash_tree(tmp)
            bundle = key_sign(key, tmp, files, claims(info, manifest, raw))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        digest = digest_bytes(bundle)
        # a keyless signer's identity is the one Fulcio certified, read from the bundle
        signer = claimed_signer(bundle) if isinstance(key, SigstoreSigner) else key.signer
        from ..maintenance import PushLease

        # Leased before the store is asked, like every push: gc cannot take the bundle
        # between its upload and the reference that keeps it.
        with PushLease(pipeline.registry, pipeline.store) as lease:
            lease.protect([digest])
            if not lease.present(digest):
                pipeline.store.put_bytes(digest, bundle)
            lease.keep_alive()
            added = pipeline.registry.attach_signature(
                info.model,
                info.version,
                variant.manifest_digest,
                digest,
                len(bundle),
                signer,
            )
        results.append(
            SignResult(
                info.model, info.version, variant.manifest_digest, digest, signer, files, added
            )
        )
    return results


def key_sign(
    key: SigningKey | SigstoreSigner, root: pathlib.Path, files: dict[str, str], c: dict[str, Any]
) -> bytes:
    from .oms import sign_files

    return sign_files(key, root, files, c)


def variant_signatures(store: Any, variant: Any) -> list[tuple[str, bytes]]:
    """The stored signature bundles of a variant, each hashed against its digest."""
    out = []
    for b in variant.blobs:
        if b.role != SIGNATURE_ROLE:
            continue
        if b.size > MAX_SIGNATURE:
            raise SignatureError(f"signature {b.digest} is {b.size} bytes; too large to be one")
        data = store.read_range(b.digest, 0, b.size)
        verify_bytes(data, b.digest, where=f"signature in {store.where(b.digest)}")
        out.append((b.digest, data))
    return out


def check_claims(signed: Signed, info: Any, manifest: Any) -> None:
    """The signed statement names exactly this version, this manifest, all of its blobs."""
    c = signed.claims
    if (c.get("name"), c.get("version")) != (info.model, info.version):
        raise SignatureError(
            f"the signature is for {c.get('name')}:{c.get('version')}, not {info.ref}"
        )
    if c.get("manifest") != manifest.digest:
        raise SignatureError(
            f"the signature covers manifest {c.get('manifest')}, not {manifest.digest}"
        )
    signed_blobs = set(c.get("blobs") or ())
    missing = sorted({b.digest for b in manifest.blobs} - signed_blobs)
    if missing:
        raise SignatureError(f"the signature does not cover blob {missing[0]}")
    extra = sorted(signed_blobs - {b.digest for b in manifest.blobs})
    if extra:
        raise SignatureError(f"the signature names blob {extra[0]}, which the manifest does not")


def check_trust(
    policy: TrustPolicy,
    info: Any,
    variant: Any,
    manifest: Any,
    signatures: Sequence[tuple[str, bytes]],
) -> tuple[Signed, bytes]:
    """A valid signature among ``signatures`` by a signer ``policy`` allows, or UntrustedError."""
    from .oms import verify_bundle

    rule = policy.rule_for(info.model)
    label = f"{info.ref} (variant {variant.manifest_digest[:19]})"
    expected = rule.describe()
    if not signatures:
        raise UntrustedError(
            f"{label} is not signed; the trust policy {policy.path} expects a signature by {expected}",
            hint=f"sign it: mvault sign {info.ref} --key KEY",
        )
    reasons = []
    for digest, data in signatures:
        try:
            signed = verify_bundle(
                data,
                keys=rule.keys,
                certificates=rule.certificates,
                sigstore=rule.sigstore,
                where=f"signature {digest[:19]}",
            )
            check_claims(signed, info, manifest)
            return signed, data
        except SignatureError as exc:
            reasons.append(str(exc))
    raise UntrustedError(
        f"{label} has no valid signature by {expected} (trust policy {policy.path}): {'; '.join(reasons)}"
    )


def check_import(
    policy: TrustPolicy,
    name: str,
    version: str,
    manifest: Any,
    signatures: Sequence[tuple[str, bytes]],
) -> None:
    """Before a variant that carries ``signatures`` (a ``.mvpk``, an OCI pull) is
    imported as ``name:version``: one of them must pass ``policy``, as a load of the
    imported version would check it. One that carries none imports like any push
    (and, like it, loads under the policy only once signed)."""
    from types import SimpleNamespace

    if not signatures:
        return
    info = SimpleNamespace(model=name, version=version, ref=f"{name}:{version}")
    variant = SimpleNamespace(manifest_digest=manifest.digest)
    check_trust(policy, info, variant, manifest, signatures)


def check_bundle(policy: TrustPolicy, name: str, version: str, bundle: Any) -> None:
    """:func:`check_import` for the one variant a ``.mvpk`` holds."""
    check_import(policy, name, version, bundle.manifest, bundle.signatures)


def claimed_signer(data: bytes) -> str:
    """Who a signature bundle says signed it (``key:sha256:HEX`` or ``cert:IDENTITY``),
    read without verifying anything: for records and displays, never for trust."""
    import base64
    import json

    try:
        vm = json.loads(data)["verificationMaterial"]
        hint = (vm.get("publicKey") or {}).get("hint")
        if hint:
            return f"key:sha256:{hint}"
        keyless = (vm.get("certificate") or {}).get("rawBytes")
        if keyless:
            from cryptography import x509

            from .oms import _identity

            cert = x509.load_der_x509_certificate(base64.b64decode(keyless))
            return f"sigstore:{_identity(cert)}"
        certs = (vm.get("x509CertificateChain") or {}).get("certificates") or []
        if certs:
            from cryptography import x509

            from .oms import _identity

            leaf = x509.load_der_x509_certificate(base64.b64decode(certs[0]["rawBytes"]))
            return f"cert:{_identity(leaf)}"
    except Exception:  # a damaged bundle claims nothing; verifying it says why
        pass
    return "unknown"


_cached: tuple[pathlib.Path, tuple[int, int], TrustPolicy] | None = None


def current_policy() -> TrustPolicy | None:
    """The policy ``MVAULT_TRUST`` names (re-read when the file changes), or None."""
    global _cached
    from ..config import settings

    path = settings().trust_file
    if path is None:
        return None
    try:
        st = path.stat()
        mtime = (st.st_mtime_ns, st.st_size)
    except OSError as exc:
        raise SignatureError(f"MVAULT_TRUST={path}: {exc.strerror or exc}") from exc
    if _cached is None or _cached[0] != path or _cached[1] != mtime:
        _cached = (path, mtime, load_policy(path))
    return _cached[2]


def pull_signed(
    pipeline: Any, spec: str, dest: pathlib.Path, *, variant: str | None = None, device: str = "cpu"
) -> pathlib.Path:
    """Write the native form and its OMS signature into the directory ``dest``.

    The files get the names the signature lists, and ``model.sig`` goes next to
    them, so ``model_signing verify ... DEST`` checks them independently.
    """
    from ..formats.registry import get_plugin

    info = pipeline.resolve(spec)
    choice = pipeline.choose(info, device, variant)
    v = choice.variant
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty; a signed pull needs an empty directory")

    def use(source: Any) -> pathlib.Path:
        chosen = _bundle_for(pipeline, info, v, source.manifest)
        plugin = get_plugin(source.manifest.plugin)
        target = dest / native_name(info, plugin, source)
        plugin.export_native(source, target)
        written = _hash_tree(dest)
        signed = parse_signed(chosen)
        if written != signed.resources:
            raise SignatureError(
                f"the native form written here differs from the one signed ({sorted(written)} vs "
                f"{sorted(signed.resources)}); the container signature is valid, but OMS tools "
                "will not verify these files",
                hint="a different framework version rewrites the native file; verify with "
                "`mvault verify --signatures` instead",
            )
        (dest / SIGNATURE_FILE).write_bytes(chosen)
        return dest

    result: pathlib.Path = pipeline.deserialize(v, use, info=info)
    return result


def _bundle_for(pipeline: Any, info: Any, variant: Any, manifest: Any) -> bytes:
    sigs = variant_signatures(pipeline.store, variant)
    policy = current_policy()
    if policy is not None:  # hand out the bundle the policy accepts
        return check_trust(policy, info, variant, manifest, sigs)[1]
    for _digest, data in sigs:
        try:
            check_claims(parse_signed(data), info, manifest)
        except SignatureError:
            continue
        return data
    raise SignatureError(f"{info.ref} has no signature for variant {variant.manifest_digest[:19]}")


def parse_signed(data: bytes) -> Signed:
    """What a bundle claims, without checking who signed it (for choosing, never for trust)."""
    import base64
    import json

    sig = parse_bundle(data, "signature")
    raw = sig.bundle.dsse_envelope.payload
    try:
        return Signed(
            "unverified", json.loads(raw if isinstance(raw, bytes) else base64.b64decode(raw))
        )
    except ValueError as exc:
        raise SignatureError(f"signature payload is not JSON ({exc})") from exc
