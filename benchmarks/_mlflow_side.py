"""The MLflow half of registry_bench.py: a worker in MLflow's own virtual environment.

    python _mlflow_side.py PLAN_JSON

Populates MLflow's tables with SQLAlchemy Core (same sizes as the modelvault
side), prints ``{"ready": ...}``, then answers one JSON command a line on
stdin, so that the two sides' measurements can alternate:

* ``{"op": "grow", "size": N}``: the big model grown to N versions, then
  statistics refreshed; answers ``{}``;
* ``{"op": "time", "case": NAME, "n": CALLS, "warmup": CALLS}``: seconds of
  each of ``n`` calls of one case (``first_page``, ``middle_page``,
  ``exact``, ``alias``, ``latest``, ``big_exact``, ``big_alias``,
  ``big_latest``), after ``warmup`` untimed calls;
* ``{"op": "quit"}``.
"""

from __future__ import annotations

import json
import logging
import random
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
    settle(engine)
    populate = time.perf_counter() - t0

    print(json.dumps({"ready": True, "version": mlflow.__version__, "populate_s": populate}))
    sys.stdout.flush()
    have = 0
    filt = f"name='{big}'"
    rng = random.Random(7)

    def latest(name: str) -> Any:
        return store.search_model_versions(
            f"name='{name}'", max_results=1, order_by=["version_number DESC"]
        )

    cases: dict[str, Any] = {
        "first_page": lambda: store.search_model_versions(
            filt, max_results=50, order_by=["version_number DESC"]
        ),
        "middle_page": lambda: store.search_model_versions(
            filt,
            max_results=50,
            order_by=["version_number DESC"],
            page_token=SearchUtils.create_page_token(have // 2),
        ),
        "exact": lambda: store.get_model_version(rng.choice(names), str(rng.randint(1, per))),
        "alias": lambda: store.get_model_version_by_alias(rng.choice(names), "prod"),
        "latest": lambda: latest(rng.choice(names)),
        "big_exact": lambda: store.get_model_version(big, str(rng.randint(1, have))),
        "big_alias": lambda: store.get_model_version_by_alias(big, "prod"),
        "big_latest": lambda: latest(big),
    }
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        if cmd["op"] == "grow":
            size = int(cmd["size"])
            versions([(big, have, size)])
            if have == 0:
                bulk(
                    SqlRegisteredModelAlias, [{"name": big, "alias": "prod", "version": size // 2}]
                )
            have = size
            settle(engine)
            reply: dict[str, Any] = {}
        elif cmd["op"] == "time":
            fn = cases[cmd["case"]]
            for _ in range(int(cmd["warmup"])):
                fn()
            samples = []
            for _ in range(int(cmd["n"])):
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
            reply = {"samples": samples}
        else:
            raise SystemExit(f"unknown op {cmd['op']!r}")
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
