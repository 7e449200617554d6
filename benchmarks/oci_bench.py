"""Push and pull of one model version to a local OCI registry: modelvault against oras, same run.

    python benchmarks/oci_bench.py --size-gb 1 --runs 3
    python benchmarks/oci_bench.py --size-gb 0.01 --runs 1 --out /tmp/oci_smoke.json   # smoke

The version is a directory: one weights file of ``--size-gb`` random
(incompressible) bytes and a small config. Both sides start from the same
bytes on local disk and talk to the same CNCF distribution registry
(``docker-registry``) on loopback, started afresh with empty storage before
every push so neither side finds blobs already there.

- push, modelvault: ``vault.push_oci(spec, ref)`` of the version already in a
  local vault (hashes every blob with BLAKE3 and sha256, uploads in parallel,
  chunked above 64 MiB, writes the ModelPack manifest);
- push, oras: ``OrasClient.push`` of the same two files (hashes sha256,
  uploads, writes its manifest);
- pull, modelvault: ``vault.pull_oci(ref)`` into an empty vault (parallel
  ranged GETs, sha256 and BLAKE3 of every layer, blobs into the store, the
  version registered);
- pull, oras: ``OrasClient.pull`` of the same artifact into an empty
  directory (files on disk).

Runs alternate (modelvault, oras, modelvault, ...); the median is reported.
Targets: push >= 1x oras, pull >= 2x oras.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent))

import oras.client  # noqa: E402
from tests.oci.registry import run_registry  # noqa: E402

from modelvault import Vault  # noqa: E402


def make_model(root: Path, size: int) -> Path:
    d = root / "model"
    d.mkdir(parents=True)
    block = 64 * 1024 * 1024
    with open(d / "weights.bin", "wb") as f:
        left = size
        while left > 0:
            n = min(block, left)
            f.write(os.urandom(n))
            left -= n
    (d / "config.json").write_text('{"architecture": "bench"}\n')
    return d


def timed(fn: Callable[..., Any], *args: Any, **kw: Any) -> float:
    t0 = time.perf_counter()
    fn(*args, **kw)
    return time.perf_counter() - t0


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "oras": getattr(oras, "__version__", "?"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "oci_bench.json")
    args = ap.parse_args()
    size = int(args.size_gb * 1024**3)
    work = Path(tempfile.mkdtemp(prefix="oci-bench-"))
    os.environ["MVAULT_HOME"] = str(work / "home")
    os.environ["MVAULT_NO_PROGRESS"] = "1"
    rows: dict[str, list[float]] = {"mv_push": [], "oras_push": [], "mv_pull": [], "oras_pull": []}
    try:
        model = make_model(work, size)
        src = Vault(registry=f"sqlite:///{work / 'src.db'}", store=f"file://{work / 'src-store'}")
        src.push(model, "bench", "1.0.0")
        for run in range(args.runs):
            for side in ("mv", "oras"):
                reg_dir = work / f"reg-{run}-{side}"
                with run_registry(reg_dir) as reg:
                    ref = f"{reg.host}/bench/model:1.0.0"
                    # A fresh cache dir: no cross-repository mount hints from earlier runs.
                    os.environ["MVAULT_CACHE_DIR"] = str(work / f"cache-{run}-{side}")
                    from modelvault import config

                    config.reload()
                    if side == "mv":
                        rows["mv_push"].append(timed(src.push_oci, "bench@1.0.0", f"oci://{ref}"))
                        dst = Vault(
                            registry=f"sqlite:///{work / f'dst-{run}.db'}",
                            store=f"file://{work / f'dst-{run}'}",
                        )
                        rows["mv_pull"].append(timed(dst.pull_oci, f"oci://{ref}"))
                        dst.close()
                        shutil.rmtree(work / f"dst-{run}", ignore_errors=True)
                    else:
                        client = oras.client.OrasClient(insecure=True)
                        cwd = os.getcwd()
                        os.chdir(model)
                        try:
                            rows["oras_push"].append(
                                timed(
                                    client.push,
                                    target=ref,
                                    files=["weights.bin", "config.json"],
                                    quiet=True,
                                )
                            )
                        finally:
                            os.chdir(cwd)
                        out = work / f"oras-out-{run}"
                        rows["oras_pull"].append(timed(client.pull, target=ref, outdir=str(out)))
                        got = (out / "weights.bin").stat().st_size
                        assert got == size, f"oras pulled {got} bytes, expected {size}"
                        shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(reg_dir, ignore_errors=True)
        med = {k: statistics.median(v) for k, v in rows.items()}
        gb = size / 1e9
        result = {
            "machine": machine(),
            "size_bytes": size,
            "runs": args.runs,
            "seconds": rows,
            "median_seconds": med,
            "median_GBps": {k: gb / v for k, v in med.items()},
            "push_speedup_vs_oras": med["oras_push"] / med["mv_push"],
            "pull_speedup_vs_oras": med["oras_pull"] / med["mv_pull"],
            "targets": {"push": ">= 1x", "pull": ">= 2x"},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(
            json.dumps(
                {
                    k: result[k]
                    for k in ("median_seconds", "push_speedup_vs_oras", "pull_speedup_vs_oras")
                },
                indent=2,
            )
        )
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
