"""modelvault: a model artifact registry.

Immutable, verifiable model versions in a versioned container, catalogued in
SQL, stored in a local directory or S3, loaded back onto a GPU fast.

    >>> import modelvault
    >>> modelvault.push(exported_program, "resnet50", "1.3.0")   # doctest: +SKIP
    >>> model = modelvault.load("resnet50@prod", device="cuda:0")  # doctest: +SKIP

``import modelvault`` imports neither torch, torch_tensorrt nor boto3: they load
on first use, in the plugins and back ends that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import ModelVaultError

if TYPE_CHECKING:
    from .vault import Vault

__all__ = [
    "ModelVaultError",
    "Vault",
    "__version__",
    "default_vault",
    "list",
    "load",
    "pull",
    "push",
    "resolve",
    "show",
]

_LAZY = {"Vault": "modelvault.vault", "default_vault": "modelvault.vault"}
_API = {"push", "pull", "load", "resolve", "show", "list"}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _API:
        vault = importlib.import_module("modelvault.vault")
        return getattr(vault, f"module_{name}")
    raise AttributeError(f"module 'modelvault' has no attribute {name!r}")
