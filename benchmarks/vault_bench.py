"""modelvault vs MLflow: push+register and load-by-version of one model, same machine.

modelvault: ``Vault.push(exported_program, name, version)`` then
``Vault.load("name@version")`` on SQLite and a local store.
MLflow: ``mlflow.pytorch.log_model(module, registered_model_name=...)`` then
``mlflow.pytorch.load_model("models:/name/version")`` on SQLite and a local
artifact store, run in its own virtual environment (``--mlflow-python``) so its
dependencies cannot disturb ours. Both sides build the same module from the same
safetensors weights. Also measured: what ``Vault.load`` adds over the plugin's
own load of the same, already local, container.

    python benchmarks/vault_bench.py --size-gb 0.5 --runs 3 --mlflow-python /path/to/venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

MODEL_SRC = """
import torch
def build(width, depth):
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers).eval()
"""

MLFLOW_SIDE = r"""
import json, os, sys, time, statistics, tempfile, shutil
import torch, safetensors.torch
exec(compile(sys.argv[1], "model", "exec"))
width, depth, runs, weights = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
import mlflow, mlflow.pytorch
model = build(width, depth)
model.load_state_dict(safetensors.torch.load_file(weights))
x = torch.randn(2, width)
ref = model(x)
push, load = [], []
for i in range(runs):
    root = tempfile.mkdtemp(prefix="mlflow-bench-")
    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.create_experiment(f"bench{i}", artifact_location=f"file://{root}/artifacts")
    t0 = time.perf_counter()
    with mlflow.start_run(experiment_id=exp):
        # MLflow 3 serializes with torch.export ("pt2") by default, which needs an example.
        mlflow.pytorch.log_model(model, name="model", registered_model_name="bench", input_example=x.numpy())
    push.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    loaded = mlflow.pytorch.load_model("models:/bench/1")
    load.append(time.perf_counter() - t0)
    assert torch.equal(loaded(x), ref)
    shutil.rmtree(root, ignore_errors=True)
print(json.dumps({"mlflow": mlflow.__version__, "push": push, "load": load}))
"""


def run_modelvault(
    width: int, depth: int, runs: int, weights: Path, device: str = "cpu"
) -> dict[str, object]:
    import safetensors.torch
    import torch

    ns: dict[str, object] = {}
    exec(compile(MODEL_SRC, "model", "exec"), ns)
    model = ns["build"](width, depth)  # type: ignore[operator]
    model.load_state_dict(safetensors.torch.load_file(str(weights)))
    x = torch.randn(2, width)
    ref = model(x)
    t0 = time.perf_counter()
    program = torch.export.export(model, (x,))
    export_s = time.perf_counter() - t0

    from modelvault import config
    from modelvault.formats.registry import get_plugin
    from modelvault.vault import Vault

    push, load, plugin_load, warm_load = [], [], [], []
    for i in range(runs):
        home = Path(tempfile.mkdtemp(prefix="mvault-bench-"))
        os.environ["MVAULT_HOME"] = str(home)
        os.environ.pop("MVAULT_REGISTRY", None)
        os.environ.pop("MVAULT_STORE", None)
        config.reload()
        vault = Vault()
        t0 = time.perf_counter()
        vault.push(program, "bench", f"1.0.{i}")
        push.append(time.perf_counter() - t0)
        # Load by version through the vault (resolve, choose, fetch, verify, deserialize)...
        t0 = time.perf_counter()
        loaded = vault.load(f"bench@1.0.{i}", device=device)
        if device != "cpu":
            torch.cuda.synchronize()
        load.append(time.perf_counter() - t0)
        torch.testing.assert_close(loaded.module()(x.to(device)).cpu(), ref, rtol=1e-3, atol=1e-3)
        del loaded
        # ...and, alternating, the vault against the plugin alone on the same local
        # container, to isolate what resolving and choosing add.
        info = vault.resolve(f"bench@1.0.{i}")
        source = vault._source(info.variants[0])
        plugin = get_plugin(source.manifest.plugin)
        for _ in range(3):
            t0 = time.perf_counter()
            direct = plugin.load(source, device=device)
            if device != "cpu":
                torch.cuda.synchronize()
            plugin_load.append(time.perf_counter() - t0)
            del direct
            t0 = time.perf_counter()
            again = vault.load(f"bench@1.0.{i}", device=device)
            if device != "cpu":
                torch.cuda.synchronize()
            warm_load.append(time.perf_counter() - t0)
            del again
        vault.close()
        shutil.rmtree(home, ignore_errors=True)
    return {
        "export": export_s,
        "push": push,
        "load": load,
        "plugin_load": plugin_load,
        "warm_load": warm_load,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-gb", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mlflow-python", help="python of a venv with mlflow and torch installed")
    ap.add_argument(
        "--device", default="cpu", help="load onto this device (MLflow is compared on cpu only)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "vault.json")
    args = ap.parse_args()

    import safetensors.torch
    import torch

    width = 4096
    depth = max(1, round(args.size_gb * 1e9 / (width * width * 4 + width * 4)))
    ns: dict[str, object] = {}
    exec(compile(MODEL_SRC, "model", "exec"), ns)
    torch.manual_seed(0)
    model = ns["build"](width, depth)  # type: ignore[operator]
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    work = Path(tempfile.mkdtemp(prefix="vault-bench-"))
    weights = work / "weights.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(weights))
    del model

    mv = run_modelvault(width, depth, args.runs, weights, args.device)
    result: dict[str, object] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "model_bytes": size,
        "device": args.device,
        "runs": args.runs,
        "modelvault": mv,
    }
    if args.mlflow_python and args.device == "cpu":
        proc = subprocess.run(
            [
                args.mlflow_python,
                "-c",
                MLFLOW_SIDE,
                MODEL_SRC,
                str(width),
                str(depth),
                str(args.runs),
                str(weights),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            result["mlflow_error"] = proc.stderr[-2000:]
        else:
            result["mlflow"] = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    rows = [
        ("modelvault push+register", med(mv["push"])),
        ("modelvault load by version (first)", med(mv["load"])),
        ("modelvault load by version (repeated)", med(mv["warm_load"])),
        ("plugin load alone, same container (repeated)", med(mv["plugin_load"])),
    ]
    if "mlflow" in result:
        ml = result["mlflow"]
        rows += [
            ("MLflow log_model(registered_model_name)", med(ml["push"])),  # type: ignore[index]
            ("MLflow load_model(models:/name/version)", med(ml["load"])),
        ]  # type: ignore[index]
        result["ratios"] = {
            "push": med(ml["push"]) / med(mv["push"]),  # type: ignore[index]
            "load": med(ml["load"]) / med(mv["load"]),  # type: ignore[index]
        }
    result["vault_overhead_ms"] = (med(mv["warm_load"]) - med(mv["plugin_load"])) * 1000
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"\nmodel: {size / 1e9:.2f} GB ({depth} x Linear {width}x{width}), median of {args.runs} runs\n"
    )
    print("| operation | seconds |\n| --- | ---: |")
    for name, s in rows:
        print(f"| {name} | {s:.3f} |")
    if "ratios" in result:
        r = result["ratios"]
        print(f"\nMLflow / modelvault: push {r['push']:.1f}x, load {r['load']:.1f}x")  # type: ignore[index]
    print(f"Vault.load overhead over the plugin's own load: {result['vault_overhead_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
