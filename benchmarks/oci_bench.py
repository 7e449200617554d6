"""OCI benchmark: push and pull of one model version to a local registry, modelvault against oras.

    PYTHONPATH=src:. python benchmarks/oci_bench.py --size-mb 1024 --runs 5
    PYTHONPATH=src:. python benchmarks/oci_bench.py --size-mb 64 --runs 1 --warmup 0 --out /tmp/oci.json  # smoke
    python benchmarks/oci_bench.py --render benchmarks/results/oci.json

The version is a directory: one weights file of ``--size-mb`` MiB of random
(incompressible) bytes and a small config, pushed once into a local vault.
Both sides start from the same bytes, the very files: oras pushes hard links
to the vault's blob files (same inodes, so the same page-cache state). Every
round starts two CNCF distribution registries (``docker-registry``) on
loopback with empty storage, one per side, so neither finds a blob there.

- push, modelvault: ``vault.push_oci`` (sha256 and BLAKE3 of each blob in one
  read, the BLAKE3 checked, then ``HEAD`` and the upload: chunked above 64
  MiB, parallel across blobs, the ModelPack manifest written); no sha256
  hints from earlier runs (a fresh cache directory every round), so this is
  the path of a blob never hashed on this machine;
- push, oras: ``OrasClient.push`` of the same two files (sha256 of each file,
  then one monolithic ``PUT`` each, the manifest written);
- pull, modelvault: ``vault.pull_oci`` into an empty vault (parallel ranged
  GETs written in place, sha256 and BLAKE3 of every layer checked, each blob
  fsynced and renamed into the store, the version registered);
- pull, oras: ``OrasClient.pull`` into an empty directory, then an fsync of
  every file and directory it wrote, inside the timing (the durability
  modelvault gives). oras does not check the sha256 of what it pulls;
- for reference, the modelvault pull with its hashes computed after the
  download (``modelvault.oci.download.FOLLOW = False``) instead of following
  the bytes as they land.

Each pull starts from the same disk state: outside the timing, as many bytes
as the weights are written, fsynced and deleted in the round's directory
(``_runs.same_disk_state``), because a write into blocks freed moments ago is
faster on a thin-provisioned disk, and the pull right after another pull's
files were deleted would otherwise get that.

Peers alternate within a round, the order reversed every other round, after
``--warmup`` unmeasured rounds; the medians of the per-round ratios are
reported. Targets: push >= 1x oras, pull >= 2x oras.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "benchmarks")]

from _machine import Monitor  # noqa: E402
from _runs import (  # noqa: E402
    Case,
    fsync_tree,
    median,
    paired_ratio,
    run_round,
    same_disk_state,
    write_report,
)
from _tables import render  # noqa: E402

MiB = 1024 * 1024


def make_model(root: Path, size: int) -> Path:
    d = root / "model"
    d.mkdir(parents=True)
    with open(d / "weights.bin", "wb") as f:
        left = size
        while left > 0:
            n = min(64 * MiB, left)
            f.write(os.urandom(n))
            left -= n
    (d / "config.json").write_text('{"architecture": "bench"}\n')
    return d


def disk_write_MBps(where: Path, size: int = 256 * MiB) -> float:
    """Sequential write + fsync speed of the work directory's disk, measured before the rounds.

    Both pulls end with their bytes on disk (fsynced): where the disk writes
    slower than the registry serves, both are bound by it and the ratio
    approaches 1x whatever the clients do; the table says so.
    """
    path = where / "disk-probe"
    block = os.urandom(16 * MiB)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(size // len(block)):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    path.unlink()
    return size / elapsed / 1e6


def same_files(vault: Any, model: Path, dest: Path) -> list[str]:
    """Hard links, named as in the model directory, to the vault's blob files of that version."""
    from modelvault.digest import digest_file

    dest.mkdir()
    names = []
    for f in sorted(model.iterdir()):
        blob = vault.store.local_path(digest_file(f))
        assert blob is not None, f"{f.name} is not one blob of the vault"
        os.link(blob, dest / f.name)
        names.append(f.name)
    return names


