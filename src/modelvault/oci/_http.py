"""HTTP pieces the registry client is built from: bodies, ranges, error texts."""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from collections.abc import Callable
from typing import Any

from ..errors import ArtifactError

IO_BLOCK = 1 << 20


class Broken(Exception):
    """A connection broke mid-transfer; the caller resumes."""


class FileRange:
    """``length`` bytes of a file from ``offset``, as a body http.client can send.

    ``tap(offset, block)``, when given, sees every block as it is read.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        offset: int,
        length: int,
        tap: Callable[[int, bytes], None] | None = None,
    ) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close(), after the request
        self._f.seek(offset)
        self._pos = offset
        self._left = length
        self._tap = tap

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        if self._tap is not None and data:
            self._tap(self._pos, data)
        self._pos += len(data)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._f.close()


def oci_message(body: bytes) -> str:
    """The first ``errors[].code: message`` of a registry error body, if it has one."""
    try:
        errs = json.loads(body).get("errors") or []
        e = errs[0]
        return f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
    except Exception:
        return body[:120].decode(errors="replace").strip()


def range_end(resp: http.client.HTTPResponse, default: int) -> int:
    """One past the last byte the session's ``Range: 0-N`` header says it holds."""
    r = resp.getheader("Range")
    if r:
        _, _, last = r.rpartition("-")
        if last.isdigit():
            return int(last) + 1
    return default


def with_query(url: str, **params: str) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + urllib.parse.urlencode(params)


def advance(progress: Any, n: int) -> None:
    if progress is not None and n > 0:
        progress.advance(n)


def read_all(resp: http.client.HTTPResponse, limit: int, what: str) -> bytes:
    """The whole body, refusing more than ``limit`` bytes."""
    data = resp.read(limit + 1)
    if len(data) > limit:
        raise ArtifactError(f"{what} is larger than {limit} bytes")
    return data
