"""Model commands: push, pull, ls, show, alias, rm, verify, gc, export, import."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError
from ._common import add_json, emit, human_size, iso, open_vault, print_table
from .oci import add_pull_options, pull_special, run_oci_import, run_oci_push
from .progress import Transfer, progress_enabled


def _labels(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(f"label {p!r} must look like key=value")
        out[key] = value
    return out


def register(sub: Any) -> None:
    p = sub.add_parser(
        "push",
        help="push a model version: NAME:VERSION SOURCE, or oci://REGISTRY/REPO[:TAG] NAME@SPEC",
    )
    p.add_argument("ref", metavar="NAME:VERSION")
    p.add_argument(
        "source",
        help="a .pt2, TorchScript archive, .safetensors, .mvpk, or any file/directory "
        "(NAME@SPEC when pushing to an oci:// registry)",
    )
    p.add_argument("--plain-http", action="store_true", help="speak HTTP to an oci:// registry")
    p.add_argument("--format", help="format plugin (default: detected)")
    p.add_argument(
        "--alias", action="append", default=[], help="point this alias at the version (repeatable)"
    )
    p.add_argument("--label", action="append", help="key=value label (repeatable)")
    p.add_argument("--description")
    p.add_argument(
        "--variant", action="store_true", help="add as another variant of an existing version"
    )
    add_json(p)
    p.set_defaults(func=run_push)

    p = sub.add_parser("pull", help="write a version's native form: NAME[@SPEC] -o PATH")
    p.add_argument("spec", metavar="NAME[@SPEC]")
    p.add_argument("-o", "--output", type=Path, help="file or directory to write")
    p.add_argument("--variant", help="manifest digest (prefix) or format of the variant to pull")
    p.add_argument("--device", default="cpu", help="rank variants for this device (default cpu)")
    p.add_argument("-f", "--force", action="store_true", help="replace PATH if it exists")
    p.add_argument("--alias", action="append", default=[], help="(oci://) point this alias at it")
    add_pull_options(p)  # oci://, mvault:// (KServe), --triton: cli/oci.py
    add_json(p)
    p.set_defaults(func=run_pull)

    p = sub.add_parser("ls", help="list models, or one model's versions")
    p.add_argument("name", nargs="?")
    p.add_argument("--prefix", help="only models whose name starts with this")
    p.add_argument(
        "--label",
        action="append",
        metavar="KEY[=VALUE]",
        help="only versions with this label (repeatable: all must hold on one version)",
    )
    p.add_argument("--limit", type=int, default=50)
    add_json(p)
    p.set_defaults(func=run_ls)

    p = sub.add_parser("show", help="a version with its variants, aliases and labels")
    p.add_argument("spec", metavar="NAME[@SPEC]")
    add_json(p)
    p.set_defaults(func=run_show)

    p = sub.add_parser("alias", help="set or remove an alias")
    asub = p.add_subparsers(dest="alias_cmd", metavar="set|rm", required=True)
    a = asub.add_parser("set", help="alias set NAME ALIAS VERSION")
    a.add_argument("name")
    a.add_argument("alias")
    a.add_argument("version")
    add_json(a)
    a.set_defaults(func=run_alias_set)
    a = asub.add_parser("rm", help="alias rm NAME ALIAS")
    a.add_argument("name")
    a.add_argument("alias")
    add_json(a)
    a.set_defaults(func=run_alias_rm)

    p = sub.add_parser("rm", help="delete a version (NAME:VERSION) or a whole model (NAME)")
    p.add_argument("ref", metavar="NAME[:VERSION]")
    p.add_argument("--force", action="store_true", help="also remove aliases that point at it")
    p.add_argument(
        "-y", "--yes", action="store_true", help="do not ask for confirmation on a terminal"
    )
    add_json(p)
    p.set_defaults(func=run_rm)

    p = sub.add_parser("mv", help="rename a model: OLD NEW (versions, aliases and history follow)")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")
    add_json(p)
    p.set_defaults(func=run_mv)

    p = sub.add_parser("verify", help="re-hash blobs in the store (one version, or everything)")
    p.add_argument("spec", nargs="?", metavar="NAME[@SPEC]")
    add_json(p)
    p.set_defaults(func=run_verify)

    p = sub.add_parser("gc", help="delete unreferenced blobs older than the grace period")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--grace", type=int, metavar="SECONDS", help="override MVAULT_GC_GRACE")
    add_json(p)
    p.set_defaults(func=run_gc)

    p = sub.add_parser("export", help="write one variant as a self-contained bundle")
    p.add_argument("spec", metavar="NAME[@SPEC]")
    p.add_argument("file", type=Path, metavar="FILE.mvpk")
    p.add_argument("--variant")
    p.add_argument(
        "--no-signatures",
        action="store_true",
        help="leave the variant's signatures out (for readers older than signed bundles)",
    )
    add_json(p)
    p.set_defaults(func=run_export)

    p = sub.add_parser(
        "import", help="register a bundle or an OCI artifact: FILE.mvpk|oci://... [NAME:VERSION]"
    )
    p.add_argument("file", metavar="FILE.mvpk")
    p.add_argument("--plain-http", action="store_true", help="speak HTTP to an oci:// registry")
    p.add_argument("ref", nargs="?", metavar="NAME:VERSION")
    p.add_argument("--alias", action="append", default=[])
    p.add_argument("--variant", action="store_true")
    add_json(p)
    p.set_defaults(func=run_import)


def _transfer(args: argparse.Namespace, title: str, verb: str) -> Transfer:
    return Transfer(
        title, verb=verb, enabled=not args.json and progress_enabled(getattr(args, "quiet", False))
    )


def _rate(n: int, seconds: float) -> str:
    return f"{human_size(n)} in {seconds:.1f} s ({human_size(n / max(seconds, 1e-6))}/s)"


def _push_json(r: Any) -> dict[str, Any]:
    """A push result with the key every command uses for the model's name."""
    return {
        "model": r.name,
        "version": r.version,
        "digest": r.digest,
        "format": r.format,
        "created": r.created,
        "variant_added": r.variant_added,
        "bytes_uploaded": r.bytes_uploaded,
        "blobs_uploaded": r.blobs_uploaded,
        "blobs_skipped": r.blobs_skipped,
        "aliases": list(r.aliases),
        "signatures": getattr(r, "signatures", 0),
    }


