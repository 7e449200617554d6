"""botocore errors translated to modelvault's exception tree (used by the S3 store only)."""

from __future__ import annotations

import botocore.exceptions as bexc

from ..errors import (
    BlobNotFoundError,
    InvalidArgumentError,
    StorageError,
    StoreAccessError,
    StoreNotFoundError,
    StoreUnavailableError,
)

__all__ = ["ACCESS_CODES", "MISSING_KEY_CODES", "PERMISSIONS", "translate"]

ACCESS_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "Forbidden",
    "403",
}
MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}
#: What each store operation needs, as (the kind of right, the S3 policy action). A
#: read-only key (SeaweedFS ``Read``/``List``, an AWS policy with GetObject and
#: ListBucket) gets AccessDenied for the writing ones; the error names the action
#: so the fix is one line of a bucket policy (docs/SECURITY.md).
PERMISSIONS = {
    "uploading a blob": ("write", "s3:PutObject"),
    "starting a multipart upload": ("write", "s3:PutObject"),
    "deleting a blob": ("delete", "s3:DeleteObject"),
    "cleaning up incomplete uploads": ("write", "s3:AbortMultipartUpload"),
    "reading a blob": ("read", "s3:GetObject"),
    "downloading a blob": ("read", "s3:GetObject"),
    "looking up a blob": ("read", "s3:GetObject"),
    "listing blobs": ("list", "s3:ListBucket"),
    "checking the bucket": ("list", "s3:ListBucket"),
}
#: Codes that mean "these credentials are not valid", as opposed to "not allowed to".
_CREDENTIAL_CODES = ACCESS_CODES - {"AccessDenied", "Forbidden", "403"}


_ACCESS_HINT = {
    "write": "a read-only key can pull, load and verify; push, sign and import need a key "
    "that may write to the bucket (a publisher's)",
    "delete": "gc deletes blobs: run it with a key that may delete from the bucket (the owner's)",
    "read": "check the bucket policy: this key may not read the store's objects",
    "list": "check the bucket policy: this key may not list the bucket",
}


def translate(
    exc: Exception, doing: str, digest: str | None, *, bucket: str, url: str, endpoint: str
) -> Exception:
    """A botocore error met while ``doing`` something, as the most specific modelvault error."""
    at = f"{url} (endpoint {endpoint})"
    if isinstance(exc, (bexc.NoCredentialsError, bexc.PartialCredentialsError)):
        return StoreAccessError(
            f"no usable AWS credentials for {at}: {exc}",
            hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE",
        )
    if isinstance(exc, (bexc.ConnectionError, bexc.HTTPClientError)):
        return StoreUnavailableError(
            f"S3 endpoint {endpoint} does not answer while {doing} ({exc})",
            hint="check AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL and that the server is running",
        )
    if isinstance(exc, bexc.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        msg = str(err.get("Message", "")) or code
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        right = PERMISSIONS.get(doing)
        if right is not None and code == "AccessDenied":
            # Signed correctly, refused by policy: the key lacks this right (a HEAD has no
            # body, so a bare 403 there may also be bad credentials, and says so below).
            kind, action = right
            return StoreAccessError(
                f"S3 refused access to {at} while {doing}: AccessDenied: these credentials lack "
                f"{kind} permission ({action})",
                hint=_ACCESS_HINT[kind],
                permission=action,
            )
        if code in ACCESS_CODES or status == 403:
            if right is not None and code not in _CREDENTIAL_CODES:
                msg += f" (wrong credentials, or they lack {right[0]} permission: {right[1]})"
            return StoreAccessError(
                f"S3 refused access to {at} while {doing}: {code}: {msg}",
                hint="check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the profile) and the bucket policy",
            )
        if code == "NoSuchBucket":
            return StoreNotFoundError(
                f"bucket {bucket!r} does not exist at {endpoint}",
                hint="create the bucket or fix the store URL",
            )
        if code in MISSING_KEY_CODES or status == 404:
            if digest is not None:
                return BlobNotFoundError(digest, url)
            return StoreNotFoundError(f"{at}: {code}: {msg}")
        if code == "InvalidRange" or status == 416:
            return InvalidArgumentError(f"range is past the end of the blob in {at}")
        if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
            return StoreUnavailableError(
                f"S3 at {endpoint} kept failing while {doing}: {code}: {msg}",
                hint="the server is overloaded or failing; try again later",
            )
        return StorageError(f"S3 error while {doing} in {at}: {code}: {msg}")
    if isinstance(exc, bexc.BotoCoreError):
        return StorageError(f"S3 client error while {doing} in {at}: {exc}")
    return exc
