"""The plugin against what Torch-TensorRT 2.11, 2.12 and 2.13 really write.

Where each fixture's bytes come from (wheels pinned in ``releases.py``; the
tag commits are pytorch/TensorRT's):

- 2.13.0 (tag v2.13.0, 64f0ed46c0): ``.pt2`` files written by torch 2.13's
  ``torch.export.save`` around a graph that calls the release's own
  ``tensorrt::execute_engine`` op (registered by
  ``py/torch_tensorrt/dynamo/runtime/_TRTEngine.py`` when the C++ runtime is
  absent) on the release's ``TRTEngine``; the constants are then converted by
  the release's ``_normalize_engine_constants_to_python``
  (``py/torch_tensorrt/_compile.py``, executed from its source) into its
  ``EngineSerializer``, exactly as ``torch_tensorrt.save(...,
  output_format="exported_program")`` does. The info lists follow the
  release's ``TorchTensorRTModule._pack_engine_info``, indexed by its
  ``_serialized_engine_layout.SerializedInfoIndex``; the metadata is the
  pickle of the release's ``CompilationSettings`` (``encode_metadata``).
- 2.11.0 (v2.11.0, 0cc00aa045) and 2.12.0 (v2.12.0, 9afefd0430): info lists in
  the ``SerializedInfoIndex`` order of the release's
  ``core/runtime/runtime.h`` (shipped in the wheel), metadata pickling that
  release's ``CompilationSettings``; archives written by ``torch.jit.save``
  and ``torch.export.save`` around torch's torchbind test class, renamed to
  ``torch.classes.tensorrt.Engine`` (the C++ engine class cannot exist here).
"""

from __future__ import annotations

import ast
import base64
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from modelvault.errors import (
    EngineInfoError,
    FormatError,
    InvalidArgumentError,
    NoCompatibleVariantError,
    UnsupportedVersionError,
)
from modelvault.formats.container import write_directory
from modelvault.formats.registry import get_plugin
from modelvault.formats.torch_tensorrt import (
    check_compile_settings,
    compile_parameters,
    device_problems,
    inspect_program,
    parse_engine_info,
    recorded_compile_settings,
)
from modelvault.formats.torch_tensorrt.engine_info import ABI_LAYOUTS
from modelvault.targets import GpuDevice, Machine, check, tensorrt_mismatch

from .conftest import FW, H100, rename_engine_class, save_pt2, save_torchscript
from .release_fixtures import H100_NAME, PLAN, field_name, packed, write_pt2_213, write_windows_pt2
from .releases import release, runtime_h_layout, sources

torch = pytest.importorskip("torch")


ABI_OF = {
    "2.2.0": "4",
    "2.3.0": "5",
    "2.5.0": "6",
    "2.7.0": "7",
    "2.10.0": "7",
    "2.11.0": "8",
    "2.12.0": "9",
    "2.13.0": "9",
}


@pytest.mark.parametrize("version", list(ABI_OF))
def test_layout_table_is_each_releases_runtime_h(version: str) -> None:
    abi, names = runtime_h_layout(version)
    assert ABI_OF[version] == abi
    fields = tuple(field_name(n) for n in names)
    (layout,) = [lay for lay in ABI_LAYOUTS[abi] if lay.fields == fields]
    # the release range the table states covers this release
    bounds = [tuple(map(int, b.split("."))) for b in re.findall(r"\d+\.\d+", layout.releases)]
    mm = tuple(map(int, version.split(".")[:2]))
    low, high = (
        (bounds[0], bounds[-1]) if not layout.releases.startswith("up to") else ((0, 0), bounds[0])
    )
    assert low <= mm <= high, f"ABI {abi} layout says releases {layout.releases!r}"


def test_layout_table_is_2_13s_python_layout() -> None:
    rel = release("2.13.0")
    with rel.active():
        layout = rel.module("torch_tensorrt.dynamo.runtime._serialized_engine_layout")
    fields = tuple(field_name(m.name) for m in layout.SerializedInfoIndex)
    assert layout.SERIALIZATION_LEN == len(fields) == 12
    assert ABI_LAYOUTS[layout.ABI_VERSION][0].fields == fields


# -- info lists as each release packs them --------------------------------------------


