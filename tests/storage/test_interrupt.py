"""Ctrl-C during a push to S3, on a real terminal, against the SeaweedFS server.

The push is interrupted while its parts are in flight: the command exits 130
promptly, nothing is registered, and no multipart upload is left open.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.cli.pty_run import run_on_pty
from tests.storage.conftest import BUCKET
from tests.storage.seaweed import SeaweedS3

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def test_ctrl_c_during_an_s3_push_stops_at_once(
    s3_env: SeaweedS3, seaweed: SeaweedS3, tmp_path: Path
) -> None:
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        for _ in range(48):
            f.write(os.urandom(8 << 20))  # 384 MiB: several seconds of upload here
    prefix = f"int-{uuid.uuid4().hex[:8]}"
    env = {
        **seaweed.env(),
        "MVAULT_HOME": str(tmp_path / "home"),
        "MVAULT_STORE": f"s3://{BUCKET}/{prefix}",
        "MVAULT_S3_PART_SIZE": "8MiB",
        "MVAULT_S3_CONCURRENCY": "4",
    }

    def uploading(text: str) -> bool:
        return re.search(r"uploading file\s+\S+\s+(?:[1-9]\d*\.\d)/384\.0 MiB", text) is not None

    screen = run_on_pty(
        ["push", "big:1.0.0", str(src)], cwd=tmp_path, env=env, interrupt_when=uploading
    )
    assert screen.after_interrupt is not None, screen.text[-2000:]
    assert screen.code == 130, screen.text[-2000:]
    assert screen.after_interrupt < 2.5, f"took {screen.after_interrupt:.1f} s to stop"
    assert "mvault: interrupted" in screen.text
    assert "Traceback" not in screen.text

    client = seaweed.client()
    uploads = client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])
    assert uploads == []
    objects = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    assert objects == []  # the blob never completed
    ls = subprocess.run(
        [sys.executable, "-m", "modelvault.cli.main", "ls", "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ls.returncode == 0, ls.stderr
    assert ls.stdout.strip() == "[]"
