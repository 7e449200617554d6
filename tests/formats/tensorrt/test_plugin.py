"""The torch_tensorrt plugin on real torch-written archives (TorchScript and .pt2), and its bad input.

The archives are written by torch 2.13 itself (``torch.jit.save``,
``torch.export.save``) around torch's torchbind test class, whose pickled
state is a list of strings like ``torch.classes.tensorrt.Engine``'s; the
class name is then renamed in the pickles. Everything a TensorRT runtime
would do is out of reach here and is covered by ``test_integration.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from modelvault.errors import (
    EngineInfoError,
    IntegrityError,
    InvalidArgumentError,
    MissingDependencyError,
    NoCompatibleVariantError,
    PayloadMismatchError,
    UnknownFormatError,
    UnsupportedVersionError,
)
from modelvault.formats.container import write_directory
from modelvault.formats.registry import detect_path, get_plugin
from modelvault.formats.torch_tensorrt import (
    TorchTensorRTPlugin,
    inspect_program,
    requirements_from_engines,
)
from modelvault.formats.torch_tensorrt.archive import detect_ir, find_engine_states
from modelvault.targets import GpuDevice, Machine

from .conftest import (
    FW,
    H100,
    PLAN,
    STACK_STRING,
    info_list,
    metadata_b64,
    pickled_as_torch_tensorrt,
    rename_engine_class,
    save_pt2,
    save_torchscript,
    small_module,
)


@pytest.fixture(params=["torchscript", "exported_program"])
def program(request: pytest.FixtureRequest, torchbind: Any, tmp_path: Path) -> Path:
    """A TensorRT-looking program of each IR, with two ABI 9 engines built on SM 9.0."""
    with pickled_as_torch_tensorrt():
        md = metadata_b64(enabled_precisions=set(), optimization_level=3)
    states = [
        info_list("9", sm=(9, 0), metadata=md, name=f"_run_on_acc_{i}_engine") for i in range(2)
    ]
    save = save_torchscript if request.param == "torchscript" else save_pt2
    raw = save(torchbind, tmp_path / f"raw{request.param}", states)
    return rename_engine_class(
        raw, tmp_path / ("model.ts" if request.param == "torchscript" else "model.pt2")
    )


def test_real_archives_hold_the_states_where_expected(torchbind: Any, tmp_path: Path) -> None:
    states = [info_list("9")]
    ts = save_torchscript(torchbind, tmp_path / "m.ts", states)
    pt2 = save_pt2(torchbind, tmp_path / "m.pt2", states)
    found_ts = find_engine_states(ts, class_names={STACK_STRING})
    found_pt2 = find_engine_states(pt2, class_names={STACK_STRING})
    assert [s.fields for s in found_ts] == [states[0]] == [s.fields for s in found_pt2]
    assert found_ts[0].member.endswith("data.pkl")
    assert "data/constants/custom_obj_0!archive/data.pkl" in found_pt2[0].member
    assert detect_ir(ts) == "torchscript" and detect_ir(pt2) == "exported_program"


def test_inspect_program(program: Path) -> None:
    ir, infos = inspect_program(program)
    assert ir == ("torchscript" if program.suffix == ".ts" else "exported_program")
    assert [e.name for e in infos] == ["_run_on_acc_0_engine", "_run_on_acc_1_engine"]
    assert {e.sm for e in infos} == {"9.0"} and {e.abi for e in infos} == {"9"}
    assert infos[0].settings["optimization_level"] == 3


def test_pack_records_requirements_and_engines(program: Path, tmp_path: Path) -> None:
    plugin = get_plugin("torch_tensorrt")
    assert isinstance(plugin, TorchTensorRTPlugin) and plugin.kind == "tensorrt"
    assert detect_path(program) is plugin
    draft = plugin.pack(program, frameworks=FW)
    src = write_directory(draft, tmp_path / "container")
    m = src.manifest
    assert m.plugin == "torch_tensorrt" and m.plugin_version == "1"
    assert dict(m.target) == {
        "kind": "tensorrt",
        "device": "cuda",
        "compute_capabilities": ["9.0"],
        "tensorrt": "10.3.0",
        "torch_tensorrt_abi": "9",
        "torch_tensorrt": "2.13",
        "platform": "linux_x86_64",
        "cuda": "12",
    }
    assert dict(m.frameworks)["tensorrt"] == "10.3.0"
    assert m.payload["ir"] == ("torchscript" if program.suffix == ".ts" else "exported_program")
    assert [e["name"] for e in m.payload["engines"]] == [
        "_run_on_acc_0_engine",
        "_run_on_acc_1_engine",
    ]
    assert m.payload["engines"][0]["engine_size"] == len(PLAN)
    assert m.payload["weights"] == "in_engines"
    assert plugin.check(src, "cuda:0", H100) == []
    assert plugin.check(
        src,
        "cuda:0",
        Machine(
            "linux_x86_64",
            True,
            (GpuDevice(0, "A100", (8, 0)),),
            tensorrt="10.3.0",
            torch_tensorrt="2.13.0",
            torch_tensorrt_abi="9",
            cuda="12.1",
        ),
    ) == ["built for compute capability 9.0; cuda:0 (A100) is 8.0"]
    out = plugin.export_native(src, tmp_path / f"out{plugin.native_suffix(src)}")
    assert out.read_bytes() == program.read_bytes()


def test_load_without_torch_tensorrt_names_the_missing_package(
    program: Path, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch_tensorrt is importable here; the integration tests cover loading")
    src = write_directory(get_plugin("torch_tensorrt").pack(program, frameworks=FW), tmp_path / "c")
    with pytest.raises(
        MissingDependencyError, match="loading a TensorRT variant needs torch_tensorrt"
    ) as exc:
        get_plugin("torch_tensorrt").load(src, device="cuda:0")
    assert exc.value.hint == "run: pip install 'modelvault[tensorrt]'"


def test_corrupted_blob_is_refused_before_deserializing(program: Path, tmp_path: Path) -> None:
    plugin = get_plugin("torch_tensorrt")
    src = write_directory(plugin.pack(program, frameworks=FW), tmp_path / "c")
    blob = src.locate(0).path
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(
        IntegrityError, match="does not match its digest; refusing to deserialize it"
    ):
        plugin.export_native(src, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def test_weight_stripped_engines_are_marked_for_refit(torchbind: Any, tmp_path: Path) -> None:
    with pickled_as_torch_tensorrt():
        md = metadata_b64(immutable_weights=False, strip_engine_weights=True)
    raw = save_pt2(torchbind, tmp_path / "raw.pt2", [info_list("9", sm=(8, 6), metadata=md)])
    prog = rename_engine_class(raw, tmp_path / "stripped.pt2")
    draft = get_plugin("torch_tensorrt").pack(prog, frameworks=FW)
    assert draft.payload["weights"] == "refit_from_portable"
    assert draft.payload["engines"][0]["settings"]["strip_engine_weights"] is True


# -- bad input ---------------------------------------------------------------------


def _engine_less_programs(tmp_path: Path) -> list[Path]:
    torch = pytest.importorskip("torch")

    pt2 = tmp_path / "plain.pt2"
    torch.export.save(torch.export.export(small_module(), (torch.randn(1, 4),)), str(pt2))
    ts = tmp_path / "plain.ts"
    torch.jit.trace(small_module(), torch.randn(1, 4)).save(str(ts))
    return [pt2, ts]


def test_engine_less_programs_are_refused(tmp_path: Path) -> None:
    plugin = get_plugin("torch_tensorrt")
    for path in _engine_less_programs(tmp_path):
        assert not plugin.can_pack_path(path)
        with pytest.raises(PayloadMismatchError, match="with no TensorRT engine in it") as exc:
            plugin.pack(path, frameworks=FW)
        other = "exported_program" if path.suffix == ".pt2" else "torchscript"
        assert f"format='{other}'" in (exc.value.hint or "")


def test_live_module_without_engines_is_refused() -> None:
    torch = pytest.importorskip("torch")
    plugin = get_plugin("torch_tensorrt")
    module = torch.nn.Linear(2, 2)
    assert not plugin.can_pack(module)
    with pytest.raises(PayloadMismatchError, match="Linear holds no TensorRT engine"):
        plugin.pack(module)


def test_not_a_program(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\x00" * 64)
    with pytest.raises(UnknownFormatError, match="is not a zip archive"):
        get_plugin("torch_tensorrt").pack(f, frameworks=FW)
    with pytest.raises(FileNotFoundError):
        get_plugin("torch_tensorrt").pack(tmp_path / "missing.pt2")


def _program_with(torchbind: Any, tmp_path: Path, states: list[list[Any]]) -> Path:
    raw = save_pt2(torchbind, tmp_path / "raw.pt2", states)
    return rename_engine_class(raw, tmp_path / "bad.pt2")


def test_unknown_abi_in_a_program(torchbind: Any, tmp_path: Path) -> None:
    fields = info_list("9")
    fields[0] = "12"
    with pytest.raises(UnsupportedVersionError, match="engine ABI '12' is not known") as exc:
        get_plugin("torch_tensorrt").pack(
            _program_with(torchbind, tmp_path, [fields]), frameworks=FW
        )
    assert "custom_obj_0" in str(exc.value)


def test_corrupted_engine_in_a_program(torchbind: Any, tmp_path: Path) -> None:
    fields = info_list("9")
    fields[3] = "@@@@"
    with pytest.raises(EngineInfoError, match="the engine blob is corrupted or truncated"):
        get_plugin("torch_tensorrt").pack(
            _program_with(torchbind, tmp_path, [fields]), frameworks=FW
        )


def test_hardware_compatible_on_turing_is_a_contradiction(torchbind: Any, tmp_path: Path) -> None:
    prog = _program_with(
        torchbind, tmp_path, [info_list("9", sm=(7, 5), hw=True, device_name="Tesla T4")]
    )
    with pytest.raises(
        EngineInfoError,
        match=r"claims to be hardware-compatible but was built on compute "
        r"capability 7.5 \(Tesla T4\).*needs Ampere \(8.0\) or newer",
    ):
        get_plugin("torch_tensorrt").pack(prog, frameworks=FW)


def test_engines_for_two_architectures_are_refused(torchbind: Any, tmp_path: Path) -> None:
    prog = _program_with(
        torchbind, tmp_path, [info_list("9", sm=(8, 6)), info_list("9", sm=(9, 0))]
    )
    with pytest.raises(
        EngineInfoError, match=r"built for different GPUs \(compute capabilities 8.6, 9.0\)"
    ):
        get_plugin("torch_tensorrt").pack(prog, frameworks=FW)


def test_unknown_tensorrt_version_is_refused(program: Path) -> None:
    if Machine.probe().tensorrt:
        pytest.skip("tensorrt is importable here, so its version is known")
    with pytest.raises(
        InvalidArgumentError, match="cannot tell which TensorRT version built these engines"
    ) as exc:
        get_plugin("torch_tensorrt").pack(program)
    assert "frameworks={'tensorrt'" in (exc.value.hint or "")


@pytest.mark.parametrize(
    "frameworks", [{"tensorrt": "ten"}, {"tensorrt": "10.3", "onnx": "1.0"}, {"tensorrt": 10}]
)
def test_bad_frameworks_option(program: Path, frameworks: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        get_plugin("torch_tensorrt").pack(program, frameworks=frameworks)


def test_requirements_refuse_mixed_abis_and_dla() -> None:
    from modelvault.formats.torch_tensorrt import parse_engine_info

    a = parse_engine_info(info_list("8"))
    b = parse_engine_info(info_list("9"))
    with pytest.raises(EngineInfoError, match="mixes engines of Torch-TensorRT ABIs 8, 9"):
        requirements_from_engines([a, b], tensorrt="10.3")
    dla = info_list("9")
    dla[2] = "0%8%7%1%Orin DLA"
    with pytest.raises(EngineInfoError, match="targets a DLA core"):
        requirements_from_engines([parse_engine_info(dla)], tensorrt="10.3")
    with pytest.raises(EngineInfoError, match="holds no TensorRT engine"):
        requirements_from_engines([], tensorrt="10.3")


def test_older_abi_takes_the_platform_from_the_option() -> None:
    from modelvault.formats.torch_tensorrt import parse_engine_info

    req = requirements_from_engines(
        [parse_engine_info(info_list("4"))], tensorrt="8.6.1", platform="linux_aarch64"
    )
    assert req["platform"] == "linux_aarch64" and req["torch_tensorrt_abi"] == "4"
    assert req["compute_capabilities"] == ["8.6"]
    hw = requirements_from_engines(
        [parse_engine_info(info_list("6", hw=True, sm=(8, 9)))], tensorrt="10.0.1"
    )
    assert hw["compute_capabilities"] == {"min": "8.0"}


# -- through the vault: variants, show, nothing registered on bad input -------------


def test_variant_push_show_and_choose(vault: Any, program: Path, tmp_path: Path) -> None:
    portable = tmp_path / "portable"
    portable.mkdir()
    (portable / "model.bin").write_bytes(b"weights")
    vault.push(portable, "resnet50", "1.3.0")
    r = vault.push(
        program, "resnet50", "1.3.0", format="torch_tensorrt", variant=True, frameworks=FW
    )
    assert r.variant_added
    shown = vault.show("resnet50:1.3.0")
    kinds = {v["format"]: v for v in shown["variants"]}
    assert set(kinds) == {"files", "torch_tensorrt"}
    assert kinds["torch_tensorrt"]["requirements"]["compute_capabilities"] == ["9.0"]
    from modelvault.loader import choose_variant

    info = vault.resolve("resnet50:1.3.0")
    assert choose_variant(info.variants, "cuda:0", machine=H100).variant.format == "torch_tensorrt"
    cpu_choice = choose_variant(info.variants, "cpu", machine=H100)
    assert cpu_choice.variant.format == "files"
    assert any("needs a CUDA device" in why for _, why in cpu_choice.rejected)
    t4 = Machine(
        "linux_x86_64",
        True,
        (GpuDevice(0, "T4", (7, 5)),),
        tensorrt="10.3.0",
        torch_tensorrt="2.13.0",
        torch_tensorrt_abi="9",
        cuda="12.4",
    )
    assert choose_variant(info.variants, "cuda:0", machine=t4).variant.format == "files"


def test_only_trt_variants_and_no_fit_explains(vault: Any, program: Path) -> None:
    vault.push(program, "m", "1.0.0", format="torch_tensorrt", frameworks=FW)
    from modelvault.loader import choose_variant

    a100 = Machine(
        "linux_x86_64",
        True,
        (GpuDevice(0, "A100", (8, 0)),),
        tensorrt="10.7.0",
        torch_tensorrt="2.13.0",
        torch_tensorrt_abi="9",
        cuda="12.4",
    )
    with pytest.raises(NoCompatibleVariantError) as exc:
        choose_variant(vault.resolve("m:1.0.0").variants, "cuda:0", machine=a100)
    text = str(exc.value)
    assert "built for compute capability 9.0; cuda:0 (A100) is 8.0" in text
    assert "built with TensorRT 10.3.0; this machine has TensorRT 10.7.0" in text


def test_bad_push_registers_nothing(vault: Any, tmp_path: Path, torchbind: Any) -> None:
    plain = _engine_less_programs(tmp_path)[0]
    with pytest.raises(PayloadMismatchError):
        vault.push(plain, "m", "1.0.0", format="torch_tensorrt", frameworks=FW)
    bad = _program_with(torchbind, tmp_path, [info_list("9", sm=(7, 5), hw=True)])
    with pytest.raises(EngineInfoError):
        vault.push(bad, "m", "1.0.0", format="torch_tensorrt", frameworks=FW)
    assert vault.list() == []


def test_same_variant_twice(vault: Any, program: Path, tmp_path: Path) -> None:
    portable = tmp_path / "p"
    portable.mkdir()
    (portable / "w.bin").write_bytes(b"w")
    vault.push(portable, "m", "1.0.0")
    vault.push(program, "m", "1.0.0", format="torch_tensorrt", variant=True, frameworks=FW)
    copy = tmp_path / f"copy{program.suffix}"
    shutil.copyfile(program, copy)
    from modelvault.errors import VariantExistsError

    with pytest.raises(VariantExistsError):
        vault.push(copy, "m", "1.0.0", format="torch_tensorrt", variant=True, frameworks=FW)
    assert len(vault.resolve("m:1.0.0").variants) == 2


# -- load order, with a stand-in runtime module (real TensorRT: test_integration.py) --


@pytest.fixture
def stand_in_runtime(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """A ``torch_tensorrt`` module that claims the C++ runtime (so nothing of it is imported),
    and torch's own ``torch.export.load`` and ``torch.jit.load`` wrapped to record the bytes
    they were handed. The real torch then fails on the engine class no runtime registered, as
    it fails on a plan TensorRT refuses: with its own error."""
    import sys
    import types

    import torch

    seen: list[bytes] = []
    mod = types.ModuleType("torch_tensorrt")
    mod.ENABLED_FEATURES = types.SimpleNamespace(torch_tensorrt_runtime=True)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch_tensorrt", mod)
    for owner in (torch.export, torch.jit):
        real = owner.load

        def load(f: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            seen.append(f.read())
            f.seek(0)
            return _real(f, *args, **kwargs)

        monkeypatch.setattr(owner, "load", load)
    return seen


def test_the_runtime_reads_the_bytes_that_were_hashed(
    program: Path, tmp_path: Path, stand_in_runtime: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob file rewritten after it was verified (a cache entry changed underneath) cannot
    reach the runtime: the runtime reads a private copy written while hashing."""
    import torch

    plugin = get_plugin("torch_tensorrt")
    src = write_directory(plugin.pack(program, frameworks=FW), tmp_path / "c")
    blob = src.locate(int(src.manifest.payload["program"]["blob"])).path
    original = blob.read_bytes()
    owner = torch.jit if program.suffix == ".ts" else torch.export
    recording = owner.load

    def tamper_then_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        blob.chmod(0o644)
        blob.write_bytes(b"PK\x03\x04 replaced after verification" + bytes(len(original)))
        return recording(f, *args, **kwargs)

    monkeypatch.setattr(owner, "load", tamper_then_load)
    from modelvault.errors import DeviceError

    with pytest.raises(DeviceError):  # torch then refuses the engine class no runtime registered
        plugin.load(src, device="cuda:0", machine=H100)
    assert stand_in_runtime == [original]


