"""``mvault inspect``: a bundle's manifest, the verification of every blob, and its validation.

A bundle is intact when every blob matches its digest and its format plugin
accepts the payload (what would make a pull fail is reported here, exit 5).
Everything printed comes from the bundle, so control characters are escaped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import FormatError
from ._common import add_json, emit, human_size, print_table
from .progress import Transfer, progress_enabled


def clean(value: object) -> str:
    """``str(value)`` with every non-printable character escaped, so a bundle cannot drive the terminal."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a bundle's manifest and verify every blob (no registry needed)",
        description="Print a .mvpk bundle's manifest and verify every blob. Exit code 0 only when intact.",
    )
    p.add_argument("file", type=Path, help="the .mvpk bundle")
    p.add_argument("--no-verify", action="store_true", help="check the header only")
    add_json(p)
    p.set_defaults(func=run_inspect)


def manifest_summary(manifest: Any, digest: str) -> dict[str, Any]:
    return {
        "digest": digest,
        "format": list(manifest.format_version),
        "plugin": {"name": manifest.plugin, "version": manifest.plugin_version},
        "frameworks": dict(manifest.frameworks),
        "target": dict(manifest.target),
        "signature": dict(manifest.signature),
        "metadata": dict(manifest.metadata),
        "blobs": [b.to_wire() for b in manifest.blobs],
        "tensors": len(manifest.tensors),
        "size": manifest.total_size,
    }


def run_inspect(args: argparse.Namespace) -> int:
    from ..formats.bundle import Bundle

    bundle = Bundle.open(args.file)
    info = manifest_summary(bundle.manifest, bundle.digest)
    if bundle.signatures:
        from ..signing import claimed_signer

        # Claimed, not checked: a trust policy judges them when the imported version loads.
        info["signatures"] = [
            {"digest": d, "size": len(data), "claimed_signer": claimed_signer(data)}
            for d, data in bundle.signatures
        ]
    if not args.no_verify:
        enabled = not args.json and progress_enabled(getattr(args, "quiet", False))
        with Transfer(args.file.name, verb="verifying", enabled=enabled) as progress:
            progress.phase("verifying", bundle.manifest.total_size)
            bundle.verify(progress.advance)
        info["verified"] = True
        from ..formats.validation import validate_container

        try:
            validate_container(bundle)
        except FormatError as exc:
            info["valid"] = False
            info["problem"] = str(exc)
        else:
            info["valid"] = True
    else:
        info["verified"] = False

    def human(d: dict[str, Any]) -> None:
        out = sys.stdout
        c = clean
        out.write(f"bundle    {c(args.file)}\n")
        out.write(f"digest    {c(d['digest'])}\n")
        out.write(f"format    {d['format'][0]}.{d['format'][1]}\n")
        out.write(f"plugin    {c(d['plugin']['name'])} {c(d['plugin']['version'])}\n")
        for key in ("frameworks", "target", "metadata"):
            if d[key]:
                out.write(
                    f"{key:9} " + ", ".join(f"{c(k)}={c(v)}" for k, v in d[key].items()) + "\n"
                )
        out.write(f"tensors   {d['tensors']}\nsize      {human_size(d['size'])}\n\n")
        print_table(
            [
                (c(b["role"]), c(b["media_type"]), human_size(b["size"]), c(b["digest"]))
                for b in d["blobs"]
            ],
            ["ROLE", "MEDIA TYPE", "SIZE", "DIGEST"],
        )
        for sig in d.get("signatures", []):
            out.write(
                f"signature {c(sig['digest'])} by {c(sig['claimed_signer'])} "
                "(claimed; checked on load under MVAULT_TRUST)\n"
            )
        if not d["verified"]:
            out.write("\nheader valid (blobs not verified)\n")
        elif d["valid"]:
            out.write("\nintact: every blob verified, payload valid\n")
        else:
            out.write(f"\nNOT intact: every blob verified, but {c(d['problem'])}\n")

    emit(info, as_json=args.json, human=human)
    return 0 if info.get("valid", True) else 5