def one_round(
    rnd: int, r: Path, src: Any, oras_dir: Path, files: list[str], size: int
) -> dict[str, float]:
    """Both pushes, then both pulls, each side on a fresh registry of its own."""
    import oras.client
    from tests.oci.registry import run_registry

    from modelvault import Vault, config
    from modelvault.oci import download

    # No sha256 or mount hints from an earlier round.
    os.environ["MVAULT_CACHE_DIR"] = str(r / "cache")
    config.reload()
    client = oras.client.OrasClient(insecure=True)
    dst: dict[str, Any] = {}
    try:
        with run_registry(r / "reg-mv") as reg_mv, run_registry(r / "reg-oras") as reg_o:
            mv_ref = f"oci://{reg_mv.host}/bench/model:1.0.0"
            oras_ref = f"{reg_o.host}/bench/model:1.0.0"
            out = r / "oras-out"
            # Every durable pull starts on the same disk state (see _runs.same_disk_state).
            settle = same_disk_state(r, size)

            def oras_push() -> Any:
                cwd = os.getcwd()
                os.chdir(oras_dir)
                try:
                    return client.push(target=oras_ref, files=files, quiet=True)
                finally:
                    os.chdir(cwd)

            def new_vault() -> None:
                settle()
                v = Vault(registry=f"sqlite:///{r / 'dst.db'}", store=f"file://{r / 'dst-store'}")
                v.registry.list_models()  # the empty catalogue created before the timing
                dst["v"] = v

            def oras_pull() -> None:
                client.pull(target=oras_ref, outdir=str(out))
                fsync_tree(out)

            def check_oras(_: Any) -> None:
                got = (out / "weights.bin").stat().st_size
                assert got == size, f"oras pulled {got} bytes, expected {size}"
                shutil.rmtree(out)

            def check_mv(got: Any) -> None:
                assert got.created and got.bytes_downloaded >= size
                dst.pop("v").close()
                shutil.rmtree(r / "dst-store")
                (r / "dst.db").unlink()

            def mv_pull_hash_after() -> Any:
                download.FOLLOW = False
                try:
                    return dst["v"].pull_oci(mv_ref)
                finally:
                    download.FOLLOW = True

            pushes = [
                Case("mv_push", lambda: src.push_oci("bench@1.0.0", mv_ref), before=os.sync),
                Case("oras_push", oras_push, before=os.sync),
            ]
            pulls = [
                Case(
                    "mv_pull",
                    lambda: dst["v"].pull_oci(mv_ref),
                    before=new_vault,
                    after=check_mv,
                ),
                Case("oras_pull", oras_pull, before=settle, after=check_oras),
                # For reference: the same pull hashing after the download, not as it lands.
                Case("mv_pull_hash_after", mv_pull_hash_after, before=new_vault, after=check_mv),
            ]
            return {**run_round(pushes, rnd), **run_round(pulls, rnd)}
    finally:
        shutil.rmtree(r, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="weights file size, MiB")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    ap.add_argument("--workdir", default=None, help="files, vaults, registries (default: temp)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "oci.json"))
    ap.add_argument("--render", default=None, help="print the table of a results file and exit")
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return

    from importlib.metadata import version

    from modelvault import Vault, config

    size = args.size_mb * MiB
    work = Path(tempfile.mkdtemp(prefix="oci-bench-", dir=args.workdir))
    os.environ["MVAULT_HOME"] = str(work / "home")
    os.environ["MVAULT_NO_PROGRESS"] = "1"
    config.reload()
    results: dict[str, list[float]] = {
        k: [] for k in ("mv_push", "oras_push", "mv_pull", "oras_pull", "mv_pull_hash_after")
    }
    monitor = Monitor()  # the registries are children of this process: counted as this run
    try:
        model = make_model(work, size)
        src = Vault(registry=f"sqlite:///{work / 'src.db'}", store=f"file://{work / 'src-store'}")
        src.push(model, "bench", "1.0.0")
        oras_dir = work / "oras-src"
        files = same_files(src, model, oras_dir)
        os.sync()
        disk = disk_write_MBps(work)
        with monitor:
            for rnd in range(args.warmup + args.runs):
                got = one_round(rnd, work / f"round{rnd}", src, oras_dir, files, size)
                if rnd >= args.warmup:
                    for k, v in got.items():
                        results[k].append(v)
                print(
                    f"round {rnd}{' (warm-up)' if rnd < args.warmup else ''}: "
                    + ", ".join(f"{k}={v:.3f}s" for k, v in got.items()),
                    flush=True,
                )
        src.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: median(v) for k, v in results.items()}
    machine = monitor.record()
    machine["extra"] = {
        "registries": "docker-registry on loopback, filesystem storage on the work directory's disk",
        "oras": version("oras"),
        "disk write + fsync (MB/s)": f"{disk:.0f}",
    }
    report = {
        "oras": version("oras"),
        "size_bytes": size,
        "disk_write_MBps": disk,
        "runs": args.runs,
        "warmup": args.warmup,
        "seconds": results,
        "median_seconds": med,
        "median_MBps": {k: size / v / 1e6 for k, v in med.items()},
        "push_vs_oras": paired_ratio(results["oras_push"], results["mv_push"]),
        "pull_vs_oras": paired_ratio(results["oras_pull"], results["mv_pull"]),
        "hash_after_vs_as_it_lands": paired_ratio(
            results["mv_pull_hash_after"], results["mv_pull"]
        ),
    }
    out = Path(args.out)
    write_report(out, "oci", report, machine)
    print()
    print(render(json.loads(out.read_text())))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
