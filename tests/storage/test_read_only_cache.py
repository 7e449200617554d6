"""A cache the user cannot write, in front of an S3 store (SeaweedFS), through the real CLI.

The cache still serves what it holds (verified as it is read: a damaged entry
it cannot remove is passed over and the blob read from the store), and what it
lacks is read from the store into a private temporary directory: the cache is
never filled and no lock file is written.
"""

from __future__ import annotations

import json
import shutil
import uuid

import pytest

from tests.cli.as_reader import make_read_only, make_writable, mvault, shared_dir, snapshot
from tests.storage.conftest import BUCKET
from tests.storage.seaweed import SeaweedS3

pytestmark = [pytest.mark.s3]


def test_a_read_only_cache_is_read_and_never_filled(s3_env: SeaweedS3, seaweed: SeaweedS3) -> None:
    root = shared_dir("mvault-rocache-")
    try:
        home, cache = root / "home", root / "cache"
        env = {
            **seaweed.env(),
            "MVAULT_HOME": str(home),
            "MVAULT_STORE": f"s3://{BUCKET}/ro-{uuid.uuid4().hex[:8]}",
            "MVAULT_CACHE_DIR": str(cache),
            "MVAULT_REGISTRY": "",
        }
        (root / "a.txt").write_text("version one\n" * 100)
        (root / "b.txt").write_text("version two\n" * 100)
        for args in (
            ["push", "m:1.0.0", "a.txt"],
            ["push", "m:2.0.0", "b.txt"],
            ["pull", "m:1.0.0", "-o", "filled.txt"],  # fills the cache with 1.0.0's blobs
        ):
            r = mvault(args, env, root)
            assert r.returncode == 0, r.stderr
        cached = [p for p in (cache / "blobs").rglob("*") if p.is_file()]
        assert cached
        for p in cached:  # damaged in place, same size: only hashing can tell
            p.chmod(0o644)
            p.write_bytes(bytes(b ^ 0xFF for b in p.read_bytes()))
        out = root / "out"
        out.mkdir()
        out.chmod(0o777)
        make_read_only(home)
        make_read_only(cache)
        before = snapshot(cache)

        r = mvault(["pull", "m:1.0.0", "-o", str(out / "a.txt")], env, root, as_reader=True)
        assert r.returncode == 0, r.stderr
        assert (out / "a.txt").read_text() == (root / "a.txt").read_text()
        assert "failed verification" in r.stderr  # the damaged entry was caught, then passed over
        r = mvault(["pull", "m:2.0.0", "-o", str(out / "b.txt")], env, root, as_reader=True)
        assert r.returncode == 0, r.stderr  # a miss: read from the store, not kept
        assert (out / "b.txt").read_text() == (root / "b.txt").read_text()
        r = mvault(["cache", "ls", "--json"], env, root, as_reader=True)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["count"] == len(cached)
        assert snapshot(cache) == before  # never filled, no lock file
        r = mvault(["cache", "clear"], env, root, as_reader=True)
        assert r.returncode == 6, r.stderr
        assert f"mvault: error: the cache {cache} is read-only here" in r.stderr
        assert snapshot(cache) == before
    finally:
        make_writable(root)
        shutil.rmtree(root, ignore_errors=True)
