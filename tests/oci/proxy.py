"""A loopback proxy in front of the real registry that misbehaves on request.

Rules are checked in order for every request; the first that matches and has
uses left acts. A rule can answer a status of its own (401, 403, 429, 500...),
break the connection part-way through a request or a response body, flip a
byte of a response, replace a response body, answer late, or stand in for a registry that
wants bearer tokens (with the token endpoint served here too).
"""

from __future__ import annotations

import base64
import http.client
import http.server
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

Match = Callable[[str, str], bool]


def on(method: str, pattern: str) -> Match:
    rx = re.compile(pattern)
    return lambda m, p: m == method and rx.search(p) is not None


@dataclass
class Rule:
    match: Match
    action: str  # status | cut_response | cut_request | drop_request | flip_byte | body | delay
    times: int = 1
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    after: int = 0  # bytes let through before a cut
    body: bytes = b""
    hits: int = 0
    # only requests whose Range starts at or after this byte (-1: any request)
    from_byte: int = -1


@dataclass
class Seen:
    method: str
    path: str
    sent: int  # request body bytes that reached the registry
    status: int
    range: str = ""


class MisbehavingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rules: list[Rule] = []
        self.log: list[Seen] = []
        self.lock = threading.Lock()
        # bearer mode: None (off) or (user, password) the token endpoint accepts
        self.bearer: tuple[str, str] | None = None
        self.tokens: set[str] = set()
        self.token_requests: list[str] = []
        self.host = ""
        # a registry that ignores Range: the header is not passed on, the whole blob comes back
        self.ignore_range = False

    def add(self, match: Match, action: str, **kw: Any) -> Rule:
        rule = Rule(match, action, **kw)
        self.rules.append(rule)
        return rule

    def pick(self, method: str, path: str, range_header: str = "") -> Rule | None:
        start = -1
        m = re.match(r"bytes=(\d+)-", range_header)
        if m:
            start = int(m.group(1))
        with self.lock:
            for r in self.rules:
                if r.from_byte >= 0 and start < r.from_byte:
                    continue
                if r.hits < r.times and r.match(method, path):
                    r.hits += 1
                    return r
        return None


def _handler(proxy: MisbehavingProxy) -> type[http.server.BaseHTTPRequestHandler]:
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: Any) -> None:
            pass

        def _reply(
            self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _token(self) -> None:
            auth = self.headers.get("Authorization", "")
            proxy.token_requests.append(self.path)
            assert proxy.bearer is not None
            want = (
                "Basic "
                + base64.b64encode(f"{proxy.bearer[0]}:{proxy.bearer[1]}".encode()).decode()
            )
            if auth != want:
                self._reply(
                    401, b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}'
                )
                return
            tok = secrets.token_hex(16)
            proxy.tokens.add(tok)
            self._reply(
                200,
                f'{{"token":"{tok}","expires_in":300}}'.encode(),
                {"Content-Type": "application/json"},
            )

        def _any(self) -> None:
            method, path = self.command, self.path
            if path.startswith("/token"):
                self._token()
                return
            n = int(self.headers.get("Content-Length") or 0)
            rule = proxy.pick(method, path, self.headers.get("Range", ""))
            if rule is not None and rule.action in ("cut_request", "drop_request"):
                arrived = self.rfile.read(min(rule.after, n))
                if rule.action == "cut_request":
                    # Forward the part that arrived, then break both sides.
                    self._forward(method, path, self.headers, arrived, partial=len(arrived))
                self.close_connection = True
                self.connection.shutdown(2)
                return
            body = self.rfile.read(n) if n else b""
            if rule is not None and rule.action == "delay":
                time.sleep(rule.after / 1000)  # a slow link: ``after`` milliseconds
            if proxy.bearer is not None:
                auth = self.headers.get("Authorization", "")
                if not (auth.startswith("Bearer ") and auth[7:] in proxy.tokens):
                    realm = f"http://{proxy.host}/token"
                    scope = ""
                    m = re.match(r"^/v2/(.+?)/(blobs|manifests)/", path)
                    if m:
                        scope = f',scope="repository:{m.group(1)}:pull,push"'
                    self._reply(
                        401,
                        b'{"errors":[{"code":"UNAUTHORIZED","message":"token needed"}]}',
                        {
                            "WWW-Authenticate": f'Bearer realm="{realm}",service="test-registry"{scope}'
                        },
                    )
                    return
            if rule is not None and rule.action == "status":
                msg = b'{"errors":[{"code":"INJECTED","message":"injected by the test proxy"}]}'
                self._reply(rule.status, msg, rule.headers)
                return
            self._forward(method, path, self.headers, body, rule=rule)

        def _forward(
            self,
            method: str,
            path: str,
            headers: Any,
            body: bytes,
            rule: Rule | None = None,
            partial: int | None = None,
        ) -> None:
            conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
            h = {
                k: v
                for k, v in headers.items()
                if k.lower() not in ("host", "authorization", "connection")
                and not (proxy.ignore_range and k.lower() == "range")
            }
            if partial is not None:
                # Send the head and part of the body, then drop the connection.
                conn.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
                for k, v in h.items():
                    conn.putheader(k, v)
                conn.endheaders()
                conn.send(body)
                conn.close()
                proxy.log.append(Seen(method, path, partial, 0))
                return
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            proxy.log.append(Seen(method, path, len(body), resp.status, headers.get("Range", "")))
            out_headers = {
                k: v
                for k, v in resp.getheaders()
                if k.lower() not in ("content-length", "connection", "transfer-encoding")
            }
            if "Location" in out_headers and out_headers["Location"].startswith(
                f"http://{proxy.upstream}"
            ):
                out_headers["Location"] = out_headers["Location"].replace(
                    proxy.upstream, proxy.host
                )
            if rule is not None and rule.action == "flip_byte" and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            if rule is not None and rule.action == "body":
                # A registry that lies consistently: no digest header to trip over.
                data = rule.body
                out_headers = {
                    k: v for k, v in out_headers.items() if k.lower() != "docker-content-digest"
                }
                out_headers.update(rule.headers)
            self.send_response(resp.status)
            for k, v in out_headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if method == "HEAD":
                return
            if rule is not None and rule.action == "cut_response":
                self.wfile.write(data[: rule.after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _any

        def do_HEAD(self) -> None:
            self._any()

    return H


@contextmanager
def run_proxy(upstream: str) -> Iterator[MisbehavingProxy]:
    proxy = MisbehavingProxy(upstream)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    server.daemon_threads = True
    proxy.host = f"127.0.0.1:{server.server_address[1]}"
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
