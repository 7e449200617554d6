"""Registry operations on every database."""

from __future__ import annotations

import datetime as dt

import pytest

from modelvault.errors import (
    AliasNotFoundError,
    ConflictError,
    ModelExistsError,
    ModelNotFoundError,
    VariantExistsError,
    VersionExistsError,
    VersionNotFoundError,
)
from modelvault.registry import Registry

from .helpers import digest, variant


def test_register_and_resolve(reg: Registry) -> None:
    info, created = reg.register_version(
        "team/resnet", "1.2.3", [variant("a")], labels={"task": "vision"}
    )
    assert created
    assert info.model == "team/resnet"
    assert info.version == "1.2.3"
    assert info.labels == {"task": "vision"}
    [v] = info.variants
    assert v.manifest_digest == digest("manifest:a")
    assert {b.role for b in v.blobs} == {"manifest", "weights"}
    assert v.requirements == {"device": "cpu"}
    assert info.created_by == "tester"
    assert info.created_at.tzinfo is not None
    assert reg.resolve("team/resnet").version == "1.2.3"
    assert reg.resolve("team/resnet@1.2.3").version == "1.2.3"
    assert reg.resolve("team/resnet:1.2.3").version == "1.2.3"
    assert reg.resolve("team/resnet", "^1").version == "1.2.3"


def test_identical_content_is_noop(reg: Registry) -> None:
    first, created = reg.register_version("m", "1.0.0", [variant("a"), variant("b")])
    again, created2 = reg.register_version("m", "1.0.0", [variant("b"), variant("a")])
    assert created
    assert not created2
    assert again.created_at == first.created_at
    # build metadata does not make a different version
    same, created3 = reg.register_version("m", "1.0.0+ci.7", [variant("a"), variant("b")])
    assert not created3
    assert same.version == "1.0.0"
    assert [e.kind for e in reg.events("m")].count("version.register") == 1


def test_different_content_raises(reg: Registry) -> None:
    reg.register_version("m", "1.0.0", [variant("a")])
    with pytest.raises(VersionExistsError) as err:
        reg.register_version("m", "1.0.0+other", [variant("b")])
    assert digest("manifest:a") in str(err.value)
    assert digest("manifest:b") in str(err.value)
    with pytest.raises(VersionExistsError):
        reg.register_version("m", "1.0.0", [variant("a"), variant("b")])


def test_add_variant(reg: Registry) -> None:
    reg.register_version("m", "1.0.0", [variant("a")])
    added = reg.add_variant("m", "1.0.0", variant("trt", kind="tensorrt", fmt="tensorrt"))
    assert added.kind == "tensorrt"
    assert {v.kind for v in reg.get_version("m", "1.0.0").variants} == {"portable", "tensorrt"}
    with pytest.raises(VariantExistsError):
        reg.add_variant("m", "1.0.0", variant("a"))
    # the original push, retried after the version gained a variant, is still a no-op
    _, created = reg.register_version("m", "1.0.0", [variant("a")])
    assert not created
    with pytest.raises(VersionNotFoundError, match=r"highest versions: 1\.0\.0"):
        reg.add_variant("m", "2.0.0", variant("c"))


def test_create_model(reg: Registry) -> None:
    m = reg.create_model("org/name", description="hello")
    assert m.name == "org/name"
    assert m.version_count == 0
    assert m.latest is None
    assert reg.create_model("org/name").description == "hello"
    with pytest.raises(ModelExistsError):
        reg.create_model("org/name", exist_ok=False)
    # names are unique ignoring case on every database: the existing spelling wins
    with pytest.raises(ModelExistsError, match="use 'org/name', not 'Org/Name'"):
        reg.create_model("Org/Name")


def test_resolve_specs(reg: Registry) -> None:
    for v in [
        "0.9.0",
        "1.0.0",
        "1.2.0",
        "1.2.5",
        "1.3.0-rc.1",
        "1.10.0",
        "2.0.0-alpha",
        "2.0.0-beta.2",
    ]:
        reg.register_version("m", v, [variant(v)])
    assert reg.resolve("m@latest").version == "1.10.0"
    assert reg.resolve("m@^1.2").version == "1.10.0"
    assert reg.resolve("m@~1.2").version == "1.2.5"
    assert reg.resolve("m@>=1.0,<1.3").version == "1.2.5"
    assert reg.resolve("m@^1.3.0-rc.0").version == "1.10.0"
    assert reg.resolve("m@~1.3.0-rc.0").version == "1.3.0-rc.1"
    assert reg.resolve("m@>=2.0.0-alpha").version == "2.0.0-beta.2"
    assert reg.resolve("m@2.0.0-alpha").version == "2.0.0-alpha"
    assert reg.resolve("m@^0").version == "0.9.0"
    assert reg.resolve("m@=1.2").version == "1.2.5"
    assert reg.resolve(f"m@{digest('manifest:1.2.0')}").version == "1.2.0"
    with pytest.raises(
        VersionNotFoundError,
        match=r"no version matching '\^3'.*highest versions: 2\.0\.0-beta\.2, 2\.0\.0-alpha, 1\.10\.0",
    ):
        reg.resolve("m@^3")
    with pytest.raises(VersionNotFoundError):
        reg.resolve("m@>=2.0.0")
    with pytest.raises(ModelNotFoundError, match="did you mean m"):
        reg.resolve("mm@latest")
    with pytest.raises(AliasNotFoundError, match="it has no aliases"):
        reg.resolve("m@prod")


def test_latest_with_only_prereleases(reg: Registry) -> None:
    reg.register_version("m", "1.0.0-rc.1", [variant("a")])
    with pytest.raises(VersionNotFoundError, match=r"1\.0\.0-rc\.1"):
        reg.resolve("m")


