"""Builders for registry test data."""

from __future__ import annotations

import hashlib

from modelvault.registry import VariantInput


def digest(seed: str) -> str:
    return "blake3:" + hashlib.sha256(seed.encode()).hexdigest()


def variant(
    seed: str, *, kind: str = "portable", fmt: str = "exported_program", shared: str = "w"
) -> VariantInput:
    """A variant whose manifest digest derives from ``seed``; ``shared`` names a weights blob."""
    m = digest("manifest:" + seed)
    w = digest("weights:" + shared)
    return VariantInput(
        manifest_digest=m,
        format=fmt,
        kind=kind,
        requirements={"device": "cpu"},
        size=1000,
        blobs=[
            (m, 200, "manifest", "application/vnd.modelvault.manifest"),
            (w, 800, "weights", "application/octet-stream"),
        ],
    )
