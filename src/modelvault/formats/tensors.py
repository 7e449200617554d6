"""The ``tensors`` format: a state dict, or a checkpoint dict of tensors and plain data.

Payload, layout 1 (a flat ``dict[str, Tensor]``)::

    {"layout": 1, "order": [name, ...], "native": <recipe>}   # native: pushed from a file

``order`` keeps the dict's key order (tied tensors live in the manifest's
``tensor_aliases``, whose keys are sorted). ``native`` is the recipe of the
``.safetensors`` file it was pushed from (:mod:`modelvault.formats._splice`), so
a pull writes that very file back without torch.

Payload, layout 2 (a checkpoint: nested dicts, lists, tuples, plain values)::

    {"layout": 2, "tree": <node>}

A node is a plain value (``None``, bool, int, float, str, bytes) or a list
whose first item says what it is: ``["d", key, node, key, node, ...]`` a dict
(keys str or int, in order), ``["l", node, ...]`` a list, ``["u", node, ...]``
a tuple, ``["t", name]`` a stored tensor, ``["q", name, scale, zero_point,
qdtype]`` / ``["qc", name, scales, zero_points, axis, qdtype]`` a quantized
tensor (its integer values stored; scales and zero points as stored tensors
for per-channel). Every tensor is in the tensor section; nothing is pickled.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import MissingDependencyError, PayloadMismatchError, UnknownFormatError
from . import _splice
from .base import FormatPlugin, not_a_file
from .container import ContainerSource, Draft, TensorSectionBuilder

if TYPE_CHECKING:
    import torch

__all__ = ["TensorsPlugin", "looks_like_safetensors"]

_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
_ALIASES_KEY = "modelvault.aliases"
_MAX_INT = (1 << 64) - 1
_MIN_INT = -(1 << 63)


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


def _is_tensor(v: Any) -> bool:
    torch = sys.modules.get("torch")  # no torch imported: nothing can be a tensor
    return torch is not None and isinstance(v, torch.Tensor)


def _flat_state_dict(obj: Mapping[Any, Any]) -> bool:
    return all(
        isinstance(k, str) and k and _is_tensor(v) and not v.is_quantized for k, v in obj.items()
    )


class _Tree:
    """Flattens a checkpoint into a payload tree and named tensors, naming any bad key."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._where: dict[str, str] = {}

    def node(self, v: Any, path: list[str | int]) -> Any:
        import torch

        where = "checkpoint" + "".join(f"[{p!r}]" for p in path)
        if isinstance(v, torch.Tensor):
            if not v.is_quantized:
                return ["t", self._name(v, path, where)]
            return self._quantized(v, path, where)
        if isinstance(v, Mapping):
            out: list[Any] = ["d"]
            for k, item in v.items():
                if isinstance(k, bool) or not isinstance(k, (str, int)):
                    raise PayloadMismatchError(
                        f"{where} has a key {k!r:.60} of type {type(k).__name__}; keys must be str or int"
                    )
                out += [k, self.node(item, [*path, k])]
            return out
        if isinstance(v, (list, tuple)):
            tag = "l" if isinstance(v, list) else "u"
            return [tag, *(self.node(item, [*path, i]) for i, item in enumerate(v))]
        if isinstance(v, bool) or v is None or isinstance(v, (float, str, bytes)):
            return v
        if isinstance(v, int):
            if not _MIN_INT <= v <= _MAX_INT:
                raise PayloadMismatchError(f"{where} is an int too large to store ({v!s:.40})")
            return v
        raise PayloadMismatchError(
            f"{where} is a {type(v).__module__}.{type(v).__qualname__}; a checkpoint can hold "
            "tensors and plain data (None, bool, int, float, str, bytes, lists, tuples, dicts)",
            hint="convert it to plain data, or push it as files",
        )

    def _name(self, t: torch.Tensor, path: list[str | int], where: str) -> str:
        name = ".".join(str(p) for p in path) or "tensor"
        if name in self._where:
            raise PayloadMismatchError(
                f"{where} and {self._where[name]} would both be stored as tensor {name!r}",
                hint="rename one of the keys",
            )
        self._where[name] = where
        self.tensors[name] = t
        return name

    def _quantized(self, t: torch.Tensor, path: list[str | int], where: str) -> list[Any]:
        import torch

        qdtype = str(t.dtype).removeprefix("torch.")
        scheme = t.qscheme()
        if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            name = self._name(t.int_repr(), path, where)
            return ["q", name, float(t.q_scale()), int(t.q_zero_point()), qdtype]
        if scheme in (torch.per_channel_affine, torch.per_channel_symmetric):
            name = self._name(t.int_repr(), path, where)
            scales = self._name(t.q_per_channel_scales(), [*path, "scales"], where)
            zps = self._name(t.q_per_channel_zero_points(), [*path, "zero_points"], where)
            return ["qc", name, scales, zps, int(t.q_per_channel_axis()), qdtype]
        raise PayloadMismatchError(f"{where} is quantized with {scheme}, which cannot be stored")