def _push_human(r: Any, seconds: float | None = None) -> None:
    what = "added variant to" if r.variant_added else ("pushed" if r.created else "unchanged:")
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    sys.stdout.write(
        f"{what} {r.name}:{r.version} ({r.format}) {r.digest}\n"
        f"  uploaded {r.blobs_uploaded} blobs, {human_size(r.bytes_uploaded)}{took}; "
        f"{r.blobs_skipped} already stored\n"
    )
    if getattr(r, "signatures", 0):
        sys.stdout.write(f"  signatures: {r.signatures} attached from the bundle\n")
    if r.aliases:
        sys.stdout.write(f"  aliases: {', '.join(r.aliases)}\n")
    if r.labels:
        sys.stdout.write(
            f"  labels: {', '.join(f'{k}={v}' for k, v in sorted(r.labels.items()))}\n"
        )


def run_push(args: argparse.Namespace) -> int:
    from ..oci import is_oci_reference

    if is_oci_reference(args.ref):  # push oci://registry/repo:tag NAME@SPEC
        return run_oci_push(open_vault(write=False), args, args.ref, args.source)
    args.source = Path(args.source)
    if not args.source.exists():
        raise FileNotFoundError(f"{args.source} does not exist")
    from ..vault import _split_ref

    name, version = _split_ref(args.ref, None)
    vault = open_vault(write=True)  # a read-only home stops here, before the source is read
    with _transfer(args, f"{name}:{version}", "uploading") as progress:
        result = vault.push(
            args.source,
            name,
            version,
            format=args.format,
            aliases=args.alias,
            labels=_labels(args.label),
            description=args.description,
            variant=args.variant,
            progress=progress,
        )
    if args.json:
        emit(_push_json(result), as_json=True)
    else:
        _push_human(result, progress.seconds)
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from ..oci import is_oci_reference

    vault = open_vault(write=is_oci_reference(args.spec))  # pull oci://... registers it
    special = pull_special(vault, args)
    if special is not None:
        return special
    info, choice = vault.choose(args.spec, args.device, variant=args.variant)
    variant = choice.variant
    exact = f"{info.model}:{info.version}"
    with _transfer(args, exact, "downloading") as progress:
        path = vault.pull(
            exact,
            args.output,
            variant=variant.manifest_digest,
            device=args.device,
            progress=progress,
            overwrite=args.force,
        )
    size = _tree_size(path)
    out = {
        "model": info.model,
        "version": info.version,
        "format": variant.format,
        "digest": variant.manifest_digest,
        "path": str(path),
        "bytes": size,
    }
    emit(
        out,
        as_json=args.json,
        human=lambda d: sys.stdout.write(
            f"pulled {d['model']}:{d['version']} ({d['format']}) {d['digest']}\n"
            f"  wrote {d['path']}, {_rate(size, progress.seconds)}\n"
        ),
    )
    return 0


