"""Fuzzing the program-graph checker and every payload validator (bounded, in the normal suite).

Only modelvault errors may come out, and nothing may run: the mutations insert
commands that would create a marker file, and a document the checker accepts
is handed to torch's own deserializer (where torch is installed) to show it
really is inert.

``data/program.json`` is real ``torch.export`` output (a linear layer, a
buffer, two inputs with related dynamic sizes, so it has symbolic expressions,
range constraints and a guard); stack-trace paths were shortened.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelvault.digest import digest_bytes
from modelvault.errors import ModelVaultError
from modelvault.formats._torch.graph_check import GraphSummary, check_graph
from modelvault.formats.bundle import Bundle
from modelvault.formats.validation import validate_container
from tests.formats.conftest import assemble, manifest_wire

PROGRAM = json.loads((Path(__file__).parent / "data" / "program.json").read_text())
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def injections(marker: Path) -> list[str]:
    cmd = f"__import__('os').system('touch {marker}')"
    return [
        f"{cmd} or Symbol('s77', positive=True, integer=True)",
        f"Add({cmd}, Integer(1))",
        f"Symbol('s0', integer={cmd})",
        f"y={cmd}",
        f"x): {cmd}\n#",
        f"{cmd} == 0",
        f"L['x'].size()[0] == {cmd}",
        "torch.os.system",
        "torch.load",
        "_operator.attrgetter",
        "#ns:op",
        json.dumps([1, {"type": "builtins.dict", "context": json.dumps([{"__enum__": True}])}]),
        "a\x1b[2Jb",
        "s77 + 2",
        "",
    ]


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in the document a string or number lives (keys included)."""
    out: list[tuple[Any, ...]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((*prefix, ("key", k)))
            out.extend(paths(v, (*prefix, k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.extend(paths(v, (*prefix, i)))
    else:
        out.append(prefix)
    return out


PLACES = paths(PROGRAM)


def put(doc: Any, place: tuple[Any, ...], value: Any) -> Any:
    doc = json.loads(json.dumps(doc))
    *parents, last = place
    node = doc
    for p in parents:
        node = node[p]
    if isinstance(last, tuple):  # rename a key
        node[value if isinstance(value, str) else str(value)] = node.pop(last[1])
    else:
        node[last] = value
    return doc


def inert_in_torch(data: bytes, summary: GraphSummary, marker: Path) -> None:
    """Hand an accepted document to torch's deserializer: whatever it does, no marker appears."""
    torch = pytest.importorskip("torch")
    from modelvault.formats._torch.dtypes import from_name

    sd: dict[str, Any] = {}
    for _kind, fqn, arg, _persistent in summary.weights:
        dtype, sizes = summary.tensor_meta.get(arg, ("float32", []))
        shape = [s if s is not None else 2 for s in sizes]
        sd[fqn] = torch.empty(shape, dtype=from_name(dtype or "float32"), device="meta")
    from torch._export.serde import serialize as serde

    try:
        serde.deserialize(serde.SerializedArtifact(data, sd, {}, b""))
    except Exception:
        pass
    assert not marker.exists(), "an accepted graph ran code"


def test_the_real_program_is_accepted() -> None:
    summary = check_graph(json.dumps(PROGRAM).encode())
    assert [w[1] for w in summary.weights] == ["l.weight", "l.bias", "c"]


@FUZZ
@given(data=st.data())
def test_graph_mutations(tmp_path: Path, data: st.DataObject) -> None:
    marker = tmp_path / "MARKER"
    doc = PROGRAM
    for _ in range(data.draw(st.integers(1, 3))):
        place = data.draw(st.sampled_from(PLACES))
        value = data.draw(
            st.one_of(
                st.sampled_from(injections(marker)),
                st.text(max_size=40),
                st.integers(-(1 << 70), 1 << 70),
                st.booleans(),
                st.none(),
                st.lists(st.text(max_size=5), max_size=3),
            )
        )
        try:
            doc = put(doc, place, value)
        except (KeyError, IndexError, TypeError):
            continue
    raw = json.dumps(doc).encode()
    try:
        summary = check_graph(raw)
    except ModelVaultError:
        return
    inert_in_torch(raw, summary, marker)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_graph_bytes(raw: bytes) -> None:
    try:
        check_graph(raw)
    except ModelVaultError:
        pass


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["blob", "layout", "graph", "state_dict", "constants", "archive", "entries",
             "root", "path", "type", "target", "executable", "order", "weights", "tensors",
             "extra_files", "segments", "sha256", "size", "parameter", "requires_grad"]
        )
        | st.text(max_size=6),
        inner,
        max_size=5,
    ),
    max_leaves=20,
)  # fmt: skip

DATA = json.dumps(PROGRAM).encode()


def payload_bundle(tmp: Path, plugin: str, payload: Any) -> Path | None:
    blob = {
        "digest": digest_bytes(DATA),
        "media_type": "application/vnd.pytorch.export.program+json",
        "role": "graph",
        "size": len(DATA),
    }
    wire = manifest_wire([blob], plugin={"name": plugin, "version": "1"}, payload=payload)
    path = tmp / "fuzz.mvpk"
    try:
        path.write_bytes(assemble(wire, [DATA]))
    except (TypeError, ValueError, OverflowError):  # msgpack cannot even encode it
        return None
    return path


@FUZZ
@given(
    plugin=st.sampled_from(["files", "tensors", "torchscript", "exported_program", "evil"]),
    payload=st.dictionaries(st.text(max_size=8) | st.sampled_from(["layout", "graph"]), JSONISH),
    seed=st.sampled_from(
        [
            {},
            {"layout": 1, "graph": {"blob": 0, "schema": "8.0"}, "state_dict": {}, "constants": []},
            {
                "root": "dir",
                "entries": [{"path": "a", "type": "file", "blob": 0, "executable": False}],
            },
            {"layout": 1, "order": []},
        ]
    ),
)
def test_payload_validators(tmp_path: Path, plugin: str, payload: Any, seed: Any) -> None:
    path = payload_bundle(tmp_path, plugin, {**seed, **payload})
    if path is None:
        return
    try:
        b = Bundle.open(path)
        b.verify()
        validate_container(b)
    except ModelVaultError:
        pass
