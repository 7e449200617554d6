from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modelvault.errors import (
    DeviceUnavailableError,
    FormatError,
    IntegrityError,
    InvalidDeviceError,
    PayloadMismatchError,
    UnknownFormatError,
)
from modelvault.formats.exported_program import GRAPH_MEDIA_TYPE, ExportedProgramPlugin
from modelvault.formats.registry import detect, detect_path, get_plugin

from .helpers import corrupt_blob, replace_blob, replace_section, write
from .torch_cases import CASES, MLP, Case, export, outputs_equal

plugin = ExportedProgramPlugin()


def _sd_tensors(ep: torch.export.ExportedProgram) -> list[tuple[str, torch.Tensor]]:
    return [("state_dict/" + k, v) for k, v in ep.state_dict.items()] + [
        ("constants/" + k, v) for k, v in ep.constants.items()
    ]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_round_trip_gives_identical_outputs(case: Case, tmp_path: Path) -> None:
    ep = export(case)
    source = write(plugin.pack(ep), tmp_path)
    loaded = plugin.load(source, device="cpu")
    assert isinstance(loaded, torch.export.ExportedProgram)
    probe = case.probe()
    assert outputs_equal(ep.module()(*probe), loaded.module()(*probe))
    # Every stored weight is bit-identical and keeps its parameter-ness.
    assert set(loaded.state_dict) == set(ep.state_dict)
    for k, v in ep.state_dict.items():
        w = loaded.state_dict[k]
        assert w.dtype == v.dtype, k
        assert torch.equal(w, v), k
        assert isinstance(w, torch.nn.Parameter) == isinstance(v, torch.nn.Parameter), k
    for k, v in ep.constants.items():
        assert torch.equal(loaded.constants[k], v), k


def test_manifest_records_signature_versions_and_sizes(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == "dynamic")
    ep = export(case)
    m = write(plugin.pack(ep), tmp_path).manifest
    assert m.plugin == "exported_program"
    assert m.frameworks["torch"] == torch.__version__
    assert m.target == {"device": "any", "built_on": "cpu"}
    (inp,) = m.signature["inputs"]
    assert inp["name"] == "x"
    assert inp["dtype"] == "float32"
    assert isinstance(inp["shape"][0], str)
    assert inp["shape"][1] == 16
    assert m.signature["outputs"][0]["shape"][0] == inp["shape"][0]
    assert m.signature["dims"][inp["shape"][0]] == {"min": 2, "max": 64}
    n_params = sum(p.numel() for p in MLP().parameters())
    assert m.metadata["parameters"] == n_params
    assert m.metadata["parameter_bytes"] == 4 * n_params
    graph = [b for b in m.blobs if b.role == "graph"]
    assert len(graph) == 1
    assert graph[0].media_type == GRAPH_MEDIA_TYPE
    assert m.payload["graph"]["blob"] == m.blobs.index(graph[0])


def test_graph_blob_is_json_without_weights(tmp_path: Path) -> None:
    ep = export(CASES[0])
    source = write(plugin.pack(ep), tmp_path)
    idx = source.manifest.payload["graph"]["blob"]
    doc = json.loads(source.locate(idx).path.read_bytes())
    assert "graph_module" in doc


def test_tied_weights_are_stored_once(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == "transformer")
    ep = export(case)
    m = write(plugin.pack(ep), tmp_path).manifest
    assert m.tensor_aliases == {"state_dict/head.weight": "state_dict/embed.weight"}
    names = {t.name for t in m.tensors}
    assert "state_dict/head.weight" not in names
    assert {"constants/pos", "constants/mask"} <= names  # non-persistent buffers
    loaded = plugin.load(write(plugin.pack(ep), tmp_path / "again"))
    sd = loaded.state_dict
    assert sd["head.weight"].data_ptr() == sd["embed.weight"].data_ptr()


def test_mixed_dtypes_keep_their_dtypes(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == "mixed_dtypes")
    m = write(plugin.pack(export(case)), tmp_path).manifest
    assert {t.dtype for t in m.tensors} == {"float32", "bfloat16", "float16", "int8"}


