"""Registry credentials: ``~/.docker/config.json``, credential helpers, token challenges.

Credentials come from where ``docker login``, ``oras login`` and the cloud
CLIs put them: ``$DOCKER_CONFIG/config.json`` (default ``~/.docker``), its
``credHelpers`` (per registry) and ``credsStore`` (default helper), each helper
being a ``docker-credential-<name>`` program spoken to on stdin/stdout, and
plain ``auths`` entries (``auth`` is base64 ``user:password``;
``identitytoken`` is an OAuth2 refresh token).

A registry says how it wants them in its ``WWW-Authenticate`` challenge:
``Basic realm=...`` (send them on every request) or ``Bearer realm=...,
service=...,scope=...`` (trade them, or nothing, for a token at ``realm``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, OCIAccessError

__all__ = ["Credentials", "credentials_for", "parse_challenge"]


@dataclass(frozen=True)
class Credentials:
    """A user name and a secret; ``identity_token`` is an OAuth2 refresh token instead."""

    username: str = ""
    password: str = ""
    identity_token: str | None = None

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def __repr__(self) -> str:  # never print secrets, even in a traceback
        return f"Credentials(username={self.username!r}, password=***)"


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return (Path(base) if base else Path.home() / ".docker") / "config.json"


def _keys(host: str) -> list[str]:
    # docker writes Docker Hub as its v1 URL and others as bare hosts or URLs.
    out = [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]
    if host in ("docker.io", "registry-1.docker.io"):
        out.append("https://index.docker.io/v1/")
    return out


def credentials_for(host: str, config: Path | None = None) -> Credentials | None:
    """The credentials docker's configuration holds for ``host``, or None."""
    path = config or docker_config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", hint="fix or remove the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object")
    helpers = data.get("credHelpers") or {}
    for key in _keys(host):
        if isinstance(helpers, dict) and isinstance(helpers.get(key), str):
            return _from_helper(helpers[key], host)
    auths = data.get("auths") or {}
    entry = None
    if isinstance(auths, dict):
        for key in _keys(host):
            if isinstance(auths.get(key), dict):
                entry = auths[key]
                break
    if entry is not None and (entry.get("auth") or entry.get("identitytoken")):
        return _from_entry(entry, path)
    store = data.get("credsStore")
    if isinstance(store, str) and store:
        return _from_helper(store, host)
    return None


def _from_entry(entry: dict[str, object], path: Path) -> Credentials:
    user = str(entry.get("username") or "")
    password = str(entry.get("password") or "")
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, _, password = base64.b64decode(auth).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise ConfigError(f"an 'auth' entry in {path} is not base64 user:password") from None
    token = entry.get("identitytoken")
    return Credentials(user, password, str(token) if token else None)


def _from_helper(helper: str, host: str) -> Credentials | None:
    if not re.match(r"^[A-Za-z0-9_.-]+$", helper):
        raise ConfigError(f"credential helper name {helper!r} is not valid")
    program = f"docker-credential-{helper}"
    try:
        done = subprocess.run(
            [program, "get"], input=host.encode(), capture_output=True, timeout=60, check=False
        )
    except FileNotFoundError:
        raise ConfigError(
            f"docker's configuration names credential helper {program}, which is not on PATH",
            hint=f"install {program}, or remove it from {docker_config_path()}",
        ) from None
    except subprocess.TimeoutExpired:
        raise OCIAccessError(f"credential helper {program} did not answer in 60 s") from None
    if done.returncode != 0:
        text = (done.stdout or done.stderr).decode(errors="replace").strip()
        if "not found" in text.lower():
            return None  # the helper's documented answer for "no credentials for this host"
        raise OCIAccessError(f"credential helper {program} failed: {text[:200]}")
    try:
        reply = json.loads(done.stdout)
        user, secret = str(reply["Username"]), str(reply["Secret"])
    except (ValueError, KeyError, TypeError):
        raise OCIAccessError(f"credential helper {program} gave no Username/Secret") from None
    # Helpers return the user "<token>" for a refresh token (docker's convention).
    if user == "<token>":
        return Credentials("", "", secret)
    return Credentials(user, secret)


_PARAM_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)=(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ``("bearer", {"realm": ..., ...})``."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _PARAM_RE.finditer(rest)
    }
    return scheme.lower(), params
