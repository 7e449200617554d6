"""The CNCF distribution registry (Debian's ``docker-registry``) on a free loopback port.

CI installs it (``.ci/run``); where it is missing the fixture fails with the
install line, it never skips.
"""

from __future__ import annotations

import contextlib
import http.client
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARY = "docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningRegistry:
    host: str  # 127.0.0.1:PORT
    root: Path
    username: str | None = None
    password: str | None = None

    def url(self, repo: str) -> str:
        return f"oci://{self.host}/{repo}"


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd entry, from apache2-utils' htpasswd (the registry reads only bcrypt)."""
    exe = shutil.which("htpasswd")
    if exe is None:
        pytest.fail("htpasswd is not installed (apt-get install -y apache2-utils)", pytrace=False)
    done = subprocess.run([exe, "-Bbn", "-C", "4", user, password], capture_output=True, check=True)
    return done.stdout.decode().strip() + "\n"


@contextlib.contextmanager
def run_registry(
    tmp: Path, *, user: str | None = None, password: str | None = None
) -> Iterator[RunningRegistry]:
    exe = shutil.which(BINARY)
    if exe is None:
        pytest.fail(
            f"{BINARY} is not installed: the OCI tests need the CNCF distribution registry "
            "(apt-get install -y docker-registry)",
            pytrace=False,
        )
    port = free_port()
    storage = tmp / "registry-storage"
    storage.mkdir(parents=True)
    auth = ""
    if user is not None:
        (tmp / "htpasswd").write_text(htpasswd_line(user, password or ""))
        auth = f"auth:\n  htpasswd:\n    realm: modelvault-test\n    path: {tmp / 'htpasswd'}\n"
    config = tmp / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: modelvault-test-secret\n" + auth
    )
    log = (tmp / "registry.log").open("wb")
    proc = subprocess.Popen([exe, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"{BINARY} exited: {(tmp / 'registry.log').read_text()[-2000:]}", pytrace=False
                )
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/v2/")
                status = conn.getresponse().status
                conn.close()
                if status in (200, 401):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{BINARY} did not answer on port {port} within 30 s", pytrace=False)
            time.sleep(0.05)
        yield RunningRegistry(f"127.0.0.1:{port}", storage, user, password)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
