"""The MLflow half of vault_bench.py: a worker in MLflow's own virtual environment.

    python _mlflow_models.py WEIGHTS.safetensors INPUTS.safetensors WIDTH DEPTH

Builds the same module as the modelvault side from the same weights, prints
``{"ready": ...}``, then answers one JSON command a line on stdin, timing
each operation inside this process (no pipe or start-up time counted):

* ``{"op": "push", "root": DIR, "requirements": "inferred" | "pinned"}``:
  a new SQLite tracking/registry database and artifact store under DIR
  (created, and migrated, outside the timing, as modelvault's are), then,
  timed: ``log_model(module, registered_model_name="bench",
  input_example=x)`` (MLflow exports the module with torch.export inside)
  and an fsync of every artifact file and directory it wrote, the durability
  modelvault's store gives. ``pinned`` passes ``pip_requirements`` so MLflow
  skips inferring them (it otherwise loads the model in a subprocess).
* ``{"op": "load", "root": DIR}``: ``load_model("models:/bench/1")`` (a
  callable module) with every weight page made resident, timed; then its
  output is checked against the original module's, untimed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

logging.disable(logging.WARNING)
warnings.filterwarnings("ignore")

import mlflow  # noqa: E402
import mlflow.pytorch  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402
from _runs import fsync_tree, resident  # noqa: E402  (benchmarks/ is this script's path)


def build(width: int, depth: int) -> torch.nn.Module:
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers).eval()


def main() -> None:
    weights, inputs, width, depth = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    model = build(width, depth)
    model.load_state_dict(safetensors.torch.load_file(weights))
    x = safetensors.torch.load_file(inputs)["x"]
    with torch.no_grad():
        ref = model(x)
    print(json.dumps({"ready": True, "mlflow": mlflow.__version__}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        root = Path(cmd["root"])
        uri = f"sqlite:///{root}/mlflow.db"
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        if cmd["op"] == "push":
            root.mkdir(parents=True, exist_ok=True)
            exp = mlflow.create_experiment("bench", artifact_location=f"file://{root}/artifacts")
            extra = {}
            if cmd["requirements"] == "pinned":
                extra["pip_requirements"] = [f"torch=={torch.__version__.split('+')[0]}"]
            os.sync()  # no writer pays for another's writeback
            t0 = time.perf_counter()
            with mlflow.start_run(experiment_id=exp):
                mlflow.pytorch.log_model(
                    model,
                    name="model",
                    registered_model_name="bench",
                    input_example=x.numpy(),
                    **extra,
                )
            t1 = time.perf_counter()
            fsync_tree(root / "artifacts")
            t2 = time.perf_counter()
            out = {"total_s": t2 - t0, "log_model_s": t1 - t0, "fsync_s": t2 - t1}
        elif cmd["op"] == "load":
            t0 = time.perf_counter()
            loaded = resident(mlflow.pytorch.load_model("models:/bench/1"))
            t1 = time.perf_counter()
            with torch.no_grad():
                diff = float((loaded(x) - ref).abs().max())
            del loaded
            out = {"total_s": t1 - t0, "max_abs_diff": diff}
        else:
            raise SystemExit(f"unknown op {cmd['op']!r}")
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