@pytest.fixture(scope="module")
def pt2_213(tmp_path_factory: pytest.TempPathFactory) -> Path:
    infos = [
        packed(
            "2.13.0", name=f"_run_on_acc_{i}_engine", optimization_level=5, version_compatible=True
        )
        for i in range(2)
    ]
    return write_pt2_213(tmp_path_factory.mktemp("r") / "model.pt2", infos)


def test_2_13_engine_serializer_constants_are_found(pt2_213: Path) -> None:
    with zipfile.ZipFile(pt2_213) as zf:
        members = [n for n in zf.namelist() if "/data/constants/" in n]
    assert sorted(m.rsplit("/", 1)[1] for m in members if "opaque_obj_" in m) == [
        "opaque_obj_0",
        "opaque_obj_1",
    ]
    ir, infos = inspect_program(pt2_213)
    assert ir == "exported_program"
    assert [e.name for e in infos] == ["_run_on_acc_0_engine", "_run_on_acc_1_engine"]
    for e in infos:
        assert (e.abi, e.field_count, e.sm, e.device_name) == ("9", 12, "9.0", H100_NAME)
        assert e.engine_size == len(PLAN) and e.form == "engine_serializer"
        assert e.settings["optimization_level"] == 5 and e.settings["version_compatible"] is True
        assert "enabled_precisions" not in e.settings  # gone from 2.13's CompilationSettings
        assert not e.has_weight_name_map


def test_2_13_push_records_what_the_release_wrote(pt2_213: Path, tmp_path: Path) -> None:
    plugin = get_plugin("torch_tensorrt")
    src = write_directory(
        plugin.pack(pt2_213, frameworks={**FW, "tensorrt": "10.14.1.48"}), tmp_path / "c"
    )
    target = dict(src.manifest.target)
    assert target["tensorrt"] == "10.14.1.48" and target["tensorrt_version_compatible"] is True
    assert target["torch_tensorrt_abi"] == "9" and target["compute_capabilities"] == ["9.0"]
    engines = src.manifest.payload["engines"]
    assert [e["stored_as"] for e in engines] == ["engine_serializer"] * 2
    assert engines[0]["engine_digest"].startswith("blake3:")


def test_a_live_2_13_program_is_recognised() -> None:
    """The release's own objects in a live ExportedProgram, before and after 2.13's save conversion."""
    from modelvault.formats.registry import detect

    rel = release("2.13.0")
    with rel.active():
        engine_mod = rel.module("torch_tensorrt.dynamo.runtime._TRTEngine")
        ep = torch.export.export(torch.nn.Linear(2, 2), (torch.ones(1, 2),))
        assert not get_plugin("torch_tensorrt").can_pack(ep)
        eng = engine_mod.TRTEngine.__new__(engine_mod.TRTEngine)
        eng.cudagraph = None
        ep._constants["_run_on_acc_0_engine"] = eng
        assert detect(ep) is get_plugin("torch_tensorrt")
        ep._constants["_run_on_acc_0_engine"] = engine_mod.EngineSerializer(packed("2.13.0"))
        assert get_plugin("torch_tensorrt").can_pack(ep)


def test_2_13_python_runtime_engines_pickled_as_themselves(tmp_path: Path) -> None:
    path = write_pt2_213(tmp_path / "py.pt2", [packed("2.13.0")], normalize=False)
    _, infos = inspect_program(path)
    assert [(e.form, e.abi, e.engine_size) for e in infos] == [("python_trtengine", "9", len(PLAN))]


@pytest.mark.parametrize("protocol", [0, 1, 2, 5])
def test_a_python_runtime_engine_in_every_pickle_protocol(
    pt2_213: Path, tmp_path: Path, protocol: int
) -> None:
    rel = release("2.13.0")
    with rel.active():
        engine_mod = rel.module("torch_tensorrt.dynamo.runtime._TRTEngine")
        eng = engine_mod.TRTEngine.__new__(engine_mod.TRTEngine)
        eng.serialized_info, eng.cudagraph = packed("2.13.0"), None
        body = pickle.dumps(eng, protocol=protocol)  # TRTEngine.__getstate__, the release's
    bad = _replace_member(pt2_213, tmp_path / "p.pt2", "data/constants/opaque_obj_1", body)
    _, infos = inspect_program(bad)
    assert [e.form for e in infos] == ["engine_serializer", "python_trtengine"]
    assert infos[1].engine_size == len(PLAN)


