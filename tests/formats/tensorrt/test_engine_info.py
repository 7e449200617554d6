"""The engine info parser, on info lists built for every ABI layout since Torch-TensorRT 2.2."""

from __future__ import annotations

import base64
import pickle
from pathlib import Path

import pytest

from modelvault.digest import digest_bytes
from modelvault.errors import EngineInfoError, FormatError, UnsupportedVersionError
from modelvault.formats.torch_tensorrt.engine_info import (
    ABI_LAYOUTS,
    decode_metadata,
    normalize_platform,
    parse_device,
    parse_engine_info,
)

from .conftest import PLAN, info_list, metadata_b64

ALL_LAYOUTS = [(abi, len(lay.fields)) for abi, lays in ABI_LAYOUTS.items() for lay in lays]


def test_fields_are_only_ever_appended() -> None:
    # each release's own layout is checked against its runtime.h in test_releases.py
    longest = ABI_LAYOUTS["10"][0].fields
    for lays in ABI_LAYOUTS.values():
        for lay in lays:
            assert longest[: len(lay.fields)] == lay.fields


@pytest.mark.parametrize(("abi", "count"), ALL_LAYOUTS)
def test_every_layout_parses(abi: str, count: int) -> None:
    fields = info_list(abi, count=count, sm=(8, 9), hw=False, platform="linux_aarch64")
    assert len(fields) == count
    info = parse_engine_info(fields)
    assert info.abi == abi
    assert info.field_count == count
    assert info.compute_capability == (8, 9)
    assert info.sm == "8.9"
    assert info.device_name == "NVIDIA A10G"
    assert info.device_type == "gpu"
    assert info.engine_size == len(PLAN)
    assert info.engine_digest == digest_bytes(PLAN)
    assert info.input_names == ("x",)
    assert info.output_names == ("output0",)
    assert info.name == "_run_on_acc_0_engine"
    assert info.hw_compatible is False
    assert info.target_platform == ("linux_aarch64" if count >= 9 else None)
    assert info.requires_output_allocator == (False if count >= 10 else None)
    assert info.resource_allocation == ("static" if count >= 11 else None)
    assert info.requires_native_multidevice == (False if count >= 12 else None)


@pytest.mark.parametrize("abi", ["5", "6", "7", "8", "9"])
def test_hardware_compatible_flag(abi: str) -> None:
    info = parse_engine_info(info_list(abi, hw=True, sm=(9, 0)))
    assert info.hw_compatible is True


def test_raw_engine_in_a_live_list() -> None:
    info = parse_engine_info(info_list("9", encoding="raw"), engine_encoding="raw")
    assert info.engine_size == len(PLAN)
    assert info.engine_digest == digest_bytes(PLAN)


def test_bytes_fields_are_accepted() -> None:
    fields = [f.encode() if isinstance(f, str) else f for f in info_list("8")]
    assert parse_engine_info(fields).abi == "8"


def test_metadata_settings_are_decoded(trt_names: None) -> None:
    md = metadata_b64(immutable_weights=False, strip_engine_weights=True, optimization_level=3)
    info = parse_engine_info(info_list("9", metadata=md))
    s = info.settings
    assert s["immutable_weights"] is False
    assert s["strip_engine_weights"] is True
    assert s["optimization_level"] == 3
    assert s["hardware_compatible"] is False
    assert sorted(s["enabled_precisions"]) == ["torch.float32", "torch_tensorrt._enums.dtype(2)"]
    assert s["device"]["__class__"] == "torch_tensorrt._Device.Device"
    assert info.weights_stripped and info.refittable and info.has_weight_name_map
    summary = info.summary()
    assert summary["settings"]["strip_engine_weights"] is True
    assert "engine" not in summary and summary["engine_size"] == len(PLAN)


def test_metadata_decoding_runs_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return os.system, (f"touch {marker}",)

    md = base64.b64encode(pickle.dumps({"settings": Evil()})).decode()
    out = decode_metadata(md)
    assert not marker.exists()
    assert out["settings"].endswith(f"system('touch {marker}')")


def test_metadata_with_persistent_ids_is_refused() -> None:
    class P(pickle.Pickler):
        def persistent_id(self, obj: object) -> str | None:
            return "storage" if obj == "tensor" else None

    import io

    buf = io.BytesIO()
    P(buf).dump({"settings": "tensor"})
    with pytest.raises(EngineInfoError, match="persistent ids are not allowed"):
        decode_metadata(base64.b64encode(buf.getvalue()).decode())


def test_hardware_flag_contradicting_settings(trt_names: None) -> None:
    md = metadata_b64(hardware_compatible=True)
    with pytest.raises(
        EngineInfoError, match=r"hardware-compatible flag \(0\) contradicts the compile settings"
    ):
        parse_engine_info(info_list("9", hw=False, metadata=md))


