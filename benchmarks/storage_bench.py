"""Storage benchmark: modelvault's S3 store against boto3's own transfer manager.

Starts a SeaweedFS server on loopback (the test helper), writes a random
blob (1 GiB by default), and measures, median of N runs, peers interleaved:

- boto3 ``upload_file`` / ``download_file`` with a tuned ``TransferConfig``
- modelvault ``S3Store.put_file`` / ``get_file`` (digest verified on both ways,
  downloaded file fsynced before its atomic rename)
- the second push of the same blob (dedup: no blob bytes sent)
- a pull into a warm cache (S3 GET bytes counted through a botocore event
  hook: must be 0)

    PYTHONPATH=src:. python benchmarks/storage_bench.py [--size-mib 1024] [--runs 3]

Writes ``benchmarks/results/storage.json`` and prints a Markdown table.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.storage.seaweed import SeaweedS3  # noqa: E402

from modelvault.digest import digest_file  # noqa: E402
from modelvault.storage import BlobCache  # noqa: E402
from modelvault.storage.s3 import S3Store  # noqa: E402

MiB = 1024 * 1024
BUCKET = "bench"


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(64 * MiB, left)
            f.write(os.urandom(n))
            left -= n


def get_bytes_counter(client: Any) -> dict[str, int]:
    """Bytes S3 returned for GetObject calls, counted from the responses themselves."""
    counter = {"get_bytes": 0, "get_calls": 0}

    def after_get(parsed: Any, **_: Any) -> None:
        counter["get_calls"] += 1
        counter["get_bytes"] += int(parsed.get("ContentLength", 0) or 0)

    client.meta.events.register("after-call.s3.GetObject", after_get)
    return counter


def download_durable(client: Any, key: str, out: Path, tc: Any) -> None:
    client.download_file(BUCKET, key, str(out), Config=tc)
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def op_counter(client: Any) -> dict[str, int]:
    """S3 operations the client makes from now on, by name."""
    ops: dict[str, int] = {}

    def count(model: Any, **_: Any) -> None:
        ops[model.name] = ops.get(model.name, 0) + 1

    client.meta.events.register("before-parameter-build.s3", count)
    return ops


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--part-mib", type=int, default=int(os.environ.get("BENCH_PART_MIB", "64")))
    ap.add_argument(
        "--concurrency", type=int, default=int(os.environ.get("BENCH_CONCURRENCY", "8"))
    )
    ap.add_argument(
        "--workdir", default=None, help="source and downloaded files (default: a temp dir)"
    )
    ap.add_argument("--weed-dir", default=None, help="SeaweedFS data (default: under --workdir)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "storage.json"))
    ap.add_argument(
        "--render", default=None, help="print the table of an earlier JSON report and exit"
    )
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return

    import boto3
    from boto3.s3.transfer import TransferConfig

    size = args.size_mib * MiB
    part = args.part_mib * MiB
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mvault-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "blob.bin"
    write_random(src, size)
    digest = digest_file(src)

    server = SeaweedS3(Path(args.weed_dir) if args.weed_dir else work / "weed")
    server.start()
    results: dict[str, list[float]] = {
        k: []
        for k in (
            "boto3_upload",
            "boto3_download",
            "boto3_download_fsync",
            "mv_push",
            "mv_pull",
            "mv_push_again",
            "mv_pull_warm",
        )
    }
    warm_get_bytes: list[int] = []
    second_push_ops: list[dict[str, int]] = []
    try:
        server.create_bucket(BUCKET)
        os.environ.update(server.env())
        client = server.client()
        tc = TransferConfig(
            multipart_threshold=part,
            multipart_chunksize=part,
            max_concurrency=args.concurrency,
            use_threads=True,
        )
        # Let the server allocate its volumes before anything is timed.
        client.upload_file(str(src), BUCKET, "warmup", Config=tc)
        client.delete_object(Bucket=BUCKET, Key="warmup")
        for run in range(args.runs):
            key = f"peer/run{run}"
            out = work / "peer.out"
            store = S3Store(BUCKET, f"mv/run{run}", part_size=part, concurrency=args.concurrency)
            dest = work / "mv.out"

            steps: dict[str, Any] = {
                "boto3_upload": lambda: client.upload_file(str(src), BUCKET, key, Config=tc),  # noqa: B023
                "mv_push": lambda: store.put_file(digest, src),  # noqa: B023
                "boto3_download": lambda: client.download_file(BUCKET, key, str(out), Config=tc),  # noqa: B023
                "mv_pull": lambda: store.get_file(digest, dest),  # noqa: B023
                # For reference: what the peer costs once its file is made durable too.
                "boto3_download_fsync": lambda: download_durable(client, key, out, tc),  # noqa: B023
            }
            # Alternate who goes first, so drift on a shared machine hits both alike.
            names = ["boto3_upload", "mv_push", "boto3_download", "mv_pull"]
            if run % 2:
                names = ["mv_push", "boto3_upload", "mv_pull", "boto3_download"]
            for name in [*names, "boto3_download_fsync"]:
                results[name].append(timed(steps[name]))
            out.unlink()
            dest.unlink()
            ops = op_counter(store.client)
            t0 = time.perf_counter()
            sent = store.put_file(digest, src)
            results["mv_push_again"].append(time.perf_counter() - t0)
            assert sent is False
            second_push_ops.append(dict(ops))
            cache = BlobCache(work / f"cache{run}", 4 * size)
            cache.fetch(store, digest)
            counter = get_bytes_counter(store.client)
            t0 = time.perf_counter()
            cache.fetch(store, digest)
            results["mv_pull_warm"].append(time.perf_counter() - t0)
            warm_get_bytes.append(counter["get_bytes"])
            cache.clear()
            store.delete(digest)
            store.close()
            client.delete_object(Bucket=BUCKET, Key=key)
            server.vacuum()
            print(
                f"run {run}: " + ", ".join(f"{k}={v[-1]:.3f}s" for k, v in results.items()),
                flush=True,
            )
    finally:
        server.stop()

    med = {k: statistics.median(v) for k, v in results.items()}
    mbps = {k: size / v / 1e6 for k, v in med.items()}
    report = {
        "machine": f"CPU dev machine: {os.cpu_count()} cores, "
        f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB; "
        f"SeaweedFS on loopback, data {'in tmpfs' if args.weed_dir and args.weed_dir.startswith('/dev/shm') else 'on local disk'}; "
        "files read from and written to local disk (ext4)",
        "python": platform.python_version(),
        "boto3": boto3.__version__,
        "size_bytes": size,
        "part_size": part,
        "concurrency": args.concurrency,
        "runs": args.runs,
        "seconds": results,
        "median_seconds": med,
        "median_MBps": mbps,
        "push_vs_boto3": med["boto3_upload"] / med["mv_push"],
        "pull_vs_boto3": med["boto3_download"] / med["mv_pull"],
        "second_push_fraction": med["mv_push_again"] / med["mv_push"],
        "warm_pull_s3_get_bytes": warm_get_bytes,
        "second_push_s3_calls": second_push_ops,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(render(report))


def render(report: dict[str, Any]) -> str:
    """The Markdown table of a report (also: ``--render results.json``)."""
    med = report["median_seconds"]
    mbps = report["median_MBps"]
    lines = [
        f"{report['machine']}; {report['size_bytes'] / 2**30:g} GiB blob, "
        f"{report['part_size'] // MiB} MiB parts, {report['concurrency']} threads, "
        f"median of {report['runs']} runs, peers interleaved.",
        "",
        "| operation | modelvault | boto3, tuned TransferConfig | modelvault vs boto3 |",
        "| --- | --- | --- | --- |",
        f"| push (`put_file` vs `upload_file`) | {med['mv_push']:.2f} s ({mbps['mv_push']:.0f} MB/s) "
        f"| {med['boto3_upload']:.2f} s ({mbps['boto3_upload']:.0f} MB/s) | {report['push_vs_boto3']:.0%} |",
        f"| pull (`get_file`, verified + fsync, vs `download_file`) | {med['mv_pull']:.2f} s "
        f"({mbps['mv_pull']:.0f} MB/s) | {med['boto3_download']:.2f} s ({mbps['boto3_download']:.0f} MB/s) "
        f"| {report['pull_vs_boto3']:.0%} |",
        f"| pull, peer also fsyncs its file | | {med['boto3_download_fsync']:.2f} s "
        f"({mbps['boto3_download_fsync']:.0f} MB/s) | {med['boto3_download_fsync'] / med['mv_pull']:.0%} |",
        f"| second push of the unchanged blob | {med['mv_push_again'] * 1000:.1f} ms "
        f"({report['second_push_fraction']:.2%} of the first); S3 calls "
        f"{report.get('second_push_s3_calls', ['?'])[0]} | | |",
        f"| pull into a warm cache | {med['mv_pull_warm'] * 1e6:.0f} µs; S3 GET bytes per run "
        f"{report['warm_pull_s3_get_bytes']} | | |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
