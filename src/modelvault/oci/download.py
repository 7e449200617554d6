"""The layers of a pull: parallel ranged GETs written in place, hashed as they arrive.

Each layer's file is created (its space reserved) where it will be adopted
from (the store's staging directory), and its bytes are written at their own
offsets by ``workers`` threads, one ranged ``GET`` of ``part`` bytes each. The
first request of a layer says whether the registry honours ``Range``: a
``206`` and the other parts are queued at once; a ``200`` carries the whole
blob, written in one stream.

sha256 is sequential, BLAKE3 too (its tree is not exposed), so the hashes
follow the *frontier*, the first byte not yet written: one thread per layer
reads back from the page cache what the fetchers have written contiguously
from byte 0 (and waits for more), and hands each block to a thread per
algorithm (:class:`._hashing.HashingTap`). The hashes are done a
moment after the last byte lands, not one pass later (``follow=False``,
or :data:`FOLLOW`, hashes after the download instead, for comparison).

Any failure stops every transfer; the caller removes the files.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StorageError
from ..storage._io import reserve_space, start_writeback
from ..storage.base import os_error
from ._hashing import HashingTap
from .client import RegistryClient
from .layout import Descriptor

__all__ = ["Layer", "download"]

_HASH_BLOCK = 4 * 1024 * 1024
#: Hash as the bytes land (True), or read the file back once it is complete
#: (False); ``benchmarks/oci_bench.py`` times both.
FOLLOW = True


@dataclass
class Layer:
    """One layer to fetch to ``path``; ``sha256`` and ``blake3`` are filled in."""

    desc: Descriptor
    path: Path
    want_blake3: bool = True
    sha256: str = ""
    blake3: str = ""


class _Sink:
    """A layer's file and which bytes of each part have been written."""

    def __init__(self, layer: Layer, part: int) -> None:
        self.layer = layer
        self.size = layer.desc.size
        self.part = part
        # [start, end (exclusive), written up to]; the first part until the registry answers
        self.parts: list[list[int]] = [[0, min(part, self.size), 0]]
        self.cond = threading.Condition()
        try:
            self.fd = os.open(layer.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise os_error(exc, str(layer.path), "creating") from exc
        try:
            reserve_space(self.fd, self.size)
        except OSError as exc:
            os.close(self.fd)
            raise os_error(exc, str(layer.path), "reserving space for") from exc

    def frontier(self) -> int:
        """One past the last byte written contiguously from byte 0 (call under ``cond``)."""
        for _start, end, got in self.parts:
            if got < end:
                return got
        return self.parts[-1][1]

    def close(self) -> None:
        os.close(self.fd)


def _follow(sink: _Sink, abort: threading.Event) -> dict[str, str]:
    """Read back what has been written contiguously from byte 0 and hash it, until the end."""
    algorithms = ("sha256", "blake3") if sink.layer.want_blake3 else ("sha256",)
    tap = HashingTap(0, sink.size, algorithms)
    try:
        pos = 0
        while pos < sink.size:
            with sink.cond:
                while (upto := sink.frontier()) <= pos:
                    if abort.is_set():
                        return {}
                    sink.cond.wait(0.5)
            while pos < upto:
                try:
                    block = os.pread(sink.fd, min(_HASH_BLOCK, upto - pos), pos)
                except OSError as exc:
                    raise os_error(exc, str(sink.layer.path), "reading back") from exc
                if not block:
                    raise StorageError(f"could not read back {sink.layer.path} at offset {pos}")
                tap(pos, block)
                pos += len(block)
        return tap.digests()
    finally:
        tap.close()


def download(
    client: RegistryClient,
    repo: str,
    layers: Sequence[Layer],
    *,
    workers: int = 8,
    part: int,
    progress: Any = None,
    follow: bool | None = None,
) -> None:
    """Fetch every layer to its path and hash it (sha256, and BLAKE3 where wanted).

    The files are left for the caller to check and adopt, or remove.
    """
    follow = FOLLOW if follow is None else follow
    abort = threading.Event()
    sinks: list[_Sink] = []
    fetch_pool = ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="oci-get")
    hash_pool = ThreadPoolExecutor(
        max_workers=max(1, min(len(layers), max(workers, 1))), thread_name_prefix="oci-hash"
    )
    queued: list[Future[Any]] = []
    hashes: list[tuple[Layer, Future[dict[str, str]]]] = []

    def fetch(sink: _Sink, index: int) -> None:
        with sink.cond:
            start, end, _ = sink.parts[index]

        def wrote(pos: int) -> None:
            with sink.cond:
                sink.parts[index][2] = pos
                sink.cond.notify_all()

        def opened(ranged: bool) -> None:
            if index != 0:
                return
            with sink.cond:
                if not ranged:  # the whole blob comes in this one response
                    sink.parts[0][1] = sink.size
                    return
                first = len(sink.parts)
                sink.parts += [
                    [s, min(s + sink.part, sink.size), s]
                    for s in range(sink.part, sink.size, sink.part)
                ]
                new = range(first, len(sink.parts))
            queued.extend(fetch_pool.submit(guarded, sink, j) for j in new)

        client.fetch_range(
            repo,
            sink.layer.desc.digest,
            sink.fd,
            start,
            end - 1,
            size=sink.size,
            progress=progress,
            opened=opened,
            wrote=wrote,
            stop=abort.is_set,
        )
        with sink.cond:
            start, end, _ = sink.parts[index]
        start_writeback(sink.fd, start, end - start)  # the final fsync then waits for little

    def start_hashing() -> None:
        for sink in sinks:
            hashes.append((sink.layer, hash_pool.submit(_follow, sink, abort)))

    def stop_all() -> None:
        abort.set()
        for sink in sinks:
            with sink.cond:
                sink.cond.notify_all()

    def guarded(sink: _Sink, index: int) -> None:
        try:
            fetch(sink, index)
        except BaseException:
            stop_all()  # the hashers waiting on this part give up at once
            raise

    def settle(futures: list[Future[Any]]) -> None:
        seen = set(futures)
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_EXCEPTION)
            for f in done:
                f.result()  # raises the first failure
            new = set(queued) - seen  # parts queued meanwhile
            seen |= new
            pending |= new

    try:
        for layer in layers:
            sinks.append(_Sink(layer, part))
        if follow:
            start_hashing()
        queued.extend(fetch_pool.submit(guarded, s, 0) for s in sinks if s.size > 0)
        settle([*queued, *(f for _, f in hashes)])
        if not follow:
            start_hashing()
            settle([f for _, f in hashes])
        for layer, f in hashes:
            got = f.result()
            layer.sha256 = got["sha256"]
            layer.blake3 = got.get("blake3", "")
    except BaseException:
        stop_all()
        raise
    finally:
        fetch_pool.shutdown(wait=True, cancel_futures=True)
        hash_pool.shutdown(wait=True, cancel_futures=True)
        for sink in sinks:
            sink.close()
