"""What changed between two versions: ``mvault diff A B`` and ``Vault.diff``.

Variants, signature, labels and metadata are compared from the registry and
the (verified) manifests. Tensors are compared by name: added, removed, or
changed in dtype, shape or bytes. Bytes are compared without reading a blob
whenever the manifests already say: the same blob digest at the same offset
is the same bytes, and two standalone tensor blobs (format 1.1 stores every
large tensor as its own blob) with different digests are different bytes.
Only the remaining tensors (small ones in packs at different places, or
tensors of a format 1.0 section) are read, verified, and hashed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .digest import digest_bytes

__all__ = ["diff_versions"]


def _variant(info: Any, want: str | None) -> Any:
    from .loader import choose_variant

    if want:
        return choose_variant(info.variants, "cpu", want=want).variant
    try:
        return choose_variant(info.variants, "cpu").variant
    except Exception:  # nothing runs on a CPU here: compare the first variant
        return info.variants[0]


def _dict_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    keys = sorted(set(a) | set(b))
    return {k: {"from": a.get(k), "to": b.get(k)} for k in keys if a.get(k) != b.get(k)}


def _tensor_table(manifest: Any) -> dict[str, Any]:
    table = {e.name: e for e in manifest.tensors}
    for alias, target in manifest.tensor_aliases.items():
        if target in table:
            table[alias] = table[target]
    return table


def _standalone(manifest: Any, entry: Any) -> bool:
    ref = manifest.blobs[entry.blob]
    return bool(entry.offset == 0 and entry.nbytes == ref.size)


def diff_versions(pipeline: Any, a: str, b: str, *, variant: str | None = None) -> dict[str, Any]:
    """The differences between the versions specs ``a`` and ``b`` name (see the module docstring)."""
    from .loader import read_manifest

    ia, ib = pipeline.resolve(a), pipeline.resolve(b)
    va, vb = _variant(ia, variant), _variant(ib, variant)
    ma, _ = read_manifest(pipeline.store, va.manifest_digest)
    mb, _ = read_manifest(pipeline.store, vb.manifest_digest)
    fa = {(v.format, v.manifest_digest) for v in ia.variants}
    fb = {(v.format, v.manifest_digest) for v in ib.variants}
    out: dict[str, Any] = {
        "from": {"model": ia.model, "version": ia.version, "variant": va.manifest_digest},
        "to": {"model": ib.model, "version": ib.version, "variant": vb.manifest_digest},
        "same_content": va.manifest_digest == vb.manifest_digest,
        "variants": {
            "added": [{"format": f, "digest": d} for f, d in sorted(fb - fa)],
            "removed": [{"format": f, "digest": d} for f, d in sorted(fa - fb)],
        },
        "labels": _dict_diff(dict(ia.labels), dict(ib.labels)),
        "metadata": _dict_diff(dict(ma.metadata), dict(mb.metadata)),
        "signature": _dict_diff(dict(ma.signature), dict(mb.signature)),
        "format": {"from": ma.plugin, "to": mb.plugin} if ma.plugin != mb.plugin else None,
    }
    ta, tb = _tensor_table(ma), _tensor_table(mb)
    changed: list[dict[str, Any]] = []
    unsure: list[str] = []
    for name in sorted(set(ta) & set(tb)):
        ea, eb = ta[name], tb[name]
        if (ea.dtype, tuple(ea.shape)) != (eb.dtype, tuple(eb.shape)):
            changed.append(
                {
                    "name": name,
                    "change": "dtype/shape",
                    "from": {"dtype": ea.dtype, "shape": list(ea.shape)},
                    "to": {"dtype": eb.dtype, "shape": list(eb.shape)},
                }
            )
            continue
        da, db = ma.blobs[ea.blob].digest, mb.blobs[eb.blob].digest
        if (da, ea.offset) == (db, eb.offset):
            continue  # the same bytes by construction
        if _standalone(ma, ea) and _standalone(mb, eb):
            changed.append({"name": name, "change": "bytes"})  # different blob digests
            continue
        unsure.append(name)
    if unsure:
        changed.extend(_compare_bytes(pipeline, va, vb, ta, tb, unsure))
    changed.sort(key=lambda c: str(c["name"]))
    out["tensors"] = {
        "added": sorted(set(tb) - set(ta)),
        "removed": sorted(set(ta) - set(tb)),
        "changed": changed,
        "unchanged": len(set(ta) & set(tb)) - len(changed),
    }
    return out


def _compare_bytes(
    pipeline: Any, va: Any, vb: Any, ta: Mapping[str, Any], tb: Mapping[str, Any], names: list[str]
) -> list[dict[str, Any]]:
    """Hash each named tensor's bytes in both versions (blobs verified as they are read)."""
    from .formats.container import read_blob

    def digests(v: Any, table: Mapping[str, Any]) -> dict[str, str]:
        def use(source: Any) -> dict[str, str]:
            blobs: dict[int, bytes] = {}
            out = {}
            for n in names:
                e = table[n]
                if e.blob not in blobs:
                    blobs[e.blob] = read_blob(source, e.blob)
                out[n] = digest_bytes(blobs[e.blob][e.offset : e.offset + e.nbytes])
            return out

        result: dict[str, str] = pipeline.deserialize(v, use)
        return result

    da, db = digests(va, ta), digests(vb, tb)
    return [{"name": n, "change": "bytes"} for n in names if da[n] != db[n]]
