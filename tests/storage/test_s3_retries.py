"""Throttling and 5xx answers: retried with backoff a bounded number of times.

A small HTTP proxy in front of the real SeaweedFS server answers ``503
SlowDown`` to the first N requests and forwards the rest unchanged.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from modelvault.errors import StoreUnavailableError
from modelvault.storage.s3 import S3Store
from tests.storage.conformance import blob
from tests.storage.seaweed import SeaweedS3

pytestmark = pytest.mark.s3

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
)


class FlakyProxy:
    def __init__(self, upstream_port: int, fail_first: int) -> None:
        self.fail_left = fail_first
        self.requests = 0
        self.seen: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    proxy.requests += 1
                    proxy.seen.append(f"{self.command} {self.path}")
                    fail = proxy.fail_left > 0
                    if fail:
                        proxy.fail_left -= 1
                if fail:
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                try:
                    conn.putrequest(
                        self.command, self.path, skip_host=True, skip_accept_encoding=True
                    )
                    for name, value in self.headers.items():
                        conn.putheader(name, value)
                    conn.endheaders(body)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status)
                    for name, value in resp.getheaders():
                        if name.lower() not in (
                            "content-length",
                            "transfer-encoding",
                            "connection",
                        ):
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky(
    s3_env: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[int], FlakyProxy]]:
    made: list[FlakyProxy] = []

    def make(fail_first: int) -> FlakyProxy:
        proxy = FlakyProxy(s3_env.ports["s3"], fail_first)
        made.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{proxy.port}")
        return proxy

    yield make
    for proxy in made:
        proxy.close()


def test_transient_throttling_is_retried(
    flaky: Callable[[int], FlakyProxy], make_s3_store: Callable[..., Any]
) -> None:
    proxy = flaky(2)
    store: S3Store = make_s3_store()
    d, data = blob(1000)
    assert store.put_bytes(d, data) is True  # the HEAD is throttled twice, then succeeds
    assert store.read_range(d, 0, 1000) == data
    assert proxy.fail_left == 0


def test_persistent_5xx_gives_up_quickly(
    flaky: Callable[[int], FlakyProxy], make_s3_store: Callable[..., Any]
) -> None:
    proxy = flaky(10_000)
    store: S3Store = make_s3_store()
    t = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="kept failing") as err:
        store.exists(blob(10)[0])
    assert time.monotonic() - t < 10
    assert proxy.requests == 4, proxy.seen  # max_attempts (1 + 3 retries), then a clear error
    assert err.value.hint is not None
    assert "try again later" in err.value.hint
