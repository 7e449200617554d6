#!/usr/bin/env bash
# Run the Torch-TensorRT integration tests (compile, push both IRs, load and compare,
# build on miss, refit, device, version-compatible engines) on a machine with a CUDA GPU,
# torch_tensorrt and TensorRT installed, and keep a log of the run and of the machine.
#
#   scripts/tensorrt-integration.sh [LOG]      (default: tensorrt-integration-<host>-<utc>.log)
#
# PYTHON selects the interpreter (default: python3). The exit status is pytest's; a run
# where every test skipped (no TensorRT here) exits 3, so it cannot pass for a proof.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=${1:-tensorrt-integration-$(hostname)-$(date -u +%Y%m%dT%H%M%SZ).log}
{
  echo "# modelvault Torch-TensorRT integration run, $(date -u +%FT%TZ) on $(hostname)"
  echo "# commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=index,name,compute_cap,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: not found"
  "$PY" - <<'PY' 2>&1
import importlib, platform
print("python", platform.python_version(), platform.machine())
for name in ("torch", "tensorrt", "torch_tensorrt", "modelvault"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "?"))
    except Exception as exc:  # the log says why a package is unusable
        print(name, "NOT IMPORTABLE:", type(exc).__name__, exc)
try:
    import torch
    print("cuda", torch.version.cuda, "devices", torch.cuda.device_count())
except Exception as exc:
    print("cuda: unknown:", exc)
PY
  echo "# pytest"
} >"$LOG"
"$PY" -m pytest -p no:cacheprovider -ra -v -m tensorrt tests/formats/tensorrt/test_integration.py \
  -o junit_family=xunit2 --junitxml="${LOG%.log}.xml" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
if [ "$rc" -eq 0 ] && ! grep -qE '^tests/.* PASSED' "$LOG"; then
  echo "# every test skipped: nothing was proven on this machine" | tee -a "$LOG"
  rc=3
fi
echo "# exit $rc; log: $LOG" | tee -a "$LOG"
exit "$rc"
