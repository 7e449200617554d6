"""Push to and pull from a real distribution registry; oras reads what we wrote and the reverse."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from modelvault import Vault
from modelvault.oci.client import RegistryClient
from modelvault.oci.layout import ACCEPT, ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, INDEX_MEDIA_TYPE

from .registry import RunningRegistry

# modelpack/model-spec schema/config-schema.json at d78bf3231b4f26196c4a955e1007ccc47e19a77c
SCHEMA = Path(__file__).with_name("modelpack-config-schema.json")


def _manifest(reg: RunningRegistry, repo: str, target: str) -> dict:
    data, _ = RegistryClient(reg.host).get_manifest(repo, target, ACCEPT)
    return json.loads(data)


def _blob(reg: RunningRegistry, repo: str, digest: str) -> bytes:
    return RegistryClient(reg.host).open_blob(repo, digest).read()


def test_files_round_trip_is_lossless_and_a_modelpack_artifact(
    registry: RunningRegistry, vault: Vault, other_vault: Vault, model_dir: Path, tmp_path: Path
) -> None:
    import jsonschema

    pushed = vault.push(model_dir, "demo", "1.2.0", description="a demo")
    r = vault.push_oci("demo@1.2.0", registry.url("team/demo"))
    assert r.reference.endswith("team/demo:1.2.0")
    assert r.blobs_uploaded >= 3

    m = _manifest(registry, "team/demo", "1.2.0")
    assert m["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert m["artifactType"] == ARTIFACT_TYPE
    assert m["config"]["mediaType"] == CONFIG_MEDIA_TYPE
    config = json.loads(_blob(registry, "team/demo", m["config"]["digest"]))
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))
    assert config["descriptor"] == {"name": "demo", "version": "1.2.0", "description": "a demo"}
    assert config["modelfs"]["diffIds"] == [layer["digest"] for layer in m["layers"]]
    for layer in m["layers"]:  # every layer's sha256 is the sha256 of its bytes
        data = _blob(registry, "team/demo", layer["digest"])
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
        assert layer["annotations"]["org.cncf.model.filepath"]
    assert m["layers"][-1]["mediaType"] == "application/vnd.modelvault.manifest.v1+msgpack"

    got = other_vault.pull_oci(registry.url("team/demo:1.2.0"))
    assert (got.name, got.version, got.created) == ("demo", "1.2.0", True)
    assert got.variants == [pushed.digest]  # the same manifest, byte for byte
    out = other_vault.pull("demo@1.2.0", tmp_path / "out")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {
        p.name: p.read_bytes() for p in model_dir.iterdir()
    }
    again = other_vault.pull_oci(registry.url("team/demo:1.2.0"))
    assert not again.created and again.blobs_downloaded == 0


def test_torchscript_comes_back_and_runs_the_same(
    registry: RunningRegistry, vault: Vault, other_vault: Vault
) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()))
    x = torch.randn(2, 8)
    vault.push(module, "tiny", "0.1.0", example_inputs=(x,))
    vault.push_oci("tiny@0.1.0", registry.url("tiny"))
    other_vault.pull_oci(registry.url("tiny:0.1.0"))
    back = other_vault.load("tiny@0.1.0")
    assert torch.equal(back(x), module(x))
    # The raw weight layers are readable with the tensor table alone.
    m = _manifest(registry, "tiny", "0.1.0")
    table_layer = next(
        x
        for x in m["layers"]
        if x["annotations"]["org.cncf.model.filepath"] == "modelvault/tensors.json"
    )
    table = json.loads(_blob(registry, "tiny", table_layer["digest"]))
    # One weight layer per stored blob (format 1.1 stores large tensors apart): every
    # tensor of the model is found, by name, in exactly one layer, with its bytes.
    found = {}
    for path, tensors in table.items():
        layer = next(x for x in m["layers"] if x["annotations"]["org.cncf.model.filepath"] == path)
        raw = _blob(registry, "tiny", layer["digest"])
        for name, w in tensors.items():
            assert name not in found
            found[name] = (raw, w)
    assert set(module.state_dict()) <= {n.removeprefix("state_dict/") for n in found} | set(found)
    raw, w = next(v for k, v in found.items() if k.endswith("0.weight"))
    got = torch.frombuffer(
        bytearray(raw[w["offset"] : w["offset"] + w["nbytes"]]), dtype=torch.float32
    )
    assert torch.equal(got.reshape(w["shape"]), module.state_dict()["0.weight"])


def test_dedup_across_tags_and_mount_across_repositories(
    registry: RunningRegistry, vault: Vault, model_dir: Path
) -> None:
    vault.push(model_dir, "demo", "1.0.0")
    first = vault.push_oci("demo@1.0.0", registry.url("team/demo:a"))
    second = vault.push_oci("demo@1.0.0", registry.url("team/demo:b"))
    assert second.blobs_uploaded == 0 and second.bytes_uploaded == 0
    assert second.blobs_skipped == first.blobs_uploaded
    assert second.digest == first.digest
    other = vault.push_oci("demo@1.0.0", registry.url("elsewhere/demo:a"))
    assert other.blobs_uploaded == 0
    assert other.blobs_mounted == first.blobs_uploaded  # linked by the registry, not re-sent


def test_several_variants_become_an_index(
    registry: RunningRegistry, vault: Vault, other_vault: Vault
) -> None:
    torch = pytest.importorskip("torch")
    lin = torch.nn.Linear(3, 2).eval()
    x = torch.randn(1, 3)
    vault.push(torch.jit.trace(lin, (x,)), "multi", "2.0.0", example_inputs=(x,))
    vault.push(torch.export.export(lin, (x,)), "multi", "2.0.0", variant=True)
    r = vault.push_oci("multi@2.0.0", registry.url("multi"))
    assert r.media_type == INDEX_MEDIA_TYPE and r.variants == 2
    index = _manifest(registry, "multi", "2.0.0")
    assert index["artifactType"] == ARTIFACT_TYPE
    formats = sorted(e["annotations"]["org.modelvault.format"] for e in index["manifests"])
    assert formats == ["exported_program", "torchscript"]
    for e in index["manifests"]:
        assert json.loads(e["annotations"]["org.modelvault.requirements"])["device"]
    got = other_vault.pull_oci(registry.url("multi:2.0.0"))
    want = sorted(v.manifest_digest for v in vault.resolve("multi@2.0.0").variants)
    assert sorted(got.variants) == want
    assert torch.allclose(
        other_vault.load("multi@2.0.0", variant="exported_program").module()(x), lin(x)
    )


def test_oras_reads_what_modelvault_pushed(
    registry: RunningRegistry, vault: Vault, model_dir: Path, tmp_path: Path
) -> None:
    import oras.client

    vault.push(model_dir, "demo", "1.0.0")
    vault.push_oci("demo@1.0.0", registry.url("team/demo"))
    out = tmp_path / "oras-out"
    files = oras.client.OrasClient(insecure=True).pull(
        target=f"{registry.host}/team/demo:1.0.0", outdir=str(out)
    )
    contents = sorted(Path(f).read_bytes() for f in files)
    for p in model_dir.iterdir():
        assert p.read_bytes() in contents


def test_modelvault_imports_what_oras_pushed(
    registry: RunningRegistry, vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    import oras.client
    from safetensors.torch import save_file

    tensors = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(4)}
    work = tmp_path / "oras-in"
    work.mkdir()
    save_file(tensors, str(work / "model.safetensors"))
    (work / "config.json").write_text(
        json.dumps(
            {
                "descriptor": {"name": "from-oras", "version": "3.1.0"},
                "config": {"format": "safetensors"},
                "modelfs": {"type": "layers", "diffIds": ["sha256:" + "0" * 64]},
            }
        )
    )
    monkeypatch.chdir(work)
    oras.client.OrasClient(insecure=True).push(
        target=f"{registry.host}/foreign/model:v1",
        files=["model.safetensors:application/vnd.cncf.model.weight.v1.raw"],
        manifest_config=f"config.json:{CONFIG_MEDIA_TYPE}",
    )
    got = vault.pull_oci(registry.url("foreign/model:v1"))
    assert (got.name, got.version) == ("from-oras", "3.1.0")
    loaded = vault.load("from-oras@3.1.0")
    assert set(loaded) == {"w", "b"}
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_large_blobs_go_in_resumable_chunks_and_parallel_parts(
    registry: RunningRegistry,
    vault: Vault,
    other_vault: Vault,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import modelvault.oci.client as client_mod
    import modelvault.oci.transfer as transfer_mod

    # Small chunks so a 3 MiB blob takes the chunked and ranged paths.
    monkeypatch.setattr(client_mod, "CHUNK", 256 * 1024)
    monkeypatch.setattr(transfer_mod, "CHUNK", 256 * 1024)
    d = tmp_path / "big"
    d.mkdir()
    (d / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    vault.push(d, "big", "1.0.0")
    vault.push_oci("big@1.0.0", registry.url("big"))
    other_vault.pull_oci(registry.url("big:1.0.0"))
    out = other_vault.pull("big@1.0.0", tmp_path / "out")
    assert (out / "weights.bin").read_bytes() == (d / "weights.bin").read_bytes()


def test_pull_into_a_store_without_a_staging_directory(
    registry: RunningRegistry,
    vault: Vault,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A remote store (here the memory store) has no staging directory: layers are
    fetched into the cache directory and stored by put_file, hashed once more."""
    import modelvault.oci.client as client_mod
    import modelvault.oci.transfer as transfer_mod
    from modelvault.config import settings

    monkeypatch.setattr(client_mod, "CHUNK", 256 * 1024)
    monkeypatch.setattr(transfer_mod, "CHUNK", 256 * 1024)
    d = tmp_path / "big"
    d.mkdir()
    (d / "weights.bin").write_bytes(os.urandom(1024 * 1024 + 3))
    vault.push(d, "big", "1.0.0")
    vault.push_oci("big@1.0.0", registry.url("big"))
    remote = Vault(registry=f"sqlite:///{tmp_path / 'm.db'}", store="memory://oci-pull-test")
    try:
        assert remote.store.staging_dir() is None
        got = remote.pull_oci(registry.url("big:1.0.0"))
        assert got.created and got.bytes_downloaded > 1024 * 1024
        out = remote.pull("big@1.0.0", tmp_path / "out")
        assert (out / "weights.bin").read_bytes() == (d / "weights.bin").read_bytes()
        assert [
            p.name for p in settings().cache_dir.iterdir() if p.name.startswith(".oci-pull-")
        ] == []
    finally:
        remote.close()


def test_pull_hashing_after_the_download_gives_the_same_result(
    registry: RunningRegistry,
    vault: Vault,
    other_vault: Vault,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The benchmark's reference mode: the hashes read the file once it is complete."""
    import modelvault.oci.client as client_mod
    import modelvault.oci.download as download_mod
    import modelvault.oci.transfer as transfer_mod

    monkeypatch.setattr(client_mod, "CHUNK", 256 * 1024)
    monkeypatch.setattr(transfer_mod, "CHUNK", 256 * 1024)
    monkeypatch.setattr(download_mod, "FOLLOW", False)
    d = tmp_path / "big"
    d.mkdir()
    (d / "weights.bin").write_bytes(os.urandom(2 * 1024 * 1024 + 11))
    (d / "empty.bin").write_bytes(b"")
    vault.push(d, "big", "1.0.0")
    vault.push_oci("big@1.0.0", registry.url("big"))
    assert other_vault.pull_oci(registry.url("big:1.0.0")).created
    out = other_vault.pull("big@1.0.0", tmp_path / "out")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {
        p.name: p.read_bytes() for p in d.iterdir()
    }
