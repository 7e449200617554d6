"""The MLflow half of registry_bench.py; runs in MLflow's own virtual environment.

Takes a JSON plan as argv[1], prints one JSON line of results. Populates
MLflow's tables with SQLAlchemy Core (same sizes as the modelvault side) and
times the store's public methods.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import sys
import time
from typing import Any

logging.disable(logging.WARNING)

import mlflow  # noqa: E402
from _settle import settle  # noqa: E402  (benchmarks/ is this script's path)
from mlflow.store.model_registry.dbmodels.models import (  # noqa: E402
    SqlModelVersion,
    SqlModelVersionTag,
    SqlRegisteredModel,
    SqlRegisteredModelAlias,
)
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore  # noqa: E402
from mlflow.utils.search_utils import SearchUtils  # noqa: E402
from sqlalchemy import insert  # noqa: E402

CHUNK = 10_000
NOW = 1_767_225_600_000


def pct(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "p50_ms": round(statistics.median(s) * 1000, 3),
        "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, 3),
        "mean_ms": round(statistics.fmean(s) * 1000, 3),
        "n": len(s),
    }


def timed(fn: Any, n: int, warmup: int = 100) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return pct(out)


def main() -> None:
    plan = json.loads(sys.argv[1])
    store = SqlAlchemyStore(plan["uri"])
    engine = store.engine

    def bulk(table: Any, rows: list[dict[str, Any]]) -> None:
        with engine.begin() as conn:
            for i in range(0, len(rows), CHUNK):
                conn.execute(insert(table.__table__), rows[i : i + CHUNK])

    def versions(items: list[tuple[str, int, int]]) -> None:
        bulk(
            SqlModelVersion,
            [
                {
                    "name": name,
                    "version": v,
                    "creation_time": NOW + v,
                    "last_updated_time": NOW + v,
                    "user_id": "bench",
                    "source": f"s3://bucket/{name}/{v}",
                    "storage_location": f"s3://bucket/{name}/{v}",
                    "status": "READY",
                }
                for name, start, stop in items
                for v in range(start + 1, stop + 1)
            ],
        )
        bulk(
            SqlModelVersionTag,
            [
                {"name": name, "version": v, "key": "dataset", "value": f"ds{v % 10}"}
                for name, start, stop in items
                for v in range(start + 1, stop + 1)
            ],
        )

    names = [f"org{i % 20}-model{i:04d}" for i in range(plan["models"] - 1)]
    big = "big-model"
    t0 = time.perf_counter()
    bulk(
        SqlRegisteredModel,
        [{"name": n, "creation_time": NOW, "last_updated_time": NOW} for n in [*names, big]],
    )
    per = plan["per_model"]
    versions([(n, 0, per) for n in names])
    bulk(
        SqlRegisteredModelAlias, [{"name": n, "alias": "prod", "version": per // 2} for n in names]
    )
    populate = time.perf_counter() - t0

    out: dict[str, Any] = {
        "version": mlflow.__version__,
        "populate_s": round(populate, 2),
        "listing": {},
    }
    have = 0
    filt = f"name='{big}'"
    for size in plan["big_sizes"]:
        versions([(big, have, size)])
        if have == 0:
            bulk(SqlRegisteredModelAlias, [{"name": big, "alias": "prod", "version": size // 2}])
        have = size
        settle(engine)
        middle = SearchUtils.create_page_token(size // 2)
        out["listing"][str(size)] = {
            "first_page": timed(
                lambda: store.search_model_versions(
                    filt, max_results=50, order_by=["version_number DESC"]
                ),
                plan["list_iters"],
            ),
            "middle_page": timed(
                lambda tok=middle: store.search_model_versions(
                    filt, max_results=50, order_by=["version_number DESC"], page_token=tok
                ),
                plan["list_iters"],
            ),
        }
    rng = random.Random(7)
    n = plan["iters"]

    def latest(name: str) -> Any:
        return store.search_model_versions(
            f"name='{name}'", max_results=1, order_by=["version_number DESC"]
        )

    out["resolve"] = {
        "exact": timed(
            lambda: store.get_model_version(rng.choice(names), str(rng.randint(1, per))), n
        ),
        "alias": timed(lambda: store.get_model_version_by_alias(rng.choice(names), "prod"), n),
        "latest": timed(lambda: latest(rng.choice(names)), n),
    }
    out["resolve_big"] = {
        "exact": timed(lambda: store.get_model_version(big, str(rng.randint(1, have))), n),
        "alias": timed(lambda: store.get_model_version_by_alias(big, "prod"), n),
        "latest": timed(lambda: latest(big), n),
    }
    out["total_versions"] = (plan["models"] - 1) * per + have
    print(json.dumps(out))


if __name__ == "__main__":
    main()
