"""The ``exported_program`` format: a ``torch.export`` ExportedProgram.

The program's graph (torch.export's JSON document: graph, signature, range
constraints, module call graph) is one blob; every parameter, buffer and
tensor constant is in the tensor section, so no weight goes through pickle or
zip. Loading reads the weights straight onto the target device and rebuilds
the program around them.

Payload (layout 1)::

    {
      "layout": 1,
      "graph": {"blob": <index>, "schema": "<serde schema major.minor>"},
      "state_dict": {name: {"parameter": bool, "requires_grad": bool}, ...},
      "constants": [name, ...],
    }

Tensor-section names are ``"state_dict/<name>"`` and ``"constants/<name>"``;
tied weights are aliases (stored once). Example inputs are not stored.

A ``.pt2`` pushed from disk also records, under ``"archive"``, how to rebuild
that file byte for byte: ``{"blob": <index of the verbatim bytes>, "segments":
[["raw", n] | ["graph"] | ["tensor", name], ...], "sha256": hex, "size": n}``.

Nothing here unpickles: a ``.pt2`` is read as a zip of raw tensor storages
(:mod:`._torch.pt2_archive`), and every program JSON is checked by
:mod:`._torch.graph_check` before torch's deserializer sees it (at push, at
``inspect``/``import`` through :meth:`ExportedProgramPlugin.validate`, at load).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.utils._pytree

from ..errors import FormatError, PayloadMismatchError, UnknownFormatError
from ._torch import _export_private as private
from ._torch.device import resolve_device
from ._torch.dtypes import from_name, to_name
from ._torch.graph_check import check_graph, weight_problems
from ._torch.pt2_archive import check_segments, write_pt2
from ._torch.pt2_native import open_pt2
from ._torch.section import add_tensors
from ._torch.signature import describe_value, fill_common
from ._torch.stream import BackgroundLoad, release, stream_options
from .base import FormatPlugin, not_a_file
from .container import BytesSource, ContainerSource, Draft, TensorSectionBuilder, read_blob

__all__ = ["GRAPH_MEDIA_TYPE", "ExportedProgramPlugin"]

GRAPH_MEDIA_TYPE = "application/vnd.pytorch.export.program+json"
ARCHIVE_MEDIA_TYPE = "application/vnd.modelvault.pt2-verbatim"
_SD = "state_dict/"
_CONST = "constants/"
_MAX_GRAPH = 1 << 31


def _user_signature(ep: torch.export.ExportedProgram) -> dict[str, Any]:
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    inputs = []
    for spec in ep.graph_signature.input_specs:
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT:
            name = spec.arg.name
            node = placeholders.get(name)
            val = node.meta.get("val") if node is not None else getattr(spec.arg, "value", None)
            inputs.append(describe_value(name, val))
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    produced = {a.name: a for a in out_node.all_input_nodes}
    outputs = []
    for spec in ep.graph_signature.output_specs:
        if spec.kind == torch.export.graph_signature.OutputKind.USER_OUTPUT:
            name = getattr(spec.arg, "name", "")
            node = produced.get(name)
            val = node.meta.get("val") if node is not None else getattr(spec.arg, "value", None)
            outputs.append(describe_value(name or "output", val))
    return {"inputs": inputs, "outputs": outputs, "dims": _dims(ep)}


def _dims(ep: torch.export.ExportedProgram) -> dict[str, dict[str, int | None]]:
    """The range of each dynamic dimension's symbol; ``None`` for unbounded."""

    def bound(v: Any) -> int | None:
        # Integers come back as ints; the infinities (sympy's and torch's int_oo)
        # are not integers, and converting them raises a variety of errors.
        if getattr(v, "is_integer", False) and getattr(v, "is_finite", True):
            try:
                return int(v)
            except Exception:
                return None
        return None

    return {
        str(sym): {"min": bound(r.lower), "max": bound(r.upper)}
        for sym, r in ep.range_constraints.items()
    }


#: Whether a load onto a GPU whose weights stream in this process (no reader
#: process, see ``_torch/detached.py``) rebuilds the graph beside the stream (True)
#: or first (False, the default). The in-process ring's threads and the parse
#: contend for the GIL. Measured on an H200 (benchmarks/gpu_phases.py --overlap,
#: results/gpu_phases_overlap_692df4d.json, 2 GB, 7 rounds interleaved): the graph
#: first 79.9 ms, beside the stream 84.6 ms, after it 82.5 ms; beside the stream
#: the parse took 15.2 ms instead of 9.7 and the stream 66 ms instead of 54. A
#: stream through the reader process always runs beside the graph: it needs no GIL.
OVERLAP_ON_DEVICE = False


