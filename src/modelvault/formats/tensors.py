"""The ``tensors`` format: a ``dict[str, Tensor]`` (a state dict).

Payload (layout 1)::

    {"layout": 1, "order": [name, ...]}

``order`` keeps the dict's key order (tied tensors live in the manifest's
``tensor_aliases``, whose keys are sorted). Every tensor is in the tensor
section; nothing is pickled. ``.safetensors`` files go in and come out.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import MissingDependencyError, PayloadMismatchError, UnknownFormatError
from ._torch.device import resolve_device
from ._torch.section import add_tensors
from ._torch.signature import describe_value, fill_common
from ._torch.stream import load_tensors, stream_options
from .base import FormatPlugin
from .container import ContainerSource, Draft, TensorSectionBuilder

__all__ = ["TensorsPlugin"]

_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
_ALIASES_KEY = "modelvault.aliases"


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError as exc:
        raise MissingDependencyError(
            "safetensors", "torch", "reading and writing .safetensors files"
        ) from exc
    return safetensors.torch


def looks_like_safetensors(path: Path) -> bool:
    """A cheap, non-executing check of a ``.safetensors`` header."""
    try:
        with path.open("rb") as f:
            head = f.read(9)
            if len(head) < 9:
                return False
            (n,) = struct.unpack("<Q", head[:8])
            return 2 <= n <= _MAX_SAFETENSORS_HEADER and head[8:9] == b"{"
    except OSError:
        return False


class TensorsPlugin(FormatPlugin):
    """Plain tensors: a state dict, or a ``.safetensors`` file."""

    name: ClassVar[str] = "tensors"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "a dict of named tensors (state dict, .safetensors)"

    def can_pack(self, obj: Any) -> bool:
        return (
            isinstance(obj, Mapping)
            and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
        )

    def can_pack_path(self, path: Path) -> bool:
        return path.is_file() and path.suffix == ".safetensors" and looks_like_safetensors(path)

    def pack(self, obj: Any, **options: Any) -> Draft:
        """Pack a ``dict[str, Tensor]`` or the path of a ``.safetensors`` file."""
        if isinstance(obj, (str, Path)):
            tensors = self._read_safetensors(Path(obj))
        elif isinstance(obj, Mapping):
            tensors = dict(obj)
        else:
            raise UnknownFormatError(
                f"the tensors format packs a dict of tensors or a .safetensors path, not a {type(obj).__name__}"
            )
        for k, v in tensors.items():
            if not isinstance(k, str) or not k:
                raise PayloadMismatchError(f"tensor names must be non-empty strings, got {k!r:.60}")
            if not isinstance(v, torch.Tensor):
                raise PayloadMismatchError(f"{k!r} is a {type(v).__name__}, not a tensor")
        draft = Draft(self.name, self.version)
        builder = TensorSectionBuilder()
        add_tensors(builder, tensors.items())
        draft.add_tensor_section(builder)
        draft.payload = {"layout": 1, "order": list(tensors)}
        fill_common(
            draft,
            parameters={k: v for k, v in tensors.items() if v.is_floating_point()},
            stored=tensors,
            signature={"inputs": [], "outputs": [describe_value(k, v) for k, v in tensors.items()]},
        )
        draft.metadata.update(options.get("metadata") or {})
        return draft

    def _read_safetensors(self, path: Path) -> dict[str, torch.Tensor]:
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        if not looks_like_safetensors(path):
            raise UnknownFormatError(
                f"{path} is not a .safetensors file (its header is not a safetensors header)"
            )
        st = _safetensors()
        try:
            out: dict[str, torch.Tensor] = st.load_file(str(path), device="cpu")
            with st.safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise PayloadMismatchError(
                f"{path} is not a readable .safetensors file: {exc}"
            ) from exc
        # Tied tensors written out by export_native come back tied (stored once),
        # but only where the two copies really are equal.
        try:
            aliases = json.loads(meta.get(_ALIASES_KEY, "{}"))
        except ValueError:
            aliases = {}
        if isinstance(aliases, dict):
            for alias, target in aliases.items():
                a = out.get(alias)
                t = out.get(target) if isinstance(target, str) else None
                if a is not None and t is not None and a.dtype == t.dtype and torch.equal(a, t):
                    out[alias] = t
        return out

    def load(
        self, source: ContainerSource, *, device: str = "cpu", **options: Any
    ) -> dict[str, torch.Tensor]:
        """The state dict on ``device``; the tensors are views into one buffer per section."""
        dev = resolve_device(device)
        order = _check_order(source)
        tensors = load_tensors(source, dev, **stream_options(options))
        return {name: tensors[name] for name in order}

    def validate(self, source: ContainerSource) -> None:
        """The payload names exactly the stored tensors (and aliases), each once."""
        super().validate(source)
        _check_order(source)

    def export_native(self, source: ContainerSource, dest: Path, **options: Any) -> Path:
        """Write a ``.safetensors`` file (tied tensors are written as separate copies)."""
        st = _safetensors()
        tensors = self.load(source, device="cpu")
        # safetensors refuses tensors that share memory, and all of ours share the section buffer.
        owned = {k: v.contiguous().clone() for k, v in tensors.items()}
        aliases = dict(source.manifest.tensor_aliases)
        meta = {"format": "pt"}
        if aliases:
            meta[_ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
        dest = Path(dest)
        st.save_file(owned, str(dest), metadata=meta)
        return dest

    def native_suffix(self, source: ContainerSource) -> str:
        return ".safetensors"


def _check_order(source: ContainerSource) -> list[str]:
    m = source.manifest
    p = m.payload
    order = p.get("order")
    stored = {e.name for e in m.tensors} | set(m.tensor_aliases)
    if (
        p.get("layout") != 1
        or set(p) != {"layout", "order"}
        or not isinstance(order, list)
        or not all(isinstance(n, str) for n in order)
        or len(set(order)) != len(order)
    ):
        raise PayloadMismatchError(
            "the tensors payload is malformed (expected layout 1 with an order list of distinct names)",
            hint="the container was written by a newer modelvault or is damaged",
        )
    missing, extra = sorted(set(order) - stored), sorted(stored - set(order))
    if missing or extra:
        problems = [f"missing tensor(s) {', '.join(repr(n)[:80] for n in missing[:5])}"] * bool(
            missing
        )
        problems += [f"unlisted tensor(s) {', '.join(repr(n)[:80] for n in extra[:5])}"] * bool(
            extra
        )
        raise PayloadMismatchError(
            "the tensors payload's name list disagrees with the stored tensors: "
            + "; ".join(problems),
            hint="the container is inconsistent; push the state dict again",
        )
    return order
