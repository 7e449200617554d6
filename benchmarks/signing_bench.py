"""What a trust policy costs a load: the same signed load with and without MVAULT_TRUST.

    python benchmarks/signing_bench.py --size-gb 2 --runs 5 --out benchmarks/results/signing.json
    python benchmarks/signing_bench.py --size-gb 0.001 --runs 1 --out /tmp/signing.json  # smoke

A state dict of float32 tensors sized to ``--size-gb`` is pushed once to a
local store and signed with a fresh ECDSA P-256 key. Then it is loaded
``--runs`` times with the policy in force and without it, alternating (on,
off, on, off ...), page cache warm; both sides hash every byte, as every load
does, and end with the tensors a user can index, one byte of every 4 KiB page
touched. The policy side adds what a policy adds: reading and hashing the
signature bundle, one ECDSA verification, the statement's checks. The check
alone is also timed, apart from any load.

Target: the policy adds less than 2% to a 2 GB load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from _machine import Monitor  # noqa: E402
from _runs import write_report  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from modelvault import Vault, config  # noqa: E402
from modelvault.loader import read_manifest  # noqa: E402
from modelvault.signing import (  # noqa: E402
    check_trust,
    current_policy,
    load_signing_key,
    sign_version,
    variant_signatures,
)


def _touch(tensors: dict[str, torch.Tensor]) -> int:
    total = 0
    for t in tensors.values():
        b = t.reshape(-1).view(torch.uint8)
        total += int(b[::4096].sum())
    return total


def _keys(d: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = d / "release.pem", d / "release.pub"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv, pub


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "signing.json")
    args = ap.parse_args()

    with Monitor() as monitor, tempfile.TemporaryDirectory(prefix="mvault-signbench-") as tmp:
        root = Path(tmp)
        os.environ["MVAULT_HOME"] = str(root / "home")
        os.environ.pop("MVAULT_TRUST", None)
        config.reload()
        n = max(1, int(args.size_gb * 1e9 / 4 / 64))
        state = {f"layer{i}.weight": torch.randn(n) for i in range(64)}
        size = sum(t.numel() * t.element_size() for t in state.values())
        vault = Vault()
        vault.push(state, "bench", "1.0.0")
        del state
        priv, pub = _keys(root)
        sign_version(vault.pipeline, "bench:1.0.0", load_signing_key(priv))
        trust = root / "trust.toml"
        trust.write_text(f'[[trust]]\nmodels = ["bench"]\nkeys = ["{pub}"]\n')

        def load(policy: bool) -> float:
            if policy:
                os.environ["MVAULT_TRUST"] = str(trust)
            else:
                os.environ.pop("MVAULT_TRUST", None)
            config.reload()
            t0 = time.perf_counter()
            tensors = Vault().load("bench:1.0.0")
            _touch(tensors)
            return time.perf_counter() - t0

        load(True)  # warm the page cache and the imports on both sides
        load(False)
        on, off = [], []
        for rnd in range(args.runs):  # on, off; off, on; ...: drift reaches both alike
            for policy in (True, False) if rnd % 2 == 0 else (False, True):
                (on if policy else off).append(load(policy))

        os.environ["MVAULT_TRUST"] = str(trust)
        config.reload()
        info = vault.resolve("bench:1.0.0")
        (variant,) = info.variants
        manifest, _ = read_manifest(vault.store, variant.manifest_digest)
        policy = current_policy()
        assert policy is not None
        checks = []
        for _ in range(max(5, args.runs)):
            t0 = time.perf_counter()
            check_trust(policy, info, variant, manifest, variant_signatures(vault.store, variant))
            checks.append(time.perf_counter() - t0)

    med_on, med_off = statistics.median(on), statistics.median(off)
    result: dict[str, Any] = {
        "bytes": size,
        "runs": args.runs,
        "load_with_policy_s": on,
        "load_without_policy_s": off,
        "median_with_policy_s": med_on,
        "median_without_policy_s": med_off,
        "overhead_pct": 100.0 * (med_on - med_off) / med_off,
        "check_only_median_s": statistics.median(checks),
        "check_only_pct_of_load": 100.0 * statistics.median(checks) / med_off,
        "target_pct": 2.0,
        "torch": torch.__version__,
    }
    write_report(args.out, "signing", result, monitor.record())
    print(json.dumps({k: result[k] for k in ("bytes", "overhead_pct", "check_only_median_s")}))


if __name__ == "__main__":
    main()
