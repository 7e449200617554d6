"""Worker processes for the concurrency test (importable, so ``spawn`` can start them)."""

from __future__ import annotations

from typing import Any

from modelvault.errors import VersionExistsError
from modelvault.registry import Registry

from .helpers import variant

UNCONTESTED = 5
CONTESTED = 4


def register_all(url: str, worker: int, barrier: Any, out: Any) -> None:
    """Register this worker's own versions and race every other worker for the contested ones."""
    results: list[tuple[str, str, str]] = []
    try:
        reg = Registry(url, auto_upgrade=False)
        plan: list[tuple[str, str]] = []
        for k in range(CONTESTED):
            plan.append((f"2.0.{k}", f"diff-{k}-w{worker}"))  # contested, different content
            plan.append((f"3.0.{k}", f"same-{k}"))  # contested, identical content
        plan += [(f"1.{worker}.{j}", f"own-{worker}-{j}") for j in range(UNCONTESTED)]
        barrier.wait(timeout=120)
        for version, seed in plan:
            try:
                info, created = reg.register_version(
                    "shared/model", version, [variant(seed)], user=f"w{worker}"
                )
                outcome = "created" if created else "noop"
                results.append((version, outcome, info.variants[0].manifest_digest))
            except VersionExistsError:
                results.append((version, "exists", ""))
        reg.close()
    except Exception as exc:  # reported to the parent, which fails the test
        results.append(("", "error", f"{type(exc).__name__}: {exc}"))
    out.put((worker, results))


def open_and_create(url: str, worker: int, barrier: Any, out: Any) -> None:
    """Open a registry on a database nobody has upgraded yet, at the same time as others."""
    try:
        barrier.wait(timeout=120)
        with Registry(url, auto_upgrade=True) as reg:
            reg.create_model(f"first-open-{worker}")
        out.put((worker, "ok"))
    except Exception as exc:
        out.put((worker, f"{type(exc).__name__}: {exc}"))