class ExportedProgramPlugin(FormatPlugin):
    """``torch.export.ExportedProgram``: graph as JSON, weights in the tensor section."""

    name: ClassVar[str] = "exported_program"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "torch.export ExportedProgram (.pt2)"

    def can_pack(self, obj: Any) -> bool:
        return isinstance(obj, torch.export.ExportedProgram)

    def can_pack_path(self, path: Path) -> bool:
        if not (path.is_file() and path.suffix == ".pt2" and zipfile.is_zipfile(path)):
            return False
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (OSError, zipfile.BadZipFile):
            return False
        return any("/models/" in n or n.endswith("serialized_exported_program.json") for n in names)

    # -- push ------------------------------------------------------------------
    def pack(self, obj: Any, **options: Any) -> Draft:
        """Pack an ExportedProgram, the path of a ``.pt2`` from ``torch.export.save``, or an
        ``nn.Module`` to export (options ``example_inputs``, ``dynamic_shapes``, ``strict``)."""
        if isinstance(obj, torch.nn.Module):
            from ._torch.export_module import to_exported_program

            obj = to_exported_program(
                obj,
                options.get("example_inputs"),
                options.get("dynamic_shapes"),
                strict=bool(options.get("strict", False)),
            )
        ep, opened = self._open(obj)
        state_dict = dict(ep.state_dict)
        constants = dict(ep.constants)
        for k, v in constants.items():
            if not isinstance(v, torch.Tensor):
                raise PayloadMismatchError(
                    f"constant {k!r} is a {type(v).__name__}; only tensor constants can be stored",
                    hint="script objects and custom classes cannot be stored without pickling code",
                )
        # A file's own program JSON is kept as it is (it was checked before torch
        # parsed it); a live program's is checked too, so what is pushed loads.
        graph = opened.archive.graph if opened is not None else private.serialize_graph(ep)
        summary = check_graph(graph)
        draft = Draft(self.name, self.version)
        builder = TensorSectionBuilder()
        add_tensors(
            builder,
            [(_SD + k, v) for k, v in state_dict.items()]
            + [(_CONST + k, v) for k, v in constants.items()],
        )
        draft.add_tensor_section(builder)
        graph_blob = draft.add_blob("graph", GRAPH_MEDIA_TYPE, BytesSource(graph))
        draft.payload = {
            "layout": 1,
            "graph": {"blob": graph_blob, "schema": private.schema_version()},
            "state_dict": {
                k: {
                    "parameter": isinstance(v, torch.nn.Parameter),
                    "requires_grad": bool(v.requires_grad),
                }
                for k, v in state_dict.items()
            },
            "constants": list(constants),
        }
        if opened is not None:
            segments, _ = opened.layout()
            verbatim = draft.add_blob("archive", ARCHIVE_MEDIA_TYPE, BytesSource(opened.verbatim()))
            draft.payload["archive"] = {
                "blob": verbatim,
                "segments": segments,
                "sha256": opened.archive.sha256,
                "size": opened.archive.size,
            }
        shapes = {
            (kind, k): (to_name(v.dtype), list(v.shape))
            for kind, d in (("state_dict", state_dict), ("constants", constants))
            for k, v in d.items()
        }
        problems = weight_problems(
            summary,
            lambda kind, fqn: shapes.get((kind, fqn)),
            {_SD + k for k in state_dict} | {_CONST + k for k in constants},
        )
        if problems:
            raise PayloadMismatchError(
                "the weights disagree with the graph: " + "; ".join(problems[:8]),
                hint="the program is inconsistent; export it again",
            )
        param_kind = torch.export.graph_signature.InputKind.PARAMETER
        params = {
            s.target: state_dict[s.target]
            for s in ep.graph_signature.input_specs
            if s.kind == param_kind and s.target in state_dict
        }
        fill_common(
            draft,
            parameters=params,
            stored={**state_dict, **{_CONST + k: v for k, v in constants.items()}},
            signature=_user_signature(ep),
        )
        draft.metadata.update(options.get("metadata") or {})
        return draft

    def _open(self, obj: Any) -> tuple[torch.export.ExportedProgram, Any]:
        if isinstance(obj, torch.export.ExportedProgram):
            return obj, None
        if isinstance(obj, (str, Path)):
            path = Path(obj)
            if not path.is_file():
                raise not_a_file(path, ".pt2")
            if not zipfile.is_zipfile(path):
                raise UnknownFormatError(f"{path} is not a .pt2 archive (not a zip file)")
            # Never torch.export.load: it unpickles sample inputs, retrying with
            # weights_only=False when the safe load fails.
            try:
                opened = open_pt2(path)
            except FormatError:
                raise
            except Exception as exc:
                raise FormatError(
                    f"{path} could not be rebuilt by torch {torch.__version__}: {str(exc)[:300]}"
                ) from exc
            return opened.program, opened
        raise UnknownFormatError(
            f"the exported_program format packs an ExportedProgram or a .pt2 path, not a {type(obj).__name__}"
        )

    # -- load ------------------------------------------------------------------
    def load(
        self, source: ContainerSource, *, device: str = "cpu", **options: Any
    ) -> torch.export.ExportedProgram:
        """The ExportedProgram with its weights on ``device``; call ``.module()`` to run it."""
        dev = resolve_device(device)
        payload = _check_payload(source)
        # The weights stream (verified) while the graph is parsed and checked here: on
        # the CPU on a worker (hashing a mapped blob runs in C, beside the parse); onto
        # a GPU through the reader process, which needs no GIL. Where a GPU load must
        # stream in this process, its reader threads and the parse would contend for
        # the GIL, so the graph goes first and the weights stream in result()
        # (see OVERLAP_ON_DEVICE).
        opts = stream_options(options)  # bad options are refused before any work
        built_on = str(source.manifest.target.get("built_on", "cpu"))
        overlap = dev.type == "cpu" or OVERLAP_ON_DEVICE
        loading = BackgroundLoad(source, dev, background=overlap, **opts)
        try:
            graph = read_blob(source, payload["graph"]["blob"], max_size=_MAX_GRAPH)  # verified
            ep = self._skeleton(source, payload, graph)
            if dev.type != "cpu" or not built_on.startswith("cpu"):
                retarget_graph(ep, dev)
        except BaseException:
            loading.discard()
            raise
        tensors = loading.result()
        try:
            return _attach(ep, payload, tensors, dev)
        except BaseException as exc:
            del ep, tensors
            release(exc, dev)
            raise

    def _skeleton(
        self, source: ContainerSource, payload: dict[str, Any], graph: bytes
    ) -> torch.export.ExportedProgram:
        """The program around meta-device placeholders, checked against the stored weights."""
        m = source.manifest
        entries = {e.name: e for e in m.tensors}
        for alias, target in m.tensor_aliases.items():
            entries[alias] = entries[target]
        found = {}
        for name, e in entries.items():
            found[name] = torch.empty(e.shape, dtype=from_name(e.dtype), device="meta")
        sd: dict[str, torch.Tensor] = {}
        consts: dict[str, torch.Tensor] = {}
        missing = []
        for k, info in payload["state_dict"].items():
            if _SD + k not in found:
                missing.append(k)
                continue
            t = found[_SD + k]
            sd[k] = torch.nn.Parameter(t, bool(info["requires_grad"])) if info["parameter"] else t
        for k in payload["constants"]:
            if _CONST + k not in found:
                missing.append(k)
                continue
            consts[k] = found[_CONST + k]
        if missing:
            raise PayloadMismatchError(
                f"the weights disagree with the graph: missing tensor(s) {', '.join(map(repr, missing[:5]))}",
                hint="the container is inconsistent; push the model again",
            )
        try:  # deserialize_graph checks the JSON before torch parses any of it
            ep = private.deserialize_graph(graph, sd, consts)
        except FormatError:
            raise
        except Exception as exc:
            if type(exc).__name__ == "SpecViolationError":
                raise PayloadMismatchError(
                    f"the weights disagree with the graph: {exc}",
                    hint="the container is inconsistent; push the model again",
                ) from exc
            raise FormatError(
                f"the program graph could not be rebuilt by torch {torch.__version__}: {exc}",
                hint="it may have been written by a different torch version; load it with that version",
            ) from exc
        _check_weights(ep, sd, consts, set(entries))
        return ep

    # -- native ----------------------------------------------------------------
    def export_native(self, source: ContainerSource, dest: Path, **options: Any) -> Path:
        """The pushed ``.pt2`` byte for byte, or for a pushed live program, ``torch.export.save``."""
        payload = _check_payload(source)
        self.validate(source)
        if "archive" in payload:
            return write_pt2(source, Path(dest), payload["archive"], payload["graph"]["blob"])
        ep = self.load(source, device="cpu")
        # Loaded weights are views into one section buffer; torch.export.save would
        # treat them as views of one storage, so give each its own (ties kept).
        owned: dict[tuple[Any, ...], torch.Tensor] = {}

        def own(t: torch.Tensor) -> torch.Tensor:
            k = (
                t.data_ptr(),
                tuple(t.shape),
                tuple(t.stride()),
                t.dtype,
                isinstance(t, torch.nn.Parameter),
            )
            if k not in owned:
                c = t.detach().clone()
                owned[k] = (
                    torch.nn.Parameter(c, t.requires_grad)
                    if isinstance(t, torch.nn.Parameter)
                    else c
                )
            return owned[k]

        for k in list(ep.state_dict):
            ep.state_dict[k] = own(ep.state_dict[k])
        for k in list(ep.constants):
            v = ep.constants[k]
            if isinstance(v, torch.Tensor):
                ep.constants[k] = own(v)
        dest = Path(dest)
        torch.export.save(ep, str(dest))
        return dest

    def native_suffix(self, source: ContainerSource) -> str:
        return ".pt2"

    # -- validation --------------------------------------------------------------
    def validate(self, source: ContainerSource) -> None:
        """Payload, program JSON (checked, never parsed by torch) and weights agree; no torch call."""
        super().validate(source)
        m = source.manifest
        payload = _check_payload(source)
        graph_ref = m.blobs[payload["graph"]["blob"]]
        if graph_ref.media_type != GRAPH_MEDIA_TYPE:
            raise PayloadMismatchError(
                f"blob {payload['graph']['blob']} is a {graph_ref.media_type!r:.80}, not the program graph"
            )
        summary = check_graph(read_blob(source, payload["graph"]["blob"], max_size=_MAX_GRAPH))
        entries = {e.name: e for e in m.tensors}
        for alias, target in m.tensor_aliases.items():
            entries[alias] = entries[target]
        listed = {_SD + k for k in payload["state_dict"]} | {
            _CONST + k for k in payload["constants"]
        }
        missing = sorted(listed - set(entries))
        if missing:
            raise PayloadMismatchError(
                f"the payload names tensors the container does not hold: {', '.join(repr(x)[:80] for x in missing[:5])}",
                hint="the container is inconsistent; push the model again",
            )

        def stored(kind: str, fqn: str) -> tuple[str, list[int]] | None:
            name = (_SD if kind == "state_dict" else _CONST) + fqn
            e = entries.get(name) if name in listed else None
            return None if e is None else (e.dtype, list(e.shape))

        problems = weight_problems(summary, stored, set(entries))
        if problems:
            raise PayloadMismatchError(
                "the weights disagree with the graph: " + "; ".join(problems[:8]),
                hint="the container is inconsistent; push the model again",
            )
        if "archive" in payload:
            arc = payload["archive"]
            check_segments(arc["segments"], m.blobs[arc["blob"]].size, set(entries))


