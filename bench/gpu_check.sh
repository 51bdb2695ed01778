#!/usr/bin/env bash
# One-shot CUDA check of the torch backend (issue 4), under 5 minutes on one GPU:
#   1. the torch tests on the cuda device (pytest -k cuda, deterministic hypothesis profile),
#   2. bench/loss_overhead.py on cuda at 64x4096, 256x8192 and 1024x16384,
#   3. a short summary table.
# Outputs (pytest log, bench JSON/markdown, summary) go to "$OUT" when it is set, else to
# bench/results/. Needs python with torch (CUDA build), numpy, pytest and hypothesis; no
# network. Usage: bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-bench/results}"
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CI=1  # the deterministic hypothesis profile of tests/conftest.py
START=$(date +%s)

python - <<'PY' 2>&1 | tee "$DEST/loss_overhead_gpu_check_env.txt"
import platform, sys, torch, numpy
print("python", sys.version.split()[0], "| torch", torch.__version__, "| numpy", numpy.__version__,
      "| platform", platform.platform())
print("cuda available:", torch.cuda.is_available(),
      "| device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
if not torch.cuda.is_available():
    sys.exit("no CUDA device: nothing to check")
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1

echo "== 1. torch tests on cuda"
if python -c "import pytest, hypothesis" 2>/dev/null; then
  timeout 130 python -m pytest -q -p no:cacheprovider tests/test_torch_*.py -k cuda -rfE 2>&1 | tee "$DEST/loss_overhead_gpu_check_pytest.txt"
  TESTS_RC=${PIPESTATUS[0]}
else
  echo "pytest or hypothesis missing: tests not run" | tee "$DEST/loss_overhead_gpu_check_pytest.txt"
  TESTS_RC=99
fi

echo "== 2. loss_overhead benchmark on cuda"
timeout 100 python bench/loss_overhead.py --device cuda --repeats 20 --out "$DEST" 2>&1 | tee "$DEST/loss_overhead_gpu_check_bench.txt"
BENCH_RC=${PIPESTATUS[0]}

echo "== 3. summary"
python - "$DEST" "$TESTS_RC" "$BENCH_RC" "$START" <<'PY' 2>&1 | tee "$DEST/loss_overhead_gpu_check_summary.txt"
import json, sys, time
from pathlib import Path
dest, tests_rc, bench_rc, start = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tail = (dest / "loss_overhead_gpu_check_pytest.txt").read_text().strip().splitlines()
print(f"tests (cuda): rc={tests_rc}  {tail[-1] if tail else ''}")
try:
    data = json.loads((dest / "loss_overhead_cuda.json").read_text())
except (OSError, ValueError):
    print(f"bench: rc={bench_rc}, no results file")
else:
    print(f"bench: rc={bench_rc}  device={data['machine'].get('device')}  gspo peer={data['gspo_peer']}")
    print(f"{'B x T':>12} {'espo ms':>9} {'gspo ms':>9} {'floor ms':>9} {'espo/gspo':>9} {'target':>6} {'espo MiB':>9} {'gspo MiB':>9}")
    for r in data["rows"]:
        print(f"{r['B']:>5} x {r['T']:<5}{1e3 * r['espo_s']:>9.3f} {1e3 * r['gspo_s']:>9.3f} "
              f"{1e3 * r['ppo_floor_s']:>9.3f} {r['espo_over_gspo_time']:>9.2f} "
              f"{'ok' if r['within_target'] else 'MISS':>6} {r['espo_peak_bytes'] / 2**20:>9.1f} "
              f"{r['gspo_peak_bytes'] / 2**20:>9.1f}")
print(f"total wall time: {time.time() - start:.0f} s")
PY
[ "$TESTS_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ]
