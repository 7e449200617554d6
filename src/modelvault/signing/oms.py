"""OpenSSF Model Signing (OMS) signatures, through the ``model-signing`` library.

A signature is a Sigstore bundle (``application/vnd.dev.sigstore.bundle.v0.3+json``)
holding a DSSE envelope over an in-toto statement whose predicate lists files
by SHA-256 (the OMS v1.0 predicate ``https://model_signing/signature/v1.0``).
The files are what ``mvault pull --signature`` writes into a directory, so
``model_signing verify key --signature DIR/model.sig --public_key KEY.pub DIR``
checks them with no modelvault installed.

The predicate also carries a ``modelvault`` object: the model name and version,
the variant's manifest digest (and its SHA-256), and the digest of every blob
the manifest names. OMS v1.0 verifiers ignore predicate fields other than
``serialization`` and ``resources``; it is inside the signed payload, so the
signature covers it. The load policy checks that object, not the native
files: the manifest and blobs are what a load hashes anyway, so the policy
costs one signature check per load, never a second pass over the bytes.

What is written by hand here, and why:

* the ``model_signing`` manifest is built from our own SHA-256 of each file
  instead of :meth:`model_signing.hashing.Config.hash`, which would record the
  absolute paths of a temporary directory as ``ignore_paths`` in the payload;
* certificate identity and validity are checked here: ``model_signing``
  verifies the chain at the leaf's ``notBefore`` (there is no timestamp
  authority offline), so a certificate that has expired would pass;
  here a leaf must be valid at verification time.

Sigstore keyless signatures (a Fulcio certificate for an OIDC identity, the
signature logged in Rekor) go through ``model_signing``'s Sigstore signer and
verifier unchanged: Sigstore checks the certificate against its trust root,
the transparency-log entry, and the identity and issuer the policy names.
Both need the Sigstore trust root (fetched over the network, or a trust
configuration file) and the signer an OIDC token: they are documented, and
not exercised by this repository's tests, which run with no network.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import MissingDependencyError, SignatureError

__all__ = [
    "OMS_PREDICATE",
    "SIGNATURE_FILE",
    "Signed",
    "SigningKey",
    "SigstoreIdentity",
    "SigstoreSigner",
    "key_id",
    "load_public_key",
    "load_signing_key",
    "sign_files",
    "verify_bundle",
]

OMS_PREDICATE = "https://model_signing/signature/v1.0"
#: The name of the signature file next to pulled files; OMS verifiers skip it.
SIGNATURE_FILE = "model.sig"
_EXTRA = "modelvault"


def _lib() -> Any:
    try:
        import model_signing  # noqa: F401
        from model_signing._signing import sign_certificate, sign_ec_key, sign_sigstore_pb
    except ImportError as exc:
        raise MissingDependencyError(
            exc.name or "model-signing", "signing", "signing and checking signatures"
        ) from exc
    return sign_ec_key, sign_certificate, sign_sigstore_pb


def key_id(public_key: Any) -> str:
    """``key:sha256:HEX`` of the PEM public key: the hint OMS bundles carry."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"key:sha256:{hashlib.sha256(pem).hexdigest()}"


