"""The CLI end to end on the embedded default (SQLite + local store), and its bad input."""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e.conftest import files_under


def test_push_ls_show_pull_roundtrip(mvault, model_dir, tmp_path):
    r = mvault(
        "push",
        "team/encoder:1.0.0",
        str(model_dir),
        "--alias",
        "prod",
        "--label",
        "task=nlp",
        "--json",
    )
    assert r.code == 0, r.err
    pushed = json.loads(r.out)
    assert pushed["created"] is True and pushed["format"] == "files"
    assert pushed["blobs_uploaded"] == 3

    again = json.loads(mvault("push", "team/encoder:1.0.0", str(model_dir), "--json").out)
    assert again["created"] is False and again["bytes_uploaded"] == 0  # idempotent, nothing re-sent

    models = json.loads(mvault("ls", "--json").out)
    assert [m["model"] for m in models] == ["team/encoder"]
    versions = json.loads(mvault("ls", "team/encoder", "--json").out)
    assert versions[0]["version"] == "1.0.0" and versions[0]["aliases"] == ["prod"]

    shown = json.loads(mvault("show", "team/encoder@prod", "--json").out)
    assert shown["version"] == "1.0.0"
    assert shown["variants"][0]["format"] == "files"
    assert shown["labels"] == {"task": "nlp"}

    out = tmp_path / "pulled"
    r = mvault("pull", "team/encoder@prod", "-o", str(out))
    assert r.code == 0, r.err
    for name in ("weights.bin", "config.json", "serve.sh"):
        assert (out / name).read_bytes() == (model_dir / name).read_bytes()
    assert os.access(out / "serve.sh", os.X_OK)


def test_different_content_same_version_is_refused(mvault, model_dir):
    assert mvault("push", "m:1.0.0", str(model_dir)).code == 0
    (model_dir / "weights.bin").write_bytes(b"changed")
    r = mvault("push", "m:1.0.0", str(model_dir))
    assert r.code == 4
    assert "1.0.0" in r.err and "Traceback" not in r.err


def test_alias_move_and_specs(mvault, model_dir):
    assert mvault("push", "m:1.0.0", str(model_dir)).code == 0
    (model_dir / "weights.bin").write_bytes(b"v2")
    assert mvault("push", "m:1.1.0", str(model_dir)).code == 0
    assert mvault("alias", "set", "m", "prod", "1.0.0").code == 0
    assert json.loads(mvault("show", "m@prod", "--json").out)["version"] == "1.0.0"
    assert mvault("alias", "set", "m", "prod", "1.1.0").code == 0
    assert json.loads(mvault("show", "m@prod", "--json").out)["version"] == "1.1.0"
    assert json.loads(mvault("show", "m@^1.0", "--json").out)["version"] == "1.1.0"
    assert json.loads(mvault("show", "m@latest", "--json").out)["version"] == "1.1.0"
    assert json.loads(mvault("show", "m@~1.0", "--json").out)["version"] == "1.0.0"
    assert mvault("alias", "rm", "m", "prod").code == 0
    r = mvault("show", "m@prod")
    assert r.code == 3 and "prod" in r.err


