"""What ``push``, ``pull`` and ``import`` do with registries and serving targets.

``cli/models.py`` owns the parsers and hands over here when an argument is an
``oci://`` reference, an ``mvault://`` URI (KServe's storage initializer) or
``--triton`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError
from ._common import emit, human_size
from .progress import Transfer, progress_enabled

__all__ = ["add_pull_options", "pull_special", "run_oci_import", "run_oci_push"]

MVAULT_SCHEME = "mvault://"


def add_pull_options(p: argparse.ArgumentParser) -> None:
    """Options of ``pull`` for registries and serving targets."""
    p.add_argument(
        "dest", nargs="?", type=Path, help="target directory (the form KServe's initializer uses)"
    )
    p.add_argument("--triton", type=Path, metavar="DIR", help="write a Triton model repository")
    p.add_argument("--triton-name", help="model name in the Triton repository (default: NAME)")
    p.add_argument(
        "--triton-version", type=int, help="Triton's integer version (default: from the version)"
    )
    p.add_argument("--as", dest="as_ref", metavar="NAME:VERSION", help="register an oci:// pull as")
    p.add_argument(
        "--plain-http", action="store_true", help="speak HTTP, not HTTPS, to the registry"
    )


def _progress(args: argparse.Namespace, title: str, verb: str) -> Transfer:
    return Transfer(
        title, verb=verb, enabled=not args.json and progress_enabled(getattr(args, "quiet", False))
    )


def _plain(args: argparse.Namespace) -> bool | None:
    return True if getattr(args, "plain_http", False) else None


def run_oci_push(vault: Any, args: argparse.Namespace, ref: str, spec: str) -> int:
    """``mvault push oci://registry/repo[:tag] NAME@SPEC``."""
    with _progress(args, spec, "uploading") as progress:
        r = vault.push_oci(spec, ref, plain_http=_plain(args), progress=progress)

    def human(x: Any) -> None:
        sys.stdout.write(
            f"pushed {spec} to {x.reference} {x.digest}\n"
            f"  {x.variants} variant(s); uploaded {x.blobs_uploaded} blobs, "
            f"{human_size(x.bytes_uploaded)}; {x.blobs_skipped} already there, {x.blobs_mounted} mounted\n"
            + (f"  {x.signatures} signature(s) as referrers\n" if x.signatures else "")
        )

    emit(r, as_json=args.json, human=human)
    return 0


def run_oci_import(vault: Any, args: argparse.Namespace, ref: str, as_ref: str | None) -> int:
    """``mvault pull oci://...`` and ``mvault import oci://... [NAME:VERSION]``."""
    name = version = None
    if as_ref:
        from ..vault import _split_ref

        name, version = _split_ref(as_ref, None)
    with _progress(args, ref, "downloading") as progress:
        r = vault.pull_oci(
            ref,
            name,
            version,
            aliases=list(getattr(args, "alias", None) or []),
            plain_http=_plain(args),
            progress=progress,
        )

    def human(x: Any) -> None:
        what = "imported" if x.created else "unchanged:"
        sys.stdout.write(
            f"{what} {x.name}:{x.version} from {x.reference} ({len(x.variants)} variant(s))\n"
            f"  downloaded {x.blobs_downloaded} blobs, {human_size(x.bytes_downloaded)}; "
            f"{x.blobs_skipped} already stored\n"
            + (f"  {x.signatures} new signature(s) recorded\n" if x.signatures else "")
        )

    emit(r, as_json=args.json, human=human)
    return 0


def pull_special(vault: Any, args: argparse.Namespace) -> int | None:
    """Handle the registry and serving forms of ``pull``; None means "the plain pull"."""
    from ..oci import is_oci_reference

    spec: str = args.spec
    if is_oci_reference(spec):
        return run_oci_import(vault, args, spec, args.as_ref)
    if args.triton is not None:
        from ..serving.triton import write_repository

        with _progress(args, spec, "downloading") as progress:
            out = write_repository(
                vault,
                spec,
                args.triton,
                model_name=args.triton_name,
                triton_version=args.triton_version,
                progress=progress,
            )
        emit(
            {"repository": str(args.triton), "model": str(out)},
            as_json=args.json,
            human=lambda d: sys.stdout.write(f"wrote Triton model {d['model']}\n"),
        )
        return 0
    if spec.startswith(MVAULT_SCHEME) or (args.dest is not None and args.output is None):
        from ..serving.kserve import pull_into

        if args.dest is None:
            raise InvalidArgumentError(f"{spec}: name the target directory, e.g. /mnt/models")
        written = pull_into(
            vault,
            spec.removeprefix(MVAULT_SCHEME),
            args.dest,
            variant=args.variant,
            device=args.device,
        )
        emit(
            {"paths": [str(p) for p in written]},
            as_json=args.json,
            human=lambda d: sys.stdout.write("".join(f"wrote {p}\n" for p in d["paths"])),
        )
        return 0
    if args.output is None:
        raise InvalidArgumentError("pull needs -o PATH (or --triton DIR, or a target directory)")
    return None
