"""Registry benchmark: modelvault's registry vs MLflow's SQLAlchemy model registry store.

A registry of 1,000 models and ~100,000 versions (each with a variant, two
blob references, a label; two aliases per model) on SQLite and PostgreSQL.
Measured through the public API, after a warm-up:

* resolve ``name@^X.Y``, ``name@prod`` (alias), ``name@latest``, exact ``name:X.Y.Z``
  (p50 / p99 over random models, and on one model that holds 100k versions);
* listing one model's versions a page (50) at a time, first page and a page in
  the middle, while that model grows to 1k, 10k and 100k versions.

MLflow runs the same workload in the same run, on the same engine and sizes,
in its own virtual environment (``--mlflow-python``, default ``$MLFLOW_PYTHON``)
as a subprocess: ``get_model_version``,
``get_model_version_by_alias``, ``search_model_versions``. Data is
bulk-inserted through SQLAlchemy Core on both sides (100k ``register``
calls would measure the loader, not the lookups).

    PYTHONPATH=src python benchmarks/registry_bench.py            # full run
    PYTHONPATH=src python benchmarks/registry_bench.py --quick    # smoke test

Writes benchmarks/results/registry.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _settle import settle  # benchmarks/ is this script's path
from sqlalchemy import Engine, create_engine, insert, text
from sqlalchemy.dialects import postgresql

from modelvault.registry import Registry, upgrade
from modelvault.registry.db import normalize_url
from modelvault.registry.reads import encode_cursor
from modelvault.registry.schema import Alias, Blob, Label, Model, Variant, VariantBlob, Version
from modelvault.registry.semver import SemVer

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
PG_ADMIN = os.environ.get(
    "MVAULT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
CHUNK = 10_000
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def digest(seed: str) -> str:
    return "blake3:" + hashlib.sha256(seed.encode()).hexdigest()


def small_version(i: int) -> SemVer:
    """Version i of a small model: 0.0.0 .. 9.9.0, every 7th a pre-release."""
    pre = ("rc", str(i % 3 + 1)) if i % 7 == 6 else ()
    return SemVer(i // 10, i % 10, 0, pre)


def big_version(i: int) -> SemVer:
    return SemVer(i // 10_000, (i // 100) % 100, i % 100)


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "p50_ms": round(statistics.median(s) * 1000, 3),
        "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, 3),
        "mean_ms": round(statistics.fmean(s) * 1000, 3),
        "n": len(s),
    }


def timed(fn: Callable[[], Any], n: int, warmup: int = 100) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return percentiles(samples)


# --- databases ------------------------------------------------------------------


def create_db(kind: str, tag: str) -> str:
    if kind == "sqlite":
        WORK.mkdir(parents=True, exist_ok=True)
        path = WORK / f"{tag}-{secrets.token_hex(4)}.db"
        return f"sqlite:///{path}"
    name = f"mv_bench_{tag}_{secrets.token_hex(4)}"
    admin = create_engine(normalize_url(PG_ADMIN), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return normalize_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)


def drop_db(url: str) -> None:
    if url.startswith("sqlite"):
        for suffix in ("", "-wal", "-shm"):
            Path(url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)
        return
    name = normalize_url(url).database
    admin = create_engine(normalize_url(PG_ADMIN), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


# --- modelvault population ---------------------------------------------------------


class Loader:
    """Bulk rows through SQLAlchemy Core, with explicit ids (sequences fixed at the end)."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(normalize_url(url))
        self.next_version = 1
        self.next_variant = 1

    def _insert(self, table: Any, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            for i in range(0, len(rows), CHUNK):
                conn.execute(insert(table), rows[i : i + CHUNK])

    def models(self, names: list[str]) -> None:
        self._insert(
            Model,
            [
                {
                    "id": i + 1,
                    "name": n,
                    "description": None,
                    "created_at": NOW,
                    "created_by": "bench",
                }
                for i, n in enumerate(names)
            ],
        )

    def versions(self, model_id: int, model: str, versions: list[SemVer]) -> list[int]:
        return self.versions_bulk([(model_id, model, versions)])[0]

    def versions_bulk(self, items: list[tuple[int, str, list[SemVer]]]) -> list[list[int]]:
        """Versions of many models in one pass: each with a variant, two blob references, a label."""
        vrows: list[dict[str, Any]] = []
        varrows: list[dict[str, Any]] = []
        refs: list[dict[str, Any]] = []
        labels: list[dict[str, Any]] = []
        blobs: dict[str, dict[str, Any]] = {}
        all_ids = []
        for model_id, model, versions in items:
            weights = digest(f"weights:{model}")
            blobs[weights] = {
                "digest": weights,
                "size": 10**9,
                "media_type": "application/octet-stream",
                "first_seen": NOW,
            }
            ids = []
            for v in versions:
                vid, varid = self.next_version, self.next_variant
                self.next_version += 1
                self.next_variant += 1
                ids.append(vid)
                vrows.append(
                    {
                        "id": vid,
                        "model_id": model_id,
                        "version": str(v),
                        "major": v.major,
                        "minor": v.minor,
                        "patch": v.patch,
                        "prerelease": v.prerelease_text,
                        "prerelease_sort": v.prerelease_key,
                        "build": "",
                        "is_prerelease": v.is_prerelease,
                        "description": None,
                        "created_at": NOW,
                        "created_by": "bench",
                    }
                )
                manifest = digest(f"manifest:{model}:{v}")
                varrows.append(
                    {
                        "id": varid,
                        "version_id": vid,
                        "manifest_digest": manifest,
                        "format": "exported_program",
                        "kind": "portable",
                        "requirements": {"device": "any"},
                        "size": 10**9,
                        "created_at": NOW,
                        "created_by": "bench",
                    }
                )
                blobs[manifest] = {
                    "digest": manifest,
                    "size": 900,
                    "media_type": "application/json",
                    "first_seen": NOW,
                }
                refs.append({"variant_id": varid, "blob_digest": manifest, "role": "manifest"})
                refs.append({"variant_id": varid, "blob_digest": weights, "role": "weights"})
                labels.append({"version_id": vid, "key": "dataset", "value": f"ds{vid % 10}"})
            all_ids.append(ids)
        self._insert(Version, vrows)
        self._insert(Variant, varrows)
        if self.engine.dialect.name == "postgresql":  # the weights blob may exist already
            stmt: Any = postgresql.insert(Blob).on_conflict_do_nothing()
        else:
            stmt = insert(Blob).prefix_with("OR IGNORE")
        rows = list(blobs.values())
        with self.engine.begin() as conn:
            for i in range(0, len(rows), CHUNK):
                conn.execute(stmt, rows[i : i + CHUNK])
        self._insert(VariantBlob, refs)
        self._insert(Label, labels)
        return all_ids

    def aliases(self, rows: list[tuple[int, str, int]]) -> None:
        self._insert(
            Alias,
            [
                {
                    "model_id": m,
                    "name": a,
                    "version_id": v,
                    "updated_at": NOW,
                    "updated_by": "bench",
                }
                for m, a, v in rows
            ],
        )

    def finish(self) -> None:
        if self.engine.dialect.name == "postgresql":
            with self.engine.begin() as conn:
                for table in ("models", "versions", "variants", "aliases"):
                    conn.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                            f"(SELECT coalesce(max(id), 1) FROM {table}))"
                        )
                    )
        settle(self.engine)
        self.engine.dispose()