def _check_curve(key: Any, path: pathlib.Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in (
        "secp256r1",
        "secp384r1",
        "secp521r1",
    ):
        kind = getattr(getattr(key, "curve", None), "name", None) or type(key).__name__
        raise SignatureError(
            f"{path}: a {kind} key; OMS signatures need an ECDSA key on P-256, P-384 or P-521",
            hint="make one with `openssl ecparam -name prime256v1 -genkey -noout -out key.pem` "
            "(ed25519 is not accepted by model_signing verifiers)",
        )


def load_public_key(path: pathlib.Path) -> Any:
    """A PEM public key (ECDSA P-256/384/521), or SignatureError saying what the file is."""
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not a PEM public key ({_first(exc)})") from exc
    _check_curve(key, path)
    return key


@dataclass(frozen=True)
class SigningKey:
    """A private key, and optionally the certificate chain that vouches for it."""

    key_path: pathlib.Path
    private_key: Any
    certificate: pathlib.Path | None = None
    chain: tuple[pathlib.Path, ...] = ()

    @property
    def signer(self) -> str:
        if self.certificate is not None:
            return f"cert:{_identity(_load_cert(self.certificate))}"
        return key_id(self.private_key.public_key())


def load_signing_key(
    path: str | pathlib.Path,
    *,
    certificate: str | pathlib.Path | None = None,
    chain: Sequence[str | pathlib.Path] = (),
    password: str | None = None,
) -> SigningKey:
    """Read and check a private key (and certificate) before anything is hashed or written."""
    from cryptography.hazmat.primitives import serialization

    p = pathlib.Path(path)
    data = _read(p, "private key")
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{p} is not a PEM private key ({_first(exc)})") from exc
    _check_curve(key.public_key(), p)
    cert = pathlib.Path(certificate) if certificate else None
    if cert is not None:
        leaf = _load_cert(cert)
        _check_validity(leaf, cert)
        if key_id(leaf.public_key()) != key_id(key.public_key()):
            raise SignatureError(f"{cert} certifies another key than {p}")
    return SigningKey(p, key, cert, tuple(pathlib.Path(c) for c in chain))


@dataclass(frozen=True)
class SigstoreSigner:
    """Sigstore keyless signing: an OIDC identity instead of a key.

    The token is ``identity_token`` when given, else the ambient credential
    (GitHub Actions, GCP workload identity...), else Sigstore's browser flow.
    """

    identity_token: str | None = None
    staging: bool = False
    oidc_issuer: str | None = None
    trust_config: pathlib.Path | None = None
    keyless = True

    @property
    def signer(self) -> str:
        return "sigstore"  # the identity is known once Fulcio has issued the certificate


@dataclass(frozen=True)
class SigstoreIdentity:
    """A keyless signer a policy allows: the certificate's identity and its OIDC issuer."""

    identity: str
    issuer: str
    staging: bool = False
    trust_config: pathlib.Path | None = None

    def describe(self) -> str:
        return f"sigstore:{self.identity} ({self.issuer})"


@dataclass(frozen=True)
class Signed:
    """What a verified bundle says: who signed it, and the signed statement."""

    signer: str
    statement: dict[str, Any]

    @property
    def resources(self) -> dict[str, str]:
        """Signed file names (relative, ``/``-separated) and their SHA-256."""
        try:
            items = self.statement["predicate"]["resources"]
            return {str(r["name"]): str(r["digest"]) for r in items}
        except (KeyError, TypeError) as exc:
            raise SignatureError(f"the signed statement lists no resources ({exc!r:.80})") from exc

    @property
    def claims(self) -> dict[str, Any]:
        """The ``modelvault`` object: name, version, manifest and blob digests."""
        predicate = self.statement.get("predicate")
        extra = predicate.get(_EXTRA) if isinstance(predicate, dict) else None
        if not isinstance(extra, dict):
            raise SignatureError(
                "the signature is an OMS signature but names no modelvault version"
            )
        return extra


def sign_files(
    key: SigningKey | SigstoreSigner,
    root: pathlib.Path,
    files: Mapping[str, str],
    claims: Mapping[str, Any],
) -> bytes:
    """An OMS bundle over ``files`` (relative name -> SHA-256 hex) plus ``claims``."""
    sign_ec_key, sign_certificate, _ = _lib()
    from model_signing import manifest as ms_manifest
    from model_signing._hashing import hashing as ms_hashing
    from model_signing._signing import signing as ms_signing

    serialization = ms_manifest.SerializationType.from_args(
        {
            "method": "files",
            "hash_type": "sha256",
            "allow_symlinks": False,
            "ignore_paths": [SIGNATURE_FILE],
        }
    )
    items = [
        ms_manifest.FileManifestItem(
            path=pathlib.PurePosixPath(name),
            digest=ms_hashing.Digest("sha256", bytes.fromhex(hexd)),
        )
        for name, hexd in sorted(files.items())
    ]
    payload = ms_signing.Payload(ms_manifest.Manifest(root.name, items, serialization))
    # Only strings go in: a protobuf Struct would turn integers into doubles.
    payload.statement.pb.predicate.update({_EXTRA: json.loads(json.dumps(dict(claims)))})
    if isinstance(key, SigstoreSigner):
        return _sign_sigstore(key, payload)
    # The signers are built field by field: the key was read (and decrypted) above,
    # and the certificate signer's constructor refuses an empty chain
    # (``load_pem_x509_certificates(b"")``), although a leaf issued by a root the
    # verifier holds needs none.
    if key.certificate is not None:
        signer = sign_certificate.Signer.__new__(sign_certificate.Signer)
        signer._signing_certificate = _load_cert(key.certificate)
        signer._trust_chain = [_load_cert(c) for c in key.chain]
    else:
        signer = sign_ec_key.Signer.__new__(sign_ec_key.Signer)
    signer._private_key = key.private_key
    bundle = signer.sign(payload).bundle
    return str(bundle.to_json()).encode("utf-8")


def _sigstore_lib(purpose: str) -> tuple[Any, Any, Any]:
    """``model_signing``'s Sigstore signer/verifier module, its signing module, and
    ``sigstore.models``; MissingDependencyError naming ``purpose`` without them."""
    try:
        from model_signing._signing import sign_sigstore
        from model_signing._signing import signing as ms_signing
        from sigstore import models as sigstore_models
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "sigstore", "signing", purpose) from exc
    return sign_sigstore, ms_signing, sigstore_models


