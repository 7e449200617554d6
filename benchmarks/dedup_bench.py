"""Bytes stored per experiment: tensor-level content addressing (format 1.1, and 1.2
with its manifest deflated) vs one section (1.0).

Every experiment pushes real models (built from their libraries' configs, random
weights) through ``Vault.push`` into a fresh SQLite registry and local store, and
counts the bytes the store holds afterwards: data blobs, and manifests apart
(a manifest is one per variant, whatever the layout). Each runs three times on
the same objects: with the 1.2 writer this code is (a blob per large tensor,
the manifest deflated), with the 1.1 one (the same blobs, the manifest plain
msgpack), and with the 1.0 layout (every tensor of a container in one blob).

Weights are randomised tensor by tensor (``randn * 0.02``), biases and norms
included: a fresh ``__init__`` sets every bias to 0 and every norm to 1, and
those identical tensors would flatter within-model dedup in a way no trained
checkpoint does.

Experiments (``--only`` picks some):

* ``gpt2_one``: GPT-2 small (transformers ``GPT2Config()``), state dict; v2
  changes one 9.4 MB tensor (``h.5.mlp.c_fc.weight``). Target: growth < 1.5x it.
* ``gpt2_partial``: the experiment Xet and ZipLLM report on: a base and a
  fine-tune-like v2 in which the last two blocks and the final norm changed
  (``w + 1e-3 * noise``), the embeddings and the rest frozen.
* ``gpt2_full``: v2 changes every tensor slightly (a full fine-tune): no tensor
  repeats, so tensor-level dedup saves nothing; deltas (ZipLLM's BitX) would.
* ``resnet50_formats``: torchvision resnet50 pushed as ExportedProgram,
  TorchScript and state dict. Target: < 1.05x the model's weight bytes.
* ``resnet50_bn``: resnet50 state dict, v2 changes one BatchNorm's running_var
  (a small tensor, in a pack): what a change to a packed tensor costs.
* ``sd16``: a 16-tensor state dict (8 x Linear(768, 768)); v2 changes one
  2.25 MiB weight, v3 one 3 KiB bias. Target: growth < 1.5x the tensor.

``--load`` also times ``load_tensors`` of a 0.5 GB state dict on the CPU, 1.0
vs 1.1 layout, mmap on and off (short runs; the figure records the load).

    PYTHONPATH=src python benchmarks/dedup_bench.py [--only gpt2_one,sd16] [--load]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import Monitor

from modelvault import Vault
from modelvault.formats.container import TENSORS_MEDIA_TYPE, Draft, DraftBlob, TensorSectionBuilder

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MB = 1_000_000


#: The figures this benchmark is set against, as their authors state them.
PUBLISHED = {
    "zipllm": {
        "source": "ZipLLM, NSDI '26 (Wang, Lan, Su, Yang, Cheng); https://ds2-lab.github.io/ZipLLM",
        "corpus": "3,048 LLMs from Hugging Face, 43.19 TB",
        "file_dedup_tb": 41.80,
        "tensor_dedup_tb": 39.61,
        "tensor_dedup_reduction": 0.083,
        "with_bitx_deltas_tb": 19.82,
        "with_bitx_deltas_reduction": 0.541,
    },
    "xet": {
        "source": "Hugging Face Xet team, two GPT-2 versions (as reported; the original post was not found)",
        "two_versions_bytes": 1.2e9,
        "stored_bytes": 645e6,
        "reduction": round(1 - 645 / 1200, 3),
        "note": "chunk-level (~64 KB CDC chunks in 64 MB blocks); the exact post was not found",
    },
}


# -- layouts -------------------------------------------------------------------

_NEW_ADD = Draft.add_tensor_section


def _one_section(self: Draft, builder: TensorSectionBuilder, role: str = "tensors") -> int | None:
    """The 1.0 writer: every tensor of a container in one blob."""
    self.tensor_aliases.update(builder.aliases)
    if not len(builder):
        return None
    index = len(self.blobs)
    source, entries = builder.build(index)
    self.blobs.append(DraftBlob(role, TENSORS_MEDIA_TYPE, source))
    self.tensors.extend(entries)
    return index


def _plain_manifest(add: Callable[..., int | None]) -> Callable[..., int | None]:
    """``add`` as it was before 1.2: the same layout, the manifest stored as plain msgpack."""

    def wrapped(self: Draft, builder: TensorSectionBuilder, role: str = "tensors") -> int | None:
        self.format_version = (1, 1)
        return add(self, builder, role)

    return wrapped


#: The writers compared: this one, and the two it replaced.
LAYOUTS = {
    "1.2": _NEW_ADD,  # a blob per large tensor, packs of small ones, manifest deflated
    "1.1": _plain_manifest(_NEW_ADD),  # the same blobs, manifest plain msgpack
    "1.0": _plain_manifest(_one_section),  # every tensor in one blob, manifest plain
}


@contextlib.contextmanager
def layout(name: str) -> Iterator[None]:
    Draft.add_tensor_section = LAYOUTS[name]  # type: ignore[method-assign]
    try:
        yield
    finally:
        Draft.add_tensor_section = _NEW_ADD  # type: ignore[method-assign]


# -- measuring -----------------------------------------------------------------


class Scratch:
    """A fresh vault in a temporary directory, and what its store holds."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mvault-dedup-"))
        self.vault = Vault(registry=f"sqlite:///{self.root}/reg.db", store=str(self.root / "store"))
        self.manifests: set[str] = set()
        self.blob_counts: list[int] = []

    def push(self, obj: Any, ref: str, **kw: Any) -> Any:
        r = self.vault.push(obj, ref, **kw)
        self.manifests.add(r.digest)
        info = self.vault.store.stat(r.digest)
        assert info is not None
        self.blob_counts.append(r.blobs_uploaded + r.blobs_skipped)
        return r

    def stored(self) -> dict[str, int]:
        total = sum(p.stat().st_size for p in (self.root / "store").rglob("*") if p.is_file())
        manifests = 0
        for d in self.manifests:
            info = self.vault.store.stat(d)
            assert info is not None
            manifests += info.size
        return {"total": total, "manifests": manifests, "data": total - manifests}

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _both(run: Callable[[Scratch], dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for name in LAYOUTS:
        s = Scratch()
        try:
            with layout(name):
                out[name] = run(s)
        finally:
            s.close()
    return out


def _randomise(tensors: dict[str, torch.Tensor], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    with torch.no_grad():
        for t in tensors.values():
            if t.is_floating_point() and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.02)


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    """Weight bytes of a state dict, each storage once (tied weights are one tensor)."""
    seen, n = set(), 0
    for t in tensors.values():
        key = (t.data_ptr(), t.nbytes)
        if key not in seen:
            seen.add(key)
            n += t.nbytes
    return n


# -- models ----------------------------------------------------------------------


_LIBS: list[Any] = []


def _declare_torchvision_ops() -> None:
    """Let ``import torchvision`` (which transformers does too) finish on a CPU-only torch.

    Where torchvision's C ops (nms and friends) do not load, the import fails
    registering fake kernels for two of them; declaring their schemas and
    importing again lets it finish. Neither model here calls them.
    """
    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBS.append(lib)  # the definitions live as long as the library object
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        import torchvision  # noqa: F401


def gpt2_state() -> dict[str, torch.Tensor]:
    _declare_torchvision_ops()
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    sd = model.state_dict()
    _randomise(sd, 1)
    return sd


def resnet50() -> torch.nn.Module:
    _declare_torchvision_ops()
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    state = dict(model.state_dict(keep_vars=True))
    _randomise(state, 2)
    with torch.no_grad():
        for k, v in state.items():
            if k.endswith("running_var"):
                v.abs_().add_(0.5)  # a variance is positive
    return model


# -- experiments ---------------------------------------------------------------


def exp_gpt2_one(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    name = "transformer.h.5.mlp.c_fc.weight"
    v2 = dict(sd)
    v2[name] = torch.randn_like(sd[name]) * 0.02
    changed = sd[name].nbytes

    def run(s: Scratch) -> dict[str, Any]:
        s.push(sd, "gpt2:1.0.0")
        before = s.stored()
        s.push(v2, "gpt2:1.1.0")
        after = s.stored()
        return _growth(before, after, changed, s)

    return {
        "model_bytes": _nbytes(sd),
        "changed_tensor": name,
        "changed_bytes": changed,
        **_both(run),
    }


def _growth(
    before: dict[str, int], after: dict[str, int], changed: int, s: Scratch
) -> dict[str, Any]:
    return {
        "v1": before,
        "after_v2": after,
        "growth_data": after["data"] - before["data"],
        "growth_total": after["total"] - before["total"],
        "ratio_data": round((after["data"] - before["data"]) / changed, 4),
        "ratio_total": round((after["total"] - before["total"]) / changed, 4),
        "blobs_per_version": s.blob_counts,
    }


def _finetune(
    sd: dict[str, torch.Tensor], which: Callable[[str], bool], seed: int
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    copies: dict[int, torch.Tensor] = {}
    for k, t in sd.items():
        if which(k) and t.is_floating_point():
            if t.data_ptr() not in copies:  # tied weights stay tied
                copies[t.data_ptr()] = t + 1e-3 * torch.randn(t.shape, generator=g, dtype=t.dtype)
            out[k] = copies[t.data_ptr()]
        else:
            out[k] = t
    return out


def exp_gpt2_finetune(sd: dict[str, torch.Tensor], partial: bool) -> dict[str, Any]:
    if partial:
        v2 = _finetune(
            sd,
            lambda k: k.startswith(("transformer.h.10.", "transformer.h.11.", "transformer.ln_f.")),
            3,
        )
    else:
        v2 = _finetune(sd, lambda k: True, 4)
    changed = _nbytes({k: v for k, v in v2.items() if v is not sd[k]})

    def run(s: Scratch) -> dict[str, Any]:
        s.push(sd, "gpt2:1.0.0")
        one = s.stored()
        s.push(v2, "gpt2:1.1.0")
        two = s.stored()
        return {
            "v1": one,
            "both": two,
            "saved_vs_two_copies": round(1 - two["total"] / (2 * one["total"]), 4),
            "blobs_per_version": s.blob_counts,
        }

    return {"model_bytes": _nbytes(sd), "changed_bytes": changed, **_both(run)}


def exp_resnet50_formats() -> dict[str, Any]:
    model = resnet50()
    x = torch.randn(1, 3, 224, 224)
    ep = torch.export.export(model, (x,))
    ts = torch.jit.trace(model, x)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    weights = _nbytes(sd)

    def run(s: Scratch) -> dict[str, Any]:
        s.push(ep, "resnet50:1.0.0")
        s.push(ts, "resnet50:1.0.0", variant=True)
        s.push(sd, "resnet50:1.0.0", format="tensors", variant=True)
        st = s.stored()
        return {
            "stored": st,
            "ratio_data": round(st["data"] / weights, 4),
            "ratio_total": round(st["total"] / weights, 4),
            "blobs_per_variant": s.blob_counts,
        }

    return {"model_bytes": weights, "tensors": len(sd), **_both(run)}


def exp_resnet50_bn() -> dict[str, Any]:
    model = resnet50()
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    name = "layer3.2.bn2.running_var"
    v2 = dict(sd)
    v2[name] = sd[name] * 1.01
    changed = sd[name].nbytes

    def run(s: Scratch) -> dict[str, Any]:
        s.push(sd, "resnet50-sd:1.0.0")
        before = s.stored()
        s.push(v2, "resnet50-sd:1.1.0")
        return _growth(before, s.stored(), changed, s)

    return {
        "model_bytes": _nbytes(sd),
        "changed_tensor": name,
        "changed_bytes": changed,
        **_both(run),
    }


def exp_sd16() -> dict[str, Any]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(768, 768) for _ in range(8)])
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    assert len(sd) == 16
    out: dict[str, Any] = {"model_bytes": _nbytes(sd)}
    for label, name in (("weight", "3.weight"), ("bias", "3.bias")):
        v2 = dict(sd)
        v2[name] = sd[name] + 1.0
        changed = sd[name].nbytes

        def run(
            s: Scratch, v2: dict[str, torch.Tensor] = v2, changed: int = changed
        ) -> dict[str, Any]:
            s.push(sd, "mlp:1.0.0")
            before = s.stored()
            s.push(v2, "mlp:1.1.0")
            return _growth(before, s.stored(), changed, s)

        out[label] = {"changed_tensor": name, "changed_bytes": changed, **_both(run)}
    return out


def exp_load(sd: dict[str, torch.Tensor], runs: int, device: str = "cpu") -> dict[str, Any]:
    """``load_tensors`` of the same state dict written in each layout, alternating.

    On CUDA ``mmap`` does not apply: every row is the one-buffer ring path.
    """
    from modelvault.formats._torch.stream import load_tensors
    from modelvault.formats.container import write_directory
    from modelvault.formats.tensors import TensorsPlugin

    dev = torch.device(device)
    modes = (True, False) if dev.type == "cpu" else (False,)
    root = Path(tempfile.mkdtemp(prefix="mvault-load-"))
    try:
        sources = {}
        for name in ("1.0", "1.1"):
            with layout(name):
                sources[name] = write_directory(TensorsPlugin().pack(sd), root / name)
        times: dict[str, list[float]] = {f"{n} mmap={m}": [] for n in sources for m in modes}
        for _ in range(runs):
            for mmap in modes:
                for name, source in sources.items():
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    t0 = time.perf_counter()
                    out = load_tensors(source, dev, mmap=mmap)
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    times[f"{name} mmap={mmap}"].append(time.perf_counter() - t0)
                    del out
        return {
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "model_bytes": _nbytes(sd),
            "blobs": {n: len(s.manifest.blobs) for n, s in sources.items()},
            "seconds": {
                k: {
                    "min": round(min(v), 4),
                    "median": round(statistics.median(v), 4),
                    "max": round(max(v), 4),
                }
                for k, v in times.items()
            },
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated experiment names")
    ap.add_argument("--load", action="store_true", help="also time CPU loads, 1.0 vs 1.1 layout")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="where --load loads to (cpu, cuda)")
    ap.add_argument("--out", type=Path, default=RESULTS / "dedup.json")
    args = ap.parse_args()
    only = {x for x in args.only.split(",") if x}
    want = lambda name: not only or name in only  # noqa: E731

    monitor = Monitor()
    monitor.__enter__()
    results: dict[str, Any] = {"machine": {}}
    if args.out.exists() and only:
        # Keep the other experiments' figures, each with the machine state it ran in.
        old = json.loads(args.out.read_text())
        machine = old.pop("machine", None)
        for v in old.values():
            if isinstance(v, dict) and machine is not None:
                v.setdefault("machine", machine)
        results = {**old, "machine": results["machine"]}
    gpt2 = (
        gpt2_state()
        if any(want(n) for n in ("gpt2_one", "gpt2_partial", "gpt2_full")) or args.load
        else None
    )
    if want("gpt2_one"):
        results["gpt2_one"] = exp_gpt2_one(gpt2)  # type: ignore[arg-type]
    if want("gpt2_partial"):
        results["gpt2_partial"] = exp_gpt2_finetune(gpt2, partial=True)  # type: ignore[arg-type]
    if want("gpt2_full"):
        results["gpt2_full"] = exp_gpt2_finetune(gpt2, partial=False)  # type: ignore[arg-type]
    if want("resnet50_formats"):
        results["resnet50_formats"] = exp_resnet50_formats()
    if want("resnet50_bn"):
        results["resnet50_bn"] = exp_resnet50_bn()
    if want("sd16"):
        results["sd16"] = exp_sd16()
    if args.load:
        key = "load_cpu" if args.device == "cpu" else "load_cuda"
        results[key] = exp_load(gpt2, args.runs, args.device)  # type: ignore[arg-type]
        results[key]["load_average_after"] = os.getloadavg()
    results["published"] = PUBLISHED
    monitor.__exit__(None, None, None)
    results["machine"] = {
        **monitor.record(),
        "note": "Sizes, not times: the load does not change them.",
        "extra": {"torch": torch.__version__, "platform": platform.platform()},
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
