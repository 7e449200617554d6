"""``mvault cache ls|clear``: the local verified cache of remote blobs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import add_json, emit, human_size, iso, print_table


def register(sub: Any) -> None:
    p = sub.add_parser("cache", help="the local cache of remote blobs: ls | clear")
    csub = p.add_subparsers(dest="cache_cmd", metavar="ls|clear", required=True)
    ls = csub.add_parser("ls", help="list cached blobs")
    add_json(ls)
    ls.set_defaults(func=run_ls)
    clear = csub.add_parser("clear", help="remove every cached blob")
    add_json(clear)
    clear.set_defaults(func=run_clear)


def _cache() -> Any:
    from ..config import settings
    from ..storage.cache import BlobCache

    s = settings()
    return BlobCache(s.cache_dir, s.cache_size)


def run_ls(args: argparse.Namespace) -> int:
    cache = _cache()
    items = cache.ls()
    rows = [{"digest": i.digest, "size": i.size, "last_used": iso(i.modified)} for i in items]
    report = {
        "root": str(cache.root),
        "blobs": rows,
        "count": len(rows),
        "bytes": sum(r["size"] for r in rows),
        "max_bytes": cache.max_bytes,
    }

    def human(r: dict[str, Any]) -> None:
        print_table(
            [(b["digest"], human_size(b["size"]), b["last_used"]) for b in r["blobs"]],
            ["DIGEST", "SIZE", "LAST USED"],
        )
        sys.stdout.write(
            f"\n{r['count']} blobs, {human_size(r['bytes'])} of {human_size(r['max_bytes'])} in {r['root']}\n"
        )

    emit(report, as_json=args.json, human=human)
    return 0


def run_clear(args: argparse.Namespace) -> int:
    freed = _cache().clear()
    emit(
        {"freed": freed},
        as_json=args.json,
        human=lambda d: sys.stdout.write(f"freed {human_size(d['freed'])}\n"),
    )
    return 0
