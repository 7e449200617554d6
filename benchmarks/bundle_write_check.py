"""Time ``ExportedProgramPlugin.pack`` and ``write_bundle`` (hashed, fsynced) of the
0.47 GB model of ``torch_load_bench.py --device cpu``: a check of one code tree
against another (run it with ``PYTHONPATH`` at each tree's ``src``, in turn),
not a comparison with a peer.

    PYTHONPATH=/path/to/tree/src python benchmarks/bundle_write_check.py LABEL [RUNS]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import torch

from modelvault.formats.bundle import write_bundle
from modelvault.formats.registry import get_plugin


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "this tree"
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(3840, 3840) for _ in range(8)])
    ep = torch.export.export(model, (torch.randn(1, 3840),))
    plugin = get_plugin("exported_program")
    d = tempfile.mkdtemp(dir=os.environ.get("MVAULT_BENCH_DIR", "."))
    rows = []
    for i in range(runs):
        t0 = time.perf_counter()
        draft = plugin.pack(ep)
        t1 = time.perf_counter()
        write_bundle(draft, f"{d}/m{i}.mvpk")
        t2 = time.perf_counter()
        os.unlink(f"{d}/m{i}.mvpk")
        rows.append(f"pack {t1 - t0:.3f} s, write_bundle {t2 - t1:.3f} s")
    os.rmdir(d)
    print(f"{label}: " + "; ".join(rows), flush=True)


if __name__ == "__main__":
    main()
