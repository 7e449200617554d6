"""The GIL's switch interval during a load that streams beside Python work, and after it."""

from __future__ import annotations

import sys
import threading

import pytest

pytest.importorskip("torch")

from modelvault.formats._torch import stream


@pytest.fixture(autouse=True)
def _interval():  # type: ignore[no-untyped-def]
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield
    assert stream._switch_depth == 0, "a test left a load entered"
    sys.setswitchinterval(old)


def test_lowered_for_the_load_and_restored_after_the_last_of_several() -> None:
    stream._prompt_switching(True)
    assert sys.getswitchinterval() == pytest.approx(stream.SWITCH_INTERVAL, rel=0.05)
    stream._prompt_switching(True)  # a second load beside the first
    stream._prompt_switching(False)
    assert sys.getswitchinterval() == pytest.approx(stream.SWITCH_INTERVAL, rel=0.05), (
        "the other load runs on"
    )
    stream._prompt_switching(False)
    assert sys.getswitchinterval() == pytest.approx(0.005, rel=0.05)
    stream._prompt_switching(False)  # one leave too many changes nothing
    assert sys.getswitchinterval() == pytest.approx(0.005, rel=0.05)


def test_an_interval_already_shorter_is_kept() -> None:
    sys.setswitchinterval(0.0001)
    stream._prompt_switching(True)
    assert sys.getswitchinterval() == pytest.approx(0.0001, rel=0.05)
    stream._prompt_switching(False)
    assert sys.getswitchinterval() == pytest.approx(0.0001, rel=0.05)


def test_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "SWITCH_INTERVAL", None)
    stream._prompt_switching(True)
    assert sys.getswitchinterval() == pytest.approx(0.005, rel=0.05)
    stream._prompt_switching(False)


def test_loads_on_many_threads_restore_it() -> None:
    barrier = threading.Barrier(8)

    def one() -> None:
        stream._prompt_switching(True)
        barrier.wait()
        stream._prompt_switching(False)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sys.getswitchinterval() == pytest.approx(0.005, rel=0.05)
    assert stream._switch_depth == 0


def test_a_cpu_background_load_leaves_it_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from modelvault.formats.tensors import TensorsPlugin
    from tests.formats.torch.helpers import write

    source = write(TensorsPlugin().pack({"a": torch.arange(10)}), tmp_path)
    seen = []
    real = stream.load_tensors

    def spy(*a, **k):  # type: ignore[no-untyped-def]
        seen.append(sys.getswitchinterval())
        return real(*a, **k)

    stream.load_tensors = spy  # type: ignore[assignment]
    try:
        out = stream.BackgroundLoad(source, torch.device("cpu")).result()
    finally:
        stream.load_tensors = real  # type: ignore[assignment]
    assert torch.equal(out["a"], torch.arange(10))
    assert seen == [pytest.approx(0.005, rel=0.05)]
