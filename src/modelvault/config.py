"""Every ``MVAULT_*`` environment variable, read in one place.

The environment is read once, on first use, into a frozen :class:`Settings`;
``reload()`` re-reads it (tests call it from one autouse fixture after pointing
``MVAULT_HOME`` at a temporary directory).

| variable | meaning | default |
| --- | --- | --- |
| ``MVAULT_HOME`` | root of the embedded default | ``~/.modelvault`` |
| ``MVAULT_REGISTRY`` | SQLAlchemy URL of the registry | ``sqlite:///$MVAULT_HOME/registry.db`` |
| ``MVAULT_STORE`` | blob store URL (``file://``, ``s3://``, ``memory://``) | ``file://$MVAULT_HOME/store`` |
| ``MVAULT_CACHE_DIR`` | local verified cache for remote stores | ``$MVAULT_HOME/cache`` |
| ``MVAULT_CACHE_SIZE`` | cache bound, bytes or with a unit (``50GiB``) | ``50GiB`` |
| ``MVAULT_S3_PART_SIZE`` | S3 multipart part size (>= 5MiB) | ``64MiB`` |
| ``MVAULT_S3_CONCURRENCY`` | parallel S3 part transfers per blob | ``8`` |
| ``MVAULT_S3_CHECKSUM`` | per-part S3 checksum: ``CRC32``, ``SHA256``, ``CRC32C`` (needs botocore[crt]) | ``CRC32`` |
| ``MVAULT_USER`` | name recorded in the events log | the login name |
| ``MVAULT_GC_GRACE`` | seconds an unreferenced blob is kept by ``gc`` | ``86400`` |
| ``MVAULT_TRUST`` | a trust file (TOML): which signers may publish which models; loads refuse what they did not sign | none |
| ``MVAULT_DEBUG`` | ``1`` shows tracebacks in the CLI | off |
| ``MVAULT_NO_PROGRESS`` | ``1`` hides progress bars | off |
"""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

__all__ = ["Settings", "parse_size", "reload", "settings"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, *, what: str = "size") -> int:
    """Parse ``"50GiB"``, ``"1.5 GB"`` or ``"1048576"`` into bytes.

    >>> parse_size("2KiB")
    2048
    """
    m = _SIZE_RE.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise ConfigError(f"{what} {text!r} is not a size; use bytes or a unit like 10GiB")
    return int(float(m.group(1)) * _UNITS[unit])


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


@dataclass(frozen=True)
class Settings:
    """The resolved configuration. Build it with :func:`settings`."""

    home: Path
    registry_url: str
    store_url: str
    cache_dir: Path
    cache_size: int
    user: str
    s3_part_size: int
    s3_concurrency: int
    s3_checksum: str
    gc_grace_seconds: int
    debug: bool
    no_progress: bool
    trust_file: Path | None = None

    @property
    def is_embedded_registry(self) -> bool:
        """True when the registry is the default SQLite file under ``home``."""
        return self.registry_url == f"sqlite:///{self.home / 'registry.db'}"

    @classmethod
    def from_environ(cls) -> Settings:
        env = os.environ
        home = Path(env.get("MVAULT_HOME") or Path.home() / ".modelvault").expanduser()
        try:
            grace = int(env.get("MVAULT_GC_GRACE", "86400"))
        except ValueError:
            raise ConfigError(
                f"MVAULT_GC_GRACE={env['MVAULT_GC_GRACE']!r} is not a whole number of seconds"
            ) from None
        if grace < 0:
            raise ConfigError("MVAULT_GC_GRACE must not be negative")
        part_size = parse_size(env.get("MVAULT_S3_PART_SIZE", "64MiB"), what="MVAULT_S3_PART_SIZE")
        if not 5 * 1024**2 <= part_size <= 5 * 1024**3:
            raise ConfigError(
                f"MVAULT_S3_PART_SIZE={part_size} is outside what S3 accepts (5MiB to 5GiB)"
            )
        try:
            concurrency = int(env.get("MVAULT_S3_CONCURRENCY", "8"))
        except ValueError:
            raise ConfigError(
                f"MVAULT_S3_CONCURRENCY={env['MVAULT_S3_CONCURRENCY']!r} is not a whole number"
            ) from None
        if not 1 <= concurrency <= 256:
            raise ConfigError("MVAULT_S3_CONCURRENCY must be between 1 and 256")
        checksum = env.get("MVAULT_S3_CHECKSUM", "CRC32").strip().upper()
        if checksum not in ("CRC32", "CRC32C", "SHA256", "SHA1", "CRC64NVME"):
            raise ConfigError(
                f"MVAULT_S3_CHECKSUM={checksum!r} is not an S3 checksum; use CRC32, CRC32C or SHA256"
            )
        return cls(
            home=home,
            registry_url=env.get("MVAULT_REGISTRY") or f"sqlite:///{home / 'registry.db'}",
            store_url=env.get("MVAULT_STORE") or f"file://{home / 'store'}",
            cache_dir=Path(env.get("MVAULT_CACHE_DIR") or home / "cache").expanduser(),
            cache_size=parse_size(env.get("MVAULT_CACHE_SIZE", "50GiB"), what="MVAULT_CACHE_SIZE"),
            user=env.get("MVAULT_USER") or _login(),
            s3_part_size=part_size,
            s3_concurrency=concurrency,
            s3_checksum=checksum,
            gc_grace_seconds=grace,
            debug=_flag("MVAULT_DEBUG"),
            no_progress=_flag("MVAULT_NO_PROGRESS"),
            trust_file=Path(env["MVAULT_TRUST"]).expanduser() if env.get("MVAULT_TRUST") else None,
        )


_current: Settings | None = None


def settings() -> Settings:
    """The settings, read from the environment on first call."""
    global _current
    if _current is None:
        _current = Settings.from_environ()
    return _current


def reload() -> Settings:
    """Re-read the environment (tests, and the CLI after parsing global options)."""
    global _current
    _current = None
    return settings()