def _rebuild(node: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if not isinstance(node, list):
        return node
    if not node or not isinstance(node[0], str):
        raise PayloadMismatchError("the checkpoint tree has an untagged list")
    tag, rest = node[0], node[1:]
    try:
        if tag == "d":
            return {rest[i]: _rebuild(rest[i + 1], tensors) for i in range(0, len(rest), 2)}
        if tag == "l":
            return [_rebuild(n, tensors) for n in rest]
        if tag == "u":
            return tuple(_rebuild(n, tensors) for n in rest)
        if tag == "t":
            return tensors[rest[0]]
        if tag == "q":
            name, scale, zp, qdtype = rest
            return _per_tensor(tensors[name], scale, zp, qdtype)
        if tag == "qc":
            name, scales, zps, axis, qdtype = rest
            return _per_channel(tensors[name], tensors[scales], tensors[zps], axis, qdtype)
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError) as exc:
        raise PayloadMismatchError(
            f"the checkpoint tree's {tag!r} node is malformed: {exc}"
        ) from exc
    raise PayloadMismatchError(f"the checkpoint tree has an unknown node tag {tag!r:.20}")


def _per_tensor(ints: torch.Tensor, scale: float, zp: int, qdtype: str) -> torch.Tensor:
    import torch

    q = torch._make_per_tensor_quantized_tensor(ints, scale, zp)
    if str(q.dtype).removeprefix("torch.") != qdtype:
        raise ValueError(f"{qdtype} over {ints.dtype} values")
    return q


def _per_channel(
    ints: torch.Tensor, scales: torch.Tensor, zps: torch.Tensor, axis: int, qdtype: str
) -> torch.Tensor:
    import torch

    q = torch._make_per_channel_quantized_tensor(ints, scales, zps, axis)
    if str(q.dtype).removeprefix("torch.") != qdtype:
        raise ValueError(f"{qdtype} over {ints.dtype} values")
    return q


