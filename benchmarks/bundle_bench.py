"""Bundle write and verified read against plain sequential file I/O of the same bytes.

Measures, in one run, on one directory (median of ``--runs`` runs each):

* plain write: the same bytes, same chunk size, to a new file in the same
  directory, with fsync (as ``write_bundle`` does);
* ``write_bundle`` of a draft whose tensor section holds one tensor of
  ``--size`` bytes;
* plain sequential read of the bundle file into a buffer (page cache warm,
  and cold when the page cache can be dropped: root and a writable
  ``/proc/sys/vm/drop_caches``);
* verified read: ``Bundle.open`` and the tensor section through
  ``read_verified_into`` into a buffer (warm and cold);
* hashing alone: the digest of the same bytes already in memory.

Peers alternate run by run. Writes ``benchmarks/results/bundle.json`` and
prints a Markdown table.

    PYTHONPATH=src python benchmarks/bundle_bench.py --size 1GiB --runs 3
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from modelvault.config import parse_size
from modelvault.digest import CHUNK, DEFAULT_ALGORITHM, new_hasher, read_verified_into
from modelvault.formats.bundle import Bundle, write_bundle
from modelvault.formats.container import Draft, TensorSectionBuilder

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "bundle.json"


def drop_caches() -> bool:
    """Drop the page cache; False when this process may not."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def plain_write(path: Path, data: memoryview) -> None:
    with open(path, "wb", buffering=0) as f:
        for start in range(0, data.nbytes, CHUNK):
            f.write(data[start : start + CHUNK])
        os.fsync(f.fileno())


def plain_read(path: Path, buf: memoryview, offset: int) -> None:
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        got = 0
        while got < buf.nbytes:
            n = f.readinto(buf[got : got + CHUNK])
            if not n:
                raise RuntimeError("short read")
            got += n


def verified_read(path: Path, buf: memoryview) -> None:
    bundle = Bundle.open(path)
    loc = bundle.locate(0)
    with open(path, "rb", buffering=0) as f:
        f.seek(loc.offset)
        read_verified_into(f, loc.size, loc.digest, into=buf)


def verified_map(path: Path) -> None:
    """The CPU loader's path: map the blob and hash it in place, no copy.

    Every byte is hashed before the mapping is handed on; the bytes stay in the
    page cache, shared, instead of being copied into process memory.
    """
    bundle = Bundle.open(path)
    loc = bundle.locate(0)
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    view = memoryview(m)[loc.offset : loc.offset + loc.size]
    try:
        h = new_hasher(DEFAULT_ALGORITHM)
        h.update(view)
        if h.digest_str() != loc.digest:
            raise RuntimeError("mapped bytes do not match their digest")
    finally:
        view.release()
        m.close()


def hash_only(data: memoryview) -> None:
    h = new_hasher(DEFAULT_ALGORITHM)
    for start in range(0, data.nbytes, CHUNK):
        h.update(data[start : start + CHUNK])
    h.digest_str()


