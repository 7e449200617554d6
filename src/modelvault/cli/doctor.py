"""``mvault doctor``: configuration, optional dependencies, GPU and TensorRT."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any

from ._common import add_json, emit

OPTIONAL = [
    ("torch", "torch", "torch"),
    ("safetensors", "safetensors", "torch"),
    ("torch_tensorrt", "torch_tensorrt", "tensorrt"),
    ("tensorrt", "tensorrt", "tensorrt"),
    ("boto3", "boto3", "s3"),
    ("psycopg", "psycopg", "postgres"),
    ("pymysql", "PyMySQL", "mysql"),
]
CORE = [
    ("sqlalchemy", "SQLAlchemy"),
    ("alembic", "alembic"),
    ("msgpack", "msgpack"),
    ("blake3", "blake3"),
]


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check configuration, dependencies, GPU and TensorRT")
    p.add_argument("--offline", action="store_true", help="do not connect to the registry or store")
    add_json(p)
    p.set_defaults(func=run_doctor)


def _version(dist: str) -> str | None:
    from importlib import metadata  # here, not at import: every command's start-up pays for it

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def mask_url(url: str) -> str:
    """Hide a password in a URL: ``postgresql://u:***@host/db``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    creds, _, host = rest.partition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def _gpu() -> dict[str, Any]:
    if importlib.util.find_spec("torch") is None:
        return {
            "available": False,
            "reason": "torch is not installed (pip install 'modelvault[torch]')",
        }
    try:
        import torch
    except Exception as exc:  # a broken install should not break doctor
        return {"available": False, "reason": f"torch failed to import: {exc}"}
    if not torch.cuda.is_available():
        return {
            "available": False,
            "reason": "torch sees no CUDA device",
            "torch_cuda": torch.version.cuda,
        }
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append(
            {
                "index": i,
                "name": props.name,
                "compute_capability": f"{props.major}.{props.minor}",
                "memory": int(props.total_memory),
            }
        )
    return {"available": True, "cuda": torch.version.cuda, "devices": devices}


def _tensorrt() -> dict[str, Any]:
    if importlib.util.find_spec("torch_tensorrt") is None:
        return {
            "available": False,
            "reason": "torch_tensorrt is not installed (pip install 'modelvault[tensorrt]')",
        }
    try:
        import torch_tensorrt

        info: dict[str, Any] = {"available": True, "torch_tensorrt": torch_tensorrt.__version__}
        try:
            import tensorrt

            info["tensorrt"] = tensorrt.__version__
        except Exception as exc:
            info["tensorrt_error"] = str(exc)
        return info
    except Exception as exc:
        return {"available": False, "reason": f"torch_tensorrt failed to import: {exc}"}


def collect(offline: bool = False) -> dict[str, Any]:
    import platform

    from .._version import __version__
    from ..config import settings

    s = settings()
    report: dict[str, Any] = {
        "modelvault": __version__,
        "python": sys.version.split()[0],
        "platform": f"{platform.system().lower()}_{platform.machine()}",
        "config": {
            "home": str(s.home),
            "registry": mask_url(s.registry_url),
            "store": mask_url(s.store_url),
            "cache_dir": str(s.cache_dir),
            "cache_size": s.cache_size,
            "user": s.user,
        },
        "core": {name: _version(dist) for name, dist in CORE},
        "optional": {
            name: {"version": _version(dist), "extra": extra} for name, dist, extra in OPTIONAL
        },
        "gpu": _gpu(),
        "tensorrt": _tensorrt(),
    }
    if not offline:
        report["registry"] = _check_registry(s.registry_url)
        report["store"] = check_store(s.store_url)
    return report


#: What doctor writes to prove the store takes writes: a blob nothing references.
_PROBE = b"modelvault doctor write probe\n"