# -- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("abi", "hint"), [("3", "Torch-TensorRT 2.2 or newer"), ("11", "upgrade modelvault")]
)
def test_unknown_abi(abi: str, hint: str) -> None:
    fields = info_list("9")
    fields[0] = abi
    with pytest.raises(UnsupportedVersionError, match=f"engine ABI '{abi}' is not known") as exc:
        parse_engine_info(fields, where="m.pt2:custom_obj_0")
    assert 'known: "4", "5", "6", "7", "8", "9"' in str(exc.value)
    assert "m.pt2:custom_obj_0" in str(exc.value)
    assert hint in (exc.value.hint or "")


@pytest.mark.parametrize(
    ("abi", "count", "expected"),
    [("9", 11, "12"), ("6", 10, "9"), ("5", 9, "7 or 8"), ("4", 7, "6")],
)
def test_wrong_field_count(abi: str, count: int, expected: str) -> None:
    fields = info_list("9")[:count] if count <= 12 else info_list("9")
    fields[0] = abi
    with pytest.raises(
        EngineInfoError,
        match=f'ABI "{abi}" engine info has {count} fields; that ABI has {expected}',
    ):
        parse_engine_info(fields)


def test_corrupted_engine_blob() -> None:
    fields = info_list("9")
    fields[3] = "ZnRy!!not-base64"
    with pytest.raises(
        EngineInfoError, match="not valid base64; the engine blob is corrupted or truncated"
    ):
        parse_engine_info(fields)


def test_truncated_base64_engine() -> None:
    fields = info_list("9")
    fields[3] = str(fields[3])[:-3]
    with pytest.raises(EngineInfoError, match="corrupted or truncated"):
        parse_engine_info(fields)


def test_empty_engine() -> None:
    with pytest.raises(EngineInfoError, match="the engine field is empty"):
        parse_engine_info(info_list("9", plan=b""))


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("0%8%6%0", "is not 'id%major%minor%type%name' (5 fields, got 4)"),
        ("0%eight%6%0%A10", "non-integer id, SM or device type"),
        ("0%8%6%7%A10", "device type 7 is neither GPU (0) nor DLA (1)"),
        ("0%800%6%0%A10", "impossible compute capability"),
    ],
)
def test_bad_device_field(device: str, message: str) -> None:
    fields = info_list("9")
    fields[2] = device
    with pytest.raises(EngineInfoError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_engine_info(fields)


def test_device_name_may_contain_the_delimiter() -> None:
    dev = parse_device("1%9%0%0%GPU 100%")
    assert (dev.id, dev.major, dev.minor, dev.name) == (1, 9, 0, "GPU 100%")


@pytest.mark.parametrize(
    ("index", "value", "message"),
    [
        (6, "yes", "field hw_compatible must be '0' or '1'"),
        (8, "solaris_sparc", "target platform 'solaris_sparc' is not one of"),
        (10, "2", "field resource_allocation_strategy must be '0' or '1'"),
        (7, "not base64!", "serialized metadata is not base64"),
        (
            7,
            base64.b64encode(pickle.dumps([1, 2])).decode(),
            "serialized metadata is a list, not a dict",
        ),
        (
            7,
            base64.b64encode(b"\x80\x04garbage").decode(),
            "serialized metadata is not a readable pickle",
        ),
    ],
)
def test_bad_fields(index: int, value: str, message: str) -> None:
    fields = info_list("9")
    fields[index] = value
    with pytest.raises(EngineInfoError, match=message):
        parse_engine_info(fields)


@pytest.mark.parametrize("bad", [None, "4%m%...", 42, [], ["9", 7]])
def test_not_a_list_of_strings(bad: object) -> None:
    with pytest.raises(EngineInfoError):
        parse_engine_info(bad)  # type: ignore[arg-type]


def test_errors_are_format_errors() -> None:
    assert issubclass(EngineInfoError, FormatError) and issubclass(EngineInfoError, ValueError)


def test_platform_spellings() -> None:
    assert normalize_platform("win_x86_64") == "windows_x86_64"
    assert normalize_platform("Platform.LINUX_X86_64") == "linux_x86_64"
    info = parse_engine_info(info_list("9", platform="win_x86_64"))
    assert info.target_platform == "windows_x86_64"


def test_inert_reader_refuses_allocation_and_code_gadgets() -> None:
    from modelvault.formats.torch_tensorrt.inert_pickle import Inert, inert_loads, to_plain

    # REDUCE(builtins.bytearray, (n,)) would allocate n bytes if bytearray were real
    bomb = b"\x80\x02cbuiltins\nbytearray\nJ\x00\x10\xa5\xd4\x85R."
    obj = inert_loads(bomb, what="test")
    assert isinstance(obj, Inert) and obj.qualname == "builtins.bytearray"
    # getattr/eval chains stay records
    gadget = b"\x80\x02cbuiltins\neval\nX\x0c\x00\x00\x00__import__()\x85R."
    assert to_plain(inert_loads(gadget, what="test")) == "builtins.eval('__import__()')"
    with pytest.raises(FormatError, match="test is not a readable pickle"):
        inert_loads(b"\x80\x02cbuiltins\nset\n", what="test")
