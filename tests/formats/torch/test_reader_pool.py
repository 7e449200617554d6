"""The weight readers' process-wide thread pool, across a fork."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("torch")

from modelvault.formats._torch import stream


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_gets_a_working_pool_of_its_own() -> None:
    parent = stream._reader_pool()
    assert parent.submit(lambda: 41 + 1).result(timeout=10) == 42
    # Fork while another thread holds the pool's lock: the child must not inherit it held.
    stream._pool_lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # the child: a new pool that runs work, and a free lock
            code = 1
            try:
                if not stream._pool_lock.acquire(timeout=5):
                    os._exit(3)  # inherited held: the child's first load would hang
                stream._pool_lock.release()
                pool = stream._reader_pool()
                ok = pool is not parent and pool.submit(lambda: 7).result(timeout=10) == 7
                code = 0 if ok else 2
            finally:
                os._exit(code)
    finally:
        stream._pool_lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert stream._reader_pool() is parent  # the parent keeps its own
