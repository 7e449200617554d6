"""The serialized info list of a Torch-TensorRT engine, parsed without torch.

Every TensorRT engine embedded in a Torch-TensorRT program is stored as a
list of strings (``TRTEngine::serialize`` / ``TorchTensorRTModule._pack_engine_info``);
its first field is the runtime ABI version and the field count grows with it.
Fields are only ever appended, at the indices of ``SerializedInfoIndex`` in
``core/runtime/runtime.h`` (mirrored in Python by
``py/torch_tensorrt/dynamo/runtime/_serialized_engine_layout.py``).

Read in ``core/runtime/runtime.h`` of pytorch/TensorRT, at each release tag
and at the commits that changed ``ABI_VERSION`` (``git log -- core/runtime/runtime.h``):

| ABI | fields | added field(s) | releases | read at |
| --- | --- | --- | --- | --- |
| "4" | 6 | (base) abi, name, device, engine, input names, output names | up to 2.2 | tag v2.2.0 |
| "5" | 7 | ``HW_COMPATIBLE_IDX`` | 2.3, 2.4 | 3f8576c903 (#2445); tags v2.3.0, v2.4.0 |
| "5" | 8 | ``SERIALIZED_METADATA_IDX`` | none (nightlies between 2.4 and 2.5) | 9f46d3940d (#2886) |
| "6" | 9 | ``TARGET_PLATFORM_IDX`` | 2.5, 2.6 | 47ae0fa9f0 (#3106); tags v2.5.0, v2.6.0 |
| "7" | 10 | ``REQUIRES_OUTPUT_ALLOCATOR_IDX`` | 2.7 .. 2.10 | 10d7c61e5f (#3388); tags v2.7.0 .. v2.10.0 |
| "8" | 11 | ``RESOURCE_ALLOCATION_STRATEGY_IDX`` | 2.11 | a21d645857 (#3727); tag v2.11.0 |
| "9" | 12 | ``REQUIRES_NATIVE_MULTIDEVICE_IDX`` | 2.12, 2.13 | 0b274f09cc (#4183); tags v2.12.0, v2.13.0 (2.13 also in ``_serialized_engine_layout.py``, new in that release) |
| "10" | 13 | ``ALIASED_IO_IDX`` | none yet (main) | b32ebfff5e (#4251) |

The parser relies only on the ABI string and the field count. ABI "5" is
the one string with two layouts, told apart by the count. The aliased-I/O
field of "10" is ``output@input@kind`` records joined by ``%``
(``serialize_aliased_io`` in ``core/runtime/runtime_utils.cpp``; kinds
``kv_cache_update`` and ``user``). ``docs/TENSORRT.md`` repeats this table.

The device field is ``RTDevice::serialize``: ``"id%major%minor%device_type%name"``
(``SERIALIZED_RT_DEVICE_DELIM = "%"``; ``parse_device_info`` in the layout
module splits it into exactly five tokens). The engine field is the raw plan
in a live list and base64 in every pickled form (``def_pickle`` in
``register_jit_hooks.cpp`` base64-decodes it on load). The metadata field is
base64 of a pickled dict (``encode_metadata``), read here with the inert
unpickler, never with :mod:`pickle`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ...digest import digest_bytes
from ...errors import EngineInfoError, FormatError, UnsupportedVersionError
from .inert_pickle import inert_loads, to_plain

__all__ = [
    "ABI_LAYOUTS",
    "ALIAS_KINDS",
    "BASE_FIELDS",
    "DEVICE_TYPES",
    "ENGINE_CLASS_NAMES",
    "MAX_METADATA_BYTES",
    "PLATFORMS",
    "AbiLayout",
    "EngineInfo",
    "decode_metadata",
    "normalize_platform",
    "parse_device",
    "parse_engine_info",
]

BASE_FIELDS = ("abi", "name", "device", "engine", "input_binding_names", "output_binding_names")


@dataclass(frozen=True)
class AbiLayout:
    """One serialized layout: the field names in index order, and where it was read."""

    abi: str
    fields: tuple[str, ...]
    releases: str
    source: str


def _layout(abi: str, extra: tuple[str, ...], releases: str, source: str) -> AbiLayout:
    return AbiLayout(abi, BASE_FIELDS + extra, releases, source)


_HW = ("hw_compatible",)
_MD = ("hw_compatible", "serialized_metadata")
_TP = (*_MD, "target_platform")
_OA = (*_TP, "requires_output_allocator")
_RA = (*_OA, "resource_allocation_strategy")
_MDV = (*_RA, "requires_native_multidevice")
_AIO = (*_MDV, "aliased_io")

#: ABI string -> every layout known under it (ABI "5" has two candidate counts).
ABI_LAYOUTS: dict[str, tuple[AbiLayout, ...]] = {
    "4": (_layout("4", (), "up to 2.2", "core/runtime/runtime.h at v2.2.0"),),
    "5": (
        _layout("5", _HW, "2.3-2.4", "core/runtime/runtime.h at 3f8576c903, v2.3.0, v2.4.0"),
        _layout("5", _MD, "nightlies only", "core/runtime/runtime.h at 9f46d3940d"),
    ),
    "6": (_layout("6", _TP, "2.5-2.6", "core/runtime/runtime.h at 47ae0fa9f0, v2.5.0, v2.6.0"),),
    "7": (_layout("7", _OA, "2.7-2.10", "core/runtime/runtime.h at 10d7c61e5f, v2.7.0..v2.10.0"),),
    "8": (_layout("8", _RA, "2.11", "core/runtime/runtime.h at a21d645857, v2.11.0"),),
    "9": (
        _layout(
            "9",
            _MDV,
            "2.12-2.13",
            "core/runtime/runtime.h at 0b274f09cc, v2.12.0, v2.13.0; "
            "py/torch_tensorrt/dynamo/runtime/_serialized_engine_layout.py at v2.13.0",
        ),
    ),
    "10": (_layout("10", _AIO, "main", "core/runtime/runtime.h at b32ebfff5e"),),
}
#: Kinds of an aliased input/output pair (``alias_kind_to_string``, ``core/runtime/TRTEngine.h``).
ALIAS_KINDS = ("kv_cache_update", "user")

#: Class names an engine object carries in TorchScript and torch.export pickles.
ENGINE_CLASS_NAMES = frozenset(
    {"__torch__.torch.classes.tensorrt.Engine", "torch.classes.tensorrt.Engine"}
)
#: ``nvinfer1::DeviceType``.
DEVICE_TYPES = {0: "gpu", 1: "dla"}
#: Canonical platform tags (``Platform::serialize``); ``win_*`` are older spellings.
PLATFORMS = ("linux_x86_64", "linux_aarch64", "windows_x86_64", "windows_arm64", "unknown")
_PLATFORM_ALIASES = {"win_x86_64": "windows_x86_64", "win_arm64": "windows_arm64"}
#: Refuse metadata larger than this (decoded); real metadata is a few KiB to a few MiB.
MAX_METADATA_BYTES = 64 * 1024 * 1024

#: Compile settings copied to the summary (when present in the metadata).
SUMMARY_SETTINGS = (
    "enabled_precisions",
    "hardware_compatible",
    "version_compatible",
    "immutable_weights",
    "make_refittable",
    "strip_engine_weights",
    "refit_identical_engine_weights",
    "use_explicit_typing",
    "optimization_level",
    "workspace_size",
    "truncate_double",
    "engine_capability",
    "enable_cross_compile_for_windows",
)


def normalize_platform(tag: str) -> str:
    """The canonical spelling of a platform tag (``"win_x86_64"`` -> ``"windows_x86_64"``)."""
    low = tag.strip().lower()
    if low.startswith("platform."):  # str() of the Python enum, written by the Python-only runtime
        low = low[len("platform.") :]
    return _PLATFORM_ALIASES.get(low, low)


@dataclass(frozen=True)
class DeviceField:
    """The parsed device field."""

    id: int
    major: int
    minor: int
    device_type: str
    name: str


def parse_device(text: str, *, where: str = "engine") -> DeviceField:
    """Parse ``"id%major%minor%device_type%name"``; :class:`EngineInfoError` otherwise."""
    tokens = text.split("%", 4)
    if len(tokens) != 5:
        raise EngineInfoError(
            f"{where}: device field {text[:80]!r} is not 'id%major%minor%type%name' (5 fields, got {len(tokens)})"
        )
    try:
        dev_id, major, minor, dtype = (int(t) for t in tokens[:4])
    except ValueError:
        raise EngineInfoError(
            f"{where}: device field {text[:80]!r} has a non-integer id, SM or device type"
        ) from None
    if not (0 <= major < 100 and 0 <= minor < 100 and dev_id >= 0):
        raise EngineInfoError(
            f"{where}: device field {text[:80]!r} has an impossible compute capability"
        )
    if dtype not in DEVICE_TYPES:
        raise EngineInfoError(f"{where}: device type {dtype} is neither GPU (0) nor DLA (1)")
    return DeviceField(dev_id, major, minor, DEVICE_TYPES[dtype], tokens[4])


def decode_metadata(text: str | bytes, *, where: str = "engine") -> dict[str, Any]:
    """Decode the metadata field (base64 of a pickle) into plain data, running no pickled code.

    Returns ``{}`` for an empty field. Foreign objects (``CompilationSettings``,
    enums, dtypes) come back as plain maps or strings; see :func:`to_plain`.
    """
    raw_text = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    if not raw_text.strip():
        return {}
    if len(raw_text) > MAX_METADATA_BYTES * 4 // 3 + 4:
        raise EngineInfoError(
            f"{where}: serialized metadata is larger than {MAX_METADATA_BYTES} bytes; refusing it"
        )
    try:
        raw = base64.b64decode(raw_text, validate=True)
    except (binascii.Error, ValueError):
        raise EngineInfoError(f"{where}: serialized metadata is not base64") from None
    try:
        obj = inert_loads(raw, what=f"{where}: serialized metadata")
    except FormatError as exc:
        raise EngineInfoError(str(exc)) from None
    if not isinstance(obj, dict):
        raise EngineInfoError(f"{where}: serialized metadata is a {type(obj).__name__}, not a dict")
    plain = to_plain(obj)
    assert isinstance(plain, dict)
    return plain


@dataclass(frozen=True)
class EngineInfo:
    """What one embedded engine says about itself. Built by :func:`parse_engine_info`."""

    abi: str
    field_count: int
    name: str
    device_id: int
    compute_capability: tuple[int, int]
    device_type: str
    device_name: str
    engine_size: int
    engine_digest: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    hw_compatible: bool = False
    target_platform: str | None = None
    requires_output_allocator: bool | None = None
    resource_allocation: str | None = None
    requires_native_multidevice: bool | None = None
    #: ABI "10": output binding name -> (input binding name it aliases, kind).
    aliased_io: Mapping[str, tuple[str, str]] | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    has_weight_name_map: bool = False
    engine_offset: int | None = None
    source: str = ""
    #: How the program stored it (see :mod:`.archive`): ``"torchbind"``, ``"engine_serializer"``,
    #: ``"python_trtengine"``, ``"windows_placeholder"``, or ``""`` for a list parsed alone.
    form: str = ""

    @property
    def sm(self) -> str:
        """``"8.6"``: the compute capability the engine was built on."""
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    @property
    def weights_stripped(self) -> bool:
        """True when the engine was built without its weights (refit at load)."""
        return bool(self.settings.get("strip_engine_weights"))

    @property
    def refittable(self) -> bool:
        s = self.settings
        if "immutable_weights" in s:
            return not s["immutable_weights"]
        return bool(s.get("make_refittable"))

    def summary(self) -> dict[str, Any]:
        """A manifest-safe description of the engine (no engine bytes)."""
        out: dict[str, Any] = {
            "abi": self.abi,
            "name": self.name,
            "compute_capability": self.sm,
            "device_name": self.device_name,
            "device_type": self.device_type,
            "engine_size": self.engine_size,
            "engine_digest": self.engine_digest,
            "inputs": list(self.input_names),
            "outputs": list(self.output_names),
            "hardware_compatible": self.hw_compatible,
            "target_platform": self.target_platform,
            "settings": {k: self.settings[k] for k in SUMMARY_SETTINGS if k in self.settings},
        }
        if self.requires_output_allocator is not None:
            out["requires_output_allocator"] = self.requires_output_allocator
        if self.resource_allocation is not None:
            out["resource_allocation"] = self.resource_allocation
        if self.requires_native_multidevice is not None:
            out["requires_native_multidevice"] = self.requires_native_multidevice
        if self.aliased_io is not None:
            out["aliased_io"] = {k: list(v) for k, v in self.aliased_io.items()}
        if self.source:
            out["source"] = self.source
        if self.form:
            out["stored_as"] = self.form
        return out


def _flag(value: str, name: str, where: str) -> bool:
    if value not in ("0", "1"):
        raise EngineInfoError(f"{where}: field {name} must be '0' or '1', got {value[:20]!r}")
    return value == "1"


def _as_text(value: str | bytes, name: str, where: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise EngineInfoError(f"{where}: field {name} is not UTF-8 text") from None


def _engine_bytes(value: str | bytes, encoding: str, where: str) -> bytes:
    if encoding == "raw":
        return value.encode("latin1") if isinstance(value, str) else bytes(value)
    text = value.encode("ascii", "replace") if isinstance(value, str) else bytes(value)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EngineInfoError(
            f"{where}: the engine field is not valid base64; the engine blob is corrupted or truncated"
        ) from None


def _aliased_io(text: str, where: str) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    if not text:
        return out
    for record in text.split("%"):
        parts = record.split("@")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise EngineInfoError(
                f"{where}: aliased I/O record {record[:80]!r} is not 'output@input@kind'"
            )
        if parts[2] not in ALIAS_KINDS:
            raise EngineInfoError(
                f"{where}: aliased I/O kind {parts[2][:40]!r} is not one of {', '.join(ALIAS_KINDS)}"
            )
        out[parts[0]] = (parts[1], parts[2])
    return out


def _layout_for(abi: str, count: int, where: str) -> AbiLayout:
    layouts = ABI_LAYOUTS.get(abi)
    if layouts is None:
        known = ", ".join(f'"{a}"' for a in ABI_LAYOUTS)
        newer = abi.isdigit() and int(abi) > max(int(a) for a in ABI_LAYOUTS)
        raise UnsupportedVersionError(
            f"{where}: Torch-TensorRT engine ABI {abi[:20]!r} is not known (known: {known})",
            hint="upgrade modelvault to read newer Torch-TensorRT programs"
            if newer
            else "recompile the program with Torch-TensorRT 2.2 or newer",
        )
    for layout in layouts:
        if len(layout.fields) == count:
            return layout
    counts = " or ".join(str(len(lay.fields)) for lay in layouts)
    raise EngineInfoError(
        f'{where}: ABI "{abi}" engine info has {count} fields; that ABI has {counts}. '
        "The program is corrupted or was written by a modified Torch-TensorRT"
    )


def parse_engine_info(
    fields: Sequence[str | bytes],
    *,
    engine_encoding: Literal["raw", "base64"] = "base64",
    where: str = "engine",
    digest_algorithm: str = "blake3",
) -> EngineInfo:
    """Parse one engine's serialized info list (any ABI layout from Torch-TensorRT 2.2 on).

    ``engine_encoding`` is ``"base64"`` for lists read from a pickled program
    (TorchScript, ``.pt2``, ``get_extra_state``) and ``"raw"`` for a live
    ``_pack_engine_info()`` list. Raises :class:`UnsupportedVersionError` for
    an unknown ABI and :class:`EngineInfoError` for anything malformed.

        >>> info = parse_engine_info(["4", "m_engine", "0%8%6%0%NVIDIA A10", "ZnRydA==", "x", "y"])
        >>> info.sm, info.engine_size
        ('8.6', 4)
    """
    if isinstance(fields, (str, bytes)) or not isinstance(fields, Sequence):
        raise EngineInfoError(
            f"{where}: engine info must be a list of strings, got {type(fields).__name__}"
        )
    if not fields:
        raise EngineInfoError(f"{where}: engine info list is empty")
    for i, f in enumerate(fields):
        if not isinstance(f, (str, bytes, bytearray)):
            raise EngineInfoError(
                f"{where}: engine info field {i} is a {type(f).__name__}, not a string"
            )
    abi = _as_text(fields[0], "abi", where).strip()
    layout = _layout_for(abi, len(fields), where)
    values = dict(zip(layout.fields, fields))
    text = {
        k: _as_text(v, k, where)
        for k, v in values.items()
        if k not in ("engine", "serialized_metadata")
    }
    name = text["name"]
    where = f"{where} {name!r}" if name and name not in where else where
    dev = parse_device(text["device"], where=where)
    engine = _engine_bytes(values["engine"], engine_encoding, where)
    if not engine:
        raise EngineInfoError(
            f"{where}: the engine field is empty; the program holds no TensorRT plan"
        )
    hw = _flag(text["hw_compatible"], "hw_compatible", where) if "hw_compatible" in text else False
    metadata: dict[str, Any] = {}
    if "serialized_metadata" in values:
        metadata = decode_metadata(values["serialized_metadata"], where=where)
    settings_raw = metadata.get("settings")
    settings = dict(settings_raw) if isinstance(settings_raw, dict) else {}
    settings.pop("__class__", None)
    if (
        "hardware_compatible" in settings
        and bool(settings["hardware_compatible"]) != hw
        and "hw_compatible" in text
    ):
        raise EngineInfoError(
            f"{where}: the hardware-compatible flag ({int(hw)}) contradicts the compile settings "
            f"(hardware_compatible={settings['hardware_compatible']!r})"
        )
    platform = normalize_platform(text["target_platform"]) if "target_platform" in text else None
    if platform is not None and platform not in PLATFORMS:
        raise EngineInfoError(
            f"{where}: target platform {text['target_platform'][:40]!r} is not one of {', '.join(PLATFORMS)}"
        )
    strategy = None
    if "resource_allocation_strategy" in text:
        strategy = (
            "dynamic"
            if _flag(text["resource_allocation_strategy"], "resource_allocation_strategy", where)
            else "static"
        )
    return EngineInfo(
        abi=abi,
        field_count=len(fields),
        name=name,
        device_id=dev.id,
        compute_capability=(dev.major, dev.minor),
        device_type=dev.device_type,
        device_name=dev.name,
        engine_size=len(engine),
        engine_digest=digest_bytes(engine, digest_algorithm),
        input_names=tuple(text["input_binding_names"].split("%"))
        if text["input_binding_names"]
        else (),
        output_names=tuple(text["output_binding_names"].split("%"))
        if text["output_binding_names"]
        else (),
        hw_compatible=hw,
        target_platform=platform,
        requires_output_allocator=(
            _flag(text["requires_output_allocator"], "requires_output_allocator", where)
            if "requires_output_allocator" in text
            else None
        ),
        resource_allocation=strategy,
        requires_native_multidevice=(
            _flag(text["requires_native_multidevice"], "requires_native_multidevice", where)
            if "requires_native_multidevice" in text
            else None
        ),
        aliased_io=_aliased_io(text["aliased_io"], where) if "aliased_io" in text else None,
        settings=settings,
        has_weight_name_map=bool(metadata.get("weight_name_map")),
        source=where,
    )