def _sign_sigstore(key: SigstoreSigner, payload: Any) -> bytes:
    sign_sigstore, _, _ = _sigstore_lib("Sigstore keyless signing")
    try:
        signer = sign_sigstore.Signer(
            identity_token=key.identity_token,
            use_staging=key.staging,
            oidc_issuer=key.oidc_issuer,
            trust_config=key.trust_config,
        )
        bundle = signer.sign(payload).bundle
    except Exception as exc:
        raise SignatureError(
            f"Sigstore keyless signing failed: {_first(exc)}",
            hint="it needs the network (Fulcio, Rekor, the trust root) and an OIDC identity "
            "token (--identity-token, an ambient CI credential, or the browser flow)",
        ) from exc
    return str(bundle.to_json()).encode("utf-8")


def _verify_sigstore(data: bytes, allowed: Sequence[SigstoreIdentity], where: str) -> Signed:
    """A keyless bundle against the identities a policy allows, by Sigstore's own verifier."""
    errors = []
    sign_sigstore, ms_signing, sigstore_models = _sigstore_lib("Sigstore keyless verification")
    try:
        bundle = sigstore_models.Bundle.from_json(data)
    except Exception as exc:
        raise SignatureError(f"{where}: not a readable Sigstore bundle ({_first(exc)})") from exc
    identity = _identity(bundle.signing_certificate)
    for want in allowed:
        if want.identity != identity:
            errors.append(f"signed by sigstore:{identity}, not {want.describe()}")
            continue
        try:
            verifier = sign_sigstore.Verifier(
                identity=want.identity,
                oidc_issuer=want.issuer,
                use_staging=want.staging,
                trust_config=want.trust_config,
            )
        except Exception as exc:
            errors.append(
                f"the Sigstore trust root could not be had ({_first(exc)}); keyless "
                "verification needs the network or a trust_config file in the policy"
            )
            continue
        try:
            # Sigstore's check of the signature, certificate, log entry and identity;
            # then model_signing's own checks of the statement, as Verifier.verify
            # makes them (in-toto type, the subject's digest over the resources).
            payload_type, payload = verifier._verify_signed_content(sign_sigstore.Signature(bundle))
            if payload_type != "application/vnd.in-toto+json":
                raise ValueError(f"DSSE payload type {payload_type!r} is not in-toto")
            statement = json.loads(payload)
            if statement.get("_type") != "https://in-toto.io/Statement/v1":
                raise ValueError(f"statement type {statement.get('_type')!r} is not in-toto v1")
            if statement.get("predicateType") != OMS_PREDICATE:
                raise ValueError(
                    f"predicate {statement.get('predicateType')!r} is not {OMS_PREDICATE}"
                )
            ms_signing.dsse_payload_to_manifest(statement)
        except Exception as exc:
            errors.append(f"{want.describe()}: {_first(exc)}")
            continue
        return Signed(f"sigstore:{identity}", statement)
    if not errors:
        errors.append(f"signed keyless by sigstore:{identity}; no Sigstore identity is allowed")
    raise SignatureError(f"{where}: {'; '.join(errors)}")


