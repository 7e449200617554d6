"""Fill benchmarks/README.md's tables from the results files, and nothing else.

Every table in the README sits between two markers naming the file it comes
from::

    <!-- table: results/vault.json -->
    ...generated, replaced on every render...
    <!-- end table -->

so every figure there was written by the run that produced it. A missing
file, or one older than the current schema, renders as a note saying so.

    python benchmarks/render_readme.py            # rewrite the README in place
    python benchmarks/render_readme.py --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _tables import render  # noqa: E402

BLOCK = re.compile(
    r"(<!-- table: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.DOTALL
)


def fill(text: str, base: Path) -> str:
    def one(m: re.Match[str]) -> str:
        path = base / m["path"]
        if not path.exists():
            body = f"_No figures yet: `{m['path']}` has not been written by a run._"
        else:
            body = render(json.loads(path.read_text()))
        return f"{m[1]}{body}\n{m[4]}"

    return BLOCK.sub(one, text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", type=Path, default=HERE / "README.md")
    ap.add_argument("--check", action="store_true", help="only report whether it is current")
    args = ap.parse_args()
    old = args.readme.read_text()
    new = fill(old, args.readme.parent)
    if args.check:
        if new != old:
            print(f"{args.readme} is out of date: run python benchmarks/render_readme.py")
            return 1
        return 0
    args.readme.write_text(new)
    print(f"{args.readme}: {len(BLOCK.findall(new))} tables rendered")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