def test_pack_from_pt2_path_and_export_native(tmp_path: Path) -> None:
    case = CASES[1]
    ep = export(case)
    pt2 = tmp_path / "model.pt2"
    torch.export.save(ep, str(pt2))
    assert plugin.can_pack_path(pt2)
    assert isinstance(detect_path(pt2), ExportedProgramPlugin)
    source = write(plugin.pack(pt2), tmp_path / "c")
    out = plugin.export_native(source, tmp_path / f"out{plugin.native_suffix(source)}")
    again = torch.export.load(str(out))
    probe = case.probe()
    assert outputs_equal(ep.module()(*probe), again.module()(*probe))


def test_registry_finds_the_plugin() -> None:
    ep = export(CASES[0])
    assert isinstance(get_plugin("exported_program"), ExportedProgramPlugin)
    assert isinstance(detect(ep), ExportedProgramPlugin)


# -- bad input -----------------------------------------------------------------


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    ep = export(CASES[0])
    tensors = [(k, v) for k, v in _sd_tensors(ep) if k != "state_dict/layers.1.0.bias"]
    source = write(replace_section(plugin.pack(ep), tensors), tmp_path)
    with pytest.raises(PayloadMismatchError, match=r"missing tensor.*layers\.1\.0\.bias"):
        plugin.load(source)


def test_tensor_missing_from_payload_too_is_named(tmp_path: Path) -> None:
    ep = export(CASES[0])
    draft = plugin.pack(ep)
    del draft.payload["state_dict"]["layers.1.0.bias"]
    tensors = [(k, v) for k, v in _sd_tensors(ep) if k != "state_dict/layers.1.0.bias"]
    source = write(replace_section(draft, tensors), tmp_path)
    with pytest.raises(PayloadMismatchError, match=r"layers\.1\.0\.bias"):
        plugin.load(source)


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    ep = export(CASES[0])
    tensors = [
        (k, torch.zeros(3) if k.endswith("layers.0.0.bias") else v) for k, v in _sd_tensors(ep)
    ]
    source = write(replace_section(plugin.pack(ep), tensors), tmp_path)
    with pytest.raises(
        PayloadMismatchError, match=r"layers\.0\.0\.bias.*float32\[16\].*float32\[3\]"
    ):
        plugin.load(source)


def test_wrong_dtype_is_named(tmp_path: Path) -> None:
    ep = export(CASES[0])
    tensors = [(k, v.half() if k.endswith("layers.2.0.weight") else v) for k, v in _sd_tensors(ep)]
    source = write(replace_section(plugin.pack(ep), tensors), tmp_path)
    with pytest.raises(
        PayloadMismatchError, match=r"layers\.2\.0\.weight.*float32\[16, 16\].*float16\[16, 16\]"
    ):
        plugin.load(source)


def test_extra_tensor_is_named(tmp_path: Path) -> None:
    ep = export(CASES[0])
    tensors = [*_sd_tensors(ep), ("state_dict/stowaway", torch.ones(2))]
    source = write(replace_section(plugin.pack(ep), tensors), tmp_path)
    with pytest.raises(PayloadMismatchError, match=r"unexpected tensor.*stowaway"):
        plugin.load(source)


def test_damaged_weights_raise_integrity_error(tmp_path: Path) -> None:
    source = write(plugin.pack(export(CASES[0])), tmp_path)
    corrupt_blob(source, 0, at=5)
    with pytest.raises(IntegrityError, match="damaged"):
        plugin.load(source)


def test_damaged_graph_is_refused_before_parsing(tmp_path: Path) -> None:
    source = write(plugin.pack(export(CASES[0])), tmp_path)
    corrupt_blob(source, source.manifest.payload["graph"]["blob"], at=1)
    with pytest.raises(IntegrityError):
        plugin.load(source)


def test_graph_that_is_not_a_program(tmp_path: Path) -> None:
    draft = replace_blob(plugin.pack(export(CASES[0])), "graph", b'{"graph_module": 3}')
    with pytest.raises(
        FormatError, match=r"program graph is refused at <root>: not a torch.export program"
    ):
        plugin.load(write(draft, tmp_path))


