"""When a CUDA load may use the reader process (``_torch/detached.py``): checks that need no GPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from modelvault.formats._torch import detached  # noqa: E402


@pytest.mark.parametrize(
    ("env", "default", "want"),
    [
        (None, False, False),
        (None, True, True),
        ("1", False, True),
        ("0", True, False),
        ("yes", False, True),
    ],
)
def test_the_switch(env, default, want, monkeypatch: pytest.MonkeyPatch) -> None:
    if env is None:
        monkeypatch.delenv("MVAULT_DETACHED", raising=False)
    else:
        monkeypatch.setenv("MVAULT_DETACHED", env)
    monkeypatch.setattr(detached, "DEFAULT_ON", default)
    assert detached.wanted() is want


def test_no_device_hashing_means_no_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVAULT_DETACHED", "1")
    assert detached.start([], torch.empty(0), None, None) is None


def test_only_x86_64_hosts_use_the_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Elsewhere a ready word could be seen before the bytes it announces: no ring is made."""
    monkeypatch.setattr(detached, "_rings", {})
    monkeypatch.setattr(detached, "_reasons", {})
    monkeypatch.setattr(detached.platform, "machine", lambda: "aarch64")
    assert detached._ring(torch.device("cuda", 5), object()) is None
    assert "x86-64" in (detached.unavailable_reason(5) or "")
    # and the answer is kept: the device is not asked again
    assert 5 in detached._rings and detached._rings[5] is None
