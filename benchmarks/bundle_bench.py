"""Bundle write and verified read against plain sequential file I/O of the same bytes.

Measures, in one run, on one directory (median of ``--runs`` runs each,
peers alternating round by round, the order reversed every other round):

* plain write: the same bytes, same chunk size, to a new file in the same
  directory, then fsync of the file and of its directory; against
  ``write_bundle`` of a draft whose tensor section holds one tensor of
  ``--size`` bytes (hashes while writing, fsyncs, renames, fsyncs the
  directory): the same durability on both sides;
* reads into a buffer: plain sequential ``readinto`` of the tensor bytes
  against ``Bundle.open`` + ``read_verified_into`` (page cache warm, and
  cold when the page cache can be dropped: root and a writable
  ``/proc/sys/vm/drop_caches``);
* mapped reads (the CPU loader's path): the tensor bytes mapped and every
  4 KiB page touched (plain: resident, unverified) against the same mapping
  hashed in place (every byte read, digest checked): both end with the same
  resident mapping; the difference is the cost of verification;
* hashing alone: the digest of the same bytes already in memory.

Writes ``benchmarks/results/bundle.json`` and prints the table.

    PYTHONPATH=src python benchmarks/bundle_bench.py --size 1GiB --runs 9
    python benchmarks/bundle_bench.py --render benchmarks/results/bundle.json
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from modelvault.config import parse_size
from modelvault.digest import CHUNK, DEFAULT_ALGORITHM, new_hasher, read_verified_into
from modelvault.formats.bundle import Bundle, write_bundle
from modelvault.formats.container import Draft, TensorSectionBuilder

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
RESULTS = HERE / "results" / "bundle.json"

from _machine import Monitor  # noqa: E402
from _runs import (  # noqa: E402
    Case,
    interleaved,
    median,
    paired_ratio,
    same_disk_state,
    write_report,
)
from _tables import render  # noqa: E402


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
    # write_bundle makes the new name durable too.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def plain_map(path: Path, offset: int, size: int) -> None:
    """The same mapping without verification: every page touched, so it ends resident too."""
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    view = memoryview(m)[offset : offset + size]
    try:
        bytes(view[::4096])  # one byte of every page, read in C
    finally:
        view.release()
        m.close()


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


def disk(directory: Path) -> dict[str, str]:
    df = subprocess.run(
        ["df", "-T", str(directory)], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    fs = df[-1].split() if len(df) > 1 else ["?", "?"]
    return {"disk": fs[0], "filesystem": fs[1]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    ap.add_argument(
        "--no-cold",
        action="store_true",
        help="skip the cold-cache reads (they drop the page cache)",
    )
    ap.add_argument("--dir", type=Path, default=HERE / ".work")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--render", type=Path, help="print the table of a results file and exit")
    args = ap.parse_args(argv)
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return 0
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

    settle = same_disk_state(work, size)

    def clear(path: Path) -> None:
        # Both writers get a new file: replacing a 1 GiB file first frees its
        # blocks, which on a filesystem mounted with `discard` costs seconds.
        # Then both start from the same disk state (_runs.same_disk_state).
        path.unlink(missing_ok=True)
        settle()

    monitor = Monitor()
    times: dict[str, list[float]] = {}
    try:
        with monitor:
            times.update(
                interleaved(
                    [
                        Case(
                            "plain_write_s", lambda: plain_write(plain, data), lambda: clear(plain)
                        ),
                        Case("bundle_write_s", do_bundle, lambda: clear(bundle_path)),
                    ],
                    args.runs,
                    args.warmup,
                )
            )
            plain.unlink(missing_ok=True)
            loc = Bundle.open(bundle_path).locate(0)
            plain_read(bundle_path, out, loc.offset)  # warm the cache
            times.update(
                interleaved(
                    [
                        Case("plain_read_warm_s", lambda: plain_read(bundle_path, out, loc.offset)),
                        Case("verified_read_warm_s", lambda: verified_read(bundle_path, out)),
                        Case("plain_map_warm_s", lambda: plain_map(bundle_path, loc.offset, size)),
                        Case("verified_map_warm_s", lambda: verified_map(bundle_path)),
                        Case("hash_only_s", lambda: hash_only(data)),
                    ],
                    args.runs,
                    args.warmup,
                )
            )
            if not args.no_cold and drop_caches():
                times.update(
                    interleaved(
                        [
                            Case(
                                "plain_read_cold_s",
                                lambda: plain_read(bundle_path, out, loc.offset),
                                drop_caches,
                            ),
                            Case(
                                "verified_read_cold_s",
                                lambda: verified_read(bundle_path, out),
                                drop_caches,
                            ),
                        ],
                        args.runs,
                        args.warmup,
                    )
                )
            if bytes(out[:4096]) != bytes(data[:4096]) or out[-4096:] != data[-4096:]:
                raise RuntimeError("verified read returned different bytes")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    pairs = {
        "write": ("plain_write_s", "bundle_write_s"),
        "read_warm": ("plain_read_warm_s", "verified_read_warm_s"),
        "read_cold": ("plain_read_cold_s", "verified_read_cold_s"),
        "map_warm": ("plain_map_warm_s", "verified_map_warm_s"),
        "map_vs_plain_read_warm": ("plain_read_warm_s", "verified_map_warm_s"),
    }
    summary: dict[str, Any] = {}
    for key, (peer, ours) in pairs.items():
        if peer in times:
            summary[f"{key}_ratio"] = median(times[peer]) / median(times[ours])
            summary[f"{key}_ratio_paired"] = paired_ratio(times[peer], times[ours])
            summary[f"{key}_cost"] = median(times[ours]) / median(times[peer]) - 1
    machine = monitor.record()
    machine["extra"] = disk(args.dir.parent)
    report = {
        "size_bytes": size,
        "runs": args.runs,
        "warmup": args.warmup,
        "chunk_bytes": CHUNK,
        "cold_cache_measured": "plain_read_cold_s" in times,
        "seconds_median": {k: median(v) for k, v in times.items()},
        "seconds_all": times,
        "summary": summary,
    }
    write_report(args.out, "bundle", report, machine)
    print(render(json.loads(args.out.read_text())))
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