def _attach(
    ep: torch.export.ExportedProgram,
    payload: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    dev: torch.device,
) -> torch.export.ExportedProgram:
    """Put the loaded weights (already on ``dev``) in place of the placeholders."""
    sd = ep.state_dict
    for k, info in payload["state_dict"].items():
        t = tensors[_SD + k]
        sd[k] = torch.nn.Parameter(t, bool(info["requires_grad"])) if info["parameter"] else t
    for k in payload["constants"]:
        ep.constants[k] = tensors[_CONST + k]
    if ep.example_inputs is not None:
        args, kwargs = ep.example_inputs
        ep._example_inputs = torch.utils._pytree.tree_map_only(
            torch.Tensor, lambda t: t.to(dev), (args, kwargs)
        )
    return ep


def retarget_graph(ep: torch.export.ExportedProgram, dev: torch.device) -> None:
    """The graph half of ``torch.export.passes.move_to_device_pass(ep, dev)``, in place.

    Device arguments burnt into the graph (``device=`` keywords, ``aten.to.device``)
    and every node's ``meta["val"]`` move to ``dev``; then torch's verifier runs,
    as the pass ends. The weights are left alone: at load they are still
    meta-device placeholders, and :func:`_attach` puts the tensors read onto
    ``dev`` in their place. Onto a GPU it runs on the graph alone, beside the
    weight stream (through the reader process) or before it (in process, see
    :data:`OVERLAP_ON_DEVICE`). ``tests/formats/torch`` compares the result
    with torch's own pass.
    """
    target = str(dev)
    to_device = torch.ops.aten.to.device

    def move(v: Any) -> Any:
        return v.to(target) if isinstance(v, torch.Tensor) else v

    for m in ep.graph_module.modules():
        if not isinstance(m, torch.fx.GraphModule):
            continue
        for node in m.graph.nodes:
            if "device" in node.kwargs:
                kwargs = dict(node.kwargs)
                kwargs["device"] = target
                node.kwargs = kwargs
            if node.op == "call_function" and node.target is to_device:
                args = list(node.args)
                args[1] = target
                node.args = tuple(args)
            node.meta["val"] = torch.utils._pytree.tree_map(move, node.meta.get("val"))
    ep.validate()  # type: ignore[no-untyped-call]


