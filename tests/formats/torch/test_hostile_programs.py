"""ExportedPrograms built to run code: nothing of them runs, on any path.

Each artifact starts as real torch output (``torch.export`` of a small model,
``torch.export.save``) and is then edited as an attacker would. A control test
shows torch's own deserializer runs each injected command; the tests then show
that push, inspect, import, pull and load (Python API and the ``mvault``
process) refuse it, or ignore the hostile part, and the marker never appears.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch._export.serde import serialize as serde

import modelvault
from modelvault import Vault
from modelvault.errors import FormatError, PayloadMismatchError
from modelvault.formats._torch.graph_check import UnsafeGraphError
from modelvault.formats.exported_program import ExportedProgramPlugin
from tests.formats.hostile import bundle_from, cli, draft_parts, every_way_refused, register_row
from tests.formats.torch.helpers import replace_blob, replace_section

plugin = ExportedProgramPlugin()
SYMBOL = "Symbol('s77', positive=True, integer=True)"


class Net(torch.nn.Module):
    """A dynamic batch; ``y`` is unused, so its name appears only in the signature."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.a(x))


@pytest.fixture(scope="module")
def program() -> torch.export.ExportedProgram:
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=2, max=64)
    return torch.export.export(
        Net(), (torch.randn(3, 4), torch.randn(2)), dynamic_shapes={"x": {0: batch}, "y": None}
    )


def graph_doc(ep: torch.export.ExportedProgram) -> dict[str, Any]:
    import inspect

    # Newer torch can leave the weights out of the artifact; older torch has no such switches.
    known = inspect.signature(serde.serialize).parameters
    skip = ("serialize_state_dict", "serialize_constants", "serialize_example_inputs")
    art = serde.serialize(ep, **{k: False for k in skip if k in known})
    doc: dict[str, Any] = json.loads(art.exported_program)
    return doc


def command(marker: Path) -> str:
    return f"__import__('os').system('touch {marker}')"


# -- the edits -------------------------------------------------------------------------
def sympy_expr(doc: dict[str, Any], marker: Path) -> dict[str, Any]:
    text = json.dumps(doc)
    assert SYMBOL in text
    return dict(json.loads(text.replace(SYMBOL, f"{command(marker)} or {SYMBOL}", 1)))


def placeholder_name(doc: dict[str, Any], marker: Path) -> dict[str, Any]:
    # FX writes `def forward(self, ..., y=<this>)` and execs it while torch rebuilds the module.
    evil = f"y={command(marker)}"
    return dict(json.loads(json.dumps(doc).replace('"y"', json.dumps(evil))))


def guard(doc: dict[str, Any], marker: Path) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    doc["guards_code"].append(f"{command(marker)} == 0")
    return doc


def operator_target(doc: dict[str, Any], marker: Path) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    node = next(n for n in doc["graph_module"]["graph"]["nodes"] if "relu" in n["target"])
    node["target"] = "torch.os.system"
    node["inputs"] = [{"name": "command", "arg": {"as_string": f"touch {marker}"}, "kind": 1}]
    return doc


def treespec_enum(doc: dict[str, Any], marker: Path) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    sig = doc["graph_module"]["module_call_graph"][0]["signature"]
    spec = json.loads(sig["in_spec"])
    spec[1]["children_spec"][1]["context"] = json.dumps(
        [{"__enum__": True, "fqn": "antigravity:x", "name": "y"}]
    )
    sig["in_spec"] = json.dumps(spec)
    return doc


def custom_object(doc: dict[str, Any], marker: Path) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    doc["graph_module"]["graph"]["custom_obj_values"] = {
        "obj": {"name": "obj", "class_fqn": "__torch__.torch.classes.os.System"}
    }
    return doc


