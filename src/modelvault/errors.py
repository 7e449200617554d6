"""modelvault's exceptions: one tree, one root.

Every error modelvault raises on purpose derives from :class:`ModelVaultError`.
Foreign errors (botocore, SQLAlchemy, torch, OS) are translated where they
enter, ``raise ... from exc``, to the most specific class below. Many classes
are also built-in exceptions, so ``except LookupError`` or ``except ValueError``
keep working for callers that do not know modelvault.

    ModelVaultError
    ├── ConfigError (ValueError)
    ├── MissingDependencyError (ImportError)
    ├── InvalidArgumentError (ValueError)
    │   ├── InvalidNameError
    │   ├── InvalidVersionError
    │   ├── InvalidSpecError
    │   ├── InvalidDeviceError
    │   └── InvalidReferenceError
    ├── NotFoundError (LookupError)
    │   ├── ModelNotFoundError
    │   ├── VersionNotFoundError
    │   ├── AliasNotFoundError
    │   ├── VariantNotFoundError
    │   ├── BlobNotFoundError
    │   ├── PluginNotFoundError
    │   ├── StoreNotFoundError
    │   ├── ArtifactNotFoundError
    │   └── RegistryNotFoundError
    ├── ConflictError
    │   ├── ModelExistsError
    │   ├── VersionExistsError
    │   ├── VariantExistsError
    │   └── OutputExistsError (FileExistsError)
    ├── FormatError (ValueError)
    │   ├── TruncatedError
    │   ├── CorruptError
    │   ├── ManifestError
    │   ├── UnsupportedVersionError
    │   ├── UnsupportedDigestError
    │   ├── UnsafePathError
    │   ├── PayloadMismatchError
    │   ├── UnknownFormatError
    │   ├── EngineInfoError
    │   └── ArtifactError
    ├── IntegrityError (ValueError)
    ├── SignatureError (ValueError)
    │   └── UntrustedError
    ├── RegistryError
    │   ├── RegistryUnavailableError (ConnectionError)
    │   ├── RegistryAccessError (PermissionError)
    │   │   └── RegistryReadOnlyError
    │   ├── SchemaBehindError
    │   ├── SchemaAheadError
    │   └── SchemaDriftError
    ├── StorageError (OSError)
    │   ├── StoreUnavailableError (ConnectionError)
    │   │   └── OCIUnavailableError
    │   ├── StoreAccessError (PermissionError)
    │   │   └── OCIAccessError
    │   └── StorageFullError
    ├── IncompatibleError
    │   └── NoCompatibleVariantError
    └── DeviceError (RuntimeError)
        ├── DeviceUnavailableError
        └── DeviceOutOfMemoryError (MemoryError)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "AliasNotFoundError",
    "ArtifactError",
    "ArtifactNotFoundError",
    "BlobNotFoundError",
    "ConfigError",
    "ConflictError",
    "CorruptError",
    "DeviceError",
    "DeviceOutOfMemoryError",
    "DeviceUnavailableError",
    "EngineInfoError",
    "FormatError",
    "IncompatibleError",
    "IntegrityError",
    "InvalidArgumentError",
    "InvalidDeviceError",
    "InvalidNameError",
    "InvalidReferenceError",
    "InvalidSpecError",
    "InvalidVersionError",
    "ManifestError",
    "MissingDependencyError",
    "ModelExistsError",
    "ModelNotFoundError",
    "ModelVaultError",
    "NoCompatibleVariantError",
    "NotFoundError",
    "OCIAccessError",
    "OCIUnavailableError",
    "OutputExistsError",
    "PayloadMismatchError",
    "PluginNotFoundError",
    "RegistryAccessError",
    "RegistryError",
    "RegistryNotFoundError",
    "RegistryReadOnlyError",
    "RegistryUnavailableError",
    "SchemaAheadError",
    "SchemaBehindError",
    "SchemaDriftError",
    "SignatureError",
    "StorageError",
    "StorageFullError",
    "StoreAccessError",
    "StoreNotFoundError",
    "StoreUnavailableError",
    "TruncatedError",
    "UnknownFormatError",
    "UnsafePathError",
    "UnsupportedDigestError",
    "UnsupportedVersionError",
    "UntrustedError",
    "VariantExistsError",
    "VariantNotFoundError",
    "VersionExistsError",
    "VersionNotFoundError",
]


class ModelVaultError(Exception):
    """Root of every error modelvault raises on purpose."""

    #: A short hint for the user: what to do next. The CLI prints it after the message.
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class ConfigError(ModelVaultError, ValueError):
    """A setting (environment variable, URL, option) has a value modelvault cannot use."""


class MissingDependencyError(ModelVaultError, ImportError):
    """An optional dependency is needed for this operation but is not installed."""

    def __init__(self, package: str, extra: str | None, purpose: str) -> None:
        self.package = package
        self.extra = extra
        install = f"pip install 'modelvault[{extra}]'" if extra else f"pip install {package}"
        super().__init__(
            f"{purpose} needs {package}, which is not installed", hint=f"run: {install}"
        )


class InvalidArgumentError(ModelVaultError, ValueError):
    """An argument is malformed."""


class InvalidNameError(InvalidArgumentError):
    """A model, alias or label name breaks the naming rules."""


class InvalidVersionError(InvalidArgumentError):
    """A version string is not a semantic version."""


class InvalidSpecError(InvalidArgumentError):
    """A version spec (range, alias, digest) cannot be parsed."""


class InvalidDeviceError(InvalidArgumentError):
    """A device string names no device that exists."""


class InvalidReferenceError(InvalidArgumentError):
    """An OCI reference (``oci://registry/repository:tag``) breaks the distribution spec's grammar."""


class NotFoundError(ModelVaultError, LookupError):
    """Something asked for does not exist."""


class ModelNotFoundError(NotFoundError):
    """No model has this name."""


class VersionNotFoundError(NotFoundError):
    """No version of the model matches the spec."""


class AliasNotFoundError(NotFoundError):
    """The model has no alias of this name."""


class VariantNotFoundError(NotFoundError):
    """The version has no variant of this kind or digest."""


class BlobNotFoundError(NotFoundError):
    """A blob is missing from the store."""

    def __init__(self, digest: str, where: str, *, hint: str | None = None) -> None:
        self.digest = digest
        self.where = where
        super().__init__(f"blob {digest} not found in {where}", hint=hint)


class PluginNotFoundError(NotFoundError):
    """No format plugin or store back end is registered under this name."""


class StoreNotFoundError(NotFoundError):
    """The store location (bucket, directory) does not exist."""


class ArtifactNotFoundError(NotFoundError):
    """An OCI registry has no manifest or blob under this reference or digest."""


class RegistryNotFoundError(NotFoundError):
    """A command that only reads names a SQLite registry file that does not exist."""


class ConflictError(ModelVaultError):
    """The operation contradicts what the registry already holds."""


class ModelExistsError(ConflictError):
    """A model of this name already exists."""


class OutputExistsError(ConflictError, FileExistsError):
    """The path a pull or export would write already exists, and replacing it was not asked for."""

    def __init__(self, path: object) -> None:
        self.path = path
        super().__init__(
            f"{path} already exists",
            hint="pass --force to replace it (overwrite=True from Python), or choose another path",
        )


class VersionExistsError(ConflictError):
    """The version exists with different content; versions are immutable."""


class VariantExistsError(ConflictError):
    """The version already has this variant."""


class FormatError(ModelVaultError, ValueError):
    """A container, bundle or manifest is malformed."""


class TruncatedError(FormatError):
    """The data ends before the format says it should."""


class CorruptError(FormatError):
    """A checksum over a structural part (preamble, index) does not match."""


class ManifestError(FormatError):
    """A manifest breaks the schema: wrong types, missing fields, bad extents."""


class UnsupportedVersionError(FormatError):
    """The container was written by a newer, incompatible format version."""


class UnsupportedDigestError(FormatError):
    """A digest names an algorithm this modelvault does not know."""


class UnsafePathError(FormatError):
    """A path inside a container would escape the target directory."""


class PayloadMismatchError(FormatError):
    """The payload disagrees with its description (weights vs graph, wrong kind of file)."""


class UnknownFormatError(FormatError):
    """The kind of a file or object cannot be detected; name the format explicitly."""


class EngineInfoError(FormatError):
    """A TensorRT engine's serialized info (fields, device, metadata, plan) is malformed or contradictory."""


class ArtifactError(FormatError):
    """An OCI artifact is not a model artifact modelvault can read (type, layout, size)."""


class IntegrityError(ModelVaultError, ValueError):
    """Bytes do not match their digest: the data is damaged or was tampered with."""

    def __init__(
        self, message: str, *, expected: str, actual: str, where: str = "", hint: str | None = None
    ) -> None:
        self.expected = expected
        self.actual = actual
        self.where = where
        super().__init__(message, hint=hint)


class SignatureError(ModelVaultError, ValueError):
    """A signature, key, certificate or trust file is malformed, invalid or covers other content."""


class UntrustedError(SignatureError):
    """A load policy is in force and no valid signature from an allowed signer covers the version."""


class RegistryError(ModelVaultError):
    """The registry database failed or refused an operation."""


class LeaseLapsedError(RegistryError):
    """A push's lease on its blobs expired before its version was registered."""


class RegistryUnavailableError(RegistryError, ConnectionError):
    """The registry database cannot be reached."""


class RegistryAccessError(RegistryError, PermissionError):
    """The database user may not do this (a reader role pushing, a publisher deleting)."""


class RegistryReadOnlyError(RegistryAccessError):
    """A change to a registry this process can only read (a read-only home, or opened read-only)."""


class SchemaBehindError(RegistryError):
    """The database schema is older than this modelvault; it needs an upgrade."""


class SchemaAheadError(RegistryError):
    """The database schema is newer than this modelvault; upgrade modelvault instead."""


class SchemaDriftError(RegistryError):
    """The database's tables differ from what its schema revision says (changed by hand)."""


class StorageError(ModelVaultError, OSError):
    """A blob store failed an operation."""


class StoreUnavailableError(StorageError, ConnectionError):
    """The store cannot be reached (endpoint down, network)."""


class StoreAccessError(StorageError, PermissionError):
    """The store refused the credentials or the operation; ``permission`` names what was missing."""

    #: The permission the refused operation needs (``s3:PutObject``), when the store said so.
    permission: str | None = None

    def __init__(
        self, message: str, *, hint: str | None = None, permission: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        if permission is not None:
            self.permission = permission


class OCIUnavailableError(StoreUnavailableError):
    """An OCI registry cannot be reached, is rate limiting, or fails with a server error."""


class OCIAccessError(StoreAccessError):
    """An OCI registry refused the credentials (401) or the operation (403)."""


class StorageFullError(StorageError):
    """No space left where the bytes were being written."""


class IncompatibleError(ModelVaultError):
    """The artifact cannot run on this machine."""


class NoCompatibleVariantError(IncompatibleError):
    """No variant of the version fits this machine; ``reasons`` says why, per variant."""

    def __init__(
        self, message: str, reasons: Sequence[tuple[str, str]], *, hint: str | None = None
    ):
        self.reasons = list(reasons)
        lines = "; ".join(f"{name}: {why}" for name, why in self.reasons)
        super().__init__(f"{message} ({lines})" if lines else message, hint=hint)


class DeviceError(ModelVaultError, RuntimeError):
    """The target device cannot take the model."""


class DeviceUnavailableError(DeviceError):
    """The requested device does not exist on this machine."""


class DeviceOutOfMemoryError(DeviceError, MemoryError):
    """The model does not fit in the device's free memory."""


def describe(exc: BaseException) -> dict[str, Any]:
    """A JSON-ready description of an error, for ``--json`` output."""
    out: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
    hint = getattr(exc, "hint", None)
    if hint:
        out["hint"] = hint
    return out
