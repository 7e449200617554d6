"""sha256 and BLAKE3 of a stream of blocks, each on a thread of its own.

Both digests are sequential (sha256 by design; BLAKE3's tree is not exposed
by the binding), so the most two threads can do is hash side by side while
a third reads: the reader only queues each block, and a bounded queue keeps
the reader from running more than a few blocks ahead.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from ..digest import damaged, new_hasher
from ..errors import ArtifactError

__all__ = ["HashingTap"]


class HashingTap:
    """Digests of the blocks a reader hands over in order, each algorithm on a thread of its own.

    The reader (an upload's body, a pull's follower) only queues each block
    (bounded: the hashes keep up or the reader waits), so hashing overlaps
    the reading and the two digests each other; a block handed over again
    (re-read after a resumed chunk) is not hashed twice.
    """

    def __init__(
        self, offset: int, size: int, algorithms: tuple[str, ...] = ("sha256", "blake3")
    ) -> None:
        self.offset = offset
        self.size = size
        self.upto = 0  # bytes queued for hashing, from offset
        self.algorithms = algorithms
        self.hashers = [new_hasher(a) for a in algorithms]
        self._queues: list[queue.Queue[bytes | None]] = [queue.Queue(8) for _ in self.hashers]
        self._threads = [
            threading.Thread(target=self._run, args=(h, q), name=f"hash-{a}", daemon=True)
            for a, h, q in zip(algorithms, self.hashers, self._queues)
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _run(hasher: Any, q: queue.Queue[bytes | None]) -> None:
        while (block := q.get()) is not None:
            hasher.update(block)

    def __call__(self, at: int, block: bytes) -> None:
        rel = at - self.offset
        end = rel + len(block)
        if end <= self.upto:
            return  # read again after a resume: hashed already
        if rel > self.upto:
            raise ArtifactError(f"byte {rel} was read before byte {self.upto}")
        if rel < self.upto:
            block = block[self.upto - rel :]
        for q in self._queues:
            q.put(block)
        self.upto = end

    def close(self) -> None:
        for q, t in zip(self._queues, self._threads):
            if t.is_alive():
                q.put(None)
                t.join()

    def digests(self) -> dict[str, str]:
        """Every digest, by algorithm, once the reader is done."""
        self.close()
        return {a: h.digest_str() for a, h in zip(self.algorithms, self.hashers)}

    def seal(self, blake3: str, where: str) -> str:
        """The sha256, once the BLAKE3 is checked against ``blake3`` (the manifest's digest)."""
        got = self.digests()
        sha, b3 = got["sha256"], got["blake3"]
        if self.upto != self.size:
            raise damaged(blake3, f"{self.upto} bytes (expected {self.size})", where=where)
        if b3 != blake3:
            raise damaged(blake3, b3, where=where)
        return sha
