"""Markdown tables from a benchmark's results file: the only source of README figures.

``render(report)`` dispatches on the file's ``"benchmark"`` key. Every table
starts with the machine line of the run that wrote the file (CONTENDED when
it was) and its command, and ends with the goals, each marked met or missed
from the figures above it. A file from before the current schema (unequal
work, no machine record) is refused with a note instead of being shown.

Standard library only: ``render_readme.py`` and ``--render`` need no torch.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from _machine import describe
from _runs import SCHEMA


def _med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _header(r: dict[str, Any], what: str) -> list[str]:
    return [describe(r.get("machine")), "", f"{what} Command: `{r.get('command', '?')}`", ""]


def _goals(rows: list[tuple[str, str, bool]]) -> list[str]:
    out = ["", "| goal | measured | |", "| --- | ---: | --- |"]
    out += [f"| {goal} | {value} | {_mark(ok)} |" for goal, value, ok in rows]
    return out


# -- bundle ----------------------------------------------------------------------------
def bundle(r: dict[str, Any]) -> list[str]:
    med, s = r["seconds_median"], r["summary"]
    gib = r["size_bytes"] / 2**30
    lines = _header(
        r,
        f"{gib:g} GiB of random bytes as one tensor; median of {r['runs']} rounds "
        f"after {r['warmup']} unmeasured, peers alternating.",
    )
    lines += [
        "| operation (each row: the same bytes, the same end state as its peer) | seconds | GiB/s |"
    ]
    lines += ["| --- | ---: | ---: |"]
    names = [
        ("plain_write_s", "plain write + fsync of the file and its directory"),
        ("bundle_write_s", "`write_bundle`: hash while writing, fsync, rename, fsync directory"),
        ("plain_read_warm_s", "plain `readinto` a buffer (warm cache)"),
        ("verified_read_warm_s", "`Bundle.open` + `read_verified_into` a buffer (warm cache)"),
        ("plain_map_warm_s", "plain mapping, every page touched (warm cache)"),
        ("verified_map_warm_s", "the same mapping hashed in place, digest checked (warm cache)"),
        ("plain_read_cold_s", "plain `readinto` a buffer (cold cache)"),
        ("verified_read_cold_s", "`read_verified_into` a buffer (cold cache)"),
        ("hash_only_s", "hashing alone (BLAKE3, bytes in memory)"),
    ]
    for key, label in names:
        if key in med:
            lines.append(f"| {label} | {med[key]:.3f} | {gib / med[key]:.2f} |")
    goals = [
        (
            "`write_bundle` ≥ 80% of the plain durable write",
            f"{s['write_ratio']:.0%}",
            s["write_ratio"] >= 0.8,
        )
    ]
    for key, label in (
        ("read_warm", "verified read into a buffer, warm"),
        ("read_cold", "verified read into a buffer, cold"),
        ("map_warm", "verified mapping against the plain resident mapping, warm"),
    ):
        if f"{key}_ratio" in s:
            ratio, cost = s[f"{key}_ratio"], s[f"{key}_cost"]
            goals.append(
                (
                    f"{label}: ≥ 80% of the plain peer, verification < 20%",
                    f"{ratio:.0%} (verification {cost:+.0%})",
                    ratio >= 0.8 and cost < 0.2,
                )
            )
    return lines + _goals(goals)


# -- torch formats ---------------------------------------------------------------------
_TORCH_ROWS = [
    ("save_torch_export", "`torch.export.save` (no fsync; reference)"),
    ("save_torch_export_fsync", "`torch.export.save` + fsync of file and directory"),
    ("save_modelvault_ep", "modelvault `pack` + `write_bundle` (hashed, fsynced)"),
    ("load_torch_export", "`torch.export.load` (+ `move_to_device_pass` on GPU) + `.module()`"),
    ("load_modelvault_ep", "modelvault ExportedProgram load (verified) + `.module()`"),
    ("load_modelvault_ep_private_copy", "the same into private memory (`mmap=False`)"),
    (
        "load_safetensors_module",
        "`safetensors.torch.load_file` + module on meta, `load_state_dict(assign=True)`",
    ),
    ("load_safetensors_weights", "`safetensors.torch.load_file` alone (weights, no module)"),
    ("load_torch_jit", "`torch.jit.load(map_location=...)`"),
    ("load_modelvault_ts", "modelvault TorchScript load (verified)"),
]


def torch_formats(r: dict[str, Any]) -> list[str]:
    med, growth = r["medians_s"], r["rss_growth_bytes"]
    gpu = r["device"] != "cpu"
    lines = _header(
        r,
        f"{r['model_bytes'] / 1e9:.2f} GB model ({r['model']}) onto `{r['device']}`; "
        f"median of {r['runs']} rounds after {r['warmup']} unmeasured, peers alternating; "
        "every load ends with a callable module (safetensors: weights only, where said) "
        "whose weights are resident on the device.",
    )
    lines += ["| operation | median s | host RSS growth (max) |", "| --- | ---: | ---: |"]
    for key, label in _TORCH_ROWS:
        if key in med:
            g = growth.get(key)
            mem = f"{max(g) / 1e6:.0f} MB" if g else ""
            lines.append(f"| {label} | {med[key]:.3f} | {mem} |")

    def x(peer: str, ours: str) -> float:
        return float(med[peer] / med[ours])

    goals: list[tuple[str, str, bool]] = []
    if gpu:
        ep = x("load_torch_export", "load_modelvault_ep")
        st = x("load_safetensors_module", "load_modelvault_ep")
        ts = x("load_torch_jit", "load_modelvault_ts")
        frac = max(growth["load_modelvault_ep"]) / r["model_bytes"]
        goals += [
            (
                "ExportedProgram onto the GPU ≥ 10x faster than `torch.export.load` + move",
                f"{ep:.1f}x",
                ep >= 10,
            ),
            ("ExportedProgram no slower than safetensors + module", f"{st:.2f}x", st >= 1.0),
            ("TorchScript onto the GPU ≥ 2x faster than `torch.jit.load`", f"{ts:.1f}x", ts >= 2),
            (
                "host memory growth while loading onto the GPU < 25% of the model",
                f"{frac:.0%}",
                frac < 0.25,
            ),
        ]
    else:
        save = x("save_torch_export_fsync", "save_modelvault_ep")
        load = x("load_torch_export", "load_modelvault_ep")
        goals += [
            (
                "ExportedProgram save ≥ 2x faster than `torch.export.save` + fsync",
                f"{save:.2f}x",
                save >= 2,
            ),
            (
                "ExportedProgram load ≥ 2x faster than `torch.export.load` + `.module()`",
                f"{load:.2f}x",
                load >= 2,
            ),
        ]
    lines += _goals(goals)
    info = [
        ("save vs `torch.export.save` without fsync", x("save_torch_export", "save_modelvault_ep")),
        (
            "ExportedProgram load vs safetensors + module",
            x("load_safetensors_module", "load_modelvault_ep"),
        ),
        ("TorchScript load vs `torch.jit.load`", x("load_torch_jit", "load_modelvault_ts")),
    ]
    if not gpu:
        lines += ["", "| other ratio (peer / modelvault) | value |", "| --- | ---: |"]
        lines += [f"| {k} | {v:.2f}x |" for k, v in info]
    return lines


# -- the vault against MLflow ----------------------------------------------------------
def vault(r: dict[str, Any]) -> list[str]:
    s = {k: _med(v) for k, v in r["seconds"].items()}
    lines = _header(
        r,
        f"{r['model_bytes'] / 1e9:.2f} GB model ({r['model']}) on `{r['device']}`, torch "
        f"{r['torch']}{', MLflow ' + r['mlflow'] if r.get('mlflow') else ''}; SQLite and a "
        f"local store on both sides, a new home each run; median of {r['runs']} rounds after "
        f"{r['warmup']} unmeasured, peers alternating.",
    )
    lines += ["| operation (both sides start from the same `nn.Module`) | median s |"]
    lines += ["| --- | ---: |"]
    rows = [
        (
            "modelvault_push",
            "modelvault: `torch.export.export` + `Vault.push` (hashed, fsynced, registered)",
        ),
        ("modelvault_export", "&nbsp;&nbsp;of which `torch.export.export`"),
        ("modelvault_push_only", "&nbsp;&nbsp;of which `Vault.push`"),
        ("mlflow_push", "MLflow: `log_model(registered_model_name=..., input_example=x)` + fsync"),
        ("mlflow_push_fsync", "&nbsp;&nbsp;of which the fsync of its artifacts"),
        ("mlflow_push_pinned", "MLflow, `pip_requirements` given (no inference) + fsync"),
        ("modelvault_load", "modelvault: `Vault.load(...).module()`, weights resident"),
        ("mlflow_load", 'MLflow: `load_model("models:/bench/1")`, weights resident'),
    ]
    for key, label in rows:
        if key in s:
            lines.append(f"| {label} | {s[key]:.3f} |")
    goals: list[tuple[str, str, bool]] = []
    if "mlflow_push" in s:
        push = s["mlflow_push"] / s["modelvault_push"]
        pinned = s["mlflow_push_pinned"] / s["modelvault_push"]
        load = s["mlflow_load"] / s["modelvault_load"]
        goals += [
            ("push + register ≥ 5x faster than MLflow `log_model`", f"{push:.1f}x", push >= 5),
            (
                "the same against MLflow with requirement inference off",
                f"{pinned:.1f}x",
                pinned >= 5,
            ),
            ("load by version ≥ 5x faster than MLflow `load_model`", f"{load:.1f}x", load >= 5),
        ]
    o = r["overhead_seconds"]
    if "skipped" in o:
        lines += ["", f"_`Vault.load` overhead not measured: {o['skipped']}._"]
    else:
        ov = r["vault_overhead_ms"]
        goals.append(
            (
                "`Vault.load` adds < 50 ms over the plugin's own load of the same local container",
                f"{ov:.1f} ms ({_med(o['vault_load']):.3f} s vs {_med(o['plugin_load']):.3f} s)",
                ov < 50,
            )
        )
    return lines + _goals(goals)


# -- storage ---------------------------------------------------------------------------
def storage(r: dict[str, Any]) -> list[str]:
    med, mbps = r["median_seconds"], r["median_MBps"]
    mib = 1024 * 1024
    lines = _header(
        r,
        f"SeaweedFS on loopback; {r['size_bytes'] / 2**30:g} GiB blob, "
        f"{r['part_size'] // mib} MiB parts, {r['concurrency']} threads on both sides; median "
        f"of {r['runs']} runs after {r['warmup']} unmeasured, peers alternating.",
    )

    def cell(key: str) -> str:
        return f"{med[key]:.2f} s ({mbps[key]:.0f} MB/s)"

    lines += [
        "| operation | modelvault | boto3, same `TransferConfig` | modelvault vs boto3 |",
        "| --- | --- | --- | ---: |",
        f"| push (`put_file`, hashed, vs `upload_file`) | {cell('mv_push')} | {cell('boto3_upload')} "
        f"| {r['push_vs_boto3']:.0%} |",
        f"| pull (`get_file`: verified, fsync, rename; vs `download_file` + fsync) | {cell('mv_pull')} "
        f"| {cell('boto3_download_fsync')} | {r['pull_vs_boto3_fsync']:.0%} |",
        f"| pull, peer without fsync (reference) | | {cell('boto3_download')} "
        f"| {r['pull_vs_boto3_no_fsync']:.0%} |",
        f"| second push of the unchanged blob | {med['mv_push_again'] * 1000:.1f} ms; S3 calls "
        f"{r['second_push_s3_calls'][0] if r['second_push_s3_calls'] else '?'} | | |",
        f"| pull into a warm cache | {med['mv_pull_warm'] * 1e6:.0f} µs; S3 GET bytes per run "
        f"{r['warm_pull_s3_get_bytes']} | | |",
    ]
    zero = all(b == 0 for b in r["warm_pull_s3_get_bytes"])
    goals = [
        (
            "push ≥ 90% of boto3 `upload_file`",
            f"{r['push_vs_boto3']:.0%}",
            r["push_vs_boto3"] >= 0.9,
        ),
        (
            "pull ≥ 90% of boto3 `download_file` + fsync",
            f"{r['pull_vs_boto3_fsync']:.0%}",
            r["pull_vs_boto3_fsync"] >= 0.9,
        ),
        (
            "second push of an unchanged blob < 5% of the first",
            f"{r['second_push_fraction']:.2%}",
            r["second_push_fraction"] < 0.05,
        ),
        (
            "pull into a warm cache reads no bytes from S3",
            "0 bytes" if zero else "bytes read",
            zero,
        ),
    ]
    return lines + _goals(goals)


# -- oci -------------------------------------------------------------------------------
def oci(r: dict[str, Any]) -> list[str]:
    med, mbps = r["median_seconds"], r["median_MBps"]
    lines = _header(
        r,
        f"CNCF distribution registry (`docker-registry`) on loopback, a fresh one per side "
        f"every round; one version of {r['size_bytes'] / 2**20:g} MiB (one weights file and a "
        f"config); oras {r['oras']}; median of {r['runs']} rounds after {r['warmup']} "
        f"unmeasured, peers alternating.",
    )

    def cell(key: str) -> str:
        return f"{med[key]:.2f} s ({mbps[key]:.0f} MB/s)"

    lines += [
        "| operation | modelvault | oras | modelvault vs oras |",
        "| --- | --- | --- | ---: |",
        f"| push (`push_oci`: sha256 and BLAKE3 of every blob first, the BLAKE3 checked, "
        f"then HEAD and the upload; vs `oras push`: sha256, then one `PUT`) | {cell('mv_push')} | {cell('oras_push')} "
        f"| {r['push_vs_oras']:.2f}x |",
        f"| pull (`pull_oci`: parallel ranged GETs, sha256 and BLAKE3 checked, fsync, "
        f"registered; vs `oras pull` + fsync, unchecked) | {cell('mv_pull')} "
        f"| {cell('oras_pull')} | {r['pull_vs_oras']:.2f}x |",
        f"| pull, hashes computed after the download instead of as the bytes land (reference) "
        f"| {cell('mv_pull_hash_after')} | | {r['hash_after_vs_as_it_lands']:.2f}x the time "
        f"of the pull above |",
    ]
    disk = r.get("disk_write_MBps")
    disk_s = r["size_bytes"] / disk / 1e6 if disk else 0.0
    runs = r["seconds"]
    faster = [
        who
        for who, key in (("modelvault's", "mv_pull"), ("oras's", "oras_pull"))
        if med[key] < disk_s
    ]
    if disk and faster:
        lines += [
            "",
            f"The disk probe before the rounds (write + fsync into fresh blocks) gave {disk:.0f} "
            f"MB/s, at which the {r['size_bytes'] / 2**30:.0f} GiB would take {disk_s:.1f} s: "
            f"{' and '.join(faster)} pull took less than that (each pull starts from blocks "
            "of its size freed just before, not fresh ones, see `_runs.same_disk_state`), "
            "so the probe's figure is no bound on "
            + ("either pull" if len(faster) == 2 else "it")
            + " (modelvault's rounds: "
            + ", ".join(f"{t:.2f}" for t in runs["mv_pull"])
            + " s; oras's: "
            + ", ".join(f"{t:.2f}" for t in runs["oras_pull"])
            + " s).",
        ]
    elif disk and disk_s > 0.5 * med["oras_pull"]:
        lines += [
            "",
            f"The work directory's disk writes {disk:.0f} MB/s with fsync: more than half of "
            "oras's pull is that disk's time, which both sides pay, so the pull ratio here "
            "says more about the disk than about the clients.",
        ]
    goals = [
        ("push ≥ 1x oras", f"{r['push_vs_oras']:.2f}x", r["push_vs_oras"] >= 1.0),
        ("pull ≥ 2x oras", f"{r['pull_vs_oras']:.2f}x", r["pull_vs_oras"] >= 2.0),
    ]
    return lines + _goals(goals)


# -- registry --------------------------------------------------------------------------
def registry(r: dict[str, Any]) -> list[str]:
    cases = ("caret", "alias", "latest", "exact")
    lines = _header(
        r,
        f"{r['models']:,} models of {r['per_model']} versions plus one grown to "
        f"{', '.join(f'{s:,}' for s in r['big_sizes'])} versions; both registries on the same "
        f"engine, alternating in {r['rounds']} turns per case; {r['iters']:,} resolve calls and "
        f"{r['list_iters']:,} listing calls per case and side.",
    )
    lines += [
        "Resolve latency, ms (p50 / p99): random models, then the one big model.",
        "",
        "| engine | system | ^X.Y | alias | latest | exact | big ^X.Y | big alias | big latest | big exact |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    worst = 0.0
    for kind in r["engines"]:
        for system in ("modelvault", "mlflow"):
            side = r[system][kind]
            label = "modelvault" if system == "modelvault" else f"MLflow {side.get('version', '')}"
            if "skipped" in side:
                lines.append(f"| {kind} | {label} | {side['skipped'][:80]} | | | | | | | |")
                continue
            row = [kind, label]
            for section in ("resolve", "resolve_big"):
                for case in cases:
                    c = side[section].get(case)
                    row.append(f"{c['p50_ms']:.2f} / {c['p99_ms']:.2f}" if c else "n/a")
                    if c and system == "modelvault":
                        worst = max(worst, c["p99_ms"])
            lines.append("| " + " | ".join(row) + " |")
    sizes = [str(s) for s in r["big_sizes"]]
    lines += [
        "",
        "Listing the big model's versions, 50 a page, p50 ms (first page / middle page):",
        "",
        "| engine | system | " + " | ".join(f"{int(s):,} versions" for s in sizes) + " |",
        "| --- | --- | " + " | ".join("---" for _ in sizes) + " |",
    ]
    for kind in r["engines"]:
        for system in ("modelvault", "mlflow"):
            side = r[system][kind]
            if "skipped" in side:
                continue
            label = "modelvault" if system == "modelvault" else f"MLflow {side.get('version', '')}"
            cells = [
                f"{side['listing'][s]['first_page']['p50_ms']:.2f} / "
                f"{side['listing'][s]['middle_page']['p50_ms']:.2f}"
                for s in sizes
            ]
            lines.append(f"| {kind} | {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for kind in r["engines"]:
        mv, ml = r["modelvault"][kind], r["mlflow"][kind]
        extra = f"; MLflow {ml['populate_s']} s" if "populate_s" in ml else ""
        lines.append(
            f"- {kind}: bulk population (informational) modelvault {mv['populate_s']} s{extra}"
        )
    return lines + _goals(
        [("every modelvault resolve < 5 ms at p99", f"worst {worst:.2f} ms", worst < 5)]
    )


def verify_cost(r: dict[str, Any]) -> list[str]:
    """The same load with hashing on and off (benchmarks/verify_cost.py)."""
    m = r.get("machine", {})
    load = m.get("loadavg_start", ["?"])[0]
    out = [
        f"Machine: {m.get('cpus', '?')} CPUs, torch {m.get('torch', '?')}, load average {load:.2f} "
        "at start. Median of the runs in the file, hashing on and off alternating.",
        "",
        "| path | device | GB | hashing on s | off s | cost | goal | |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for row in r["rows"]:
        cuda = str(row["device"]).startswith("cuda")
        limit = 5 if cuda else 15
        applies = cuda or row["path"].startswith("local store")
        goal = f"< {limit}%" if applies else ""
        mark = _mark(row["cost_pct"] < limit) if applies else ""
        out.append(
            f"| {row['path']} | {row['device']} | {row['bytes'] / 1e9:.2f} | "
            f"{row['hashing_on_s']:.3f} | {row['hashing_off_s']:.3f} | {row['cost_pct']:+.0f}% | {goal} | {mark} |"
        )
    return out


def dedup(r: dict[str, Any]) -> list[str]:
    """Bytes stored per experiment (benchmarks/dedup_bench.py); sizes, not times."""

    def mb(n: float) -> str:
        return f"{n / 1e6:.1f} MB"

    g1, gp, gf, sd, rf, rb = (
        r[k]
        for k in (
            "gpt2_one",
            "gpt2_partial",
            "gpt2_full",
            "sd16",
            "resnet50_formats",
            "resnet50_bn",
        )
    )
    pub = r["published"]
    xet, zip_ = pub["xet"], pub["zipllm"]

    def saved(e: dict[str, Any], layout: str) -> str:
        return f"{mb(e[layout]['both']['total'])} ({100 * e[layout]['saved_vs_two_copies']:.1f}% saved)"

    def grew(e: dict[str, Any], layout: str, digits: int) -> str:
        return f"+{mb(e[layout]['growth_total'])} ({e[layout]['ratio_total']:.{digits}f}x)"

    def stored(e: dict[str, Any], layout: str, digits: int) -> str:
        return f"{mb(e[layout]['stored']['total'])} ({e[layout]['ratio_total']:.{digits}f}x)"

    def small(e: dict[str, Any], layout: str) -> str:
        x = e[layout]
        return (
            f"+{x['growth_data']} B data, +{x['growth_total']} B with the manifest "
            f"({x['ratio_data']:.3f}x / {x['ratio_total']:.2f}x)"
        )

    rows = [
        (
            f"GPT-2, one {mb(g1['changed_bytes'])} tensor changed: store growth (x the tensor)",
            grew(g1, "1.0", 1),
            grew(g1, "1.1", 3),
            grew(g1, "1.2", 3),
            "< 1.5x the tensor",
            g1["1.2"]["ratio_total"] < 1.5,
        ),
        (
            f"GPT-2 base + a fine-tune changing {mb(gp['changed_bytes'])}: both stored",
            saved(gp, "1.0"),
            saved(gp, "1.1"),
            saved(gp, "1.2"),
            f"Xet: {xet['two_versions_bytes'] / 1e9:.1f} GB -> {xet['stored_bytes'] / 1e6:.0f} MB "
            f"({100 * xet['reduction']:.0f}%)",
            None,
        ),
        (
            "GPT-2 full fine-tune (every tensor changed): both stored",
            saved(gf, "1.0"),
            saved(gf, "1.1"),
            saved(gf, "1.2"),
            f"ZipLLM ({zip_['corpus']}): tensor dedup {100 * zip_['tensor_dedup_reduction']:.1f}%, "
            f"with BitX deltas {100 * zip_['with_bitx_deltas_reduction']:.1f}%",
            None,
        ),
        (
            f"resnet50 as ExportedProgram + TorchScript + state dict ({mb(rf['model_bytes'])} of weights)",
            stored(rf, "1.0", 2),
            stored(rf, "1.1", 3),
            stored(rf, "1.2", 3),
            "< 1.05x the model",
            rf["1.2"]["ratio_total"] < 1.05,
        ),
        (
            f"resnet50, one {rb['changed_bytes']} B BatchNorm tensor changed: growth",
            f"+{mb(rb['1.0']['growth_total'])}",
            f"+{rb['1.1']['growth_total'] / 1e3:.0f} KB",
            f"+{rb['1.2']['growth_total'] / 1e3:.0f} KB",
            "",
            None,
        ),
    ]
    for part in ("weight", "bias"):
        e = sd[part]
        rows.append(
            (
                f"16-tensor state dict, one {e['changed_bytes'] / 1024:.0f} KiB tensor ({e['changed_tensor']}) changed: growth",
                f"+{mb(e['1.0']['growth_total'])} ({e['1.0']['ratio_total']:.1f}x)",
                small(e, "1.1"),
                small(e, "1.2"),
                "< 1.5x the tensor",
                e["1.2"]["ratio_total"] < 1.5,
            )
        )
    out = [
        describe(r.get("machine")),
        "",
        "Bytes the store holds (blobs plus manifests) per experiment; every weight random, "
        "biases and norms included. The goals apply to the writer this code is (1.2). "
        "Command: `python benchmarks/dedup_bench.py`.",
        "",
        "| experiment | format 1.0 (one section) | format 1.1 (a blob per large tensor) "
        "| format 1.2 (1.1, manifest deflated) | goal or published figure | |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for what, old, mid, new, goal, ok in rows:
        out.append(
            f"| {what} | {old} | {mid} | {new} | {goal} | {'' if ok is None else _mark(ok)} |"
        )
    return out


def gpu_load(r: dict[str, Any]) -> list[str]:
    """GPU loads against the peers and the limits (benchmarks/gpu_load.py)."""
    m = r.get("machine", {})
    rows = r["rows"]
    out = [
        describe(m),
        "",
        f"GPU: {m.get('gpu', '?')}, torch {m.get('torch', '?')} (CUDA {m.get('cuda', '?')}); "
        f"modelvault's hashing: {m.get('gpu_hashing', '?')}. Code: {r.get('code', 'see the command')}. "
        "Median of the runs in the file; every reader ends with its tensors on the GPU and the "
        "device synchronized.",
        "",
    ]
    for path in ("local-warm", "s3-cold"):
        mine = [x for x in rows if x["path"] == path]
        if not mine:
            continue
        out += [f"**{path}**", ""]
        out += ["| GB | system | format | s | GB/s | against modelvault | goal | |"]
        out += ["| ---: | --- | --- | ---: | ---: | ---: | --- | --- |"]
        for size in sorted({x["size_gb"] for x in mine}):
            at = [x for x in mine if x["size_gb"] == size]
            ours = {x["format"]: x for x in at if x["system"] == "modelvault"}
            limit = next((x for x in at if x["system"] == "pinned-h2d-limit"), None)
            best = min((x["seconds"] for x in ours.values()), default=None)
            for x in at:
                goal, ok, ratio = "", None, ""
                if x["system"] == "modelvault" and path == "local-warm":
                    share = x["GBps"] / limit["GBps"] if limit else 0.0
                    goal = "≥ 30 GB/s and ≥ 55% of pinned copy"
                    ok = x["GBps"] >= 30 and share >= 0.55
                    ratio = f"{share:.0%} of the copy engine"
                elif (
                    x["system"] not in ("modelvault", "pinned-h2d-limit", "pread-16t-limit")
                    and best
                ):
                    ref = (
                        ours.get("tensors")
                        or ours.get("tensors (fills the cache)")
                        or next(iter(ours.values()))
                    )
                    ratio = (
                        f"{x['seconds'] / ref['seconds']:.2f}x slower"
                        if x["seconds"] >= ref["seconds"]
                        else f"{ref['seconds'] / x['seconds']:.2f}x faster"
                    )
                    if x["system"] == "safetensors":
                        goal, ok = "modelvault ≥ 2.5x", x["seconds"] / ref["seconds"] >= 2.5
                    elif x["system"] in (
                        "fastsafetensors",
                        "torch.load-mmap",
                        "runai-model-streamer",
                    ):
                        goal, ok = "modelvault faster", x["seconds"] > ref["seconds"]
                    elif x["system"] == "boto3+safetensors":
                        goal, ok = "modelvault ≥ 2x", x["seconds"] / ref["seconds"] >= 2
                out.append(
                    f"| {size:g} | {x['system']} | {x['format']} | {x['seconds']:.3f} | {x['GBps']:.1f} | "
                    f"{ratio} | {goal} | {'' if ok is None else _mark(ok)} |"
                )
        out.append("")
    mem = r.get("memory") or []
    if mem:
        worst = max(mem, key=lambda e: e["host_growth_bytes"] / e["model_bytes"])
        share = worst["host_growth_bytes"] / worst["model_bytes"]
        kept = max((e.get("kept_bytes") or 0 for e in mem), default=0)
        smallest = min(mem, key=lambda e: e["model_bytes"])
        out.append(
            "Host memory growth during a modelvault load (peak RSS above the start"
            + (", of the process and its children" if any("kept_bytes" in e for e in mem) else "")
            + f", sampled every 2 ms, after the first load of the process): at most "
            f"{worst['host_growth_bytes'] / 2**20:.1f} MiB ({share:.3%} of the {worst['size_gb']:g} GB "
            f"model, {worst['format']}); goal < 25% {_mark(share < 0.25)}."
            + (
                f" The first CUDA load of a process also makes what later loads reuse: the reader "
                f"process and its shared pinned ring, {kept / 2**20:.0f} MiB in all "
                f"({kept / smallest['model_bytes']:.1%} of the {smallest['size_gb']:g} GB model)."
                if kept
                else " The first load of a process also allocates the pinned ring (256 MiB), which "
                "torch's host allocator keeps for the next."
            )
        )
    return out


def signing(r: dict[str, Any]) -> list[str]:
    """A signed load with and without the trust policy (benchmarks/signing_bench.py)."""
    ok = r["overhead_pct"] < r["target_pct"]
    return [
        *_header(
            r,
            f"One signed version of {r['bytes'] / 1e9:.1f} GB (64 tensors), loaded {r['runs']} times "
            "with `MVAULT_TRUST` in force and without, alternating; weights resident in both.",
        ),
        "| | with the policy | without | cost | goal | |",
        "| --- | ---: | ---: | ---: | --- | --- |",
        f"| load (median) | {r['median_with_policy_s']:.3f} s | {r['median_without_policy_s']:.3f} s | "
        f"{r['overhead_pct']:+.1f}% | < {r['target_pct']:g}% of the load | {_mark(ok)} |",
        f"| the policy check alone (signatures fetched, OMS bundle verified) | "
        f"{r['check_only_median_s'] * 1e3:.1f} ms | | {r['check_only_pct_of_load']:.2f}% of the load | | |",
    ]


def startup(r: dict[str, Any]) -> list[str]:
    out = _header(
        r,
        "Median wall time of a fresh interpreter per command, then its costliest imports (`-X importtime`, cumulative).",
    )
    out += [
        f"A bare `python -c pass` takes {r['bare_python_s'] * 1e3:.0f} ms here.",
        "",
        "| command | ms | costliest imports (ms) | goal | |",
        "| --- | ---: | --- | --- | --- |",
    ]
    for row in r["rows"]:
        imports = ", ".join(f"{name} {sec * 1e3:.0f}" for name, sec in row["imports"])
        out.append(
            f"| `{row['command']}` | {row['seconds'] * 1e3:.0f} | {imports} | "
            f"< {row['goal_s'] * 1e3:.0f} ms | {_mark(row['met'])} |"
        )
    return out


RENDERERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "startup": startup,
    "signing": signing,
    "gpu_load": gpu_load,
    "dedup": dedup,
    "bundle": bundle,
    "torch_cpu": torch_formats,
    "torch_cuda": torch_formats,
    "vault": vault,
    "storage": storage,
    "registry": registry,
    "oci": oci,
}


def render(report: dict[str, Any]) -> str:
    """The Markdown of one results file, or a note saying why it cannot be shown."""
    if "gpt2_one" in report and "published" in report:  # byte counts: no timing to distrust
        return "\n".join(dedup(report))
    if report.get("rows") and "hashing_on_s" in report["rows"][0]:
        return "\n".join(verify_cost(report))
    if report.get("schema", 1) < SCHEMA:
        return (
            "_No figures: this results file was written by an earlier version of the "
            "benchmark (unequal work on the two sides, no machine record). Re-run it._"
        )
    fn = RENDERERS.get(str(report.get("benchmark")))
    if fn is None:
        return f"_No renderer for benchmark {report.get('benchmark')!r}._"
    return "\n".join(fn(report))