def test_aliases(reg: Registry) -> None:
    reg.register_version("m", "1.0.0", [variant("a")], aliases=["staging"])
    reg.register_version("m", "1.1.0", [variant("b")])
    assert reg.resolve("m@staging").version == "1.0.0"
    reg.set_alias("m", "prod", "1.0.0")
    moved = reg.set_alias("m", "prod", "1.1.0")
    assert moved.version == "1.1.0"
    assert reg.resolve("m@prod").version == "1.1.0"
    assert reg.get_version("m", "1.1.0").aliases == ["prod"]
    removed = reg.remove_alias("m", "prod")
    assert removed.version == "1.1.0"
    hist = reg.alias_history("m", "prod")
    assert [(h.action, h.version, h.previous) for h in hist] == [
        ("set", "1.0.0", None),
        ("move", "1.1.0", "1.0.0"),
        ("remove", None, "1.1.0"),
    ]
    with pytest.raises(AliasNotFoundError, match="its aliases: staging"):
        reg.resolve("m@prod")
    with pytest.raises(AliasNotFoundError):
        reg.remove_alias("m", "prod")
    with pytest.raises(VersionNotFoundError):
        reg.set_alias("m", "prod", "9.9.9")
    assert reg.get_model("m").aliases == {"staging": "1.0.0"}


def test_delete_version(reg: Registry) -> None:
    reg.register_version("m", "1.0.0", [variant("a")], aliases=["prod"], labels={"k": "v"})
    reg.register_version("m", "1.1.0", [variant("b", shared="w")])
    with pytest.raises(ConflictError, match="prod"):
        reg.delete_version("m", "1.0.0")
    res = reg.delete_version("m", "1.0.0", force=True)
    assert res.aliases_removed == ["prod"]
    assert res.variants == [digest("manifest:a")]
    with pytest.raises(VersionNotFoundError):
        reg.get_version("m", "1.0.0")
    kinds = [e.kind for e in reg.events("m")]
    assert kinds[:2] == ["version.delete", "alias.remove"]
    assert reg.alias_history("m", "prod")[-1].action == "remove"
    # the manifest of the deleted variant is no longer referenced; shared weights still are
    assert digest("manifest:a") not in reg.referenced_digests()
    assert digest("weights:w") in reg.referenced_digests()
    assert digest("manifest:a") in reg.blob_digests()
    gone = reg.forget_blobs([digest("manifest:a"), digest("weights:w")])
    assert gone == {digest("manifest:a")}
    assert digest("manifest:a") not in reg.blob_digests()
    # the version number can be used again after deletion
    _, created = reg.register_version("m", "1.0.0", [variant("c")])
    assert created


def test_labels_and_listing(reg: Registry) -> None:
    for i in range(12):
        pre = "-rc.1" if i % 4 == 3 else ""
        reg.register_version(
            "m", f"1.{i}.0{pre}", [variant(str(i))], labels={"parity": "odd" if i % 2 else "even"}
        )
    reg.register_version("other", "0.1.0", [variant("o")], labels={"team": "x"})
    seen: list[str] = []
    cursor = None
    while True:
        page = reg.list_versions("m", limit=5, cursor=cursor)
        seen += [v.version for v in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [f"1.{i}.0" + ("-rc.1" if i % 4 == 3 else "") for i in reversed(range(12))]
    asc = reg.list_versions("m", descending=False, include_prerelease=False, limit=100)
    assert [v.version for v in asc.items] == [f"1.{i}.0" for i in range(12) if i % 4 != 3]
    odd = reg.list_versions("m", label="parity=odd", limit=100)
    assert len(odd.items) == 6
    assert all(v.labels["parity"] == "odd" for v in odd.items)
    assert reg.set_labels("m", "1.0.0", {"parity": "zero", "x": "y"}) == {
        "parity": "zero",
        "x": "y",
    }
    assert reg.remove_label("m", "1.0.0", "x") is True
    assert reg.remove_label("m", "1.0.0", "x") is False
    assert [m.name for m in reg.list_models(label="team=x").items] == ["other"]
    assert [m.name for m in reg.list_models(label="parity").items] == ["m"]
    assert [m.name for m in reg.list_models(prefix="ot").items] == ["other"]
    reg.set_alias("other", "prod", "0.1.0")
    assert [m.name for m in reg.list_models(alias="prod").items] == ["other"]
    page1 = reg.list_models(limit=1)
    page2 = reg.list_models(limit=1, cursor=page1.next_cursor)
    assert [page1.items[0].name, page2.items[0].name] == [
        "m",
        "other",
    ]
    assert page2.next_cursor is None
    info = page1.items[0]
    assert info.version_count == 12
    assert info.latest == "1.10.0"
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    assert reg.list_models(since=future).items == []
    assert reg.list_versions("m", since=future).items == []
    assert len(reg.list_versions("m", since=future - dt.timedelta(days=1), limit=100).items) == 12


def test_prefix_is_not_a_pattern(reg: Registry) -> None:
    reg.create_model("a_b")
    reg.create_model("axb")
    assert [m.name for m in reg.list_models(prefix="a_").items] == ["a_b"]
    assert reg.list_models(prefix="%").items == []


def test_events(reg: Registry) -> None:
    reg.register_version("m", "1.0.0", [variant("a")], user="alice")
    reg.set_alias("m", "prod", "1.0.0", user="bob")
    ev = reg.events("m")
    assert [(e.kind, e.user) for e in ev] == [
        ("alias.set", "bob"),
        ("version.register", "alice"),
        ("model.create", "alice"),
    ]
    assert ev[1].details["variants"] == [digest("manifest:a")]
    assert ev[0].at.tzinfo is not None
    assert len(reg.events(limit=1)) == 1
