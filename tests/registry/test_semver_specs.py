"""Semantic versions and specs: examples, properties, and SQL ordering on every database."""

from __future__ import annotations

import functools
import random
import secrets

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select

from modelvault.errors import InvalidSpecError, InvalidVersionError
from modelvault.registry import Registry, SemVer, parse_ref, parse_spec
from modelvault.registry.schema import Model, Version
from modelvault.registry.specs import AliasSpec, DigestSpec, ExactSpec, LatestSpec, RangeSpec

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# semver.org's own precedence example, in order
SPEC_ORDER = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "2.0.0",
    "2.1.0",
    "2.1.1",
]


def test_semver_org_precedence() -> None:
    parsed = [SemVer.parse(v) for v in SPEC_ORDER]
    shuffled = parsed[::-1]
    random.Random(1).shuffle(shuffled)
    assert sorted(shuffled) == parsed
    assert [p.prerelease_key for p in parsed] == sorted(p.prerelease_key for p in parsed[:8]) + [
        p.prerelease_key for p in parsed[8:]
    ]


def test_build_metadata_is_not_identity() -> None:
    a, b = SemVer.parse("1.0.0+a"), SemVer.parse("1.0.0+b.7")
    assert a == b
    assert hash(a) == hash(b)
    assert str(b) == "1.0.0+b.7"
    assert SemVer.parse("v1.2.3").core == (1, 2, 3)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1.2",
        "01.2.3",
        "1.02.3",
        "1.2.3-",
        "1.2.3-01",
        "1.2.3+",
        "1.2.3-a..b",
        "1.2.3 ",
        " 1.2.3",
        "1.2.3\n",
        "1.2.3-ä",
        "1.2.3-a_b",
        "x.y.z",
        "1.2.3.4",
        "9" * 30 + ".0.0",
        "1.0.0-" + "a" * 65,
        "1.0.0; DROP TABLE versions",
        "1.0.0\x00",
        "1" * 500,
    ],
)
def test_invalid_versions(text: str) -> None:
    with pytest.raises(InvalidVersionError):
        SemVer.parse(text)


def test_version_must_be_str() -> None:
    with pytest.raises(InvalidVersionError, match="must be a string"):
        SemVer.parse(123)  # type: ignore[arg-type]


_ident = st.one_of(
    st.integers(0, 10**12).map(str),
    st.text("abcXYZ-019", min_size=1, max_size=6).filter(lambda s: not s.isdigit()),
)
_pre = st.lists(_ident, max_size=4).filter(lambda ids: len(".".join(ids)) <= 64)
semvers = st.builds(
    lambda ma, mi, pa, pre, build: SemVer(ma, mi, pa, tuple(pre), tuple(build)),
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(0, 2**63 - 1) | st.integers(0, 5),
    _pre,
    st.lists(st.text("abc019", min_size=1, max_size=3), max_size=2),
)


def _reference_cmp(a: SemVer, b: SemVer) -> int:
    """semver.org rule 11, written out directly."""
    if a.core != b.core:
        return -1 if a.core < b.core else 1
    if not a.prerelease or not b.prerelease:
        return (not a.prerelease) - (not b.prerelease) if a.prerelease != b.prerelease else 0
    for x, y in zip(a.prerelease, b.prerelease):
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            return -1 if int(x) < int(y) else 1
        if x.isdigit() != y.isdigit():
            return -1 if x.isdigit() else 1
        return -1 if x < y else 1
    return (len(a.prerelease) > len(b.prerelease)) - (len(a.prerelease) < len(b.prerelease))


@FAST
@given(semvers, semvers)
def test_order_matches_semver_rules(a: SemVer, b: SemVer) -> None:
    ref = _reference_cmp(a, b)
    assert (a < b) == (ref < 0)
    assert (a == b) == (ref == 0)
    # the SQL key orders exactly like the rules
    ka, kb = (
        (a.major, a.minor, a.patch, a.prerelease_key),
        (b.major, b.minor, b.patch, b.prerelease_key),
    )
    assert (ka < kb) == (ref < 0)
    assert set(a.prerelease_key) <= set("0123456789abcdef")


@FAST
@given(semvers)
def test_round_trip(v: SemVer) -> None:
    again = SemVer.parse(str(v))
    assert again == v
    assert again.build == v.build


@FAST
@given(semvers, semvers)
def test_caret_and_tilde_match_npm(base: SemVer, v: SemVer) -> None:
    caret = parse_spec(f"^{base}")
    tilde = parse_spec(f"~{base}")
    assert isinstance(caret, RangeSpec)
    assert isinstance(tilde, RangeSpec)
    pre_ok = not v.prerelease or (base.prerelease != () and base.core == v.core)
    if base.major > 0:
        upper = (base.major + 1, 0, 0)
    elif base.minor > 0:
        upper = (0, base.minor + 1, 0)
    else:
        upper = (0, 0, base.patch + 1)
    expect_caret = v >= base and v.core < upper and pre_ok
    assert caret.matches(v) == expect_caret
    expect_tilde = v >= base and v.core < (base.major, base.minor + 1, 0) and pre_ok
    assert tilde.matches(v) == expect_tilde