def _tree_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return path.stat().st_size


def run_ls(args: argparse.Namespace) -> int:
    v = open_vault(write=False)
    if args.name:
        page = v.registry.list_versions(args.name, limit=args.limit, label=args.label or None)
        rows = [_version_row(x) for x in page.items]

        def human(rs: list[dict[str, Any]]) -> None:
            print_table(
                [
                    (r["version"], ",".join(r["aliases"]), r["variants"], r["created_at"])
                    for r in rs
                ],
                ["VERSION", "ALIASES", "VARIANTS", "CREATED"],
            )
    else:
        page = v.registry.list_models(
            prefix=args.prefix, label=args.label or None, limit=args.limit
        )
        rows = [_model_row(x) for x in page.items]

        def human(rs: list[dict[str, Any]]) -> None:
            print_table(
                [
                    (r["model"], r["latest"] or "", r["versions"], _aliases(r["aliases"]))
                    for r in rs
                ],
                ["MODEL", "LATEST", "VERSIONS", "ALIASES"],
            )

    emit(rows, as_json=args.json, human=human)
    return 0


def _get(o: Any, key: str, default: Any = None) -> Any:
    return getattr(o, key, o.get(key, default) if isinstance(o, dict) else default)


def _version_row(x: Any) -> dict[str, Any]:
    return {
        "model": _get(x, "model"),
        "version": _get(x, "version"),
        "aliases": list(_get(x, "aliases", []) or []),
        "labels": dict(_get(x, "labels", {}) or {}),
        "variants": len(_get(x, "variants", []) or []),
        "created_at": iso(_get(x, "created_at")),
    }


def _aliases(aliases: dict[str, str]) -> str:
    return ", ".join(f"{a}->{v}" for a, v in sorted(aliases.items()))


def _model_row(x: Any) -> dict[str, Any]:
    return {
        "model": _get(x, "name"),
        "latest": _get(x, "latest"),
        "versions": _get(x, "version_count", 0),
        "aliases": dict(_get(x, "aliases", {}) or {}),
        "description": _get(x, "description"),
        "created_at": iso(_get(x, "created_at")),
    }


def run_show(args: argparse.Namespace) -> int:
    info = open_vault(write=False).show(args.spec)

    def human(d: dict[str, Any]) -> None:
        w = sys.stdout.write
        w(f"{d.get('model')}:{d.get('version')}\n")
        for key in ("description", "created_at", "created_by"):
            if d.get(key):
                w(f"  {key:11} {d[key]}\n")
        if d.get("aliases"):
            w(f"  aliases     {', '.join(d['aliases'])}\n")
        if d.get("labels"):
            w("  labels      " + ", ".join(f"{k}={v}" for k, v in d["labels"].items()) + "\n")
        w("  variants\n")
        for var in d.get("variants", []):
            w(
                f"    {var['format']:17} {var['kind']:9} {human_size(var['size']):>10}  {var['manifest_digest']}\n"
            )
            req = var.get("requirements") or {}
            if req:
                from ..targets import describe_requirements

                w(f"      runs on  {describe_requirements(req)}\n")

    emit(info, as_json=args.json, human=human)
    return 0


def run_alias_set(args: argparse.Namespace) -> int:
    r = open_vault(write=True).set_alias(args.name, args.alias, args.version)
    emit(
        r,
        as_json=args.json,
        human=lambda _: sys.stdout.write(f"{args.name}@{args.alias} -> {args.version}\n"),
    )
    return 0


def run_alias_rm(args: argparse.Namespace) -> int:
    open_vault(write=True).remove_alias(args.name, args.alias)
    emit(
        {"model": args.name, "alias": args.alias, "removed": True},
        as_json=args.json,
        human=lambda d: sys.stdout.write(f"removed {d['model']}@{d['alias']}\n"),
    )
    return 0