def machine(directory: Path) -> dict[str, str]:
    df = subprocess.run(
        ["df", "-T", str(directory)], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    fs = df[-1].split() if len(df) > 1 else ["?", "?"]
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpus": str(os.cpu_count()),
        "memory_gib": f"{mem / 2**30:.0f}",
        "device": fs[0],
        "filesystem": fs[1],
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured write rounds first")
    ap.add_argument("--dir", type=Path, default=HERE / ".work")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    size = parse_size(args.size)
    work = args.dir
    work.mkdir(parents=True, exist_ok=True)
    src = bytearray(size)
    piece = os.urandom(64 << 20)
    for start in range(0, size, len(piece)):
        n = min(len(piece), size - start)
        src[start : start + n] = piece[:n]
    # Make every 64 MiB piece distinct, so nothing downstream can shortcut repeats.
    for start in range(0, size, len(piece)):
        src[start : start + 8] = start.to_bytes(8, "little")
    data = memoryview(src)
    out = memoryview(bytearray(size))
    plain = work / "plain.bin"
    bundle_path = work / "bench.mvpk"

    def do_bundle() -> None:
        builder = TensorSectionBuilder()
        builder.add("w", "uint8", (size,), data)
        draft = Draft("bench", "1")
        draft.add_tensor_section(builder)
        write_bundle(draft, bundle_path)

    try:
        res: dict[str, float] = {}
        times: dict[str, list[float]] = {}

        def clear(path: Path) -> None:
            # Both writers get a new file: replacing a 1 GiB file first frees its
            # blocks, which on a filesystem mounted with `discard` costs seconds.
            path.unlink(missing_ok=True)
            os.sync()

        def measure(key: str, fn: Callable[[], None], before: Callable[[], object] | None) -> None:
            if before is not None:
                before()
            t0 = time.perf_counter()
            fn()
            times.setdefault(key, []).append(time.perf_counter() - t0)

        # Peers run in alternation, round after round, so that drift in a shared
        # machine (disk, CPU) reaches both sides of each comparison alike.
        def do_plain() -> None:
            plain_write(plain, data)

        for _ in range(args.warmup):
            for fn, path in ((do_plain, plain), (do_bundle, bundle_path)):
                clear(path)
                fn()
        for _ in range(args.runs):
            measure("plain_write_s", lambda: plain_write(plain, data), lambda: clear(plain))
            measure("bundle_write_s", do_bundle, lambda: clear(bundle_path))
        plain.unlink(missing_ok=True)
        offset = Bundle.open(bundle_path).locate(0).offset
        plain_read(bundle_path, out, offset)  # warm the cache
        for _ in range(args.runs):
            measure("plain_read_warm_s", lambda: plain_read(bundle_path, out, offset), None)
            measure("verified_read_warm_s", lambda: verified_read(bundle_path, out), None)
            measure("verified_map_warm_s", lambda: verified_map(bundle_path), None)
            measure("hash_only_s", lambda: hash_only(data), None)
        cold = drop_caches()
        if cold:
            for _ in range(args.runs):
                measure(
                    "plain_read_cold_s",
                    lambda: plain_read(bundle_path, out, offset),
                    drop_caches,
                )
                measure(
                    "verified_read_cold_s", lambda: verified_read(bundle_path, out), drop_caches
                )
        res = {k: statistics.median(v) for k, v in times.items()}
        if bytes(out[:4096]) != bytes(data[:4096]) or out[-4096:] != data[-4096:]:
            raise RuntimeError("verified read returned different bytes")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    gib = size / 2**30
    rows = []

    def row(name: str, key: str, peer: str | None, goal: str = "", ok: bool | None = None) -> None:
        t = res[key]
        ratio = f"{res[peer] / t:.0%}" if peer else ""
        mark = "" if ok is None else ("met" if ok else "missed")
        rows.append((name, f"{t:.3f}", f"{gib / t:.2f}", ratio, goal, mark))

    row("plain sequential write + fsync", "plain_write_s", None)
    w_ratio = res["plain_write_s"] / res["bundle_write_s"]
    row(
        "write_bundle (hash while writing, fsync)",
        "bundle_write_s",
        "plain_write_s",
        ">= 80% of plain write",
        w_ratio >= 0.8,
    )

    def paired(peer: str, key: str) -> float:
        """Median over rounds of peer/ours, each round's two runs taken side by side."""
        return statistics.median(p / o for p, o in zip(times[peer], times[key]))

    summary: dict[str, object] = {
        "write_ratio": w_ratio,
        "write_ratio_paired": paired("plain_write_s", "bundle_write_s"),
    }
    for temp in ("warm", "cold"):
        pk, vk = f"plain_read_{temp}_s", f"verified_read_{temp}_s"
        if pk not in res:
            continue
        r_ratio = res[pk] / res[vk]
        cost = (res[vk] - res[pk]) / res[pk]
        summary[f"read_ratio_{temp}"] = r_ratio
        summary[f"read_ratio_{temp}_paired"] = paired(pk, vk)
        summary[f"verify_cost_{temp}"] = cost
        row(f"plain sequential read ({temp} cache)", pk, None)
        row(
            f"verified read ({temp} cache)",
            vk,
            pk,
            ">= 80% of plain read; verification < 20% of the read",
            r_ratio >= 0.8 and cost < 0.2,
        )
    m_ratio = res["plain_read_warm_s"] / res["verified_map_warm_s"]
    m_cost = (res["verified_map_warm_s"] - res["plain_read_warm_s"]) / res["plain_read_warm_s"]
    summary["map_ratio_warm"] = m_ratio
    summary["map_ratio_warm_paired"] = paired("plain_read_warm_s", "verified_map_warm_s")
    summary["map_verify_cost_warm"] = m_cost
    row(
        "verified mapped read (warm cache; the CPU loader's path)",
        "verified_map_warm_s",
        "plain_read_warm_s",
        ">= 80% of plain read; verification < 20% of the read",
        m_ratio >= 0.8 and m_cost < 0.2,
    )
    row("hashing alone (blake3, in memory)", "hash_only_s", None)
    summary["hash_vs_plain_read_warm"] = res["hash_only_s"] / res["plain_read_warm_s"]
    if "plain_read_cold_s" in res:
        summary["hash_vs_plain_read_cold"] = res["hash_only_s"] / res["plain_read_cold_s"]
    info = machine(args.dir.parent)
    report = {
        "size_bytes": size,
        "runs": args.runs,
        "warmup_write_rounds": args.warmup,
        "chunk_bytes": CHUNK,
        "cold_cache_measured": "plain_read_cold_s" in res,
        "machine": info,
        "seconds_median": res,
        "seconds_all": times,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"{gib:g} GiB, median of {args.runs} alternating runs; machine: {info['cpus']} cores, "
        f"{info['memory_gib']} GiB, {info['device']} ({info['filesystem']})\n"
    )
    print("| operation | seconds | GiB/s | vs plain | goal | |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    for k, v in summary.items():
        print(f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