def _replace_member(src: Path, dest: Path, member_tail: str, body: bytes) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info.filename, body if info.filename.endswith(member_tail) else data)
    return dest


class _Gadget:
    def __reduce__(self) -> Any:
        import os

        return (os.system, ("echo should never run",))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (pickle.dumps(_Gadget(), protocol=2), r"names the global (posix|os)\.system"),
        (pickle.dumps({"not": "an engine"}, protocol=2), "not a TensorRT engine"),
        (b"not a pickle", "is not a readable pickle"),
    ],
)
def test_a_foreign_opaque_constant_is_refused_unresolved(
    pt2_213: Path, tmp_path: Path, vault: Any, body: bytes, message: str
) -> None:
    bad = _replace_member(pt2_213, tmp_path / "bad.pt2", "data/constants/opaque_obj_1", body)
    with pytest.raises(FormatError, match=message):
        inspect_program(bad)
    with pytest.raises(FormatError):
        vault.push(bad, "bad", "1.0.0", format="torch_tensorrt", frameworks=FW)
    assert vault.list() == []


def test_a_truncated_engine_serializer_is_refused(
    pt2_213: Path, tmp_path: Path, vault: Any
) -> None:
    with zipfile.ZipFile(pt2_213) as zf:
        name = next(n for n in zf.namelist() if n.endswith("opaque_obj_0"))
        data = zf.read(name)
    for cut in (data[: len(data) // 2], data.replace(b"linux_x86_64", b"linux_x86_6\x00")):
        bad = _replace_member(pt2_213, tmp_path / "cut.pt2", "opaque_obj_0", cut)
        with pytest.raises((FormatError, EngineInfoError)):
            inspect_program(bad)
        with pytest.raises((FormatError, EngineInfoError)):
            vault.push(bad, "cut", "1.0.0", format="torch_tensorrt", frameworks=FW)
    assert vault.list() == []


# -- torchbind engines (the C++ runtime's), in both IRs --------------------------------


@pytest.mark.parametrize("version", ["2.11.0", "2.12.0", "2.13.0"])
@pytest.mark.parametrize("ir", ["torchscript", "exported_program"])
def test_torchbind_engines_of_each_release_in_both_irs(
    version: str, ir: str, torchbind: Any, tmp_path: Path
) -> None:
    info = packed(version, optimization_level=4, immutable_weights=False)
    state = [
        base64.b64encode(x).decode() if isinstance(x, bytes) else x for x in info
    ]  # def_pickle
    save = save_torchscript if ir == "torchscript" else save_pt2
    raw = save(torchbind, tmp_path / "raw", [state])
    prog = rename_engine_class(raw, tmp_path / ("m.ts" if ir == "torchscript" else "m.pt2"))
    got_ir, (e,) = inspect_program(prog)
    abi = runtime_h_layout(version)[0]
    assert (got_ir, e.abi, e.field_count) == (ir, abi, len(runtime_h_layout(version)[1]))
    assert e.form == "torchbind" and e.engine_size == len(PLAN)
    assert e.settings["optimization_level"] == 4 and e.refittable
    # a setting until 2.13 removed it from CompilationSettings
    assert ("enabled_precisions" in e.settings) == (version != "2.13.0")


# -- programs cross-compiled for Windows ------------------------------------------------


def test_windows_cross_compiled_engines_are_found(tmp_path: Path) -> None:
    info = packed("2.12.0", platform="windows_x86_64", hardware_compatible=False)
    path = write_windows_pt2(tmp_path / "win.pt2", info)
    ir, (e,) = inspect_program(path)
    assert (ir, e.form, e.abi, e.target_platform) == (
        "exported_program",
        "windows_placeholder",
        "9",
        "windows_x86_64",
    )
    assert e.engine_size == len(PLAN) and "models/model.json" in e.source
    target = get_plugin("torch_tensorrt").pack(path, frameworks=FW).target
    assert target["platform"] == "windows_x86_64"
    assert check(target, H100, "cuda:0") == [
        "built for platform windows_x86_64; this machine is linux_x86_64"
    ]


def test_a_placeholder_whose_engine_is_a_tensor_is_refused(tmp_path: Path) -> None:
    path = write_windows_pt2(tmp_path / "win.pt2", packed("2.12.0"))
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith("models/model.json"))
        doc = zf.read(name)
    # 2.13's schema types serialized_engine as a Tensor (an ExecuTorch-lowering buffer)
    engine = base64.b64encode(PLAN).decode()
    bad = doc.replace(f'{{"as_string": "{engine}"}}'.encode(), b'{"as_tensor": {"name": "b_trt"}}')
    assert bad != doc
    with pytest.raises(
        FormatError, match=r"argument 4 of a no_op_placeholder.*as_tensor, not a string"
    ):
        inspect_program(_replace_member(path, tmp_path / "t.pt2", "models/model.json", bad))


def test_abi_10_and_unknown_abi_11() -> None:
    # ABI "10" is on main only (b32ebfff5e, runtime.h adds ALIASED_IO_IDX); its record format
    # is serialize_aliased_io's "output@input@kind" joined by "%".
    fields = ["10", "e", f"0%9%0%0%{H100_NAME}", base64.b64encode(PLAN).decode(), "x%cache_in",
              "y%cache_out", "0", "", "linux_x86_64", "0", "0", "0", "cache_out@cache_in@kv_cache_update"]  # fmt: skip
    e = parse_engine_info(fields)
    assert e.abi == "10" and e.aliased_io == {"cache_out": ("cache_in", "kv_cache_update")}
    with pytest.raises(EngineInfoError, match="is not 'output@input@kind'"):
        parse_engine_info([*fields[:-1], "cache_out@cache_in"])
    with pytest.raises(UnsupportedVersionError, match="ABI '11' is not known") as exc:
        parse_engine_info(["11", *fields[1:]])
    assert "upgrade modelvault" in str(exc.value.hint)


# -- compile settings against each release's dynamo.compile signature ------------------


def _compile_parameters(version: str) -> frozenset[str]:
    """:func:`compile_parameters` of the release's own ``dynamo.compile`` (``dynamo/_compiler.py``):
    the function is executed from its source, body and parameter names unchanged (its defaults
    and annotations, which need the release's imports, become None), and its source is
    registered so that ``inspect.getsource`` reads the real text."""
    import linecache

    path = sources(version) / "torch_tensorrt" / "dynamo" / "_compiler.py"
    text = path.read_text()
    fn = next(
        n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == "compile"
    )
    fn.decorator_list, fn.returns = [], None
    for a in [*fn.args.args, *fn.args.kwonlyargs]:
        a.annotation = None
    fn.args.defaults = [ast.Constant(None) for _ in fn.args.defaults]
    fn.args.kw_defaults = [ast.Constant(None) for _ in fn.args.kw_defaults]
    filename = f"<{version} {path.name}>"
    source = ast.unparse(fn)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    ns: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), ns)
    return compile_parameters(ns["compile"])


