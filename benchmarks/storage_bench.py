"""Storage benchmark: modelvault's S3 store against boto3's own transfer manager.

Starts a SeaweedFS server on loopback (the test helper), writes a random
blob (1 GiB by default), and measures, median of N runs, peers alternating
run by run (the order reversed every other run):

- push: boto3 ``upload_file`` with a ``TransferConfig`` of the same part
  size and thread count, against modelvault ``S3Store.put_file`` (which also
  hashes every byte and completes the upload only if the digest matches);
- pull: boto3 ``download_file`` followed by an fsync of the file (the
  durability modelvault gives), against ``S3Store.get_file`` (digest
  verified, file fsynced, renamed into place); boto3 without the fsync is a
  reference row. Every download goes to a path that does not exist (removed
  outside the timing), for every peer, and starts from the same state of the
  disk (``_runs.same_disk_state``: as many blocks as it will write freed just
  before, outside the timing);
- the second push of the same blob (dedup: no blob bytes sent);
- a pull into a warm cache (S3 GET bytes counted through a botocore event
  hook: must be 0).

    PYTHONPATH=src:. python benchmarks/storage_bench.py --size-mib 1024 --runs 5
    python benchmarks/storage_bench.py --render benchmarks/results/storage.json

Writes ``benchmarks/results/storage.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from _machine import Monitor  # noqa: E402
from _runs import Case, median, run_round, same_disk_state, write_report  # noqa: E402
from _tables import render  # noqa: E402
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
    """boto3's download made as durable as ``get_file``'s: the file and its new name fsynced."""
    client.download_file(BUCKET, key, str(out), Config=tc)
    for target in (out, out.parent):
        fd = os.open(target, os.O_RDONLY)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured runs first")
    ap.add_argument("--part-mib", type=int, default=int(os.environ.get("BENCH_PART_MIB", "64")))
    ap.add_argument(
        "--concurrency", type=int, default=int(os.environ.get("BENCH_CONCURRENCY", "8"))
    )
    ap.add_argument(
        "--workdir", default=None, help="source and downloaded files (default: a temp dir)"
    )
    ap.add_argument("--weed-dir", default=None, help="SeaweedFS data (default: under --workdir)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "storage.json"))
    ap.add_argument("--render", default=None, help="print the table of a results file and exit")
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
    results: dict[str, list[float]] = {
        k: []
        for k in (
            "boto3_upload",
            "mv_push",
            "boto3_download",
            "boto3_download_fsync",
            "mv_pull",
            "mv_push_again",
            "mv_pull_warm",
        )
    }
    warm_get_bytes: list[int] = []
    second_push_ops: list[dict[str, int]] = []
    monitor = Monitor()
    with monitor:
        server.start()
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
            settle = same_disk_state(work, size)
            for run in range(args.warmup + args.runs):
                key = f"peer/run{run}"
                store = S3Store(
                    BUCKET, f"mv/run{run}", part_size=part, concurrency=args.concurrency
                )
                peer_out, mv_out = work / "peer.out", work / "mv.out"

                def gone(path: Path) -> Any:
                    # A new file for every download, each written on the same disk state.
                    return lambda: (path.unlink(missing_ok=True), settle())

                pushes = [
                    Case(
                        "boto3_upload",
                        lambda: client.upload_file(str(src), BUCKET, key, Config=tc),  # noqa: B023
                        before=os.sync,
                    ),
                    Case("mv_push", lambda: store.put_file(digest, src), before=os.sync),  # noqa: B023
                ]
                pulls = [
                    Case(
                        "boto3_download_fsync",
                        lambda: download_durable(client, key, peer_out, tc),  # noqa: B023
                        before=gone(peer_out),
                    ),
                    Case(
                        "mv_pull",
                        lambda: store.get_file(digest, mv_out),  # noqa: B023
                        before=gone(mv_out),
                    ),
                    # For reference: the peer without making its file durable.
                    Case(
                        "boto3_download",
                        lambda: client.download_file(BUCKET, key, str(peer_out), Config=tc),  # noqa: B023
                        before=gone(peer_out),
                    ),
                ]
                got = {**run_round(pushes, run), **run_round(pulls, run)}
                peer_out.unlink(missing_ok=True)
                mv_out.unlink(missing_ok=True)
                ops = op_counter(store.client)
                t0 = time.perf_counter()
                sent = store.put_file(digest, src)
                got["mv_push_again"] = time.perf_counter() - t0
                assert sent is False
                push_again_ops = dict(ops)
                cache = BlobCache(work / f"cache{run}", 4 * size)
                cache.fetch(store, digest)
                counter = get_bytes_counter(store.client)
                t0 = time.perf_counter()
                cache.fetch(store, digest)
                got["mv_pull_warm"] = time.perf_counter() - t0
                cache.clear()
                store.delete(digest)
                store.close()
                client.delete_object(Bucket=BUCKET, Key=key)
                server.vacuum()
                if run >= args.warmup:
                    for k, v in got.items():
                        results[k].append(v)
                    second_push_ops.append(push_again_ops)
                    warm_get_bytes.append(counter["get_bytes"])
                print(
                    f"run {run}{' (warm-up)' if run < args.warmup else ''}: "
                    + ", ".join(f"{k}={v:.3f}s" for k, v in got.items()),
                    flush=True,
                )
        finally:
            server.stop()

    med = {k: median(v) for k, v in results.items()}
    machine = monitor.record()
    machine["extra"] = {
        "SeaweedFS data": "tmpfs"
        if args.weed_dir and args.weed_dir.startswith("/dev/shm")
        else "local disk",
        "source and destination files": "local disk",
    }
    report = {
        "boto3": boto3.__version__,
        "size_bytes": size,
        "part_size": part,
        "concurrency": args.concurrency,
        "runs": args.runs,
        "warmup": args.warmup,
        "seconds": results,
        "median_seconds": med,
        "median_MBps": {k: size / v / 1e6 for k, v in med.items()},
        "push_vs_boto3": med["boto3_upload"] / med["mv_push"],
        "pull_vs_boto3_fsync": med["boto3_download_fsync"] / med["mv_pull"],
        "pull_vs_boto3_no_fsync": med["boto3_download"] / med["mv_pull"],
        "second_push_fraction": med["mv_push_again"] / med["mv_push"],
        "warm_pull_s3_get_bytes": warm_get_bytes,
        "second_push_s3_calls": second_push_ops,
    }
    out = Path(args.out)
    write_report(out, "storage", report, machine)
    print()
    print(render(json.loads(out.read_text())))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