def run_modelvault(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    url = create_db(kind, "mv")
    out: dict[str, Any] = {"engine": kind}
    try:
        upgrade(url)
        loader = Loader(url)
        names = [f"org{i % 20}/model{i:04d}" for i in range(args.models - 1)] + ["big/model"]
        t0 = time.perf_counter()
        loader.models(names)
        small = [small_version(i) for i in range(args.per_model)]
        all_ids = loader.versions_bulk(
            [(mid, name, small) for mid, name in enumerate(names[:-1], start=1)]
        )
        alias_rows = []
        for mid, ids in enumerate(all_ids, start=1):
            alias_rows += [(mid, "prod", ids[len(ids) // 2]), (mid, "staging", ids[-1])]
        loader.aliases(alias_rows)
        loader.finish()
        out["populate_s"] = round(time.perf_counter() - t0, 2)
        rng = random.Random(7)
        reg = Registry(url)
        big_id = len(names)
        have = 0
        out["listing"] = {}
        out["resolve_big"] = {}
        for size in args.big_sizes:
            loader = Loader(url)
            loader.next_version = 10**7 + have + 1
            loader.next_variant = 10**7 + have + 1
            ids = loader.versions(big_id, "big/model", [big_version(i) for i in range(have, size)])
            if have == 0:
                loader.aliases([(big_id, "prod", ids[len(ids) // 2])])
            loader.finish()
            have = size
            mid_v = big_version(size // 2)
            middle = encode_cursor(
                "versions", [mid_v.major, mid_v.minor, mid_v.patch, mid_v.prerelease_key]
            )
            out["listing"][str(size)] = {
                "first_page": timed(
                    lambda: reg.list_versions("big/model", limit=50), args.list_iters
                ),
                "middle_page": timed(
                    lambda c=middle: reg.list_versions("big/model", limit=50, cursor=c),
                    args.list_iters,
                ),
            }
            print(f"  modelvault {kind}: big model at {size} versions listed", file=sys.stderr)
        total_versions = (args.models - 1) * args.per_model + have
        out["total_versions"] = total_versions
        small_names = names[:-1]
        carets = sorted({f"^{v.major}.{v.minor}" for v in small if not v.is_prerelease})

        def caret_of(v: SemVer) -> str:
            return f"{v.major}.{v.minor}"

        cases: dict[str, Callable[[], Any]] = {
            "caret": lambda: reg.resolve(f"{rng.choice(small_names)}@{rng.choice(carets)}"),
            "alias": lambda: reg.resolve(f"{rng.choice(small_names)}@prod"),
            "latest": lambda: reg.resolve(f"{rng.choice(small_names)}@latest"),
            "exact": lambda: reg.resolve(f"{rng.choice(small_names)}:{rng.choice(small)}"),
        }
        out["resolve"] = {k: timed(fn, args.iters) for k, fn in cases.items()}
        big_cases: dict[str, Callable[[], Any]] = {
            "caret": lambda: reg.resolve(
                f"big/model@^{caret_of(big_version(rng.randrange(have)))}"
            ),
            "alias": lambda: reg.resolve("big/model@prod"),
            "latest": lambda: reg.resolve("big/model@latest"),
            "exact": lambda: reg.resolve(f"big/model:{big_version(rng.randrange(have))}"),
        }
        out["resolve_big"] = {k: timed(fn, args.iters) for k, fn in big_cases.items()}
        reg.close()
    finally:
        drop_db(url)
    return out


def run_mlflow(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    python = args.mlflow_python
    if not python or not Path(python).exists():
        return {"engine": kind, "skipped": f"MLflow interpreter {python} not found"}
    url = create_db(kind, "mlflow")
    if kind == "sqlite":
        uri = url
    else:
        # MLflow's own default PostgreSQL driver is psycopg2, installed in its venv
        uri = (
            normalize_url(url)
            .set(drivername="postgresql+psycopg2")
            .render_as_string(hide_password=False)
        )
    plan = {
        "uri": uri,
        "models": args.models,
        "per_model": args.per_model,
        "big_sizes": args.big_sizes,
        "iters": args.iters,
        "list_iters": args.list_iters,
    }
    try:
        proc = subprocess.run(
            [python, str(HERE / "_mlflow_side.py"), json.dumps(plan)],
            capture_output=True,
            text=True,
            timeout=1800,
            cwd=WORK,
        )
    finally:
        drop_db(url)
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln and not ln.startswith(" ")][-3:]
        return {"engine": kind, "skipped": "MLflow side failed: " + " | ".join(tail)[:300]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["engine"] = kind
    return result


def machine() -> str:
    disk = "unknown disk"
    try:
        dev = subprocess.run(
            ["df", "-h", str(HERE)], capture_output=True, text=True
        ).stdout.splitlines()[-1]
        disk = dev.split()[0]
    except Exception:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"CPU dev machine: {os.cpu_count()} cores, {mem:.0f} GiB, {disk}; {platform.python_version()}"


def table(results: dict[str, Any]) -> Iterator[str]:
    yield f"Machine: {results['machine']}"
    yield ""
    yield "Resolve latency, ms (p50 / p99), random models of a 1,000-model registry, and one model holding all big versions:"
    yield ""
    yield "| engine | system | ^X.Y | alias | latest | exact | big ^X.Y | big alias | big latest | big exact |"
    yield "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    for kind in results["engines"]:
        mv = results["modelvault"][kind]
        row = [kind, "modelvault"]
        for section in ("resolve", "resolve_big"):
            for case in ("caret", "alias", "latest", "exact"):
                r = mv[section][case]
                row.append(f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}")
        yield "| " + " | ".join(row) + " |"
        ml = results["mlflow"][kind]
        if "skipped" in ml:
            yield f"| {kind} | MLflow | {ml['skipped'][:60]} | | | | | | | |"
            continue
        row = [kind, f"MLflow {ml.get('version', '')}"]
        for section in ("resolve", "resolve_big"):
            for case in ("caret", "alias", "latest", "exact"):
                r = ml[section].get(case)
                row.append(f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}" if r else "n/a")
        yield "| " + " | ".join(row) + " |"
    yield ""
    yield "Listing one model's versions, 50 a page, p50 ms (first page / middle page):"
    yield ""
    sizes = [str(s) for s in results["big_sizes"]]
    yield "| engine | system | " + " | ".join(f"{s} versions" for s in sizes) + " |"
    yield "| --- | --- | " + " | ".join("---" for _ in sizes) + " |"
    for kind in results["engines"]:
        for system in ("modelvault", "mlflow"):
            r = results[system][kind]
            if "skipped" in r:
                continue
            cells = [
                f"{r['listing'][s]['first_page']['p50_ms']:.2f} / {r['listing'][s]['middle_page']['p50_ms']:.2f}"
                for s in sizes
            ]
            label = "modelvault" if system == "modelvault" else f"MLflow {r.get('version', '')}"
            yield f"| {kind} | {label} | " + " | ".join(cells) + " |"
    yield ""
    for kind in results["engines"]:
        mv, ml = results["modelvault"][kind], results["mlflow"][kind]
        extra = f"; MLflow {ml['populate_s']} s" if "populate_s" in ml else ""
        yield f"- {kind}: {mv['total_versions']:,} versions; bulk population modelvault {mv['populate_s']} s{extra}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--per-model", type=int, default=100)
    ap.add_argument("--big-sizes", default="1000,10000,100000")
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--list-iters", type=int, default=100)
    ap.add_argument(
        "--mlflow-python",
        default=os.environ.get("MLFLOW_PYTHON", ""),
        help="python of a separate venv with mlflow-skinny and the database drivers",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    ap.add_argument("--out", default=str(HERE / "results" / "registry.json"))
    args = ap.parse_args()
    if args.quick:
        args.models, args.per_model, args.big_sizes, args.iters, args.list_iters = (
            20,
            20,
            "100,1000",
            100,
            20,
        )
    args.big_sizes = [int(s) for s in args.big_sizes.split(",")]
    engines = args.engines.split(",")
    WORK.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": machine(),
        "engines": engines,
        "big_sizes": args.big_sizes,
        "models": args.models,
        "per_model": args.per_model,
        "modelvault": {},
        "mlflow": {},
        "load_average_start": os.getloadavg(),
    }
    for kind in engines:
        print(f"modelvault on {kind} ...", file=sys.stderr)
        results["modelvault"][kind] = run_modelvault(kind, args)
        print(f"MLflow on {kind} ...", file=sys.stderr)
        results["mlflow"][kind] = run_mlflow(kind, args)
    results["load_average_end"] = os.getloadavg()
    shutil.rmtree(WORK, ignore_errors=True)
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