class TensorsPlugin(FormatPlugin):
    """Plain tensors: a state dict, a ``.safetensors`` file, or a checkpoint dict."""

    name: ClassVar[str] = "tensors"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "a dict of named tensors (state dict, .safetensors, checkpoint)"

    def can_pack(self, obj: Any) -> bool:
        # Any dict: what cannot be stored is refused by pack, naming its key.
        return isinstance(obj, Mapping)

    def can_pack_path(self, path: Path) -> bool:
        return path.is_file() and path.suffix == ".safetensors" and looks_like_safetensors(path)

    def pack(self, obj: Any, **options: Any) -> Draft:
        """Pack a dict (state dict or checkpoint) or the path of a ``.safetensors`` file."""
        from ._torch.section import add_tensors
        from ._torch.signature import describe_value, fill_common

        draft = Draft(self.name, self.version)
        recipe_of: Path | None = None
        if isinstance(obj, (str, Path)):
            recipe_of = Path(obj)
            tensors = self._read_safetensors(recipe_of)
            payload: dict[str, Any] = {"layout": 1, "order": list(tensors)}
        elif isinstance(obj, Mapping):
            if _flat_state_dict(obj):
                tensors = dict(obj)
                payload = {"layout": 1, "order": list(tensors)}
            else:
                tree = _Tree()
                payload = {"layout": 2, "tree": tree.node(obj, [])}
                tensors = tree.tensors
        else:
            raise UnknownFormatError(
                f"the tensors format packs a dict or a .safetensors path, not a {type(obj).__name__}"
            )
        builder = TensorSectionBuilder()
        add_tensors(builder, tensors.items())
        draft.add_tensor_section(builder)
        if recipe_of is not None:
            runs = _safetensors_runs(recipe_of, draft)
            if runs is not None:
                payload["native"] = _splice.add_recipe(draft, recipe_of, runs)
        draft.payload = payload
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
            raise not_a_file(path, ".safetensors")
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
        # but only where the two copies hold the very same bytes.
        try:
            aliases = json.loads(meta.get(_ALIASES_KEY, "{}"))
        except ValueError:
            aliases = {}
        if isinstance(aliases, dict):
            for alias, target in aliases.items():
                a = out.get(alias)
                t = out.get(target) if isinstance(target, str) else None
                if a is not None and t is not None and _same_bytes(a, t):
                    out[alias] = t
        return out

    def load(self, source: ContainerSource, *, device: str = "cpu", **options: Any) -> Any:
        """The state dict (or checkpoint) on ``device``; tensors share one buffer per section."""
        from ._torch.device import resolve_device
        from ._torch.stream import load_tensors, stream_options

        dev = resolve_device(device)
        payload = source.manifest.payload
        order = _check_payload(source)
        tensors = load_tensors(source, dev, **stream_options(options))
        if order is None:  # layout 2: a checkpoint tree
            return _rebuild(payload.get("tree"), tensors)
        return {name: tensors[name] for name in order}

    def validate(self, source: ContainerSource) -> None:
        """The payload names exactly the stored tensors (and aliases), each once."""
        super().validate(source)
        _check_payload(source)

    def export_native(self, source: ContainerSource, dest: Path, **options: Any) -> Path:
        """Write the ``.safetensors`` file (a checkpoint: a ``torch.save`` file).

        A file pushed from disk is written back byte for byte, without torch.
        """
        payload = source.manifest.payload
        dest = Path(dest)
        if "native" in payload:
            return _splice.write_recipe(source, payload["native"], dest)
        if payload.get("layout") == 2:
            import torch

            torch.save(self.load(source, device="cpu"), str(dest))
            return dest
        st = _safetensors()
        tensors = self.load(source, device="cpu")
        # safetensors writes contiguous tensors and refuses two names over one memory.
        aliases = dict(source.manifest.tensor_aliases)
        owned = {k: (v.clone() if k in aliases else v.contiguous()) for k, v in tensors.items()}
        meta = {"format": "pt"}
        if aliases:
            meta[_ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
        st.save_file(owned, str(dest), metadata=meta)
        return dest

    def native_suffix(self, source: ContainerSource) -> str:
        return ".pt" if source.manifest.payload.get("layout") == 2 else ".safetensors"


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    ab = a.contiguous().reshape(-1).view(torch.uint8) if a.numel() else a
    bb = b.contiguous().reshape(-1).view(torch.uint8) if b.numel() else b
    return bool(torch.equal(ab, bb))


def _safetensors_runs(path: Path, draft: Draft) -> list[tuple[int, int, str]] | None:
    """Where each stored tensor's bytes lie in the ``.safetensors`` file; None if they do not."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    sizes = {e.name: e.nbytes for e in draft.tensors}
    for alias, target in draft.tensor_aliases.items():
        sizes[alias] = sizes[target]
    runs = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if sizes.get(name) != end - begin:
            return None
        if end > begin:
            runs.append((8 + n + begin, end - begin, name))
    return runs


def _tree_names(node: Any, out: set[str], depth: int = 0) -> set[str]:
    """The tensor names a layout-2 checkpoint tree refers to (its shape checked on the way)."""
    if depth > 64:
        raise PayloadMismatchError("the checkpoint tree is nested more than 64 deep")
    if not isinstance(node, list):
        return out
    if not node or not isinstance(node[0], str):
        raise PayloadMismatchError("the checkpoint tree has an untagged list")
    tag, rest = node[0], node[1:]
    if tag in ("t", "q") and rest and isinstance(rest[0], str):
        out.add(rest[0])
    elif tag == "qc" and len(rest) == 5 and all(isinstance(x, str) for x in rest[:3]):
        out.update(rest[:3])
    elif tag == "d" and len(rest) % 2 == 0:
        for value in rest[1::2]:
            _tree_names(value, out, depth + 1)
    elif tag in ("l", "u"):
        for value in rest:
            _tree_names(value, out, depth + 1)
    else:
        raise PayloadMismatchError(f"the checkpoint tree has a malformed {tag!r:.20} node")
    return out


def _check_payload(source: ContainerSource) -> list[str] | None:
    """The layout-1 name order (None for a layout-2 checkpoint), after checking the payload
    names exactly the stored tensors and aliases, and that a native recipe fits the manifest."""
    m = source.manifest
    p = m.payload
    stored = {e.name for e in m.tensors} | set(m.tensor_aliases)
    layout = p.get("layout")
    order = p.get("order")
    if layout == 1 and (
        set(p) - {"native"} != {"layout", "order"}
        or not isinstance(order, list)
        or not all(isinstance(n, str) for n in order)
        or len(set(order)) != len(order)
    ):
        raise PayloadMismatchError(
            "the tensors payload is malformed (expected layout 1 with an order list of distinct names)",
            hint="the container was written by a newer modelvault or is damaged",
        )
    if layout == 2:
        if set(p) - {"native"} != {"layout", "tree"}:
            raise PayloadMismatchError("the tensors payload (layout 2) is malformed")
        named = _tree_names(p["tree"], set())
    elif layout == 1:
        named = set(order or ())
    else:
        raise PayloadMismatchError(
            f"the tensors payload has layout {layout!r:.20}; this modelvault reads layouts 1 and 2",
            hint="the container was written by a newer modelvault or is damaged",
        )
    if "native" in p:
        _splice.check_recipe(source, p["native"])
    missing, extra = sorted(named - stored), sorted(stored - named)
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
    return order if layout == 1 else None
