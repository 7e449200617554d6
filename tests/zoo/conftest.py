"""The zoo needs torchvision, timm and transformers (``requirements-zoo.txt``).

torchvision's compiled operators (nms, roi_align, ...) are built against CUDA
torch and do not load on the CPU build; torchvision still registers Python
fake kernels for ``torchvision::nms``/``qnms`` at import, which fails unless
the operators exist. No zoo model calls them, so their schemas are defined
here, with kernels that refuse to run, before torchvision is imported.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _stand_in_torchvision_ops() -> None:
    try:
        torch.ops.torchvision.nms.default  # noqa: B018
        return  # the real operators loaded
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

        def refuse(*args: object, _op: str = op) -> object:
            raise RuntimeError(f"torchvision::{_op} is not available on this torch build")

        lib.impl(op, refuse, "CompositeExplicitAutograd")
    _KEEP.append(lib)


_KEEP: list[object] = []  # a Library unregisters its operators when collected
_stand_in_torchvision_ops()
pytest.importorskip("torchvision")
pytest.importorskip("timm")
pytest.importorskip("transformers")
