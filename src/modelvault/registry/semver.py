"""Semantic versions, ordered per semver 2.0, with a sort key SQL can use.

``1.2.3-rc.1+build.7`` parses into major/minor/patch, pre-release identifiers
and build metadata. Precedence follows https://semver.org/#spec-item-11:
numbers compare numerically, a version with a pre-release is lower than the
same version without one, pre-release identifiers compare left to right
(numeric below alphanumeric, numbers numerically, text in ASCII order, a
shorter list below a longer one it prefixes). Build metadata is kept but
ignored for precedence *and for identity*: ``1.0.0+a`` and ``1.0.0+b`` are
the same version, so the registry refuses to hold both.

The registry stores ``major``, ``minor``, ``patch`` as integers and
:attr:`SemVer.prerelease_key` as a string whose plain byte order equals
pre-release precedence. The key is hex text (``[0-9a-f]`` only), so every
database collation (case-insensitive MariaDB, ICU or glibc PostgreSQL,
binary SQLite) sorts it the same way. Encoding of the raw bytes, before hex:

* a numeric identifier: ``0x01``, the digit count as one byte, the digits
  (no leading zeros, so longer means larger);
* an alphanumeric identifier: ``0x02``, its ASCII bytes, ``0x00`` (the
  terminator sorts below every allowed character, so ``alpha`` < ``alphab``);
* no pre-release at all: the single byte ``0xff``, above every pre-release.

A list that is a prefix of another encodes to a prefix of its encoding, so
it sorts first, as semver requires.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from ..errors import InvalidVersionError

__all__ = ["MAX_NUMBER", "MAX_PRERELEASE", "MAX_VERSION_TEXT", "RELEASE_KEY", "SemVer", "parse"]

#: Largest major/minor/patch accepted: fits a signed 64-bit column.
MAX_NUMBER = 2**63 - 1
#: Longest pre-release text (after the ``-``); keeps the sort key < 200 chars.
MAX_PRERELEASE = 64
#: Longest build metadata text (after the ``+``).
MAX_BUILD = 64
MAX_VERSION_TEXT = 160
#: The sort key of a release (no pre-release): above every pre-release key.
RELEASE_KEY = "ff"

_NUM = r"0|[1-9][0-9]*"
_IDENT = r"[0-9A-Za-z-]+"
_SEMVER_RE = re.compile(
    rf"^v?(?P<major>{_NUM})\.(?P<minor>{_NUM})\.(?P<patch>{_NUM})"
    rf"(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?"
    rf"(?:\+(?P<build>{_IDENT}(?:\.{_IDENT})*))?$"
)


def _check_prerelease(ids: tuple[str, ...], text: str) -> None:
    for ident in ids:
        if ident.isdigit() and len(ident) > 1 and ident[0] == "0":
            raise InvalidVersionError(
                f"version {text!r:.80}: numeric pre-release identifier {ident!r} has a leading zero"
            )
        if ident.isdigit() and len(ident) > 255:
            raise InvalidVersionError(f"version {text!r:.80}: pre-release number is too long")


@functools.total_ordering
@dataclass(frozen=True)
class SemVer:
    """One semantic version. Compare with ``<``; equality ignores build metadata.

    >>> SemVer.parse("1.0.0-rc.1") < SemVer.parse("1.0.0")
    True
    >>> SemVer.parse("1.0.0+a") == SemVer.parse("1.0.0+b")
    True
    """

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def parse(cls, text: str) -> SemVer:
        """Parse ``MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]`` (a leading ``v`` is allowed)."""
        if not isinstance(text, str):
            raise InvalidVersionError(f"a version must be a string, got {type(text).__name__}")
        if len(text) > MAX_VERSION_TEXT:
            raise InvalidVersionError(
                f"version {text[:40]!r}... is {len(text)} characters; at most {MAX_VERSION_TEXT}"
            )
        m = _SEMVER_RE.fullmatch(text)
        if m is None:
            raise InvalidVersionError(
                f"{text!r:.80} is not a semantic version; expected MAJOR.MINOR.PATCH with "
                "optional -PRERELEASE and +BUILD, e.g. 1.4.0 or 2.0.0-rc.1"
            )
        nums = [int(m.group(k)) for k in ("major", "minor", "patch")]
        if any(n > MAX_NUMBER for n in nums):
            raise InvalidVersionError(f"version {text!r:.80}: numbers must be below 2**63")
        pre_text, build_text = m.group("pre") or "", m.group("build") or ""
        if len(pre_text) > MAX_PRERELEASE or len(build_text) > MAX_BUILD:
            raise InvalidVersionError(
                f"version {text!r:.80}: pre-release and build metadata are limited to "
                f"{MAX_PRERELEASE} characters each"
            )
        pre = tuple(pre_text.split(".")) if pre_text else ()
        _check_prerelease(pre, text)
        build = tuple(build_text.split(".")) if build_text else ()
        return cls(nums[0], nums[1], nums[2], pre, build)

    @property
    def core(self) -> tuple[int, int, int]:
        """``(major, minor, patch)``."""
        return (self.major, self.minor, self.patch)

    @property
    def is_prerelease(self) -> bool:
        return bool(self.prerelease)

    @property
    def prerelease_text(self) -> str:
        return ".".join(self.prerelease)

    @property
    def build_text(self) -> str:
        return ".".join(self.build)

    @property
    def prerelease_key(self) -> str:
        """The SQL sort key of the pre-release part (see the module docstring)."""
        return prerelease_key(self.prerelease)

    def __str__(self) -> str:
        out = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            out += "-" + self.prerelease_text
        if self.build:
            out += "+" + self.build_text
        return out

    def _cmp_key(self) -> tuple[int, int, int, str]:
        return (self.major, self.minor, self.patch, self.prerelease_key)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, SemVer):
            return NotImplemented
        return self._cmp_key() < other._cmp_key()


def prerelease_key(ids: tuple[str, ...]) -> str:
    """Encode pre-release identifiers so that byte order equals semver precedence."""
    if not ids:
        return RELEASE_KEY
    out = bytearray()
    for ident in ids:
        if ident.isdigit():
            out += bytes((1, len(ident))) + ident.encode("ascii")
        else:
            out += b"\x02" + ident.encode("ascii") + b"\x00"
    return out.hex()


def parse(text: str) -> SemVer:
    """Shorthand for :meth:`SemVer.parse`."""
    return SemVer.parse(text)