def _confirm(question: str, yes: bool) -> bool:
    """Ask on a terminal; without one (scripts), go ahead: the command line said so."""
    if yes or not sys.stdin.isatty():
        return True
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def run_rm(args: argparse.Namespace) -> int:
    from ..vault import _split_ref

    vault = open_vault(write=True)
    if ":" not in args.ref:  # a whole model
        model = vault.registry.get_model(args.ref)
        question = f"delete model {model.name} and all its {model.version_count} version(s)"
        if model.aliases:
            question += f" (aliases: {_aliases(model.aliases)})"
        if not _confirm(question + "?", args.yes):
            sys.stderr.write("mvault: nothing deleted\n")
            return 1
        results = vault.delete_model(args.ref, force=args.force)
        emit(
            {"model": args.ref, "versions": [r.version for r in results], "deleted": True},
            as_json=args.json,
            human=lambda d: sys.stdout.write(
                f"deleted model {d['model']} ({len(d['versions'])} versions; blobs go at the next gc)\n"
            ),
        )
        return 0
    name, version = _split_ref(args.ref, None)
    info = vault.resolve(f"{name}:{version}")  # not found is an error before the question
    question = f"delete {info.model}:{info.version}"
    if info.aliases:
        question += f" (aliases: {', '.join(info.aliases)})"
    if not _confirm(question + "?", args.yes):
        sys.stderr.write("mvault: nothing deleted\n")
        return 1
    r = vault.delete(name, version, force=args.force)
    emit(
        r,
        as_json=args.json,
        human=lambda _: sys.stdout.write(f"deleted {name}:{version} (blobs go at the next gc)\n"),
    )
    return 0


def run_mv(args: argparse.Namespace) -> int:
    info = open_vault(write=True).rename(args.old, args.new)
    emit(
        {"model": info.name, "renamed_from": args.old},
        as_json=args.json,
        human=lambda d: sys.stdout.write(f"renamed {args.old} to {d['model']} (history kept)\n"),
    )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    report = open_vault(write=False).verify(args.spec)

    def human(r: dict[str, Any]) -> None:
        sys.stdout.write(f"checked {r['checked']} blobs, {human_size(r['bytes'])}\n")
        for d in r["missing"]:
            sys.stdout.write(f"MISSING {d}\n")
        for d in r["damaged"]:
            sys.stdout.write(f"DAMAGED {d['digest']} (hashes to {d['actual']})\n")

    emit(report, as_json=args.json, human=human)
    if report["missing"] or report["damaged"]:
        bad = report["damaged"][0]["digest"] if report["damaged"] else report["missing"][0]
        sys.stderr.write(
            f"mvault: error: {len(report['missing'])} missing and {len(report['damaged'])} damaged blobs (first: {bad})\n"
        )
        return 5
    return 0


def run_gc(args: argparse.Namespace) -> int:
    report = open_vault(write=not args.dry_run).gc(grace_seconds=args.grace, dry_run=args.dry_run)
    verb = "would remove" if report["dry_run"] else "removed"
    emit(
        report,
        as_json=args.json,
        human=lambda r: sys.stdout.write(
            f"{verb} {len(r['removed'])} blobs, {human_size(r['bytes'])}; kept {r['kept_within_grace']} within the grace period"
            f" and {r['kept_in_use']} held by pushes in flight\n"
        ),
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    vault = open_vault(write=False)
    info = vault.resolve(args.spec)
    m = vault.export_bundle(
        f"{info.model}:{info.version}",
        args.file,
        variant=args.variant,
        signatures=not args.no_signatures,
    )
    from ..formats.bundle import Bundle

    emit(
        {
            "model": info.model,
            "version": info.version,
            "format": m.plugin,
            "digest": m.digest,
            "path": str(args.file),
            "bytes": args.file.stat().st_size,
            "signatures": len(Bundle.open(args.file).signatures),
        },
        as_json=args.json,
        human=lambda d: sys.stdout.write(
            f"exported {d['model']}:{d['version']} ({d['format']}) {d['digest']}\n"
            f"  wrote {d['path']} ({human_size(d['bytes'])}"
            + (f", {d['signatures']} signature(s)" if d["signatures"] else "")
            + ")\n"
        ),
    )
    return 0


def run_import(args: argparse.Namespace) -> int:
    from ..oci import is_oci_reference

    if is_oci_reference(args.file):
        return run_oci_import(open_vault(write=True), args, args.file, args.ref)
    args.file = Path(args.file)
    name = version = None
    if args.ref:
        from ..vault import _split_ref

        name, version = _split_ref(args.ref, None)
    vault = open_vault(write=True)
    with _transfer(args, args.file.name, "uploading") as progress:
        r = vault.import_bundle(
            args.file, name, version, aliases=args.alias, variant=args.variant, progress=progress
        )
    if args.json:
        emit(_push_json(r), as_json=True)
    else:
        _push_human(r, progress.seconds)
    return 0
