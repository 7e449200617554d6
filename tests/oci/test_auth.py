"""Credentials: docker's config.json, credential helpers, basic auth (htpasswd), bearer tokens."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelvault import Vault, errors
from modelvault.oci.auth import credentials_for, parse_challenge
from modelvault.oci.client import RegistryClient

from .proxy import MisbehavingProxy, run_proxy
from .registry import RunningRegistry


def docker_config(tmp: Path, monkeypatch: pytest.MonkeyPatch, content: dict) -> Path:
    d = tmp / "docker-config"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(content))
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    return d


def auth_entry(user: str, password: str) -> dict:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_from_docker_config(
    auth_registry: RunningRegistry,
    vault: Vault,
    other_vault: Vault,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vault.push(model_dir, "demo", "1.0.0")
    docker_config(
        tmp_path, monkeypatch, {"auths": {auth_registry.host: auth_entry("alice", "s3cret-pass")}}
    )
    vault.push_oci("demo@1.0.0", auth_registry.url("team/demo"))
    got = other_vault.pull_oci(auth_registry.url("team/demo:1.0.0"))
    assert got.created


def test_no_credentials_and_wrong_ones(
    auth_registry: RunningRegistry,
    vault: Vault,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vault.push(model_dir, "demo", "1.0.0")
    docker_config(tmp_path, monkeypatch, {"auths": {}})
    with pytest.raises(errors.OCIAccessError, match="needs credentials") as info:
        vault.push_oci("demo@1.0.0", auth_registry.url("team/demo"))
    assert "docker login" in (info.value.hint or "")
    docker_config(
        tmp_path, monkeypatch, {"auths": {auth_registry.host: auth_entry("alice", "wrong")}}
    )
    with pytest.raises(errors.OCIAccessError, match="refused the credentials of 'alice'"):
        vault.push_oci("demo@1.0.0", auth_registry.url("team/demo"))


def test_credential_helper(
    auth_registry: RunningRegistry,
    vault: Vault,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-mvtest"
    asked = tmp_path / "asked"
    helper.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"open({str(asked)!r}, 'w').write(sys.stdin.read())\n"
        "print(json.dumps({'ServerURL': 'x', 'Username': 'alice', 'Secret': 's3cret-pass'}))\n"
    )
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    docker_config(tmp_path, monkeypatch, {"credHelpers": {auth_registry.host: "mvtest"}})
    vault.push(model_dir, "demo", "1.0.0")
    vault.push_oci("demo@1.0.0", auth_registry.url("team/demo"))
    assert asked.read_text() == auth_registry.host


def test_missing_credential_helper_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docker_config(tmp_path, monkeypatch, {"credsStore": "does-not-exist-anywhere"})
    with pytest.raises(errors.ConfigError, match="docker-credential-does-not-exist-anywhere"):
        credentials_for("registry.example")


def test_challenge_parsing() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }


@pytest.fixture
def token_proxy(registry: RunningRegistry) -> Iterator[MisbehavingProxy]:
    with run_proxy(registry.host) as p:
        p.bearer = ("bob", "tok-pass")
        yield p


def test_bearer_token_flow(
    token_proxy: MisbehavingProxy,
    vault: Vault,
    other_vault: Vault,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vault.push(model_dir, "demo", "1.0.0")
    docker_config(
        tmp_path, monkeypatch, {"auths": {token_proxy.host: auth_entry("bob", "tok-pass")}}
    )
    vault.push_oci("demo@1.0.0", f"oci://{token_proxy.host}/team/demo")
    got = other_vault.pull_oci(f"oci://{token_proxy.host}/team/demo:1.0.0")
    assert got.created
    assert token_proxy.token_requests
    assert all("service=test-registry" in q for q in token_proxy.token_requests)
    assert any(
        "scope=repository%3Ateam%2Fdemo%3Apull%2Cpush" in q for q in token_proxy.token_requests
    )


def test_bearer_token_refused(
    token_proxy: MisbehavingProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    other_vault: Vault,
) -> None:
    docker_config(tmp_path, monkeypatch, {"auths": {token_proxy.host: auth_entry("bob", "nope")}})
    with pytest.raises(errors.OCIAccessError, match="token server"):
        other_vault.pull_oci(
            f"oci://{token_proxy.host}/team/demo:1.0.0",
            client=RegistryClient(token_proxy.host, backoff=0.001),
        )
    assert other_vault.list() == []