@FAST
@given(semvers, semvers, semvers)
def test_range_bounds_contain_every_match(lo: SemVer, hi: SemVer, v: SemVer) -> None:
    """The SQL pre-filter never drops a version the precise check would accept."""
    spec = parse_spec(f">={lo},<={hi}")
    assert isinstance(spec, RangeSpec)
    if spec.matches(v):
        low, high = spec.core_bounds()
        assert low <= v.core <= high


@pytest.mark.parametrize(
    ("spec", "matching", "not_matching"),
    [
        ("^1.2.3", ["1.2.3", "1.9.9"], ["2.0.0", "1.2.2", "1.3.0-rc.1"]),
        ("^0.2.3", ["0.2.3", "0.2.9"], ["0.3.0"]),
        ("^0.0.3", ["0.0.3"], ["0.0.4"]),
        ("^1.2", ["1.2.0", "1.99.0"], ["1.1.9", "2.0.0"]),
        ("^0", ["0.0.0", "0.9.9"], ["1.0.0"]),
        ("~1.2.3", ["1.2.3", "1.2.9"], ["1.3.0"]),
        ("~1", ["1.0.0", "1.9.0"], ["2.0.0"]),
        (">=1.0,<2", ["1.0.0", "1.9.9"], ["2.0.0", "2.0.0-rc.1", "0.9.0"]),
        (">1.2", ["1.3.0"], ["1.2.9"]),
        ("<=1.2", ["1.2.9", "0.1.0"], ["1.3.0"]),
        ("=1.2", ["1.2.0", "1.2.7"], ["1.3.0"]),
        (">=1.2.3-beta", ["1.2.3-beta.1", "1.2.3", "3.0.0"], ["1.2.4-rc.1", "1.2.3-alpha"]),
    ],
)
def test_range_examples(spec: str, matching: list[str], not_matching: list[str]) -> None:
    parsed = parse_spec(spec)
    assert isinstance(parsed, RangeSpec)
    for v in matching:
        assert parsed.matches(SemVer.parse(v)), (spec, v)
    for v in not_matching:
        assert not parsed.matches(SemVer.parse(v)), (spec, v)


def test_spec_kinds() -> None:
    assert isinstance(parse_spec("1.2.3"), ExactSpec)
    assert isinstance(parse_spec("latest"), LatestSpec)
    assert parse_spec("prod") == AliasSpec("prod")
    d = "sha256:" + "ab" * 32
    assert parse_spec(d) == DigestSpec(d)
    assert parse_ref("team/x@^1") == ("team/x", parse_spec("^1"))
    assert parse_ref("x:1.2.3") == ("x", ExactSpec(SemVer(1, 2, 3)))
    assert parse_ref("x") == ("x", None)
    assert parse_ref("x@" + d) == ("x", DigestSpec(d))


@pytest.mark.parametrize(
    "spec",
    [
        "",
        " ",
        "^",
        ">=",
        "^x",
        "1.2.3.4",
        ">=1.0,,<2",
        ">=1.0 <2",
        "sha256:xyz",
        "md5:" + "a" * 10,
        "a" * 300,
        "prod\x00",
        "pr od",
        "'; DROP TABLE models; --",
        "^01.2",
        "~-1",
        "latest,>1",
        "1.2.3 || 2.0.0",
        ">=99999999999999999999.0.0",
    ],
)
def test_invalid_specs(spec: str) -> None:
    with pytest.raises(InvalidSpecError):
        parse_spec(spec)


def test_spec_must_be_str() -> None:
    with pytest.raises(InvalidSpecError, match="must be a string"):
        parse_spec(None)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(semvers, min_size=1, max_size=40))
def test_sql_order_by_matches_python(reg: Registry, versions: list[SemVer]) -> None:
    """ORDER BY major, minor, patch, prerelease_sort on the real database equals semver order."""
    unique = list({(v.core, v.prerelease): v for v in versions}.values())
    random.Random(0).shuffle(unique)
    expected = sorted(unique)
    name = f"order{secrets.token_hex(8)}"  # hypothesis seeds `random`
    with reg.engine.begin() as conn:
        mid = conn.execute(
            insert(Model).values(name=name, created_at=_now(), created_by="t").returning(Model.id)
        ).scalar_one()
        conn.execute(
            insert(Version),
            [
                {
                    "model_id": mid,
                    "version": str(v),
                    "major": v.major,
                    "minor": v.minor,
                    "patch": v.patch,
                    "prerelease": v.prerelease_text,
                    "prerelease_sort": v.prerelease_key,
                    "build": v.build_text,
                    "is_prerelease": v.is_prerelease,
                    "created_at": _now(),
                    "created_by": "t",
                }
                for v in unique
            ],
        )
        got = conn.execute(
            select(Version.version)
            .where(Version.model_id == mid)
            .order_by(Version.major, Version.minor, Version.patch, Version.prerelease_sort)
        ).scalars()
        assert [SemVer.parse(g) for g in got] == expected
    # and the registry's own descending listing agrees
    page = reg.list_versions(name, limit=100)
    assert [SemVer.parse(v.version) for v in page.items] == expected[::-1]


@functools.cache
def _epoch() -> object:
    import datetime as dt

    return dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)


def _now() -> object:
    return _epoch()