def test_malformed_payload(tmp_path: Path) -> None:
    draft = plugin.pack(export(CASES[0]))
    draft.payload["graph"] = {"blob": 99}
    with pytest.raises(PayloadMismatchError, match="payload is malformed"):
        plugin.load(write(draft, tmp_path))


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:-1", "cpu:1", "", "tpu:0"])
def test_invalid_device(device: str, tmp_path: Path) -> None:
    source = write(plugin.pack(export(CASES[0])), tmp_path)
    with pytest.raises(InvalidDeviceError, match="device"):
        plugin.load(source, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(tmp_path: Path) -> None:
    source = write(plugin.pack(export(CASES[0])), tmp_path)
    with pytest.raises(DeviceUnavailableError, match="no usable CUDA device"):
        plugin.load(source, device="cuda")


def test_pack_refuses_what_is_not_a_program(tmp_path: Path) -> None:
    with pytest.raises(UnknownFormatError, match="ExportedProgram"):
        plugin.pack([MLP()])
    bad = tmp_path / "x.pt2"
    bad.write_text("not a zip")
    assert not plugin.can_pack_path(bad)
    with pytest.raises(UnknownFormatError, match=r"not a \.pt2 archive"):
        plugin.pack(bad)
    with pytest.raises(FileNotFoundError):
        plugin.pack(tmp_path / "nope.pt2")


def test_round_trip_through_a_bundle(tmp_path: Path) -> None:
    from modelvault.formats.bundle import Bundle, write_bundle

    case = next(c for c in CASES if c.name == "transformer")
    ep = export(case)
    write_bundle(plugin.pack(ep), tmp_path / "m.mvpk")
    loaded = plugin.load(Bundle.open(tmp_path / "m.mvpk"))
    probe = case.probe()
    assert outputs_equal(ep.module()(*probe), loaded.module()(*probe))


def test_unbounded_dynamic_dimension_has_no_max(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 4)
    ep = torch.export.export(
        model, (torch.randn(3, 4),), dynamic_shapes=({0: torch.export.Dim("b")},)
    )
    m = write(plugin.pack(ep), tmp_path).manifest
    (sym,) = m.signature["dims"]
    assert m.signature["dims"][sym]["max"] is None
    assert m.signature["inputs"][0]["shape"] == [sym, 4]


def _graph_devices(ep: torch.export.ExportedProgram) -> list[tuple[str, object, object]]:
    """Every node's code-relevant device facts: kwargs, args, and the devices of its meta value."""
    out = []
    for m in ep.graph_module.modules():
        if not isinstance(m, torch.fx.GraphModule):
            continue
        for node in m.graph.nodes:
            vals = torch.utils._pytree.tree_leaves(node.meta.get("val"))
            devices = tuple(str(v.device) for v in vals if isinstance(v, torch.Tensor))
            out.append((node.name, node.kwargs.get("device"), devices))
    return out


def _graph_text(ep: torch.export.ExportedProgram) -> list[str]:
    """Every (sub)graph's nodes with their arguments (a GraphModule's ``code`` is
    the text of its last recompile, which neither rewrite triggers)."""
    return [str(m.graph) for m in ep.graph_module.modules() if isinstance(m, torch.fx.GraphModule)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_graph_retarget_matches_torchs_move_to_device_pass(case: Case, tmp_path: Path) -> None:
    """The load's graph rewrite (done while weights stream) is torch's pass, less the weights."""
    from torch.export.passes import move_to_device_pass

    from modelvault.formats.exported_program import retarget_graph

    pt2 = tmp_path / "m.pt2"
    torch.export.save(export(case), str(pt2))
    theirs = move_to_device_pass(torch.export.load(str(pt2)), "meta")
    ours = torch.export.load(str(pt2))
    retarget_graph(ours, torch.device("meta"))
    assert _graph_text(ours) == _graph_text(theirs)
    assert _graph_devices(ours) == _graph_devices(theirs)
    assert any(d for _n, _k, d in _graph_devices(ours))
    assert all(set(d) <= {"meta"} for _n, _k, d in _graph_devices(ours))
