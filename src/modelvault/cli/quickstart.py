"""``mvault quickstart``: build a small model, push it, list it, load it back, check it."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._common import add_json, emit, human_size

QUICKSTART_VERSION = "0.1.0"


def register(sub: Any) -> None:
    p = sub.add_parser("quickstart", help="push, list and load a small model end to end")
    p.add_argument(
        "--name", default="quickstart/mlp", help="model name to use (default quickstart/mlp)"
    )
    p.add_argument("--device", default="cpu", help="device to load onto (default cpu)")
    add_json(p)
    p.set_defaults(func=run_quickstart)


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.json:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def run_quickstart(args: argparse.Namespace) -> int:
    from ..config import settings
    from ._common import open_vault

    s = settings()
    steps: list[dict[str, Any]] = []
    _say(
        args,
        f"modelvault quickstart\n  home     {s.home}\n  registry {s.registry_url}\n"
        f"  store    {s.store_url}\n",
    )
    vault = open_vault(write=True)  # a read-only home stops here with one line
    # One fixed version of a model built from a fixed seed: running quickstart
    # again pushes the same content, which is a no-op.
    version = QUICKSTART_VERSION
    with tempfile.TemporaryDirectory(prefix="mvault-quickstart-") as tmp:
        if importlib.util.find_spec("torch") is not None:
            result = _torch_flow(args, vault, version, Path(tmp), steps)
        else:
            result = _files_flow(args, vault, version, Path(tmp), steps)
    versions = vault.list(args.name, limit=5)
    steps.append({"step": "list", "versions": [v.version for v in versions]})
    _say(args, f"4. listed {args.name}: " + ", ".join(v.version for v in versions))
    emit(
        {"ok": True, "name": args.name, "version": version, "steps": steps, **result},
        as_json=args.json,
        human=lambda _: None,
    )
    _say(
        args,
        "\nAll good. Try next:\n"
        f"  export MVAULT_HOME={s.home}   # this quickstart's registry and store\n"
        f"  mvault ls\n  mvault show {args.name}@latest\n"
        f"  mvault pull {args.name}@latest -o ./model.pt2\n"
        f"  mvault export {args.name}@latest ./model.mvpk && mvault inspect ./model.mvpk\n"
        f"  python -c \"import modelvault; print(modelvault.load('{args.name}@latest'))\"",
    )
    return 0


def _torch_flow(
    args: argparse.Namespace, vault: Any, version: str, tmp: Path, steps: list[dict[str, Any]]
) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
    ).eval()
    example = torch.randn(4, 64)
    program = torch.export.export(model, (example,))
    expected = model(example)
    _say(
        args,
        f"1. built an MLP and exported it with torch.export ({sum(p.numel() for p in model.parameters())} parameters)",
    )
    t0 = time.perf_counter()
    pushed = vault.push(program, args.name, version, aliases=["quickstart"])
    steps.append(
        {
            "step": "push",
            "digest": pushed.digest,
            "bytes": pushed.bytes_uploaded,
            "seconds": round(time.perf_counter() - t0, 4),
        }
    )
    verb = "pushed" if pushed.created else "already there, unchanged:"
    _say(
        args,
        f"2. {verb} {args.name}:{version} as {pushed.format}, {human_size(pushed.bytes_uploaded)} uploaded ({pushed.digest[:23]}...)",
    )
    t0 = time.perf_counter()
    loaded = vault.load(f"{args.name}@{version}", device=args.device)
    seconds = time.perf_counter() - t0
    module = loaded.module() if hasattr(loaded, "module") else loaded
    got = module(example.to(args.device)).cpu()
    if not torch.equal(got, expected):
        raise RuntimeError("the loaded model's output differs from the original's")
    steps.append(
        {"step": "load", "device": args.device, "seconds": round(seconds, 4), "outputs_equal": True}
    )
    _say(
        args,
        f"3. loaded it onto {args.device} in {seconds * 1000:.1f} ms; outputs equal the original's",
    )
    return {"format": pushed.format}


def _files_flow(
    args: argparse.Namespace, vault: Any, version: str, tmp: Path, steps: list[dict[str, Any]]
) -> dict[str, Any]:
    src = tmp / "model"
    src.mkdir()
    (src / "weights.bin").write_bytes(bytes(range(256)) * 64)
    (src / "config.json").write_text('{"layers": 2}\n')
    _say(args, "1. torch is not installed; built a small model directory instead")
    pushed = vault.push(src, args.name, version, aliases=["quickstart"])
    steps.append({"step": "push", "digest": pushed.digest, "bytes": pushed.bytes_uploaded})
    _say(args, f"2. pushed {args.name}:{version} as files ({pushed.digest[:23]}...)")
    out = vault.load(f"{args.name}@{version}", dest=tmp / "out")
    same = (out / "weights.bin").read_bytes() == (src / "weights.bin").read_bytes()
    if not same:
        raise RuntimeError("the loaded files differ from the originals")
    steps.append({"step": "load", "path": str(out), "identical": True})
    _say(args, "3. loaded it back; every byte identical")
    return {"format": "files"}
