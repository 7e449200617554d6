"""What verification costs a load: the same load with and without hashing, in one run.

    python benchmarks/verify_cost.py --device cpu --size-gb 0.5 --runs 7
    python benchmarks/verify_cost.py --device cuda --size-gb 2 --runs 5

An ExportedProgram (an MLP of float32 weights sized to ``--size-gb``) is
pushed once to a local store and once to a remote store (in-memory, so the
network is not what is measured) behind the local cache, which the first load
fills. Then each path is loaded ``--runs`` times with hashing on and off,
alternating (on, off, on, off ...), page cache warm. "Off" swaps the weight
streamer's hasher for one that hashes nothing and accepts any digest; nothing
else changes, and it exists only in this script: the library has no switch
that skips verification. Every load ends with what a user can call: the
program's ``.module()``, with every weight page resident (on the CPU one byte of
every 4 KiB page is read, for both sides alike; on a GPU the weights are in
device memory and the device is synchronized).

Targets: warm-cache GPU load within 5% of the same load with hashing off;
CPU mapped load (local store) within 15%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import torch  # noqa: E402

from modelvault import Vault  # noqa: E402
from modelvault.formats._torch import stream  # noqa: E402
from modelvault.storage import BlobCache  # noqa: E402
from modelvault.storage.local import LocalStore  # noqa: E402
from modelvault.storage.memory import MemoryStore  # noqa: E402


class _AnyDigest(str):
    """A digest that equals every digest: the "hashing off" side only."""

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


class _NullHasher:
    algorithm = "none"

    def update(self, data: Any) -> None:
        pass

    def hexdigest(self) -> str:
        return ""

    def digest_str(self) -> str:
        return _AnyDigest("none:")


@contextmanager
def hashing(on: bool) -> Iterator[None]:
    if on:
        yield
        return
    saved = stream.new_hasher
    stream.new_hasher = lambda algorithm: _NullHasher()  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        stream.new_hasher = saved  # type: ignore[assignment]


def build_program(size_gb: float) -> Any:
    width = 4096
    per_layer = width * width * 4
    layers = max(1, round(size_gb * 1e9 / per_layer))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)])
    model.eval()
    return torch.export.export(model, (torch.randn(2, width),)), layers * per_layer


def make_resident(ep: Any, device: str) -> Any:
    module = ep.module()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return module
    total = 0
    for t in ep.state_dict.values():
        flat = t.detach().reshape(-1).view(torch.uint8)
        total += int(flat[::4096].sum())  # one byte of every page
    return module, total


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size-gb", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or HERE / "results" / f"verify_cost_{args.device.split(':')[0]}.json"
    info = machine(args.device)
    ep, nbytes = build_program(args.size_gb)
    with tempfile.TemporaryDirectory(dir=os.environ.get("MVAULT_BENCH_DIR")) as tmp:
        root = Path(tmp)
        local = Vault(registry=f"sqlite:///{root / 'l.db'}", store=LocalStore(root / "store"))
        remote = Vault(
            registry=f"sqlite:///{root / 'r.db'}",
            store=MemoryStore(),
            cache=BlobCache(root / "cache", 1 << 40),
        )
        for v in (local, remote):
            v.push(ep, "m:1.0.0")
        del ep
        paths: dict[str, Callable[[], Any]] = {
            "local store (mapped on CPU)": lambda: local.load("m:1.0.0", device=args.device),
            "warm cache": lambda: remote.load("m:1.0.0", device=args.device),
        }
        rows = []
        for label, load in paths.items():
            make_resident(load(), args.device)  # fills the cache, warms the page cache
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.runs):
                for on in (True, False):
                    with hashing(on):
                        t0 = time.perf_counter()
                        kept = make_resident(load(), args.device)
                        times[on].append(time.perf_counter() - t0)
                    del kept
            on_s, off_s = statistics.median(times[True]), statistics.median(times[False])
            rows.append(
                {
                    "path": label,
                    "device": args.device,
                    "bytes": nbytes,
                    "hashing_on_s": on_s,
                    "hashing_off_s": off_s,
                    "cost_pct": 100 * (on_s - off_s) / off_s,
                    "runs_on": times[True],
                    "runs_off": times[False],
                }
            )
        local.close()
        remote.close()
    info["loadavg_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    print(f"| path ({args.device}, {nbytes / 1e9:.2f} GB) | hashing on s | off s | cost |")
    print("| --- | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['path']} | {r['hashing_on_s']:.3f} | {r['hashing_off_s']:.3f} | {r['cost_pct']:+.1f}% |"
        )


if __name__ == "__main__":
    main()