def _check_payload(source: ContainerSource) -> dict[str, Any]:
    p = dict(source.manifest.payload)
    ok = (
        p.get("layout") == 1
        and isinstance(p.get("graph"), dict)
        and type(p["graph"].get("blob")) is int
        and 0 <= p["graph"]["blob"] < len(source.manifest.blobs)
        and isinstance(p.get("state_dict"), dict)
        and all(
            isinstance(v, dict)
            and isinstance(v.get("parameter"), bool)
            and isinstance(v.get("requires_grad"), bool)
            for v in p["state_dict"].values()
        )
        and isinstance(p.get("constants"), list)
        and all(isinstance(c, str) for c in p["constants"])
        and set(p) <= {"layout", "graph", "state_dict", "constants", "archive"}
        and ("archive" not in p or _archive_ok(p["archive"], len(source.manifest.blobs)))
    )
    if not ok:
        raise PayloadMismatchError(
            "the exported_program payload is malformed (expected layout 1 with graph, state_dict, constants)",
            hint="the container was written by a newer modelvault or is damaged",
        )
    return p


def _archive_ok(a: Any, n_blobs: int) -> bool:
    return (
        isinstance(a, dict)
        and set(a) == {"blob", "segments", "sha256", "size"}
        and type(a["blob"]) is int
        and 0 <= a["blob"] < n_blobs
        and isinstance(a["segments"], list)
        and isinstance(a["sha256"], str)
        and len(a["sha256"]) == 64
        and all(c in "0123456789abcdef" for c in a["sha256"])
        and type(a["size"]) is int
        and a["size"] >= 0
    )