def check_store(url: str) -> dict[str, Any]:
    """Open the store, list it, and write (then remove) a probe blob where a push would write.

    Returns ``{"ok": bool, "checks": {"open": ..., "list": ..., "write": ...}, "error": ...}``:
    each check is ``"ok"`` or the reason it failed, so a read-only store shows up as
    ``write`` failing while ``list`` works.
    """
    from ..digest import digest_bytes
    from ..storage import open_store

    checks: dict[str, str] = {}
    out: dict[str, Any] = {"ok": False, "url": mask_url(url), "checks": checks}
    try:
        store = open_store(url)
    except Exception as exc:
        checks["open"] = str(exc)
        out["error"] = f"cannot open the store: {exc}"
        out["hint"] = getattr(exc, "hint", None)
        return out
    checks["open"] = "ok"
    try:
        try:
            next(iter(store.list()), None)
            checks["list"] = "ok"
        except Exception as exc:
            checks["list"] = str(exc)
            out["error"] = f"cannot list the store: {exc}"
            out["hint"] = getattr(exc, "hint", None)
            return out
        digest = digest_bytes(_PROBE)
        try:
            created = store.put_bytes(digest, _PROBE)
            if created:
                store.delete(digest)
            checks["write"] = "ok"
        except Exception as exc:
            checks["write"] = str(exc)
            out["error"] = f"cannot write to the store (pushes will fail): {exc}"
            out["hint"] = getattr(exc, "hint", None)
            return out
    finally:
        store.close()
    out["ok"] = True
    return out


def _check_registry(url: str) -> dict[str, Any]:
    """The registry's schema state; it only reads, so a missing SQLite file stays missing."""
    from ..errors import RegistryNotFoundError

    try:
        from ..registry import current

        return {"ok": True, **current(url)}
    except RegistryNotFoundError as exc:
        return _missing_registry(url, exc)
    except Exception as exc:
        return {"ok": False, "error": str(exc), "hint": getattr(exc, "hint", None)}


def _missing_registry(url: str, exc: Exception) -> dict[str, Any]:
    """A SQLite file not there yet: fine before the first push, if a push could create it."""
    from ..registry._sqlite import sqlite_file, why_not_writable
    from ..registry.db import normalize_url

    path = sqlite_file(normalize_url(url))
    why = None if path is None else why_not_writable(path)
    if why is None:
        hint = "the first push creates it; if you expected models there, check the path"
    else:
        hint = f"a push cannot create it here: {why}"
    return {
        "ok": why is None,
        "status": "missing",
        "path": str(path),
        "error": str(exc),
        "hint": hint,
    }


def run_doctor(args: argparse.Namespace) -> int:
    report = collect(offline=args.offline)

    def human(r: dict[str, Any]) -> None:
        w = sys.stdout.write
        w(f"modelvault {r['modelvault']} on Python {r['python']} ({r['platform']})\n\nconfig\n")
        for k, v in r["config"].items():
            w(f"  {k:11} {v}\n")
        w("\ncore\n")
        for k, v in r["core"].items():
            w(f"  {k:15} {v}\n")
        w("\noptional\n")
        for k, v in r["optional"].items():
            w(
                f"  {k:15} {v['version'] or 'not installed  (pip install ' + repr('modelvault[' + v['extra'] + ']') + ')'}\n"
            )
        g = r["gpu"]
        w("\ngpu\n")
        if g["available"]:
            for d in g["devices"]:
                w(
                    f"  cuda:{d['index']}  {d['name']}  sm_{d['compute_capability'].replace('.', '')}\n"
                )
        else:
            w(f"  none: {g['reason']}\n")
        t = r["tensorrt"]
        w("\ntensorrt\n")
        w(
            f"  {'torch_tensorrt ' + t['torch_tensorrt'] if t['available'] else 'none: ' + t['reason']}\n"
        )
        if "registry" in r:
            reg = r["registry"]
            w("\nregistry\n")
            if reg.get("status") == "missing":
                w(f"  missing: {reg['error']}\n  hint: {reg['hint']}\n")
            elif reg["ok"]:
                w(f"  {reg.get('status', 'ok')}\n")
            else:
                w(f"  error: {reg['error']}\n")
        if "store" in r:
            st = r["store"]
            w("\nstore\n")
            for name, result in st["checks"].items():
                w(f"  {name:6} {result}\n")
            if st.get("hint"):
                w(f"  hint: {st['hint']}\n")

    emit(report, as_json=args.json, human=human)
    ok = report.get("registry", {"ok": True})["ok"] and report.get("store", {"ok": True})["ok"]
    return 0 if ok else 6
