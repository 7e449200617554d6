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

__all__ = ["ACCESS_CODES", "MISSING_KEY_CODES", "translate"]

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
        if code in ACCESS_CODES or status == 403:
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