def _check_weights(
    ep: torch.export.ExportedProgram,
    sd: dict[str, torch.Tensor],
    consts: dict[str, torch.Tensor],
    stored: set[str],
) -> None:
    """Every weight the graph takes exists with the graph's shape and dtype; nothing extra."""
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    kinds = torch.export.graph_signature.InputKind
    used: set[str] = set()
    problems = []
    for spec in ep.graph_signature.input_specs:
        if (
            spec.kind not in (kinds.PARAMETER, kinds.BUFFER, kinds.CONSTANT_TENSOR)
            or spec.target is None
        ):
            continue
        in_sd = spec.kind == kinds.PARAMETER or (spec.kind == kinds.BUFFER and spec.persistent)
        name = (_SD if in_sd else _CONST) + spec.target
        have = (sd if in_sd else consts).get(spec.target)
        if have is None:
            problems.append(f"missing tensor {spec.target!r}")
            continue
        used.add(name)
        node = placeholders.get(spec.arg.name)
        want = node.meta.get("val") if node is not None else None
        if isinstance(want, torch.Tensor) and (
            tuple(want.shape) != tuple(have.shape) or want.dtype != have.dtype
        ):
            problems.append(
                f"tensor {spec.target!r}: the graph expects {to_name(want.dtype)}{list(want.shape)}, "
                f"the weights hold {to_name(have.dtype)}{list(have.shape)}"
            )
    extra = sorted(stored - used)
    if extra:
        problems.append(
            f"unexpected tensor(s) {', '.join(repr(e.split('/', 1)[1]) for e in extra[:5])}"
        )
    if problems:
        raise PayloadMismatchError(
            "the weights disagree with the graph: " + "; ".join(problems[:8]),
            hint="the container is inconsistent; push the model again",
        )
