"""KServe's storage initializer: the ClusterStorageContainer of docs/SERVING.md, run as KServe runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelvault import Vault

DOC = Path(__file__).resolve().parents[2] / "docs" / "SERVING.md"


def storage_container() -> dict[str, Any]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    docs = [yaml.safe_load(b) for b in blocks]
    (csc,) = [d for d in docs if d.get("kind") == "ClusterStorageContainer"]
    return dict(csc)


def run_initializer(
    uri: str, target: Path, env_over: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    csc = storage_container()
    container = csc["spec"]["container"]
    assert container["name"] == "storage-initializer"  # KServe finds the init container by name
    assert {"prefix": "mvault://"} in csc["spec"]["supportedUriFormats"]
    command = list(container["command"])
    assert command[0] == "mvault"
    # KServe appends two arguments: the storageUri and the model directory.
    argv = [sys.executable, "-m", "modelvault.cli.main", *command[1:], uri, str(target)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MVAULT_")}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
    env.update(env_over)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src")
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_initializer_writes_the_model_into_mnt_models(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    lin = torch.nn.Linear(3, 2).eval()
    x = torch.randn(1, 3)
    registry, store = f"sqlite:///{tmp_path / 'r.db'}", f"file://{tmp_path / 'store'}"
    with Vault(registry=registry, store=store) as v:
        v.push(torch.export.export(lin, (x,)), "served", "1.0.0", aliases=["prod"])
    target = tmp_path / "mnt" / "models"
    target.mkdir(parents=True)  # KServe mounts an existing emptyDir there
    env = {
        "MVAULT_REGISTRY": registry,
        "MVAULT_STORE": store,
        "MVAULT_CACHE_DIR": str(tmp_path / "cache"),
    }
    done = run_initializer("mvault://served@prod", target, env)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in target.iterdir()] == ["model.pt2"]
    ep = torch.export.load(str(target / "model.pt2"))
    assert torch.allclose(ep.module()(x), lin(x))


def test_initializer_with_a_directory_form_and_a_missing_version(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "tokenizer.json").write_text("{}")
    (src / "weights.bin").write_bytes(b"\x01" * 1000)
    registry, store = f"sqlite:///{tmp_path / 'r.db'}", f"file://{tmp_path / 'store'}"
    with Vault(registry=registry, store=store) as v:
        v.push(src, "files-model", "0.2.0")
    target = tmp_path / "mnt" / "models"
    target.mkdir(parents=True)
    env = {"MVAULT_REGISTRY": registry, "MVAULT_STORE": store}
    done = run_initializer("mvault://files-model@0.2.0", target, env)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in target.iterdir()) == ["tokenizer.json", "weights.bin"]
    assert (target / "weights.bin").read_bytes() == b"\x01" * 1000
    other = tmp_path / "other"
    other.mkdir()
    missing = run_initializer("mvault://files-model@9.9.9", other, env)
    assert missing.returncode == 3
    assert missing.stderr.startswith("mvault: error: ") and len(missing.stderr.splitlines()) <= 2
    assert list(other.iterdir()) == []