def test_requirements_are_checked_before_any_engine_is_deserialized(
    program: Path, tmp_path: Path, stand_in_runtime: list[bytes]
) -> None:
    plugin = get_plugin("torch_tensorrt")
    src = write_directory(plugin.pack(program, frameworks=FW), tmp_path / "c")
    a100 = Machine(
        "linux_x86_64",
        True,
        (GpuDevice(0, "A100", (8, 0)),),
        cuda="12.4",
        tensorrt="10.3.0",
        torch_tensorrt="2.13.0",
        torch_tensorrt_abi="9",
    )
    with pytest.raises(
        NoCompatibleVariantError, match=r"built for compute capability 9.0; cuda:0 \(A100\) is 8.0"
    ):
        plugin.load(src, device="cuda:0", machine=a100)
    assert stand_in_runtime == []


def test_tensorrt_refusal_becomes_a_device_error(
    program: Path, tmp_path: Path, stand_in_runtime: list[bytes]
) -> None:
    from modelvault.errors import DeviceError

    plugin = get_plugin("torch_tensorrt")
    src = write_directory(plugin.pack(program, frameworks=FW), tmp_path / "c")
    with pytest.raises(
        DeviceError, match="TensorRT could not deserialize this variant's engines on cuda:0"
    ) as exc:
        plugin.load(src, device="cuda:0", machine=H100)
    assert stand_in_runtime == [program.read_bytes()]  # the verified program, byte for byte
    # torch's own reason, not a generic wrap (torch_tensorrt.load would print it and raise
    # "doesn't correspond to a valid Torchscript module or ExportedProgram")
    cause = exc.value.__cause__
    assert cause is not None and str(cause) and str(cause) in str(exc.value)
    assert "doesn't correspond to a valid" not in str(exc.value)
