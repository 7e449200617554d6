"""modelvault against MLflow: push + register, and load by version, of one model.

Both sides start from the same ``torch.nn.Module`` (built from the same
safetensors weights) and the same example input, and do the same work:

* push: modelvault times ``torch.export.export`` (batch dimension dynamic,
  as MLflow exports it) plus ``Vault.push`` (hashed, fsynced, registered);
  MLflow times ``mlflow.pytorch.log_model(module, registered_model_name=...,
  input_example=x)``, which exports inside, plus an fsync of what it wrote.
  MLflow is timed twice: with its default requirement inference, and with
  ``pip_requirements`` given (no inference), the closer match to what
  modelvault records.
* load: ``Vault.load("bench@1.0.N").module()`` against
  ``mlflow.pytorch.load_model("models:/bench/1")``; both end with a callable
  module whose every weight page is resident (read inside the timing).

Each run starts from a new home on both sides (a new SQLite database,
migrated before the timing, and a new local store); peers alternate run by
run, one unmeasured round first. MLflow runs in its own virtual environment
(``--mlflow-python``, default ``$MLFLOW_PYTHON``, else
``benchmarks/.mlflow-venv``; see ``make bench-setup``) as a worker process
that times itself. Also measured: what ``Vault.load`` adds over the plugin's
own load of the same, already local, container.

    python benchmarks/vault_bench.py --size-gb 0.5 --runs 5
    python benchmarks/vault_bench.py --device cuda --size-gb 2 --runs 5   # no MLflow side
    python benchmarks/vault_bench.py --render benchmarks/results/vault.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
RESULTS = HERE / "results"
WIDTH = 4096

from _machine import Monitor  # noqa: E402
from _runs import (  # noqa: E402
    Case,
    interleaved,
    median,
    resident,
    run_round,
    same_disk_state,
    write_report,
)
from _tables import render  # noqa: E402


def default_mlflow_python() -> str:
    env = os.environ.get("MLFLOW_PYTHON", "")
    if env:
        return env
    venv = HERE / ".mlflow-venv" / "bin" / "python"
    return str(venv) if venv.exists() else ""


class MLflowWorker:
    """The MLflow side, alive for the whole run so that its imports are paid once."""

    def __init__(self, python: str, weights: Path, inputs: Path, depth: int) -> None:
        self.proc = subprocess.Popen(
            [python, str(HERE / "_mlflow_models.py"), *map(str, (weights, inputs, WIDTH, depth))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE,
        )
        self.version = str(self._reply()["mlflow"])
        self.last: dict[str, float] = {}

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the MLflow worker exited ({self.proc.wait()}); see its stderr")
        out: dict[str, Any] = json.loads(line)
        return out

    def call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.call_quit()

    def call_quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write('{"op": "quit"}\n')
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def measure_overhead(vault: Any, spec: str, device: str, sync: Any) -> dict[str, Any]:
    """``Vault.load`` against the plugin's own load of the container it resolves to, alternating.

    The plugin's source is built the way ``Vault.load`` builds it (the
    manifest read and verified once, outside the timing); a vault without
    that step as a method is reported, not guessed at.
    """
    from modelvault.formats.registry import get_plugin

    build_source = getattr(vault, "_source", None)
    if build_source is None:
        return {"skipped": "Vault has no _source(variant): the plugin-only load cannot be built"}
    source = build_source(vault.resolve(spec).variants[0])
    plugin = get_plugin(source.manifest.plugin)

    def plugin_load() -> Any:
        program = plugin.load(source, device=device)
        sync()
        return program

    def vault_load() -> Any:
        program = vault.load(spec, device=device)
        sync()
        return program

    return interleaved(
        [Case("plugin_load", plugin_load), Case("vault_load", vault_load)], runs=9, warmup=1
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-gb", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    ap.add_argument("--mlflow-python", default=default_mlflow_python())
    ap.add_argument("--no-mlflow", action="store_true", help="modelvault alone")
    ap.add_argument("--device", default="cpu", help="MLflow is compared on cpu only")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--render", type=Path, help="print the tables of a results file and exit")
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return 0
    out_path = args.out or RESULTS / ("vault.json" if args.device == "cpu" else "vault_cuda.json")
    with_mlflow = args.device == "cpu" and not args.no_mlflow
    if with_mlflow and not (args.mlflow_python and Path(args.mlflow_python).exists()):
        sys.exit(
            "no MLflow interpreter: run `make bench-setup`, or pass --mlflow-python or --no-mlflow"
        )

    import safetensors.torch
    import torch

    from modelvault import config
    from modelvault.vault import Vault

    device = args.device
    depth = max(1, round(args.size_gb * 1e9 / (WIDTH * WIDTH * 4 + WIDTH * 4)))
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers).eval()
    x = torch.randn(2, WIDTH)
    with torch.no_grad():
        ref = model(x)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    work = Path(tempfile.mkdtemp(prefix="vault-bench-"))
    # Every push starts from the same disk state (MLflow writes the model twice:
    # a temporary copy, then the artifact store), see _runs.same_disk_state.
    settle = same_disk_state(work, 2 * size)
    weights, inputs = work / "weights.safetensors", work / "inputs.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(weights))
    safetensors.torch.save_file({"x": x}, str(inputs))

    def sync() -> None:
        if device != "cpu":
            torch.cuda.synchronize()

    homes: dict[int, Path] = {}
    vaults: dict[int, Vault] = {}
    parts: dict[str, list[float]] = {"export_s": [], "push_s": []}
    ml_parts: dict[str, list[dict[str, float]]] = {}
    rnd = {"mv_push": 0, "mv_load": 0}

    def new_vault() -> None:
        i = rnd["mv_push"]
        home = work / f"mv{i}"
        home.mkdir()
        os.environ["MVAULT_HOME"] = str(home)
        os.environ.pop("MVAULT_REGISTRY", None)
        os.environ.pop("MVAULT_STORE", None)
        config.reload()
        vault = Vault()
        vault.registry  # noqa: B018  database created and migrated outside the timing,
        vault.store  # noqa: B018  as MLflow's create_experiment does on its side
        homes[i], vaults[i] = home, vault
        settle()

    def mv_push() -> None:
        i = rnd["mv_push"]
        t0 = time.perf_counter()
        program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
        t1 = time.perf_counter()
        vaults[i].push(program, "bench", f"1.0.{i}")
        parts["export_s"].append(t1 - t0)
        parts["push_s"].append(time.perf_counter() - t1)
        rnd["mv_push"] += 1

    def mv_load() -> Any:
        i = rnd["mv_load"]
        rnd["mv_load"] += 1
        module = resident(vaults[i].load(f"bench@1.0.{i}", device=device).module())
        sync()
        return module

    def check(module: Any) -> None:
        with torch.no_grad():
            got = module(x.to(device)).cpu()
        torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)

    worker = None
    push_cases = [Case("modelvault_push", mv_push, before=new_vault)]
    load_cases = [Case("modelvault_load", mv_load, after=check)]
    monitor = Monitor()
    with monitor:
        if with_mlflow:
            worker = MLflowWorker(args.mlflow_python, weights, inputs, depth)
            wk = worker
            counter = {"push_inferred": 0, "push_pinned": 0, "load": 0}

            def ml_push(req: str) -> Any:
                def run() -> None:
                    i = counter[f"push_{req}"]
                    counter[f"push_{req}"] += 1
                    wk.last = wk.call(op="push", root=str(work / f"ml-{req}{i}"), requirements=req)

                return run

            def ml_load() -> None:
                i = counter["load"]
                counter["load"] += 1
                wk.last = wk.call(op="load", root=str(work / f"ml-inferred{i}"))
                if wk.last["max_abs_diff"] > 1e-3:
                    raise RuntimeError(f"MLflow's loaded module differs: {wk.last}")

            def keep(key: str) -> Any:
                return lambda _out: ml_parts.setdefault(key, []).append(dict(wk.last))

            push_cases += [
                Case("mlflow_push", ml_push("inferred"), before=settle, after=keep("mlflow_push")),
                Case(
                    "mlflow_push_pinned",
                    ml_push("pinned"),
                    before=settle,
                    after=keep("mlflow_push_pinned"),
                ),
            ]
            load_cases += [Case("mlflow_load", ml_load, after=keep("mlflow_load"))]
        # Pushes of all peers, then loads of all peers, every round: a load
        # reads what its own side pushed in the same round.
        wall: dict[str, list[float]] = {c.name: [] for c in push_cases + load_cases}
        for r in range(args.warmup + args.runs):
            got = {**run_round(push_cases, r), **run_round(load_cases, r)}
            if r >= args.warmup:
                for name, t in got.items():
                    wall[name].append(t)
        # What Vault.load adds over the plugin's own load of the same local
        # container: resolve, choose, read and verify the manifest.
        last = args.warmup + args.runs - 1
        overhead = measure_overhead(vaults[last], f"bench@1.0.{last}", device, sync)
        if worker is not None:
            worker.close()
    for v in vaults.values():
        v.close()
    shutil.rmtree(work, ignore_errors=True)

    # The MLflow worker's own clock (inside its process) is the figure; the
    # round-trip wall time above it includes a pipe and JSON, so it is kept apart.
    measured: dict[str, Any] = {
        "modelvault_push": wall["modelvault_push"],
        "modelvault_export": parts["export_s"][args.warmup :],
        "modelvault_push_only": parts["push_s"][args.warmup :],
        "modelvault_load": wall["modelvault_load"],
    }
    for key, rows in ml_parts.items():
        kept = rows[args.warmup :]
        measured[key] = [r["total_s"] for r in kept]
        if "fsync_s" in kept[0]:
            measured[key + "_fsync"] = [r["fsync_s"] for r in kept]
    report: dict[str, Any] = {
        "model_bytes": size,
        "model": f"{depth} x Linear {WIDTH}x{WIDTH} + ReLU, float32",
        "device": device,
        "runs": args.runs,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "mlflow": worker.version if worker else None,
        "seconds": measured,
        "worker_round_trip_seconds": {k: v for k, v in wall.items() if k.startswith("mlflow")},
        "overhead_seconds": overhead,
    }
    if "skipped" not in overhead:
        report["vault_overhead_ms"] = (
            median(overhead["vault_load"]) - median(overhead["plugin_load"])
        ) * 1000
    write_report(out_path, "vault", report, monitor.record())
    print(render(json.loads(out_path.read_text())))
    print(f"\nJSON: {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