def test_2_13_refuses_the_settings_it_would_ignore() -> None:
    p213, p212 = _compile_parameters("2.13.0"), _compile_parameters("2.12.0")
    assert {"enabled_precisions", "use_explicit_typing"} <= p212 - p213
    check_compile_settings({"enabled_precisions": {torch.float16}}, p212, "2.12.0")
    for key in ("enabled_precisions", "use_explicit_typing"):
        with pytest.raises(InvalidArgumentError, match=f"{key}.*2.13.0.*removed in 2.13"):
            check_compile_settings({key: True}, p213, "2.13.0")
    with pytest.raises(InvalidArgumentError, match="'make_refittable' is a deprecated spelling"):
        check_compile_settings({"make_refittable": True}, p213, "2.13.0")
    with pytest.raises(InvalidArgumentError, match="'no_such_setting' is not a parameter"):
        check_compile_settings({"no_such_setting": 1}, p213, "2.13.0")
    check_compile_settings({"enable_autocast": True, "version_compatible": True}, p213, "2.13.0")
    # read from **kwargs by 2.13's compile itself, so taken
    assert {"debug", "enable_cross_compile_for_windows"} <= p213
    check_compile_settings({"enable_cross_compile_for_windows": True}, p213, "2.13.0")
    recorded = [{"settings": {"enabled_precisions": ["torch.float16"], "optimization_level": 3}}]
    assert recorded_compile_settings(recorded, p213) == {"optimization_level": 3}


