"""OCI registries as a remote: versions as CNCF ModelPack artifacts.

    >>> vault.push_oci("resnet50@prod", "oci://ghcr.io/acme/resnet50")     # doctest: +SKIP
    >>> vault.pull_oci("oci://ghcr.io/acme/resnet50:1.3.0")                 # doctest: +SKIP

:mod:`.client` speaks the distribution API (auth, retries, resumable
parallel transfers), :mod:`.layout` maps a version to ModelPack manifests and
back, :mod:`.transfer` moves versions between a vault and a registry.
"""

from __future__ import annotations

from .reference import Reference, is_oci_reference, parse_reference
from .transfer import OCIPullResult, OCIPushResult, pull_version, push_version

__all__ = [
    "OCIPullResult",
    "OCIPushResult",
    "Reference",
    "is_oci_reference",
    "parse_reference",
    "pull_version",
    "push_version",
]