def test_export_import_inspect(mvault, model_dir, tmp_path, monkeypatch):
    assert mvault("push", "m:2.0.0", str(model_dir)).code == 0
    bundle = tmp_path / "m.mvpk"
    r = mvault("export", "m@2.0.0", str(bundle), "--json")
    assert r.code == 0, r.err
    assert mvault("inspect", str(bundle)).code == 0
    # A second user, with another home, imports it.
    monkeypatch.setenv("MVAULT_HOME", str(tmp_path / "other-home"))
    r = mvault("import", str(bundle), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["version"] == "2.0.0"
    out = tmp_path / "out"
    assert mvault("pull", "m@2.0.0", "-o", str(out)).code == 0
    assert (out / "weights.bin").read_bytes() == (model_dir / "weights.bin").read_bytes()


def test_verify_detects_damage_and_rm_gc(mvault, model_dir, mvault_home):
    assert mvault("push", "m:1.0.0", str(model_dir)).code == 0
    assert mvault("verify").code == 0
    blobs = [p for p in files_under(mvault_home / "store") if p.stat().st_size == 256 * 400]
    assert blobs, "the weights blob should be in the local store"
    blobs[0].chmod(0o644)
    data = bytearray(blobs[0].read_bytes())
    data[100] ^= 0xFF
    blobs[0].write_bytes(bytes(data))
    r = mvault("verify", "--json")
    assert r.code == 5
    assert len(json.loads(r.out)["damaged"]) == 1
    r = mvault("rm", "m:1.0.0")
    assert r.code == 0, r.err
    r = mvault("gc", "--grace", "0", "--json")
    assert r.code == 0, r.err
    assert len(json.loads(r.out)["removed"]) >= 4  # three files and the manifest
    assert mvault("ls", "m", "--json").out.strip() == "[]"


def test_gc_keeps_young_unreferenced_blobs(mvault, model_dir):
    from modelvault.maintenance import PushLease
    from modelvault.push import upload_draft
    from modelvault.vault import Vault

    v = Vault()
    # A push that has uploaded its blobs but not registered yet: an unreferenced, young blob.
    draft = v.pack(model_dir)
    with PushLease(v.registry, v.store) as lease:
        upload_draft(v.store, draft, lease)
        r = mvault("gc", "--json")  # default grace: a day
        assert json.loads(r.out)["removed"] == []
        assert json.loads(r.out)["kept_within_grace"] >= 4
        # No grace at all: the push's lease alone keeps them.
        r = mvault("gc", "--grace", "0", "--json")
        assert json.loads(r.out)["removed"] == []
        assert json.loads(r.out)["kept_in_use"] >= 4
    # The push gave up (its lease is released): now they are orphans.
    r = mvault("gc", "--grace", "0", "--json")
    assert len(json.loads(r.out)["removed"]) >= 4


# ---------------------------------------------------------------------------
# bad input: one line, non-zero exit, nothing written


@pytest.mark.parametrize(
    ("ref", "needle"),
    [
        ("../evil:1.0.0", "name"),
        ("a b:1.0.0", "name"),
        ("x\x07y:1.0.0", "name"),
        ("m" * 300 + ":1.0.0", "name"),
        ("m:1.0", "version"),
        ("m:v1", "version"),
        ("m:01.0.0", "version"),
        ("m", "version"),
        ("m:1.0.0:extra", "name"),
    ],
)
def test_push_rejects_malformed_refs(mvault, model_dir, mvault_home, ref, needle):
    r = mvault("push", ref, str(model_dir))
    assert r.code == 2, (r.code, r.err)
    assert needle in r.err.lower()
    assert "Traceback" not in r.err
    assert files_under(mvault_home / "store") == set()


@pytest.mark.parametrize("alias", ["../x", "1.0.0", "a/b", "x" * 100, "bad alias", "latest"])
def test_bad_alias_names(mvault, model_dir, alias):
    assert mvault("push", "m:1.0.0", str(model_dir)).code == 0
    r = mvault("alias", "set", "m", alias, "1.0.0")
    assert r.code == 2, (alias, r.err)
    assert "alias" in r.err.lower()


@pytest.mark.parametrize(
    "spec", ["m@9.9.9", "m@^7", "m@nope", "nothere@1.0.0", "m@>=5,<6", "m@blake3:" + "ab" * 32]
)
def test_specs_that_match_nothing(mvault, model_dir, spec):
    assert mvault("push", "m:1.0.0", str(model_dir)).code == 0
    r = mvault("show", spec)
    assert r.code == 3, (spec, r.err)
    assert r.err.startswith("mvault: error:")


@pytest.mark.parametrize("spec", ["m@^", "m@>=1,,<2", "m@~x", "m@" + "1" * 500])
def test_malformed_specs(mvault, model_dir, spec):
    assert mvault("push", "m:1.0.0", str(model_dir)).code == 0
    r = mvault("show", spec)
    assert r.code in (2, 3), (spec, r.err)
    assert "Traceback" not in r.err


def test_alias_to_deleted_version(mvault, model_dir):
    assert mvault("push", "m:1.0.0", str(model_dir), "--alias", "prod").code == 0
    r = mvault("rm", "m:1.0.0")
    assert r.code == 4 and "prod" in r.err  # refuses while an alias points at it
    assert mvault("rm", "m:1.0.0", "--force").code == 0
    r = mvault("show", "m@prod")
    assert r.code == 3
    r = mvault("alias", "set", "m", "prod", "1.0.0")
    assert r.code == 3


def test_wrong_kind_of_file(mvault, tmp_path, mvault_home):
    bad = tmp_path / "model.pt2"
    bad.write_bytes(b"this is not a zip archive")
    r = mvault("push", "m:1.0.0", str(bad), "--format", "exported_program")
    assert r.code in (5, 8), r.err
    assert "Traceback" not in r.err
    assert files_under(mvault_home / "store") == set()


def test_bundle_from_a_newer_container_version(mvault, model_dir, tmp_path, mvault_home):
    import struct
    import zlib

    assert mvault("push", "m:1.0.0", str(model_dir)).code == 0
    bundle = tmp_path / "m.mvpk"
    assert mvault("export", "m@1.0.0", str(bundle)).code == 0
    data = bytearray(bundle.read_bytes())
    data[8:10] = struct.pack("<H", 2)  # major version 2, with a valid checksum
    data[60:64] = struct.pack("<I", zlib.crc32(bytes(data[:60])))
    bundle.write_bytes(bytes(data))
    before = files_under(mvault_home / "store")
    r = mvault("import", str(bundle), "n:1.0.0")
    assert r.code == 5
    assert "upgrade modelvault" in r.err
    assert files_under(mvault_home / "store") == before


def test_registry_that_cannot_connect(mvault, model_dir):
    r = mvault("--registry", "postgresql://nobody@127.0.0.1:1/none", "ls")
    assert r.code == 6, r.err
    assert "127.0.0.1" in r.err and "Traceback" not in r.err


def test_s3_url_without_credentials(mvault, model_dir, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    r = mvault("--store", "s3://bucket/prefix", "push", "m:1.0.0", str(model_dir))
    assert r.code == 6, r.err
    assert "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) <= 2
    assert mvault("ls", "--json").out.strip() == "[]"  # nothing registered


def test_push_missing_source(mvault, tmp_path):
    r = mvault("push", "m:1.0.0", str(tmp_path / "nope"))
    assert r.code == 3


def test_pull_refuses_to_overwrite(mvault, model_dir, tmp_path):
    assert mvault("push", "m:1.0.0", str(model_dir)).code == 0
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = mvault("pull", "m@1.0.0", "-o", str(out))
    assert r.code == 4, r.err
    assert (out / "keep.txt").read_text() == "mine"


def test_quickstart(mvault):
    r = mvault("quickstart", "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["ok"] is True
    assert any(s["step"] == "load" for s in data["steps"])


def test_cache_ls_clear(mvault):
    listing = json.loads(mvault("cache", "ls", "--json").out)
    assert listing["blobs"] == [] and listing["count"] == 0 and listing["bytes"] == 0
    assert listing["max_bytes"] > 0
    assert json.loads(mvault("cache", "clear", "--json").out) == {"freed": 0}


def test_db_current(mvault, model_dir):
    assert mvault("push", "m:1.0.0", str(model_dir)).code == 0
    r = mvault("db", "current", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["status"] == "up to date"
