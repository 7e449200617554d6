"""``mvault inspect``, ``--version``, ``doctor`` and the error contract of the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from modelvault import __version__
from modelvault.formats.bundle import write_bundle
from modelvault.formats.files import FilesPlugin


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    src = tmp_path / "model"
    src.mkdir()
    (src / "weights.bin").write_bytes(os.urandom(10_000))
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o755)
    path = tmp_path / "model.mvpk"
    write_bundle(FilesPlugin().pack(src), path)
    return path


def test_version(mvault):
    r = mvault("--version")
    assert r.code == 0
    assert __version__ in r.out


def test_inspect_intact_bundle(mvault, bundle):
    r = mvault("inspect", str(bundle))
    assert r.code == 0, r.err
    assert "intact: every blob verified" in r.out
    assert "files" in r.out


def test_inspect_json(mvault, bundle):
    r = mvault("inspect", str(bundle), "--json")
    assert r.code == 0
    data = json.loads(r.out)
    assert data["verified"] is True
    assert data["plugin"]["name"] == "files"
    assert data["digest"].startswith("blake3:")
    assert {b["role"] for b in data["blobs"]} == {"file"}


def test_inspect_damaged_blob_is_one_line_and_exit_5(mvault, bundle):
    data = bytearray(bundle.read_bytes())
    data[-10] ^= 0x01  # inside the last blob
    bundle.write_bytes(bytes(data))
    r = mvault("inspect", str(bundle))
    assert r.code == 5
    assert r.err.startswith("mvault: error: blob ")
    assert "damaged" in r.err
    assert "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) <= 2  # the line and its hint


def test_inspect_truncated(mvault, bundle):
    bundle.write_bytes(bundle.read_bytes()[:100])
    r = mvault("inspect", str(bundle))
    assert r.code == 5
    assert "Traceback" not in r.err
    assert "bundle" in r.err


def test_inspect_not_a_bundle(mvault, tmp_path):
    p = tmp_path / "x.mvpk"
    p.write_text("just some text, not a bundle at all, long enough for a preamble" * 2)
    r = mvault("inspect", str(p))
    assert r.code == 5
    assert "not a modelvault bundle" in r.err


def test_inspect_missing_file(mvault, tmp_path):
    r = mvault("inspect", str(tmp_path / "nope.mvpk"))
    assert r.code == 3
    assert "No such file" in r.err or "does not exist" in r.err


def test_inspect_directory(mvault, tmp_path):
    r = mvault("inspect", str(tmp_path))
    assert r.code != 0
    assert "Traceback" not in r.err


def test_debug_shows_traceback(mvault, bundle, monkeypatch):
    bundle.write_bytes(b"\x00" * 10)
    monkeypatch.setenv("MVAULT_DEBUG", "1")
    r = mvault("inspect", str(bundle))
    assert r.code == 5
    assert "Traceback" in r.err


def test_unknown_command_is_usage_error(mvault):
    r = mvault("frobnicate")
    assert r.code == 2
    assert "invalid choice" in r.err


def test_doctor_json_offline(mvault):
    r = mvault("doctor", "--offline", "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["modelvault"] == __version__
    assert set(data["optional"]) >= {"torch", "boto3", "torch_tensorrt", "psycopg", "pymysql"}
    assert "available" in data["gpu"]
    assert "available" in data["tensorrt"]
    assert data["config"]["registry"].startswith("sqlite:///")


def test_doctor_masks_passwords(mvault, monkeypatch):
    monkeypatch.setenv("MVAULT_REGISTRY", "postgresql://bob:s3cret@127.0.0.1:1/x")
    r = mvault("doctor", "--offline", "--json")
    assert "s3cret" not in r.out
    assert "bob:***@" in r.out