EDITS: dict[str, tuple[Callable[[dict[str, Any], Path], dict[str, Any]], str]] = {
    "sympy expr_str": (sympy_expr, "is not one torch writes"),
    "placeholder name": (placeholder_name, "is not a Python identifier"),
    "guards_code": (guard, "calls something torch never writes"),
    "operator target": (operator_target, "operator 'torch.os.system' is not one modelvault loads"),
    "tree spec enum": (treespec_enum, "may not name enum classes"),
    "custom object": (custom_object, "custom objects are pickled code"),
}


@pytest.mark.parametrize("edit", ["sympy expr_str", "placeholder name"])
def test_control_torch_runs_the_injected_code(program, edit, tmp_path: Path) -> None:
    """The artifacts are really hostile: torch's deserializer, unguarded, runs them."""
    marker = tmp_path / "MARKER"
    doc = EDITS[edit][0](graph_doc(program), marker)
    sd = dict(program.state_dict)
    try:
        serde.deserialize(serde.SerializedArtifact(json.dumps(doc).encode(), sd, {}, b""))
    except Exception:
        pass
    assert marker.exists()


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_hostile_program_refused_everywhere(program, edit, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    change, message = EDITS[edit]
    doc = change(graph_doc(program), marker)
    draft = replace_blob(plugin.pack(program), "graph", json.dumps(doc).encode())
    manifest, blobs = draft_parts(draft)
    bundle = bundle_from(manifest, blobs, tmp_path / "evil.mvpk")
    errors = every_way_refused(bundle, manifest, blobs, tmp_path, marker)
    assert all(isinstance(e, UnsafeGraphError) for e in errors), errors
    assert message in str(errors[0])


def test_hostile_program_through_the_mvault_process(program, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    doc = sympy_expr(graph_doc(program), marker)
    draft = replace_blob(plugin.pack(program), "graph", json.dumps(doc).encode())
    manifest, blobs = draft_parts(draft)
    bundle = bundle_from(manifest, blobs, tmp_path / "evil.mvpk")
    where = ["--registry", f"sqlite:///{tmp_path}/r.db", "--store", f"file://{tmp_path}/store"]

    r = cli("inspect", str(bundle))
    assert r.returncode == 5, r.stderr
    assert "NOT intact" in r.stdout and "expr_str" in r.stdout
    r = cli(*where, "import", str(bundle), "evil:1.0.0")
    assert r.returncode == 5 and "refused" in r.stderr and "Traceback" not in r.stderr
    assert cli(*where, "ls", "--json").stdout.strip() == "[]"
    spec = register_row(
        Vault(registry=f"sqlite:///{tmp_path}/r.db", store=f"file://{tmp_path}/store"),
        manifest,
        blobs,
        "row",
    )
    r = cli(*where, "pull", spec, "-o", str(tmp_path / "out.pt2"))
    assert r.returncode == 5 and "refused" in r.stderr
    assert not marker.exists() and not (tmp_path / "out.pt2").exists()


# -- .pt2 files from disk ----------------------------------------------------------------
class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (f"touch {self.marker}",))


def rewrite_zip(src: Path, dest: Path, replace: dict[str, bytes]) -> Path:
    """The archive with some members' bytes replaced (names, order, stored layout kept)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = next((v for k, v in replace.items() if info.filename.endswith(k)), None)
            zout.writestr(info, zin.read(info) if data is None else data)
    return dest


@pytest.fixture
def saved(program, tmp_path: Path) -> Path:
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    return path


def test_control_torch_export_load_runs_a_pickled_sample_input(saved, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    evil = rewrite_zip(
        saved, tmp_path / "evil.pt2", {"sample_inputs/model.pt": pickle.dumps(_System(marker))}
    )
    try:
        torch.export.load(str(evil))
    except Exception:
        pass
    assert marker.exists()


def test_pickled_sample_inputs_are_never_read(program, saved, tmp_path: Path) -> None:
    """Push succeeds (sample inputs are not needed), nothing runs, pull gives the same bytes."""
    marker = tmp_path / "MARKER"
    evil = rewrite_zip(
        saved, tmp_path / "evil.pt2", {"sample_inputs/model.pt": pickle.dumps(_System(marker))}
    )
    vault = Vault(registry=f"sqlite:///{tmp_path}/r.db", store=f"file://{tmp_path}/store")
    vault.push(evil, "hub-model", "1.0.0")
    ep = vault.load("hub-model@1.0.0")
    x, y = torch.randn(5, 4), torch.randn(2)
    torch.testing.assert_close(ep.module()(x, y), program.module()(x, y))
    out = vault.pull("hub-model@1.0.0", tmp_path / "pulled.pt2")
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(evil.read_bytes()).digest()
    where = ["--registry", f"sqlite:///{tmp_path}/r.db", "--store", f"file://{tmp_path}/store"]
    r = cli(*where, "push", "hub-model:2.0.0", str(evil))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "weights_only" not in r.stderr
    assert not marker.exists()


def test_pickled_weight_is_refused_at_push(saved, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    with zipfile.ZipFile(saved) as z:
        name = next(n for n in z.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(z.read(name))
    entry = config["config"]["a.weight"]
    entry["use_pickle"] = True
    member = "data/weights/" + entry["path_name"]
    evil = rewrite_zip(
        saved,
        tmp_path / "evil.pt2",
        {
            "model_weights_config.json": json.dumps(config).encode(),
            member: pickle.dumps(_System(marker)),
        },
    )
    try:  # control: torch unpickles it
        torch.export.load(str(evil))
    except Exception:
        pass
    assert marker.exists()
    marker.unlink()
    with pytest.raises(PayloadMismatchError, match=r"'a\.weight' is pickled"):
        plugin.pack(evil)
    r = cli("push", "m:1.0.0", str(evil))
    assert r.returncode == 5 and "pickled" in r.stderr
    assert not marker.exists()


def test_hostile_program_in_a_pt2_is_refused_at_push(saved, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    with zipfile.ZipFile(saved) as z:
        name = next(n for n in z.namelist() if n.endswith("models/model.json"))
        doc = json.loads(z.read(name))
    evil = rewrite_zip(
        saved,
        tmp_path / "evil.pt2",
        {"models/model.json": json.dumps(sympy_expr(doc, marker)).encode()},
    )
    with pytest.raises(UnsafeGraphError, match="expr_str"):
        plugin.pack(evil)
    r = cli("push", "m:1.0.0", str(evil))
    assert r.returncode == 5 and "expr_str" in r.stderr
    assert not marker.exists()


def test_weights_that_disagree_with_the_graph(program, tmp_path: Path) -> None:
    """A bundle whose stored weight has another shape than the graph says: refused before load."""
    draft = plugin.pack(program)
    sd = dict(program.state_dict)
    draft = replace_section(
        draft,
        [("state_dict/a.weight", torch.zeros(7, 7)), ("state_dict/a.bias", sd["a.bias"])],
    )
    manifest, blobs = draft_parts(draft)
    bundle = bundle_from(manifest, blobs, tmp_path / "bad.mvpk")
    errors = every_way_refused(bundle, manifest, blobs, tmp_path, None)
    assert "the graph expects float32[3, 4], the weights hold float32[7, 7]" in str(errors[0])


def test_real_pt2_files_round_trip_byte_for_byte(tmp_path: Path) -> None:
    """Real torch.export.save output of an MLP, a conv net with BatchNorm, a dynamic program."""

    class Conv(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = torch.nn.Conv2d(3, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.c(x)).mean((2, 3))

    mlp = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    cases = {
        "mlp": (torch.export.export(mlp, (torch.randn(3, 4),)), (torch.randn(3, 4),)),
        "conv": (
            torch.export.export(Conv().eval(), (torch.randn(2, 3, 8, 8),)),
            (torch.randn(2, 3, 8, 8),),
        ),
        "dynamic": (
            torch.export.export(
                mlp,
                (torch.randn(3, 4),),
                dynamic_shapes={"input": {0: torch.export.Dim("n", min=1, max=128)}},
            ),
            (torch.randn(9, 4),),
        ),
    }
    vault = Vault(registry=f"sqlite:///{tmp_path}/r.db", store=f"file://{tmp_path}/store")
    for name, (ep, inputs) in cases.items():
        path = tmp_path / f"{name}.pt2"
        torch.export.save(ep, str(path))
        vault.push(path, name, "1.0.0")
        out = vault.pull(f"{name}@1.0.0", tmp_path / f"{name}-pulled.pt2")
        assert out.read_bytes() == path.read_bytes(), name
        loaded = modelvault.Vault(
            registry=f"sqlite:///{tmp_path}/r.db", store=f"file://{tmp_path}/store"
        ).load(f"{name}@1.0.0")
        torch.testing.assert_close(loaded.module()(*inputs), ep.module()(*inputs))
        again = torch.export.load(str(out))  # what a user does with the pulled file
        torch.testing.assert_close(again.module()(*inputs), ep.module()(*inputs))


def test_recompressed_pt2_round_trips(program, saved, tmp_path: Path) -> None:
    """An archive zipped again with deflate still loads and still comes back byte for byte."""
    deflated = tmp_path / "deflated.pt2"
    with (
        zipfile.ZipFile(saved) as zin,
        zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zout,
    ):
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info), zipfile.ZIP_DEFLATED)
    vault = Vault(registry=f"sqlite:///{tmp_path}/r.db", store=f"file://{tmp_path}/store")
    vault.push(deflated, "m", "1.0.0")
    assert vault.pull("m@1.0.0", tmp_path / "back.pt2").read_bytes() == deflated.read_bytes()
    x, y = torch.randn(4, 4), torch.randn(2)
    torch.testing.assert_close(vault.load("m@1.0.0").module()(x, y), program.module()(x, y))


def test_damaged_verbatim_part_is_refused_at_pull(saved, tmp_path: Path) -> None:
    draft = plugin.pack(saved)
    layout = draft.payload["archive"]
    data = bytearray(b"".join(bytes(c) for c in draft.blobs[layout["blob"]].source.chunks()))
    data[-1] ^= 1  # same size, another byte: the stored digest is the attacker's, sha256 is ours
    draft = replace_blob(draft, "archive", bytes(data))
    manifest, blobs = draft_parts(draft)
    vault = Vault(registry=f"sqlite:///{tmp_path}/r.db", store=f"file://{tmp_path}/store")
    spec = register_row(vault, manifest, blobs, "m")
    with pytest.raises(modelvault.errors.IntegrityError, match="does not match the pushed file"):
        vault.pull(spec, tmp_path / "out.pt2")
    assert not (tmp_path / "out.pt2").exists()
    assert list(tmp_path.glob("out.pt2*")) == []


def test_program_errors_are_modelvault_errors(saved, tmp_path: Path) -> None:
    """A .pt2 that is not from torch.export.save: one line, a FormatError."""
    bad = rewrite_zip(saved, tmp_path / "bad.pt2", {"models/model.json": b"[1, 2"})
    with pytest.raises(FormatError, match="not valid JSON"):
        plugin.pack(bad)
    notzip = tmp_path / "x.pt2"
    notzip.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(FormatError):
        plugin.pack(notzip)


def test_negative_tensor_size_is_refused(program) -> None:
    from modelvault.formats._torch.graph_check import check_graph

    doc = graph_doc(program)
    values = doc["graph_module"]["graph"]["tensor_values"]
    name = next(iter(values))
    values[name]["sizes"] = [{"as_int": -1}, *values[name]["sizes"][1:]]
    with pytest.raises(UnsafeGraphError, match="negative size -1"):
        check_graph(json.dumps(doc).encode())
