"""Registry benchmark: modelvault's registry vs MLflow's SQLAlchemy model registry store.

A registry of 1,000 models and ~100,000 versions (each with a variant, two
blob references, a label; two aliases per model) on SQLite and PostgreSQL.
Measured through the public API, after a warm-up:

* resolve ``name@^X.Y``, ``name@prod`` (alias), ``name@latest``, exact ``name:X.Y.Z``
  (p50 / p99 over random models, and on one model that holds 100k versions);
* listing one model's versions a page (50) at a time, first page and a page in
  the middle, while that model grows to 1k, 10k and 100k versions.

MLflow runs the same workload in the same run, on the same engine and sizes,
in its own virtual environment (``--mlflow-python``, default ``$MLFLOW_PYTHON``,
else ``benchmarks/.mlflow-venv``) as a worker process: ``get_model_version``,
``get_model_version_by_alias``, ``search_model_versions``. Both databases
exist side by side and the two sides take turns (``--rounds`` turns per case,
the order reversed every other turn), each turn timing its calls in its own
process. Data is bulk-inserted through SQLAlchemy Core on both sides (100k
``register`` calls would measure the loader, not the lookups), then both are
settled alike (``_settle.py``).

    PYTHONPATH=src python benchmarks/registry_bench.py            # full run
    PYTHONPATH=src python benchmarks/registry_bench.py --quick    # smoke test, writes nothing
    python benchmarks/registry_bench.py --render benchmarks/results/registry.json

Writes benchmarks/results/registry.json and prints the tables.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _machine import Monitor  # benchmarks/ is this script's path
from _runs import SCHEMA, write_report
from _settle import settle
from _tables import render
from sqlalchemy import Engine, create_engine, insert, text
from sqlalchemy.dialects import postgresql

from modelvault.registry import Registry, upgrade
from modelvault.registry.checks import encode_cursor
from modelvault.registry.db import normalize_url
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


class ModelvaultSide:
    """modelvault's registry on a new database of ``kind``, filled with the small models."""

    def __init__(self, kind: str, args: argparse.Namespace) -> None:
        self.url = create_db(kind, "mv")
        upgrade(self.url)
        loader = Loader(self.url)
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
        self.populate_s = round(time.perf_counter() - t0, 2)
        self.reg = Registry(self.url)
        self.big_id = len(names)
        self.have = 0
        rng = random.Random(7)
        reg = self.reg
        small_names = names[:-1]
        carets = sorted({f"^{v.major}.{v.minor}" for v in small if not v.is_prerelease})

        def middle() -> str:
            v = big_version(self.have // 2)
            return encode_cursor("versions", [v.major, v.minor, v.patch, v.prerelease_key])

        def big_caret() -> str:
            v = big_version(rng.randrange(self.have))
            return f"big/model@^{v.major}.{v.minor}"

        self.cases: dict[str, Callable[[], Any]] = {
            "first_page": lambda: reg.list_versions("big/model", limit=50),
            "middle_page": lambda: reg.list_versions("big/model", limit=50, cursor=middle()),
            "caret": lambda: reg.resolve(f"{rng.choice(small_names)}@{rng.choice(carets)}"),
            "alias": lambda: reg.resolve(f"{rng.choice(small_names)}@prod"),
            "latest": lambda: reg.resolve(f"{rng.choice(small_names)}@latest"),
            "exact": lambda: reg.resolve(f"{rng.choice(small_names)}:{rng.choice(small)}"),
            "big_caret": lambda: reg.resolve(big_caret()),
            "big_alias": lambda: reg.resolve("big/model@prod"),
            "big_latest": lambda: reg.resolve("big/model@latest"),
            "big_exact": lambda: reg.resolve(f"big/model:{big_version(rng.randrange(self.have))}"),
        }

    def grow(self, size: int) -> None:
        loader = Loader(self.url)
        loader.next_version = 10**7 + self.have + 1
        loader.next_variant = 10**7 + self.have + 1
        ids = loader.versions(
            self.big_id, "big/model", [big_version(i) for i in range(self.have, size)]
        )
        if self.have == 0:
            loader.aliases([(self.big_id, "prod", ids[len(ids) // 2])])
        loader.finish()
        self.have = size

    def time(self, case: str, n: int, warmup: int) -> list[float] | None:
        fn = self.cases[case]
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return samples

    def close(self) -> None:
        self.reg.close()
        drop_db(self.url)


class MLflowSide:
    """MLflow's SqlAlchemyStore on a new database of ``kind``, in a worker process."""

    def __init__(self, kind: str, args: argparse.Namespace) -> None:
        self.url = create_db(kind, "mlflow")
        # MLflow's own default PostgreSQL driver is psycopg2, installed in its venv.
        uri = self.url
        if kind != "sqlite":
            uri = (
                normalize_url(self.url)
                .set(drivername="postgresql+psycopg2")
                .render_as_string(hide_password=False)
            )
        plan = {"uri": uri, "models": args.models, "per_model": args.per_model}
        self.proc = subprocess.Popen(
            [args.mlflow_python, str(HERE / "_mlflow_side.py"), json.dumps(plan)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=WORK,
        )
        ready = self._reply()
        self.version = str(ready["version"])
        self.populate_s = round(float(ready["populate_s"]), 2)

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the MLflow worker exited ({self.proc.wait()}); see its stderr")
        out: dict[str, Any] = json.loads(line)
        return out

    def _call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def grow(self, size: int) -> None:
        self._call(op="grow", size=size)

    def time(self, case: str, n: int, warmup: int) -> list[float] | None:
        if case in ("caret", "big_caret"):
            return None  # MLflow has no version ranges
        samples: list[float] = self._call(op="time", case=case, n=n, warmup=warmup)["samples"]
        return samples

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write('{"op": "quit"}\n')
            self.proc.stdin.close()
            self.proc.wait(timeout=120)
        drop_db(self.url)


def measure(sides: dict[str, Any], cases: list[str], n: int, rounds: int) -> dict[str, Any]:
    """p50/p99 per side and case; the sides alternate, ``n / rounds`` calls a turn."""
    per = max(1, n // rounds)
    out: dict[str, dict[str, Any]] = {name: {} for name in sides}
    for case in cases:
        samples: dict[str, list[float] | None] = {name: [] for name in sides}
        for rnd in range(rounds):
            order = list(sides) if rnd % 2 == 0 else list(reversed(sides))
            for name in order:
                got = sides[name].time(case, per, 100 if rnd == 0 else 0)
                if got is None:
                    samples[name] = None
                elif samples[name] is not None:
                    samples[name] += got  # type: ignore[operator]
        for name, s in samples.items():
            if s:
                out[name][case] = percentiles(s)
    return out


def run_engine(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Both registries on ``kind``, side by side, measured in alternation."""
    sides: dict[str, Any] = {"modelvault": ModelvaultSide(kind, args)}
    result: dict[str, Any] = {"modelvault": {"engine": kind}, "mlflow": {"engine": kind}}
    try:
        python = args.mlflow_python
        if python and Path(python).exists():
            try:
                sides["mlflow"] = MLflowSide(kind, args)
            except Exception as exc:
                result["mlflow"]["skipped"] = f"MLflow side failed: {exc}"[:300]
        else:
            result["mlflow"]["skipped"] = f"MLflow interpreter {python!r} not found"
        for name, side in sides.items():
            result[name]["populate_s"] = side.populate_s
            result[name]["listing"] = {}
        if "mlflow" in sides:
            result["mlflow"]["version"] = sides["mlflow"].version
        for size in args.big_sizes:
            for side in sides.values():
                side.grow(size)
            got = measure(sides, ["first_page", "middle_page"], args.list_iters, args.rounds)
            for name in sides:
                result[name]["listing"][str(size)] = got[name]
            print(f"  {kind}: big model at {size} versions listed", file=sys.stderr)
        small = ["caret", "alias", "latest", "exact"]
        got = measure(sides, small, args.iters, args.rounds)
        big = measure(sides, [f"big_{c}" for c in small], args.iters, args.rounds)
        for name in sides:
            result[name]["resolve"] = got[name]
            result[name]["resolve_big"] = {k.removeprefix("big_"): v for k, v in big[name].items()}
            result[name]["total_versions"] = (args.models - 1) * args.per_model + args.big_sizes[-1]
    finally:
        for side in sides.values():
            side.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--per-model", type=int, default=100)
    ap.add_argument("--big-sizes", default="1000,10000,100000")
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--list-iters", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10, help="turns each side takes per case")
    ap.add_argument(
        "--mlflow-python",
        default=default_mlflow_python(),
        help="python of a separate venv with mlflow-skinny and the database drivers",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    ap.add_argument(
        "--out",
        default=None,
        help="results file (default: results/registry.json; none with --quick)",
    )
    ap.add_argument("--render", type=Path, help="print the tables of a results file and exit")
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return
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
        "engines": engines,
        "big_sizes": args.big_sizes,
        "models": args.models,
        "per_model": args.per_model,
        "iters": args.iters,
        "list_iters": args.list_iters,
        "rounds": args.rounds,
        "modelvault": {},
        "mlflow": {},
    }
    # PostgreSQL's backends run this benchmark's queries: their CPU is its own.
    monitor = Monitor(serving=("postgres",))
    with monitor:
        for kind in engines:
            print(f"{kind} ...", file=sys.stderr)
            got = run_engine(kind, args)
            results["modelvault"][kind] = got["modelvault"]
            results["mlflow"][kind] = got["mlflow"]
    shutil.rmtree(WORK, ignore_errors=True)
    machine = monitor.record()
    machine["extra"] = {"disk": disk(), "sqlite": sqlite3.sqlite_version}
    if args.out is None and args.quick:
        print(render({"schema": SCHEMA, "benchmark": "registry", "machine": machine, **results}))
        return
    out = Path(args.out or HERE / "results" / "registry.json")
    write_report(out, "registry", results, machine)
    print(render(json.loads(out.read_text())))
    print(f"\nJSON: {out}")


def disk() -> str:
    try:
        return (
            subprocess.run(["df", str(HERE)], capture_output=True, text=True, check=False)
            .stdout.splitlines()[-1]
            .split()[0]
        )
    except (OSError, IndexError):
        return "unknown"


def default_mlflow_python() -> str:
    env = os.environ.get("MLFLOW_PYTHON", "")
    if env:
        return env
    venv = HERE / ".mlflow-venv" / "bin" / "python"
    return str(venv) if venv.exists() else ""


if __name__ == "__main__":
    main()
