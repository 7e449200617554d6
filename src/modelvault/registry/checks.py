"""Input checks of the registry: every argument validated before anything is written.

Each check returns the value it accepted or raises :class:`InvalidArgumentError`
naming the argument and the rule it broke.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InvalidArgumentError
from .results import VariantInput
from .semver import SemVer
from .specs import validate_label, validate_name

__all__ = [
    "MAX_PAGE",
    "check_description",
    "check_digest",
    "check_label_filter",
    "check_labels",
    "check_limit",
    "check_prefix",
    "check_registration",
    "check_seconds",
    "check_since",
    "check_size",
    "check_user",
    "check_variant",
    "check_word",
    "decode_cursor",
    "encode_cursor",
    "label_filters",
    "utcnow",
]

_DIGEST_RE = re.compile(r"^[a-z][a-z0-9_+.-]{0,31}:[0-9a-f]{32,128}$")
_WORD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+/-]{0,63}$")
_MEDIA_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
MAX_DESCRIPTION = 10_000
MAX_REQUIREMENTS = 64 * 1024
MAX_BLOBS = 100_000
MAX_PAGE = 1000


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def check_digest(value: object, what: str) -> str:
    if not isinstance(value, str) or not _DIGEST_RE.fullmatch(value):
        raise InvalidArgumentError(
            f"{what} {value!r:.100} is not a digest; expected '<algorithm>:<lowercase hex>'"
        )
    return value


def check_word(value: object, what: str) -> str:
    if not isinstance(value, str) or not _WORD_RE.fullmatch(value):
        raise InvalidArgumentError(
            f"{what} {value!r:.100} must be 1-64 letters, digits or '._+/-', starting with a letter or digit"
        )
    return value


def check_size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise InvalidArgumentError(f"{what} {value!r:.60} must be a whole number of bytes >= 0")
    return value


def check_description(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise InvalidArgumentError(
            f"description must be a string of at most {MAX_DESCRIPTION} characters"
        )
    if "\x00" in value:
        raise InvalidArgumentError("description contains a NUL character")
    return value


def check_user(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 128 or not value.isprintable():
        raise InvalidArgumentError(f"user {value!r:.60} must be 1-128 printable characters")
    return value


def check_limit(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PAGE:
        raise InvalidArgumentError(
            f"limit {value!r:.40} must be a whole number from 1 to {MAX_PAGE}"
        )
    return value


def check_since(value: object) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        raise InvalidArgumentError(f"since must be a datetime, got {type(value).__name__}")
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def check_labels(labels: object) -> dict[str, str]:
    if not isinstance(labels, Mapping):
        raise InvalidArgumentError(
            f"labels must be a mapping of str to str, got {type(labels).__name__}"
        )
    if len(labels) > 256:
        raise InvalidArgumentError("at most 256 labels per version")
    return dict(validate_label(k, v) for k, v in labels.items())


def check_label_filter(label: object) -> tuple[str, str | None]:
    """``"key"`` (has the label) or ``"key=value"``."""
    if not isinstance(label, str):
        raise InvalidArgumentError(f"label filter must be 'key' or 'key=value', got {label!r:.60}")
    key, sep, value = label.partition("=")
    validate_label(key, value)
    return key, (value if sep else None)


def check_variant(v: object) -> VariantInput:
    """Validate one variant completely, before anything is written."""
    if not isinstance(v, VariantInput):
        raise InvalidArgumentError(f"a variant must be a VariantInput, got {type(v).__name__}")
    check_digest(v.manifest_digest, "manifest digest")
    check_word(v.format, "variant format")
    check_word(v.kind, "variant kind")
    check_size(v.size, "variant size")
    if not isinstance(v.requirements, dict):
        raise InvalidArgumentError("variant requirements must be a dict")
    try:
        encoded = json.dumps(v.requirements, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(
            f"variant requirements are not JSON-serializable: {exc}"
        ) from None
    if len(encoded) > MAX_REQUIREMENTS:
        raise InvalidArgumentError(f"variant requirements exceed {MAX_REQUIREMENTS} bytes as JSON")
    if not isinstance(v.blobs, (list, tuple)) or len(v.blobs) > MAX_BLOBS:
        raise InvalidArgumentError(f"variant blobs must be a list of at most {MAX_BLOBS} tuples")
    has_manifest = False
    for b in v.blobs:
        if not isinstance(b, (list, tuple)) or len(b) != 4:
            raise InvalidArgumentError(
                f"a variant blob must be (digest, size, role, media_type), got {b!r:.100}"
            )
        digest, size, role, media = b
        check_digest(digest, "blob digest")
        check_size(size, "blob size")
        check_word(role, "blob role")
        if not isinstance(media, str) or not _MEDIA_RE.fullmatch(media):
            raise InvalidArgumentError(
                f"blob media type {media!r:.100} must be 1-128 printable ASCII characters"
            )
        has_manifest |= digest == v.manifest_digest and role == "manifest"
    if not has_manifest:
        raise InvalidArgumentError(
            f"variant {v.manifest_digest}: its blobs must include the manifest itself with role "
            "'manifest', or garbage collection could remove it"
        )
    return v


def label_filters(label: str | Sequence[str] | None) -> list[tuple[str, str | None]]:
    """One label filter or several (ANDed), each checked: ``[(key, value or None)]``."""
    if label is None:
        return []
    if isinstance(label, str):
        return [check_label_filter(label)]
    if not isinstance(label, Sequence) or len(label) > 64:
        return [check_label_filter(label)]  # refused there with the usual message
    return [check_label_filter(x) for x in label]


def check_prefix(prefix: object) -> str | None:
    """A model-name prefix filter: at most 128 printable characters."""
    if prefix is None:
        return None
    if not isinstance(prefix, str) or len(prefix) > 128 or not prefix.isprintable():
        raise InvalidArgumentError(
            f"name prefix {prefix!r:.60} must be at most 128 printable characters"
        )
    return prefix


# --- cursors -------------------------------------------------------------------


def encode_cursor(kind: str, values: list[Any]) -> str:
    """An opaque keyset cursor for the listing ``kind``."""
    raw = json.dumps([kind, *values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: object, types: Sequence[type]) -> list[Any]:
    """Decode an opaque cursor from :func:`encode_cursor`; anything else is refused."""
    bad = InvalidArgumentError(f"cursor {cursor!r:.60} is not a cursor this listing returned")
    if not isinstance(cursor, str) or len(cursor) > 1024:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        raise bad from None
    if not isinstance(data, list) or len(data) != len(types) + 1 or data[0] != kind:
        raise bad
    values = data[1:]
    for val, typ in zip(values, types):
        if not isinstance(val, typ) or isinstance(val, bool):
            raise bad
        if isinstance(val, int) and not 0 <= val < 2**63:
            raise bad
        if isinstance(val, str) and len(val) > 256:
            raise bad
    return values


def check_seconds(value: object) -> dt.timedelta:
    """A duration in seconds (a lease's, a gc window's): above 0, below 10**7."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 10**7:
        raise InvalidArgumentError(f"a duration of {value!r:.40} seconds must be > 0")
    return dt.timedelta(seconds=value)


def check_registration(
    name: str,
    version: str,
    variants: Sequence[VariantInput],
    aliases: Sequence[str],
    labels: Mapping[str, str] | None,
    description: str | None,
) -> tuple[SemVer, list[VariantInput], list[str], dict[str, str], str | None]:
    """The arguments of ``register_version``, each checked, before anything is written:
    ``(semver, variants, alias names, labels, description)``."""
    validate_name("model", name)
    sv = SemVer.parse(version)
    if isinstance(variants, (str, bytes)) or not isinstance(variants, Sequence) or not variants:
        raise InvalidArgumentError(
            "register_version needs at least one variant (a sequence of VariantInput)"
        )
    checked = [check_variant(v) for v in variants]
    digests = [v.manifest_digest for v in checked]
    if len(set(digests)) != len(digests):
        raise InvalidArgumentError("the same manifest digest is listed twice among the variants")
    if isinstance(aliases, str):
        raise InvalidArgumentError("aliases must be a sequence of alias names, not one string")
    alias_names = [validate_name("alias", a) for a in aliases]
    return sv, checked, alias_names, check_labels(labels or {}), check_description(description)
