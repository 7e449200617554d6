"""Hostile and broken input for every public Registry method: the specific error, a useful message."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from modelvault.errors import (
    InvalidArgumentError,
    InvalidNameError,
    InvalidSpecError,
    InvalidVersionError,
    ModelNotFoundError,
)
from modelvault.registry import Registry, validate_name
from modelvault.registry.specs import validate_label

from .helpers import digest, variant

BAD_MODEL_NAMES = [
    ("", "must not be empty"),
    ("/abs", "no leading"),
    ("trail/", "no leading, trailing or double"),
    ("a//b", "double"),
    ("a/../b", "each part"),
    ("..", "each part"),
    ("-x", "each part"),
    ("a b", "whitespace"),
    ("a\tb", "whitespace"),
    ("a\x00b", "control character"),
    ("a\x1bb", "control character"),
    ("a\\b", "not a separator"),
    ("x" * 129, "at most 128"),
    ("'; DROP TABLE models; --", "whitespace"),
    ("m%", "each part"),
    ("m@1", "each part"),
    ("naïve", "each part"),
    ("a\u200bb", "control character"),
]
BAD_ALIASES = [
    ("", "must not be empty"),
    ("1prod", "must start with a letter"),
    ("v1", "looks like a version"),
    ("V2.0", "looks like a version"),
    ("latest", "reserved"),
    ("pr od", "whitespace"),
    ("pr/od", "must start with a letter"),
    ("sha256:" + "a" * 64, "at most 64"),
    ("sha256:abcd", "looks like a digest"),
    ("a" * 65, "at most 64"),
    ("prod\n", "whitespace"),
]


@pytest.mark.parametrize(("name", "why"), BAD_MODEL_NAMES)
def test_bad_model_names(name: str, why: str) -> None:
    with pytest.raises(InvalidNameError, match=why):
        validate_name("model", name)


@pytest.mark.parametrize(("alias", "why"), BAD_ALIASES)
def test_bad_aliases(alias: str, why: str) -> None:
    with pytest.raises(InvalidNameError, match=why):
        validate_name("alias", alias)


def test_good_names() -> None:
    for name in ["a", "team/resnet50", "A.b_c-d", "0abc", "x" * 128, "org/sub.name"]:
        assert validate_name("model", name) == name
    for alias in ["prod", "Staging", "canary-2", "a" * 64, "vx"]:
        assert validate_name("alias", alias) == alias


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("", "v", "label key"),
        ("k k", "v", "label key"),
        ("k", "v\x00", "unprintable"),
        ("k", "x" * 257, "at most 256"),
        ("k" * 65, "v", "label key"),
        (1, "v", "label key"),
        ("k", 1, "must be a string"),
    ],
)
def test_bad_labels(key: Any, value: Any, why: str) -> None:
    with pytest.raises(InvalidNameError, match=why):
        validate_label(key, value)


def test_every_method_rejects_bad_names(reg: Registry) -> None:
    reg.register_version("m", "1.0.0", [variant("a")])
    bad = "bad name"
    calls = [
        lambda: reg.create_model(bad),
        lambda: reg.get_model(bad),
        lambda: reg.register_version(bad, "1.0.0", [variant("a")]),
        lambda: reg.add_variant(bad, "1.0.0", variant("b")),
        lambda: reg.get_version(bad, "1.0.0"),
        lambda: reg.resolve(bad),
        lambda: reg.resolve(bad, "latest"),
        lambda: reg.list_versions(bad),
        lambda: reg.set_alias(bad, "prod", "1.0.0"),
        lambda: reg.set_alias("m", "bad alias", "1.0.0"),
        lambda: reg.remove_alias(bad, "prod"),
        lambda: reg.remove_alias("m", "1.0"),
        lambda: reg.alias_history(bad, "prod"),
        lambda: reg.set_labels(bad, "1.0.0", {}),
        lambda: reg.remove_label(bad, "1.0.0", "k"),
        lambda: reg.delete_version(bad, "1.0.0"),
        lambda: reg.events(bad),
        lambda: reg.list_models(alias="bad alias"),
        lambda: reg.register_version("m", "1.1.0", [variant("c")], aliases=["latest"]),
    ]
    for call in calls:
        with pytest.raises(InvalidNameError):
            call()
    assert reg.resolve("m").version == "1.0.0"  # nothing changed


@pytest.mark.parametrize(
    "version", ["1", "1.0", "x", "", "1.0.0\n", "1.0.0-" + "a" * 100, "99999999999999999999.0.0"]
)
def test_every_method_rejects_bad_versions(reg: Registry, version: str) -> None:
    reg.create_model("m")
    calls = [
        lambda: reg.register_version("m", version, [variant("a")]),
        lambda: reg.add_variant("m", version, variant("a")),
        lambda: reg.get_version("m", version),
        lambda: reg.set_alias("m", "prod", version),
        lambda: reg.set_labels("m", version, {"a": "b"}),
        lambda: reg.remove_label("m", version, "a"),
        lambda: reg.delete_version("m", version),
    ]
    for call in calls:
        with pytest.raises(InvalidVersionError, match=r"semantic version|characters|2\*\*63"):
            call()


@pytest.mark.parametrize(
    "spec", ["^", ">=1,,<2", "sha256:zz", "a" * 300, "pr od", "1.2.3 || 2", "\x00"]
)
def test_resolve_rejects_bad_specs(reg: Registry, spec: str) -> None:
    reg.register_version("m", "1.0.0", [variant("a")])
    with pytest.raises(InvalidSpecError):
        reg.resolve("m", spec)
    with pytest.raises((InvalidSpecError, InvalidNameError)):
        reg.resolve(f"m@{spec}")


def _v(**changes: Any) -> Any:
    return dataclasses.replace(variant("a"), **changes)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (_v(manifest_digest="nope"), "not a digest"),
        (_v(manifest_digest="BLAKE3:" + "A" * 64), "not a digest"),
        (_v(format="has space"), "variant format"),
        (_v(kind=""), "variant kind"),
        (_v(kind="k" * 65), "variant kind"),
        (_v(size=-1), "variant size"),
        (_v(size=True), "variant size"),
        (_v(size=2**63), "variant size"),
        (_v(requirements=[1]), "must be a dict"),
        (_v(requirements={"x": object()}), "JSON-serializable"),
        (_v(requirements={"x": float("nan")}), "JSON-serializable"),
        (_v(requirements={"x": "y" * 70000}), "exceed"),
        (_v(blobs=[]), "must include the manifest"),
        (_v(blobs=[("x", 1, "r", "m")]), "not a digest"),
        (_v(blobs=[(digest("q"), 1, "r")]), "digest, size, role, media_type"),
        (_v(blobs=[(digest("manifest:a"), 1, "manifest", "bad\nmedia")]), "media type"),
        (_v(blobs=[(digest("manifest:a"), -5, "manifest", "m")]), "blob size"),
        ("not a variant", "must be a VariantInput"),
    ],
)
def test_bad_variants(reg: Registry, bad: Any, why: str) -> None:
    with pytest.raises(InvalidArgumentError, match=why):
        reg.register_version("m", "1.0.0", [bad])
    reg.register_version("m", "9.0.0", [variant("ok")])
    with pytest.raises(InvalidArgumentError, match=why):
        reg.add_variant("m", "9.0.0", bad)
    assert [v.version for v in reg.list_versions("m").items] == ["9.0.0"]  # nothing half-written


def test_bad_register_arguments(reg: Registry) -> None:
    with pytest.raises(InvalidArgumentError, match="at least one variant"):
        reg.register_version("m", "1.0.0", [])
    with pytest.raises(InvalidArgumentError, match="at least one variant"):
        reg.register_version("m", "1.0.0", "abc")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="listed twice"):
        reg.register_version("m", "1.0.0", [variant("a"), variant("a")])
    with pytest.raises(InvalidArgumentError, match="not one string"):
        reg.register_version("m", "1.0.0", [variant("a")], aliases="prod")
    with pytest.raises(InvalidNameError, match="label key"):
        reg.register_version("m", "1.0.0", [variant("a")], labels={"bad key": "v"})
    with pytest.raises(InvalidArgumentError, match="mapping"):
        reg.register_version("m", "1.0.0", [variant("a")], labels=[("a", "b")])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="description"):
        reg.register_version("m", "1.0.0", [variant("a")], description="x" * 10_001)
    with pytest.raises(InvalidArgumentError, match="user"):
        reg.register_version("m", "1.0.0", [variant("a")], user="")
    with pytest.raises(InvalidArgumentError, match="user"):
        reg.register_version("m", "1.0.0", [variant("a")], user="a\nb")
    with pytest.raises(ModelNotFoundError):
        reg.get_model("m")  # nothing was created by the refused calls


def test_sql_looking_strings_are_just_data(reg: Registry) -> None:
    name = "x'--"
    with pytest.raises(InvalidNameError):
        reg.create_model(name)
    reg.register_version(
        "m",
        "1.0.0",
        [variant("a")],
        labels={"q": "'; DROP TABLE versions; --"},
        description="Robert'); DROP TABLE models;--",
    )
    info = reg.get_version("m", "1.0.0")
    assert info.labels["q"] == "'; DROP TABLE versions; --"
    assert info.description == "Robert'); DROP TABLE models;--"
    assert [
        v.version for v in reg.list_versions("m", label="q='; DROP TABLE versions; --").items
    ] == ["1.0.0"]
    assert reg.list_models(prefix="'; DROP").items == []
    assert reg.list_models(prefix="%").items == []
    assert reg.list_models(prefix="_").items == []


def test_bad_listing_arguments(reg: Registry) -> None:
    reg.register_version("m", "1.0.0", [variant("a")])
    for limit in (0, -1, 1001, True, "10", 2.5):
        with pytest.raises(InvalidArgumentError, match="limit"):
            reg.list_versions("m", limit=limit)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="limit"):
            reg.list_models(limit=limit)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="limit"):
            reg.events(limit=limit)  # type: ignore[arg-type]
    good = reg.list_models(limit=1).next_cursor
    for cursor in [
        "",
        "garbage",
        "x" * 5000,
        "W10",
        "WyJ2ZXJzaW9ucyIsMSwyLDMsIngiXQ",
        good or "eyJhIjoxfQ",
    ]:
        with pytest.raises(InvalidArgumentError, match="cursor"):
            reg.list_models(cursor=cursor)
    models_cursor = "WyJtb2RlbHMiLCJtIl0"  # a models cursor handed to list_versions
    with pytest.raises(InvalidArgumentError, match="cursor"):
        reg.list_versions("m", cursor=models_cursor)
    with pytest.raises(InvalidArgumentError, match="since"):
        reg.list_models(since="yesterday")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="since"):
        reg.list_versions("m", since=123)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="prefix"):
        reg.list_models(prefix="a\x00")
    with pytest.raises(InvalidNameError):
        reg.list_models(label="bad key=v")
    with pytest.raises(InvalidArgumentError):
        reg.forget_blobs(["not-a-digest"])
    naive = dt.datetime(2000, 1, 1)
    assert len(reg.list_versions("m", since=naive).items) == 1


def test_huge_strings_are_refused_before_the_database(reg: Registry) -> None:
    huge = "a" * 1_000_000
    with pytest.raises(InvalidNameError, match="at most 128"):
        reg.create_model(huge)
    with pytest.raises(InvalidVersionError, match="at most"):
        reg.get_version("m", "1.0.0-" + huge)
    with pytest.raises(InvalidSpecError, match="too long"):
        reg.resolve("m", "^" + huge)
    with pytest.raises(InvalidNameError):
        reg.resolve(huge + "@1.0.0")


def test_non_string_arguments(reg: Registry) -> None:
    with pytest.raises(InvalidNameError, match="must be a string"):
        reg.create_model(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidVersionError, match="must be a string"):
        reg.get_version("m", 1)  # type: ignore[arg-type]
    with pytest.raises(InvalidSpecError, match="must be a string"):
        reg.resolve(42)  # type: ignore[arg-type]
