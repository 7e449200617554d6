"""Pins the private torch.export behaviour the exported_program format relies on."""

from __future__ import annotations

import json

import torch

from modelvault.formats._torch import _export_private as private

from .torch_cases import CASES, export, outputs_equal


def test_serialize_graph_is_json_without_weights() -> None:
    ep = export(CASES[2])
    data = private.serialize_graph(ep)
    doc = json.loads(data)
    assert {"graph_module", "schema_version"} <= set(doc)
    # The weights' bytes are nowhere in the document.
    assert len(data) < 200_000


def test_placeholder_fallback_matches_and_restores() -> None:
    ep = export(CASES[2])
    before = dict(ep.state_dict)
    a = json.loads(private.serialize_graph(ep))
    b = json.loads(private._serialize_with_placeholders(ep))
    assert a["graph_module"]["signature"] == b["graph_module"]["signature"]
    assert a["graph_module"]["graph"]["nodes"] == b["graph_module"]["graph"]["nodes"]
    assert all(ep.state_dict[k] is v for k, v in before.items())
    assert ep.example_inputs is not None


def test_deserialize_graph_uses_the_given_tensors() -> None:
    case = CASES[4]
    ep = export(case)
    sd = {
        k: v.clone() if not isinstance(v, torch.nn.Parameter) else torch.nn.Parameter(v.clone())
        for k, v in ep.state_dict.items()
    }
    consts = {k: v.clone() for k, v in ep.constants.items()}
    back = private.deserialize_graph(private.serialize_graph(ep), sd, consts)
    assert all(back.state_dict[k] is v for k, v in sd.items())
    assert all(back.constants[k] is v for k, v in consts.items())
    probe = case.probe()
    assert outputs_equal(ep.module()(*probe), back.module()(*probe))


def test_schema_version_text() -> None:
    major, minor = private.schema_version().split(".")
    assert int(major) >= 1
    assert int(minor) >= 0


def test_set_script_attribute_rebinds_parameters_and_buffers() -> None:
    module = torch.jit.script(torch.nn.BatchNorm1d(3).eval())
    weight = torch.nn.Parameter(torch.full((3,), 2.0))
    mean = torch.full((3,), 0.5)
    private.set_script_attribute(module, "weight", weight)
    private.set_script_attribute(module, "running_mean", mean)
    assert module.weight is weight or torch.equal(module.weight, weight)
    assert module.weight.data_ptr() == weight.data_ptr()
    assert module.running_mean.data_ptr() == mean.data_ptr()
    assert [n for n, _ in module.named_parameters()] == ["weight", "bias"]
