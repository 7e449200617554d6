"""Signature records: a signature bundle is a blob a variant refers to, with role ``signature``.

No table of its own: the bundle names its signer and is verified on every use,
so the registry only has to say which bundles belong to which variant. As a
variant blob reference it is kept by ``gc``, re-hashed by ``verify`` and
removed with its version, like every other blob of the variant.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import VariantNotFoundError
from . import reads, writes
from .checks import utcnow
from .schema import Blob, Variant, VariantBlob
from .semver import SemVer

__all__ = ["SIGNATURE_MEDIA_TYPE", "SIGNATURE_ROLE", "attach_signature"]

SIGNATURE_ROLE = "signature"
#: What OMS signatures are: a Sigstore bundle (JSON) around a DSSE envelope.
SIGNATURE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"


def attach_signature(
    session: Session,
    name: str,
    sv: SemVer,
    manifest_digest: str,
    bundle_digest: str,
    size: int,
    signer: str,
    user: str,
) -> bool:
    """Record a stored signature bundle against one variant; False when it was already there."""
    model = reads.find_model(session, name)
    row = reads.exact(session, model, sv)
    vid = session.scalars(
        select(Variant.id).where(
            Variant.version_id == row.id, Variant.manifest_digest == manifest_digest
        )
    ).first()
    if vid is None:
        raise VariantNotFoundError(f"{name}:{row.version} has no variant {manifest_digest}")
    writes.insert_ignore(
        session,
        Blob.__table__,  # type: ignore[arg-type]
        [
            {
                "digest": bundle_digest,
                "size": size,
                "media_type": SIGNATURE_MEDIA_TYPE,
                "first_seen": utcnow(),
            }
        ],
        ["digest"],
    )
    added = writes.insert_ignore(
        session,
        VariantBlob.__table__,  # type: ignore[arg-type]
        [{"variant_id": vid, "blob_digest": bundle_digest, "role": SIGNATURE_ROLE}],
        ["variant_id", "blob_digest", "role"],
    )
    if added:
        writes.add_event(
            session,
            "signature.add",
            user,
            model=name,
            version=row.version,
            manifest=manifest_digest,
            signature=bundle_digest,
            signer=signer,
        )
    return bool(added)
