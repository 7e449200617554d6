"""A client for the OCI distribution API (v2), on the standard library's HTTP.

What it does beyond plain requests, each from the distribution spec:

- **auth**: a ``401`` carries a ``WWW-Authenticate`` challenge; ``Basic``
  gets the credentials from :mod:`.auth`, ``Bearer`` trades them (or
  nothing, for anonymous pulls) for a token at the challenge's realm, cached
  per scope;
- **retries**: connection errors, ``429`` (honouring ``Retry-After``) and
  ``5xx`` are retried with backoff; then one line says what failed;
- **uploads**: ``HEAD`` first (a blob the repository has is never sent),
  a cross-repository mount when another repository of the registry is known
  to hold it, then a monolithic ``PUT`` for small blobs and ``PATCH`` chunks
  for large ones; an interrupted chunk asks the session where it stands
  (``GET`` on the upload URL, its ``Range``) and goes on from there;
- **downloads**: ranged ``GET``s of large blobs in parallel parts, each part
  resumed from its last byte when the connection breaks; redirects (to a
  bucket) followed without the registry's credentials.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from ..digest import damaged
from ..errors import (
    ArtifactError,
    ArtifactNotFoundError,
    OCIAccessError,
    OCIUnavailableError,
)
from ._http import (
    IO_BLOCK,
    Broken,
    FileRange,
    advance,
    oci_message,
    range_end,
    read_all,
    with_query,
)
from .auth import Credentials, credentials_for, parse_challenge

__all__ = ["MAX_MANIFEST_BYTES", "RegistryClient", "read_all", "with_query"]

#: containerd's and the distribution registry's limit: a manifest is small JSON.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: Upload and download parts; large enough that a round trip is noise.
CHUNK = 64 * 1024 * 1024
_TRANSIENT = {429, 500, 502, 503, 504}
_REDIRECTS = {301, 302, 303, 307, 308}
_LOOPBACK = {"localhost", "127.0.0.1", "[::1]", "::1"}


def _host_of(registry: str) -> str:
    if registry.startswith("["):
        return registry[: registry.index("]") + 1]
    return registry.rsplit(":", 1)[0]


class RegistryClient:
    """One registry (``host[:port]``); thread-safe, one connection per thread.

    Loopback registries are spoken to over plain HTTP, others over HTTPS
    unless ``plain_http`` says otherwise.
    """

    def __init__(
        self,
        registry: str,
        *,
        plain_http: bool | None = None,
        credentials: Credentials | None = None,
        retries: int = 4,
        timeout: float = 300.0,
        backoff: float = 0.25,
    ) -> None:
        self.registry = registry
        loop = _host_of(registry) in _LOOPBACK
        self.scheme = "http" if (plain_http if plain_http is not None else loop) else "https"
        self.base = f"{self.scheme}://{registry}"
        self._creds = credentials
        self._creds_loaded = credentials is not None
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff
        self._lock = threading.Lock()
        self._tokens: dict[str, str] = {}
        self._basic: str | None = None
        self._local = threading.local()

    # -- connections ------------------------------------------------------------
    def _conn(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        pool: dict[tuple[str, str], http.client.HTTPConnection] = self._local.__dict__.setdefault(
            "pool", {}
        )
        conn = pool.get((scheme, netloc))
        if conn is None:
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            conn = cls(netloc, timeout=self.timeout, blocksize=IO_BLOCK)
            pool[(scheme, netloc)] = conn
        return conn

    def _drop(self, scheme: str, netloc: str) -> None:
        pool = self._local.__dict__.get("pool", {})
        conn = pool.pop((scheme, netloc), None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for conn in self._local.__dict__.pop("pool", {}).values():
            conn.close()

    def _send(
        self, method: str, url: str, headers: dict[str, str], body: Any
    ) -> http.client.HTTPResponse:
        u = urllib.parse.urlsplit(url)
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        conn = self._conn(u.scheme, u.netloc)
        try:
            conn.request(method, path, body=body, headers=headers)
            return conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self._drop(u.scheme, u.netloc)
            raise Broken(f"{method} {url}: {exc}") from exc

    # -- auth -------------------------------------------------------------------------
    def _credentials(self) -> Credentials | None:
        with self._lock:
            if not self._creds_loaded:
                self._creds = credentials_for(self.registry)
                self._creds_loaded = True
            return self._creds

    def _auth_header(self, scope: str) -> str | None:
        with self._lock:
            return self._tokens.get(scope) or self._basic

    def _answer(self, challenge: str, scope: str, what: str, sent: str | None = None) -> None:
        """Get what the challenge asks for, or raise; called once per refusal.

        ``sent`` is the Authorization the refused request carried: when another
        thread has since obtained something else, retrying with that is enough.
        """
        if sent != self._auth_header(scope):
            return
        scheme, params = parse_challenge(challenge)
        creds = self._credentials()
        if scheme == "basic":
            if creds is None:
                raise self._refused(what, "needs credentials and none are configured")
            with self._lock:
                if sent == creds.basic():
                    raise self._refused(what, f"refused the credentials of {creds.username!r}")
                self._basic = creds.basic()
            return
        if scheme != "bearer" or "realm" not in params:
            raise self._refused(what, f"asks for {scheme or 'an unknown'} authentication")
        want = params.get("scope") or scope
        token = self._fetch_token(params["realm"], params.get("service"), want, creds, what)
        with self._lock:
            self._tokens[scope] = f"Bearer {token}"

    def _fetch_token(
        self, realm: str, service: str | None, scope: str, creds: Credentials | None, what: str
    ) -> str:
        try:
            return self._token_from(realm, service, scope, creds, what)
        except Broken as exc:
            raise OCIUnavailableError(f"token server {realm} is unreachable ({exc})") from None

    def _token_from(
        self, realm: str, service: str | None, scope: str, creds: Credentials | None, what: str
    ) -> str:
        query = {k: v for k, v in (("service", service), ("scope", scope)) if v}
        headers = {"User-Agent": "modelvault"}
        if creds is not None and creds.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "client_id": "modelvault",
                **query,
            }
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            resp = self._send("POST", realm, headers, urllib.parse.urlencode(form).encode())
        else:
            if creds is not None:
                headers["Authorization"] = creds.basic()
            sep = "&" if "?" in realm else "?"
            resp = self._send("GET", realm + sep + urllib.parse.urlencode(query), headers, None)
        body = resp.read(1 << 20)
        if resp.status in (401, 403):
            who = f"the credentials of {creds.username!r}" if creds else "anonymous access"
            raise self._refused(what, f"'s token server {realm} refused {who}")
        if resp.status != 200:
            raise OCIUnavailableError(
                f"token server {realm} answered {resp.status} {resp.reason} for {what}"
            )
        try:
            reply = json.loads(body)
            token = reply.get("token") or reply.get("access_token")
        except Exception:
            token = None
        if not isinstance(token, str) or not token:
            raise OCIAccessError(f"token server {realm} gave no token for {what}")
        return token

    def _refused(self, what: str, why: str) -> OCIAccessError:
        sep = "" if why.startswith("'") else " "
        return OCIAccessError(
            f"registry {self.registry}{sep}{why} ({what})",
            hint=f"log in with `docker login {self.registry}` (or oras login); "
            "modelvault reads ~/.docker/config.json and its credential helpers",
        )

    # -- requests ---------------------------------------------------------------------
    def request(
        self,
        method: str,
        url: str,
        *,
        scope: str,
        headers: dict[str, str] | None = None,
        body: bytes | Callable[[], Any] | None = None,
        ok: tuple[int, ...] = (200,),
        what: str = "",
    ) -> http.client.HTTPResponse:
        """Send, answering auth challenges and retrying transient failures.

        Returns the response (status in ``ok``) unread; ``body`` may be a
        callable that opens a fresh body for each attempt.
        """
        if url.startswith("/"):
            url = self.base + url
        what = what or f"{method} {urllib.parse.urlsplit(url).path}"
        answered = False
        attempt = 0
        redirects = 0
        while True:
            h = {"User-Agent": "modelvault", **(headers or {})}
            same_host = url.startswith(self.base)
            auth = self._auth_header(scope) if same_host else None
            if auth:
                h["Authorization"] = auth
            data = body() if callable(body) else body
            try:
                resp = self._send(method, url, h, data)
            except Broken as exc:
                if attempt >= self.retries:
                    raise OCIUnavailableError(
                        f"registry {self.registry} is unreachable ({exc})",
                        hint="check the address, the network, and --plain-http for HTTP registries",
                    ) from None
                attempt += 1
                time.sleep(self.backoff * 2**attempt)
                continue
            finally:
                if data is not None and hasattr(data, "close"):
                    data.close()
            if resp.status in ok:
                return resp
            err = resp.read(1 << 16)
            if resp.status in _REDIRECTS and resp.getheader("Location") and redirects < 5:
                url = urllib.parse.urljoin(url, resp.getheader("Location", ""))
                redirects += 1
                continue
            if (
                resp.status == 401
                and same_host
                and not answered
                and resp.getheader("WWW-Authenticate")
            ):
                self._answer(resp.getheader("WWW-Authenticate") or "", scope, what, auth)
                answered = True
                continue
            if resp.status in _TRANSIENT and attempt < self.retries:
                attempt += 1
                time.sleep(min(self._retry_after(resp, attempt), 10.0))
                continue
            if resp.status == 401 and answered:
                who = f" of {self._creds.username!r}" if self._creds else ""
                raise self._refused(what, f"refused the credentials{who} with 401 {resp.reason}")
            raise self._error(resp.status, resp.reason, err, what)

    def _retry_after(self, resp: http.client.HTTPResponse, attempt: int) -> float:
        with contextlib.suppress(TypeError, ValueError):
            return max(float(resp.getheader("Retry-After") or ""), 0.0)
        return float(self.backoff * 2**attempt)

    def _error(self, status: int, reason: str, body: bytes, what: str) -> Exception:
        detail = oci_message(body)
        line = f"registry {self.registry} answered {status} {reason} to {what}" + (
            f": {detail}" if detail else ""
        )
        if status == 401:
            return self._refused(what, f"refused the request with 401 {reason}")
        if status == 403:
            return OCIAccessError(
                line, hint="the credentials lack this permission on the repository"
            )
        if status == 404:
            return ArtifactNotFoundError(line)
        if status == 429:
            return OCIUnavailableError(line, hint="the registry is rate limiting; retry later")
        if status >= 500:
            return OCIUnavailableError(line, hint="the registry failed; retry later")
        return ArtifactError(line)

    # -- manifests --------------------------------------------------------------------
    def get_manifest(self, repo: str, target: str, accept: list[str]) -> tuple[bytes, str]:
        """The manifest bytes (at most :data:`MAX_MANIFEST_BYTES`) and their media type.

        When the registry names the digest (``Docker-Content-Digest``), the
        bytes must hash to it.
        """
        resp = self.request(
            "GET",
            f"/v2/{repo}/manifests/{target}",
            scope=f"repository:{repo}:pull",
            headers={"Accept": ", ".join(accept)},
            what=f"manifest {repo}:{target}" if ":" not in target else f"manifest {repo}@{target}",
        )
        declared = resp.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > MAX_MANIFEST_BYTES:
            resp.close()
            self._drop(self.scheme, self.registry)
            raise ArtifactError(
                f"manifest {repo}:{target} is {declared} bytes; a manifest is at most "
                f"{MAX_MANIFEST_BYTES} bytes"
            )
        data = resp.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            resp.close()
            self._drop(self.scheme, self.registry)
            raise ArtifactError(
                f"manifest {repo}:{target} is larger than {MAX_MANIFEST_BYTES} bytes"
            )
        media_type = (resp.getheader("Content-Type") or "").split(";")[0].strip()
        named = (resp.getheader("Docker-Content-Digest") or "").strip()
        if named.startswith("sha256:"):
            import hashlib

            actual = "sha256:" + hashlib.sha256(data).hexdigest()
            if actual != named:
                raise damaged(named, actual, where=f"manifest {repo}:{target} from {self.registry}")
        return data, media_type

    def put_manifest(
        self, repo: str, target: str, data: bytes, media_type: str
    ) -> http.client.HTTPMessage:
        """Put a manifest; the response's headers (``OCI-Subject``, ``Location``...)."""
        resp = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{target}",
            scope=f"repository:{repo}:pull,push",
            headers={"Content-Type": media_type, "Content-Length": str(len(data))},
            body=data,
            ok=(201, 200),
            what=f"manifest {repo}:{target}",
        )
        resp.read()
        return resp.headers

    # -- blobs: upload ----------------------------------------------------------------
    def blob_size(self, repo: str, digest: str) -> int | None:
        """The size of a blob the repository holds, or None."""
        try:
            resp = self.request(
                "HEAD",
                f"/v2/{repo}/blobs/{digest}",
                scope=f"repository:{repo}:pull",
                what=f"blob {digest}",
            )
        except ArtifactNotFoundError:
            return None
        resp.read()
        n = resp.getheader("Content-Length")
        return int(n) if n and n.isdigit() else 0

    def mount_blob(self, repo: str, digest: str, source_repo: str) -> bool:
        """Ask the registry to link a blob from another repository; True when it did."""
        resp = self.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/?mount={digest}&from={urllib.parse.quote(source_repo)}",
            scope=f"repository:{repo}:pull,push",
            headers={"Content-Length": "0"},
            ok=(201, 202),
            what=f"mount of {digest} from {source_repo}",
        )
        resp.read()
        # 202: the registry opened an upload session instead; it expires unused.
        return resp.status == 201

    def _start_upload(self, repo: str) -> str:
        resp = self.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            scope=f"repository:{repo}:pull,push",
            headers={"Content-Length": "0"},
            ok=(202,),
            what=f"upload to {repo}",
        )
        resp.read()
        return self._location(resp)

    def _location(self, resp: http.client.HTTPResponse) -> str:
        loc = resp.getheader("Location")
        if not loc:
            raise ArtifactError(f"registry {self.registry} opened an upload without a Location")
        return urllib.parse.urljoin(self.base + "/", loc)

    def upload_blob(
        self,
        repo: str,
        digest: str | None,
        path: str | os.PathLike[str],
        offset: int,
        size: int,
        *,
        progress: Any = None,
        chunk: int | None = None,
        tap: Callable[[int, bytes], None] | None = None,
        seal: Callable[[], str] | None = None,
    ) -> str:
        """Upload ``size`` bytes of ``path`` from ``offset`` as a blob; returns its digest.

        A blob of at most ``chunk`` bytes whose ``digest`` is known goes in one
        ``PUT``; others in ``PATCH`` chunks, each resumed where the session
        stands when it breaks. ``tap(offset, block)`` sees every block read
        from the file (a block again after a resume); ``seal()``, called
        before the closing ``PUT``, returns the digest when ``digest`` is
        None, and may raise to abandon the upload (the session is deleted).
        """
        chunk = chunk or CHUNK
        scope = f"repository:{repo}:pull,push"
        what = f"upload of {digest or path}"
        loc = self._start_upload(repo)
        if digest is not None and size <= chunk:
            self.request(
                "PUT",
                with_query(loc, digest=digest),
                scope=scope,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                body=lambda: FileRange(path, offset, size, tap),
                ok=(201,),
                what=what,
            ).read()
            advance(progress, size)
            return digest
        done = 0
        broken = 0
        while done < size:
            n = min(chunk, size - done)
            try:
                resp = self._patch(loc, scope, path, offset + done, done, n, what, tap)
            except Broken:
                broken += 1
                if broken > self.retries:
                    self._cancel(loc, scope)
                    raise OCIUnavailableError(
                        f"registry {self.registry} kept breaking the {what}"
                    ) from None
                loc, resumed = self._resume(loc, repo, scope, what)
                advance(progress, resumed - done)
                done = resumed
                continue
            except ArtifactNotFoundError:
                # After a broken chunk, the registry may still have been taking in the
                # cut request's bytes when it told us where the session stood, and then
                # refuse the next chunk (BLOB_UPLOAD_INVALID): start a new session.
                if not broken or broken > self.retries:
                    self._cancel(loc, scope)
                    raise
                broken += 1
                self._cancel(loc, scope)
                loc = self._start_upload(repo)
                advance(progress, -done)
                done = 0
                continue
            except BaseException:
                self._cancel(loc, scope)
                raise
            loc = self._location(resp)
            advance(progress, n)
            done = range_end(resp, done + n)
        try:
            if seal is not None:
                sealed = seal()
                digest = digest or sealed
            if digest is None:
                raise ArtifactError(f"{what}: no digest to close the upload with")
        except BaseException:
            self._cancel(loc, scope)
            raise
        self.request(
            "PUT",
            with_query(loc, digest=digest),
            scope=scope,
            headers={"Content-Length": "0"},
            ok=(201,),
            what=f"upload of {digest}",
        ).read()
        return digest

    def _cancel(self, loc: str, scope: str) -> None:
        """Delete an upload session that will not be completed (else it expires unused)."""
        with contextlib.suppress(Exception):
            self.request(
                "DELETE", loc, scope=scope, ok=(204, 404), what="cancel of an upload"
            ).read()

    def _patch(
        self,
        loc: str,
        scope: str,
        path: Any,
        at: int,
        start: int,
        n: int,
        what: str,
        tap: Callable[[int, bytes], None] | None = None,
    ) -> http.client.HTTPResponse:
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(n),
            "Content-Range": f"{start}-{start + n - 1}",
        }
        body = FileRange(path, at, n, tap)
        h = {"User-Agent": "modelvault", **headers}
        auth = self._auth_header(scope)
        if auth:
            h["Authorization"] = auth
        try:
            resp = self._send("PATCH", loc, h, body)
        finally:
            body.close()
        if resp.status != 202:
            err = resp.read(1 << 16)
            if resp.status in _TRANSIENT:
                raise Broken(f"PATCH answered {resp.status}")
            if resp.status == 401:  # a token expired mid-upload: renew it, then resume
                self._answer(resp.getheader("WWW-Authenticate") or "", scope, what, auth)
                raise Broken("PATCH answered 401")
            raise self._error(resp.status, resp.reason, err, what)
        resp.read()
        return resp

    def _resume(self, loc: str, repo: str, scope: str, what: str) -> tuple[str, int]:
        """Where an upload session stands after a broken chunk: (location, bytes it holds)."""
        try:
            resp = self.request("GET", loc, scope=scope, ok=(204,), what=what)
            resp.read()
            return self._location(resp), range_end(resp, 0)
        except (ArtifactNotFoundError, ArtifactError):
            # The registry dropped the session (some refuse to resume after a short
            # chunk): start a new one from the first byte.
            return self._start_upload(repo), 0

    # -- blobs: download --------------------------------------------------------------
    def open_blob(
        self, repo: str, digest: str, start: int = 0, end: int | None = None
    ) -> http.client.HTTPResponse:
        """A response streaming the blob (``start``..``end`` inclusive when ranged)."""
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        return self.request(
            "GET",
            f"/v2/{repo}/blobs/{digest}",
            scope=f"repository:{repo}:pull",
            headers=headers,
            ok=(200, 206),
            what=f"blob {digest}",
        )

    def fetch_range(
        self,
        repo: str,
        digest: str,
        fd: int,
        start: int,
        end: int,
        *,
        size: int,
        progress: Any = None,
        opened: Callable[[bool], None] | None = None,
        wrote: Callable[[int], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> bool:
        """Write bytes ``start..end`` (inclusive) of a blob of ``size`` bytes at the same offsets of ``fd``.

        Returns False when the registry ignored the range of a request from
        byte 0 and sent the whole blob (written in full): the caller need not
        fetch the rest. A whole blob sent for a request from a later byte is
        read past the bytes before it. A broken stream is resumed from the
        last byte received. ``opened(ranged)`` is called once, when the first
        response's status is known; ``wrote(pos)`` after every block, ``pos``
        one past the last byte written; ``stop()`` true ends the transfer early.
        """
        pos = start
        broken = 0
        first = True
        whole = False
        view = memoryview(bytearray(IO_BLOCK))
        while pos <= end:
            if stop is not None and stop():
                return True
            resp = self.open_blob(repo, digest, pos, end)
            skip = 0
            if resp.status == 200:
                declared = resp.getheader("Content-Length")
                if declared and declared.isdigit() and int(declared) != size:
                    resp.close()
                    self._drop(self.scheme, self.registry)
                    raise damaged(
                        digest,
                        f"{declared} bytes (expected {size})",
                        where=f"blob {repo}@{digest} from {self.registry}",
                    )
                if first and start == 0:
                    whole, end = True, size - 1
                skip = pos
            if first:
                first = False
                if opened is not None:
                    opened(not whole)
            try:
                while skip > 0:
                    n = _read_into(resp, view[: min(len(view), skip)])
                    if not n:
                        break
                    skip -= n
                while skip == 0 and pos <= end:
                    n = _read_into(resp, view[: min(len(view), end + 1 - pos)])
                    if not n:
                        break
                    os.pwrite(fd, view[:n], pos)
                    pos += n
                    advance(progress, n)
                    if wrote is not None:
                        wrote(pos)
                    if stop is not None and stop():
                        break
            except Broken:
                broken += 1
                if broken > self.retries:
                    raise OCIUnavailableError(
                        f"registry {self.registry} kept breaking the download of {digest}"
                    ) from None
                self._drop(self.scheme, self.registry)
                continue
            if not resp.isclosed():  # more sent than asked for (a whole blob), or stopped
                resp.close()
                self._drop(self.scheme, self.registry)
            if pos <= end and not (stop is not None and stop()):
                # the body ended early without an error: resume as well
                broken += 1
                if broken > self.retries:
                    raise OCIUnavailableError(
                        f"registry {self.registry} kept ending the download of {digest} early"
                    )
        return not whole


def _read_into(resp: http.client.HTTPResponse, view: memoryview) -> int:
    try:
        return resp.readinto(view)
    except (OSError, http.client.HTTPException) as exc:
        raise Broken(str(exc)) from exc
