"""OCI registries as a remote: versions as CNCF ModelPack artifacts.

    >>> vault.push_oci("resnet50@prod", "oci://ghcr.io/acme/resnet50")     # doctest: +SKIP
    >>> vault.pull_oci("oci://ghcr.io/acme/resnet50:1.3.0")                 # doctest: +SKIP

:mod:`.client` speaks the distribution API (auth, retries, resumable
parallel transfers), :mod:`.layout` maps a version to ModelPack manifests and
back, :mod:`.transfer` moves versions between a vault and a registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .reference import Reference, is_oci_reference, parse_reference

if TYPE_CHECKING:
    from .transfer import OCIPullResult, OCIPushResult, pull_version, push_version

_TRANSFER = ("OCIPullResult", "OCIPushResult", "pull_version", "push_version")


def __getattr__(name: str) -> Any:
    # The transfer machinery (HTTP client, layouts) loads on first use: every push
    # asks is_oci_reference, and a push of a plain file should not pay for the client.
    if name in _TRANSFER:
        from . import transfer

        return getattr(transfer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "OCIPullResult",
    "OCIPushResult",
    "Reference",
    "is_oci_reference",
    "parse_reference",
    "pull_version",
    "push_version",
]