def is_keyless(data: bytes) -> bool:
    """Whether a bundle is a Sigstore keyless one (one Fulcio certificate, v0.3)."""
    try:
        vm = json.loads(data)["verificationMaterial"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(vm, dict) and isinstance(vm.get("certificate"), dict)


def parse_bundle(data: bytes, where: str) -> Any:
    """The bundle in ``data`` as ``model_signing`` reads it, or SignatureError."""
    _, _, sign_sigstore_pb = _lib()
    from sigstore_models.bundle import v1 as bundle_pb

    try:
        parsed = json.loads(data)
        vm = parsed["verificationMaterial"]
        vm.setdefault("tlogEntries", [])
        bundle = bundle_pb.Bundle.from_dict(parsed)
        env = bundle.dsse_envelope
        if env is None or not env.signatures:
            raise ValueError("no DSSE envelope with a signature")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SignatureError(f"{where}: not a readable Sigstore bundle ({_first(exc)})") from exc
    return sign_sigstore_pb.Signature(bundle)


def verify_bundle(
    data: bytes,
    *,
    keys: Iterable[Any] = (),
    certificates: Iterable[tuple[Sequence[pathlib.Path], str]] = (),
    sigstore: Sequence[SigstoreIdentity] = (),
    where: str = "signature",
    now: dt.datetime | None = None,
) -> Signed:
    """Verify a bundle against allowed public keys, (CA chain, identity) pairs or
    Sigstore keyless identities.

    Returns what it says when one of them verifies it; SignatureError naming the
    reason otherwise (a mismatch, a malformed envelope, an expired certificate).
    """
    sign_ec_key, sign_certificate, _ = _lib()
    if is_keyless(data):
        return _verify_sigstore(data, sigstore, where)
    signature = parse_bundle(data, where)
    vm = signature.bundle.verification_material
    errors: list[str] = []
    chain = getattr(vm, "x509_certificate_chain", None)
    if chain is not None and chain.certificates:
        from cryptography import x509

        leaf = x509.load_der_x509_certificate(chain.certificates[0].raw_bytes)
        identity = _identity(leaf)
        for roots, want in certificates:
            if want != identity:
                errors.append(f"certificate identity {identity!r} is not {want!r}")
                continue
            _check_validity(leaf, where, now)
            try:
                verifier = sign_certificate.Verifier(list(roots))
                statement = _statement(verifier, signature)
            except Exception as exc:
                errors.append(f"certificate chain to {', '.join(map(str, roots))}: {_first(exc)}")
                continue
            return Signed(f"cert:{identity}", statement)
        if not errors:
            errors.append(f"signed by certificate {identity!r}; no certificate is allowed")
    else:
        hint = getattr(getattr(vm, "public_key", None), "hint", None)
        for key in keys:
            kid = key_id(key)
            if hint and f"key:sha256:{hint}" != kid:
                errors.append(f"signed by key:sha256:{hint}, not {kid}")
                continue
            verifier = sign_ec_key.Verifier.__new__(sign_ec_key.Verifier)
            verifier._public_key = key  # loaded and checked by load_public_key
            try:
                return Signed(kid, _statement(verifier, signature))
            except Exception as exc:
                errors.append(f"{kid}: {_first(exc)}")
        if not errors:
            errors.append("signed by a bare key; no key is allowed")
    raise SignatureError(f"{where}: {'; '.join(errors)}")


def _statement(verifier: Any, signature: Any) -> dict[str, Any]:
    """Signature check and OMS statement check (by ``model_signing``), then the statement."""
    verifier.verify(signature)  # raises on a bad signature, payload type or root digest
    raw = signature.bundle.dsse_envelope.payload
    statement: dict[str, Any] = json.loads(raw if isinstance(raw, bytes) else base64.b64decode(raw))
    if statement.get("predicateType") != OMS_PREDICATE:
        raise ValueError(f"predicate {statement.get('predicateType')!r} is not {OMS_PREDICATE}")
    return statement


def _load_cert(path: pathlib.Path) -> Any:
    from cryptography import x509

    data = _read(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise SignatureError(f"{path} is not a PEM certificate ({_first(exc)})") from exc


def _identity(cert: Any) -> str:
    """The signer a certificate names: its first e-mail or URI SAN, else its subject CN."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for kind in (x509.RFC822Name, x509.UniformResourceIdentifier):
            names = san.get_values_for_type(kind)
            if names:
                return str(names[0])
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else cert.subject.rfc4514_string()


def _check_validity(cert: Any, where: object, now: dt.datetime | None = None) -> None:
    t = now or dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= t <= cert.not_valid_after_utc:
        raise SignatureError(
            f"{where}: certificate for {_identity(cert)!r} is valid from "
            f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}, not now"
        )


def _read(path: pathlib.Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if len(data) > 1024 * 1024:
        raise SignatureError(f"{path} is {len(data)} bytes; too large for a {what}")
    return data


def _first(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