# -- TensorRT version and device -------------------------------------------------------


def test_exact_tensorrt_version_unless_version_compatible() -> None:
    assert tensorrt_mismatch("10.14.1.48", "10.14.1.48", False) is None
    assert "exact TensorRT version" in str(tensorrt_mismatch("10.14.1.48", "10.14.2.1", False))
    assert tensorrt_mismatch("10.14.1", "10.16.0.2", True) is None
    assert tensorrt_mismatch("10.14.1", "11.0.0", True) is None  # 10 -> 11, NVIDIA's matrix
    assert "same or a later" in str(tensorrt_mismatch("10.14.1", "10.13.0", True))
    assert "same or a later" in str(tensorrt_mismatch("8.6.1", "11.0.0", True))
    assert "8.6 or later" in str(tensorrt_mismatch("8.5.3", "8.6.1", True))


def test_version_compatible_engines_load_on_a_later_tensorrt(pt2_213: Path, tmp_path: Path) -> None:
    plugin = get_plugin("torch_tensorrt")
    src = write_directory(
        plugin.pack(pt2_213, frameworks={**FW, "tensorrt": "10.14.1"}), tmp_path / "c"
    )
    later = Machine(**{**H100.__dict__, "tensorrt": "10.16.0.2"})
    earlier = Machine(**{**H100.__dict__, "tensorrt": "10.13.0"})
    assert check(src.manifest.target, later, "cuda:0") == []
    assert check(src.manifest.target, earlier, "cuda:0")
    plain = write_directory(
        plugin.pack(
            write_pt2_213(tmp_path / "p.pt2", [packed("2.13.0")]),
            frameworks={**FW, "tensorrt": "10.14.1"},
        ),
        tmp_path / "d",
    )
    assert "tensorrt_version_compatible" not in plain.manifest.target
    assert check(plain.manifest.target, later, "cuda:0")


def test_device_name_matters_with_several_gpus_of_one_sm(pt2_213: Path, tmp_path: Path) -> None:
    plugin = get_plugin("torch_tensorrt")
    engines = list(
        write_directory(plugin.pack(pt2_213, frameworks=FW), tmp_path / "c").manifest.payload[
            "engines"
        ]
    )
    two = Machine(
        **{
            **H100.__dict__,
            "devices": (GpuDevice(0, H100_NAME, (9, 0)), GpuDevice(1, "NVIDIA H200", (9, 0))),
        }
    )
    assert device_problems(engines, two, "cuda:0") == []
    problems = device_problems(engines, two, "cuda:1")
    assert len(problems) == 2
    assert all(f"was built on a {H100_NAME}; cuda:1 is a NVIDIA H200" in p for p in problems)
    one = Machine(**{**H100.__dict__, "devices": (GpuDevice(0, "NVIDIA H200", (9, 0)),)})
    assert device_problems(engines, one, "cuda:0") == []  # the one GPU of that SM is taken
    hw = [{**e, "hardware_compatible": True} for e in engines]
    assert device_problems(hw, two, "cuda:1") == []
    assert check(H100_TARGET, two, "cuda:2") == [
        "cuda:2 does not exist here (this machine has 2 GPU(s))"
    ]


H100_TARGET = {"kind": "tensorrt", "device": "cuda", "compute_capabilities": ["9.0"]}


def test_load_refuses_a_device_the_runtime_would_not_use(pt2_213: Path, tmp_path: Path) -> None:
    plugin = get_plugin("torch_tensorrt")
    src = write_directory(plugin.pack(pt2_213, frameworks=FW), tmp_path / "c")
    two = Machine(
        **{
            **H100.__dict__,
            "devices": (GpuDevice(0, H100_NAME, (9, 0)), GpuDevice(1, "NVIDIA H200", (9, 0))),
        }
    )
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.startswith("torch_tensorrt")}
    import types

    sys.modules["torch_tensorrt"] = types.ModuleType("torch_tensorrt")
    try:
        with pytest.raises(NoCompatibleVariantError, match="runtime would pick one named like"):
            plugin.load(src, device="cuda:1", machine=two)
    finally:
        sys.modules.pop("torch_tensorrt")
        sys.modules.update(saved)
