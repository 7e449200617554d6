"""Names and version specs: what may follow ``name@`` or ``name:``.

=================  ==========================================================
``1.2.3``          exactly this version (build metadata ignored)
``=1.2``           any ``1.2.x`` (a partial version is a range)
``^1.2.3``         ``>=1.2.3, <2.0.0``; ``^0.2.3`` is ``>=0.2.3, <0.3.0``;
                   ``^0.0.3`` is ``>=0.0.3, <0.0.4`` (npm / cargo)
``~1.2.3``         ``>=1.2.3, <1.3.0``; ``~1`` is ``>=1.0.0, <2.0.0``
``>=1.0,<2``       comparators (``= > >= < <=``) joined by commas, all must hold
``latest``         the highest version that is not a pre-release
``prod``           an alias
``blake3:<hex>``   the version that has a variant with this manifest digest
=================  ==========================================================

Pre-releases match a range only when one of its comparators names a
pre-release of the same ``major.minor.patch`` (npm's rule): ``^1.2.3-rc.1``
matches ``1.2.3-rc.2`` but not ``1.3.0-rc.1``; ``>=1.0`` matches no
pre-release at all. An exact version matches its pre-release exactly.
Partial versions in comparators fill in like npm: ``>1.2`` is ``>=1.3.0``,
``<=1.2`` is ``<1.3.0``, ``<2`` is ``<2.0.0``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from ..errors import InvalidNameError, InvalidSpecError, InvalidVersionError
from .semver import MAX_NUMBER, SemVer

__all__ = [
    "AliasSpec",
    "Comparator",
    "DigestSpec",
    "ExactSpec",
    "LatestSpec",
    "RangeSpec",
    "Spec",
    "parse_ref",
    "parse_spec",
    "validate_label",
    "validate_name",
]

MAX_SPEC = 256
_MODEL_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
_VERSIONISH = re.compile(r"^[vV]?[0-9]")
_DIGEST_RE = re.compile(r"^[a-z][a-z0-9_+.-]{0,31}:[0-9a-f]{32,128}$")
_PARTIAL_RE = re.compile(r"^v?(0|[1-9][0-9]*)(?:\.(0|[1-9][0-9]*))?(?:\.(0|[1-9][0-9]*))?$")
_COMPARATOR_RE = re.compile(r"^(>=|<=|>|<|=|\^|~)?\s*(\S+)$")
_RESERVED_ALIASES = frozenset({"latest"})
MAX_LABEL_KEY = 64
MAX_LABEL_VALUE = 256
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")


def _bad_chars(kind: str, value: str) -> None:
    for ch in value:
        if ch.isspace():
            raise InvalidNameError(f"{kind} {value!r:.80} contains whitespace; names have none")
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            raise InvalidNameError(f"{kind} {value!r:.80} contains a control character")
        if ch == "\\":
            raise InvalidNameError(f"{kind} {value!r:.80} contains '\\'; it is not a separator")


def validate_name(kind: Literal["model", "alias"], value: object) -> str:
    """Check a model name or an alias and return it unchanged.

    Model names: 1..128 characters, segments of ``[A-Za-z0-9][A-Za-z0-9._-]*``
    joined by single ``/`` (an organisation separator: ``team/resnet50``).
    Aliases: ``[A-Za-z][A-Za-z0-9._-]{0,63}``, not ``latest``, nothing that
    reads as a version (``v1``) or a digest. Raises :class:`InvalidNameError`
    naming the rule that was broken.
    """
    if not isinstance(value, str):
        raise InvalidNameError(f"a {kind} name must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidNameError(f"a {kind} name must not be empty")
    limit = 128 if kind == "model" else 64
    if len(value) > limit:
        raise InvalidNameError(
            f"{kind} name {value[:40]!r}... is {len(value)} characters; at most {limit}"
        )
    _bad_chars(f"{kind} name", value)
    if kind == "model":
        if value.startswith("/") or value.endswith("/") or "//" in value:
            raise InvalidNameError(
                f"model name {value!r}: '/' only separates an organisation from a name "
                "(e.g. team/resnet50): no leading, trailing or double '/'"
            )
        for seg in value.split("/"):
            if seg in (".", "..") or not _MODEL_SEGMENT.fullmatch(seg):
                raise InvalidNameError(
                    f"model name {value!r}: each part must start with a letter or digit and "
                    "contain only letters, digits, '.', '_' and '-'"
                )
        return value
    if ":" in value:
        raise InvalidNameError(
            f"alias {value!r:.80} looks like a digest (it has ':'); pick a name such as 'prod'"
        )
    if not _ALIAS_RE.fullmatch(value):
        raise InvalidNameError(
            f"alias {value!r}: must start with a letter and contain only letters, digits, "
            "'.', '_' and '-' (at most 64 characters)"
        )
    if value.lower() in _RESERVED_ALIASES:
        raise InvalidNameError(
            f"alias {value!r} is reserved: 'latest' always means the highest release"
        )
    if _VERSIONISH.match(value):
        raise InvalidNameError(f"alias {value!r} looks like a version; pick a name such as 'prod'")
    return value


def validate_label(key: object, value: object) -> tuple[str, str]:
    """Check a label pair: key ``[A-Za-z0-9][A-Za-z0-9._/-]{0,63}``, value printable, <= 256."""
    if not isinstance(key, str) or not _LABEL_KEY_RE.fullmatch(key):
        raise InvalidNameError(
            f"label key {key!r:.80} must start with a letter or digit and contain only letters, "
            f"digits, '.', '_', '/' and '-' (at most {MAX_LABEL_KEY} characters)"
        )
    if not isinstance(value, str):
        raise InvalidNameError(
            f"label {key}: the value must be a string, got {type(value).__name__}"
        )
    if len(value) > MAX_LABEL_VALUE:
        raise InvalidNameError(
            f"label {key}: the value is {len(value)} characters; at most {MAX_LABEL_VALUE}"
        )
    if not value.isprintable():
        raise InvalidNameError(
            f"label {key}: the value {value!r:.80} contains unprintable characters"
        )
    return key, value


@dataclass(frozen=True)
class Comparator:
    """One ``op version`` condition; ``op`` is one of ``= > >= < <=``."""

    op: Literal["=", ">", ">=", "<", "<="]
    version: SemVer

    def test(self, v: SemVer) -> bool:
        if self.op == "=":
            return v == self.version
        if self.op == ">":
            return v > self.version
        if self.op == ">=":
            return v >= self.version
        if self.op == "<":
            return v < self.version
        return v <= self.version


def _clamp(t: tuple[int, int, int]) -> tuple[int, int, int]:
    return (min(t[0], MAX_NUMBER), min(t[1], MAX_NUMBER), min(t[2], MAX_NUMBER))


@dataclass(frozen=True)
class ExactSpec:
    """Exactly one version."""

    version: SemVer

    def __str__(self) -> str:
        return str(self.version)


@dataclass(frozen=True)
class RangeSpec:
    """All comparators must hold; pre-releases follow the rule in the module docstring."""

    comparators: tuple[Comparator, ...]
    text: str

    def matches(self, v: SemVer) -> bool:
        """True when ``v`` satisfies every comparator and the pre-release rule."""
        if not all(c.test(v) for c in self.comparators):
            return False
        if v.prerelease:
            return any(c.version.prerelease and c.version.core == v.core for c in self.comparators)
        return True

    @property
    def allows_prerelease(self) -> bool:
        return any(c.version.prerelease for c in self.comparators)

    def core_bounds(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """Inclusive ``(major, minor, patch)`` bounds for an indexed SQL pre-filter."""
        lo, hi = (0, 0, 0), (MAX_NUMBER, MAX_NUMBER, MAX_NUMBER)
        for c in self.comparators:
            core = c.version.core
            if c.op in (">", ">=", "="):
                lo = max(lo, core)
            if c.op in ("<", "<=", "="):
                hi = min(hi, core)
        # A bumped bound (``<=9223372036854775807`` -> ``<9223372036854775808.0.0``)
        # may pass 2**63; clamp so it still binds to a BIGINT column.
        return _clamp(lo), _clamp(hi)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class LatestSpec:
    """The highest version that is not a pre-release."""

    def __str__(self) -> str:
        return "latest"


@dataclass(frozen=True)
class AliasSpec:
    """A named, movable pointer such as ``prod``."""

    alias: str

    def __str__(self) -> str:
        return self.alias


@dataclass(frozen=True)
class DigestSpec:
    """The version holding a variant whose manifest has this digest."""

    digest: str

    def __str__(self) -> str:
        return self.digest


Spec = ExactSpec | RangeSpec | LatestSpec | AliasSpec | DigestSpec


def _partial(text: str, spec: str) -> tuple[list[int], tuple[str, ...]]:
    """Parse a possibly partial version: ``1``, ``1.2``, or a full semver."""
    m = _PARTIAL_RE.fullmatch(text)
    if m:
        parts = [int(g) for g in m.groups() if g is not None]
        if any(p > MAX_NUMBER for p in parts):
            raise InvalidSpecError(f"spec {spec!r:.80}: numbers must be below 2**63")
        return parts, ()
    try:
        v = SemVer.parse(text)
    except InvalidVersionError as exc:
        raise InvalidSpecError(
            f"spec {spec!r:.80}: {text!r:.40} is not a version ({exc})"
        ) from None
    return [v.major, v.minor, v.patch], v.prerelease


def _bump(parts: list[int]) -> SemVer:
    """The first version past a partial one: ``1.2`` -> ``1.3.0``, ``1`` -> ``2.0.0``."""
    bumped = [*parts[:-1], parts[-1] + 1] + [0] * (3 - len(parts))
    return SemVer(bumped[0], bumped[1], bumped[2])


def _full(parts: list[int], pre: tuple[str, ...] = ()) -> SemVer:
    padded = parts + [0] * (3 - len(parts))
    return SemVer(padded[0], padded[1], padded[2], pre)


def _expand(op: str, text: str, spec: str) -> list[Comparator]:
    parts, pre = _partial(text, spec)
    full = len(parts) == 3
    if op == "^":
        lo = _full(parts, pre)
        if parts[0] > 0 or len(parts) == 1:
            hi = _bump(parts[:1])
        elif parts[1] > 0 or len(parts) == 2:
            hi = _bump(parts[:2])
        else:
            hi = _bump(parts)
        return [Comparator(">=", lo), Comparator("<", hi)]
    if op == "~":
        hi = _bump(parts[:2]) if len(parts) >= 2 else _bump(parts[:1])
        return [Comparator(">=", _full(parts, pre)), Comparator("<", hi)]
    if op in ("", "="):
        if full:
            return [Comparator("=", _full(parts, pre))]
        return [Comparator(">=", _full(parts)), Comparator("<", _bump(parts))]
    if op == ">":
        return [Comparator(">", _full(parts, pre)) if full else Comparator(">=", _bump(parts))]
    if op == "<=":
        return [Comparator("<=", _full(parts, pre)) if full else Comparator("<", _bump(parts))]
    return [Comparator(op, _full(parts, pre))]  # type: ignore[arg-type]


def parse_spec(text: object) -> Spec:
    """Parse what follows ``name@``: a version, range, ``latest``, alias or digest.

    >>> parse_spec("^1.2")
    RangeSpec(comparators=(Comparator(op='>=', ...), Comparator(op='<', ...)), text='^1.2')
    """
    if not isinstance(text, str):
        raise InvalidSpecError(f"a version spec must be a string, got {type(text).__name__}")
    spec = text.strip()
    if not spec:
        raise InvalidSpecError(
            "empty version spec; use a version (1.2.3), a range (^1.2), latest or an alias"
        )
    if len(spec) > MAX_SPEC:
        raise InvalidSpecError(
            f"version spec {spec[:40]!r}... is too long ({len(spec)} > {MAX_SPEC})"
        )
    if not spec.isprintable():
        raise InvalidSpecError(f"version spec {spec!r:.80} contains control characters")
    if spec == "latest":
        return LatestSpec()
    if ":" in spec:
        if not _DIGEST_RE.fullmatch(spec):
            raise InvalidSpecError(
                f"{spec!r:.80} is not a digest; expected '<algorithm>:<lowercase hex>' such as blake3:9f2c..."
            )
        return DigestSpec(spec)
    if spec[0].isalpha() and not _VERSIONISH.match(spec):
        try:
            return AliasSpec(validate_name("alias", spec))
        except InvalidNameError as exc:
            raise InvalidSpecError(
                f"{spec!r:.80} is neither a version, a range nor an alias: {exc}"
            ) from None
    if "," not in spec and spec[0] not in "<>=^~":
        try:
            return ExactSpec(SemVer.parse(spec))
        except InvalidVersionError:
            pass  # a partial version such as 1.2 is a range
    comparators: list[Comparator] = []
    for piece in spec.split(","):
        m = _COMPARATOR_RE.fullmatch(piece.strip())
        if m is None:
            raise InvalidSpecError(
                f"version spec {spec!r:.80}: {piece.strip()!r:.40} is not a comparator such as >=1.0 or <2"
            )
        comparators += _expand(m.group(1) or "", m.group(2), spec)
    return RangeSpec(tuple(comparators), spec)


def parse_ref(ref: object) -> tuple[str, Spec | None]:
    """Split ``"name@spec"``, ``"name:1.2.3"`` or ``"name"`` into a validated name and spec.

    >>> parse_ref("team/resnet50@prod")
    ('team/resnet50', AliasSpec(alias='prod'))
    """
    if not isinstance(ref, str):
        raise InvalidSpecError(f"a model reference must be a string, got {type(ref).__name__}")
    at, colon = ref.find("@"), ref.find(":")
    cut = min(i for i in (at, colon, len(ref)) if i >= 0)
    name = validate_name("model", ref[:cut])
    if cut == len(ref):
        return name, None
    return name, parse_spec(ref[cut + 1 :])
