"""History and comparison: ``log``, ``diff``, and labels after the push (``label set|rm``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import InvalidArgumentError
from ._common import add_json, emit, iso, open_vault, print_table


def register(sub: Any) -> None:
    p = sub.add_parser("log", help="a model's history: pushes, aliases, labels, deletions")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--alias", help="only this alias's moves")
    p.add_argument("--limit", type=int, default=100)
    add_json(p)
    p.set_defaults(func=run_log)

    p = sub.add_parser("diff", help="what changed between two versions: A B (NAME@SPEC each)")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("--variant", help="compare this variant (format or digest) of each")
    add_json(p)
    p.set_defaults(func=run_diff)

    p = sub.add_parser("label", help="set or remove labels of a version")
    lsub = p.add_subparsers(dest="label_cmd", metavar="set|rm", required=True)
    a = lsub.add_parser("set", help="label set NAME:VERSION key=value [key=value ...]")
    a.add_argument("ref", metavar="NAME:VERSION")
    a.add_argument("pairs", nargs="+", metavar="key=value")
    add_json(a)
    a.set_defaults(func=run_label_set)
    a = lsub.add_parser("rm", help="label rm NAME:VERSION key [key ...]")
    a.add_argument("ref", metavar="NAME:VERSION")
    a.add_argument("keys", nargs="+", metavar="key")
    add_json(a)
    a.set_defaults(func=run_label_rm)


def _event_row(e: Any) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at),
        "user": e.user,
        "kind": e.kind,
        "model": e.model,
        "version": e.version,
        "alias": e.alias,
        "details": dict(e.details or {}),
    }


def _what(r: dict[str, Any]) -> str:
    d = r["details"]
    kind = r["kind"]
    if kind.startswith("alias.") and r["alias"]:
        prev = d.get("previous")
        if kind == "alias.remove":
            return f"alias {r['alias']} removed (was {r['version']})"
        return f"alias {r['alias']} -> {r['version']}" + (f" (was {prev})" if prev else "")
    if kind == "version.register":
        return f"pushed {r['version']}"
    if r["version"]:
        return f"{kind} {r['version']}"
    return str(kind)


def run_log(args: argparse.Namespace) -> int:
    v = open_vault(write=False)
    v.registry.get_model(args.name)  # not found is an error, not an empty log
    rows = [_event_row(e) for e in v.registry.events(args.name, limit=args.limit)]
    if args.alias:
        rows = [r for r in rows if r["alias"] == args.alias]

    def human(rs: list[dict[str, Any]]) -> None:
        print_table([(r["at"], r["user"] or "", _what(r)) for r in rs], ["WHEN", "WHO", "WHAT"])

    emit(rows, as_json=args.json, human=human)
    return 0


def run_diff(args: argparse.Namespace) -> int:
    from ..compare import diff_versions

    d = diff_versions(open_vault(write=False).pipeline, args.a, args.b, variant=args.variant)

    def human(x: dict[str, Any]) -> None:
        w = sys.stdout.write
        a, b = x["from"], x["to"]
        w(f"{a['model']}:{a['version']} -> {b['model']}:{b['version']}")
        w(" (identical content)\n" if x["same_content"] else "\n")
        if x["format"]:
            w(f"  format    {x['format']['from']} -> {x['format']['to']}\n")
        for v in x["variants"]["added"]:
            w(f"  + variant {v['format']} {v['digest']}\n")
        for v in x["variants"]["removed"]:
            w(f"  - variant {v['format']} {v['digest']}\n")
        for section in ("labels", "metadata", "signature"):
            for k, ch in x[section].items():
                w(
                    f"  {section[:-1] if section == 'labels' else section} {k}: {ch['from']!r} -> {ch['to']!r}\n"
                )
        t = x["tensors"]
        for n in t["added"]:
            w(f"  + tensor {n}\n")
        for n in t["removed"]:
            w(f"  - tensor {n}\n")
        for c in t["changed"]:
            if c["change"] == "bytes":
                w(f"  ~ tensor {c['name']}: values changed\n")
            else:
                f, to = c["from"], c["to"]
                w(
                    f"  ~ tensor {c['name']}: {f['dtype']}{f['shape']} -> {to['dtype']}{to['shape']}\n"
                )
        w(
            f"  tensors: {len(t['added'])} added, {len(t['removed'])} removed, "
            f"{len(t['changed'])} changed, {t['unchanged']} unchanged\n"
        )

    emit(d, as_json=args.json, human=human)
    return 0


def _pairs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(f"label {p!r} must look like key=value")
        out[key] = value
    return out


def run_label_set(args: argparse.Namespace) -> int:
    from ..vault import _split_ref

    name, version = _split_ref(args.ref, None)
    labels = open_vault(write=True).registry.set_labels(name, version, _pairs(args.pairs))
    emit(
        {"model": name, "version": version, "labels": labels},
        as_json=args.json,
        human=lambda d: sys.stdout.write(
            f"{name}:{version} labels: {', '.join(f'{k}={v}' for k, v in sorted(d['labels'].items()))}\n"
        ),
    )
    return 0


def run_label_rm(args: argparse.Namespace) -> int:
    from ..vault import _split_ref

    name, version = _split_ref(args.ref, None)
    v = open_vault(write=True)
    removed = [k for k in args.keys if v.registry.remove_label(name, version, k)]
    missing = [k for k in args.keys if k not in removed]
    info = v.registry.get_version(name, version)
    emit(
        {"model": name, "version": version, "removed": removed, "labels": dict(info.labels)},
        as_json=args.json,
        human=lambda d: sys.stdout.write(
            f"{name}:{version}: removed {', '.join(removed) or 'nothing'}"
            + (f" (not set: {', '.join(missing)})" if missing else "")
            + "\n"
        ),
    )
    return 0
