"""OCI references: ``oci://registry[:port]/repository[:tag|@digest]``.

The grammar is the distribution spec's: a repository is lowercase path
components joined by ``/``; a tag is at most 128 characters of
``[A-Za-z0-9_.-]`` not starting with ``.`` or ``-``; a digest is
``algorithm:hex``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidReferenceError

__all__ = ["Reference", "is_oci_reference", "parse_reference"]

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$|^sha512:[0-9a-f]{128}$")
_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?$"
)
#: Repository names longer than this are refused by most registries (and by the spec's note).
_MAX_NAME = 255


def is_oci_reference(text: str) -> bool:
    """True for ``oci://...`` strings: the CLI's test for "this argument is a registry"."""
    return text.startswith("oci://")


@dataclass(frozen=True)
class Reference:
    """A parsed OCI reference; ``tag`` or ``digest`` (or both) names the manifest."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def target(self) -> str:
        """What goes after ``/manifests/``: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def with_target(self, *, tag: str | None = None, digest: str | None = None) -> Reference:
        return Reference(self.registry, self.repository, tag, digest)

    def __str__(self) -> str:
        out = f"oci://{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_reference(text: str, *, default_tag: str | None = "latest") -> Reference:
    """Parse ``oci://host/repo:tag`` (or ``@sha256:...``); raises :class:`InvalidReferenceError`.

    >>> parse_reference("oci://localhost:5000/team/resnet:1.3.0").tag
    '1.3.0'
    """
    raw = text
    if not text.startswith("oci://"):
        raise InvalidReferenceError(
            f"{raw!r} is not an OCI reference; write oci://registry/repository:tag"
        )
    text = text[len("oci://") :]
    host, sep, rest = text.partition("/")
    if not sep or not rest:
        raise InvalidReferenceError(
            f"{raw!r} names no repository; write oci://registry/repository:tag"
        )
    if not _HOST_RE.match(host):
        raise InvalidReferenceError(f"{raw!r}: {host!r} is not a registry host[:port]")
    digest = None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not _DIGEST_RE.match(digest):
            raise InvalidReferenceError(
                f"{raw!r}: {digest!r} is not a digest (sha256: and 64 lowercase hex digits)"
            )
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise InvalidReferenceError(
                f"{raw!r}: tag {tag!r} is not valid (1-128 of A-Z a-z 0-9 _ . -, not starting with . or -)"
            )
    if not _REPO_RE.match(rest) or len(host) + 1 + len(rest) > _MAX_NAME:
        raise InvalidReferenceError(
            f"{raw!r}: repository {rest!r} is not valid (lowercase letters, digits and . _ - "
            "between them, components joined by /)"
        )
    if tag is None and digest is None:
        tag = default_tag
    return Reference(host, rest, tag, digest)


def tag_for_version(version: str) -> str:
    """A semantic version as a tag: ``+`` (build metadata) is not allowed in tags, ``_`` is."""
    return version.replace("+", "_")
