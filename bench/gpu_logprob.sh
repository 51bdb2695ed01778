#!/usr/bin/env bash
# One command for a GPU machine (< 3 minutes): the CUDA tests of espo_ref.torch.logprob_entropy
# and bench/logprob_entropy.py at the issue's shape (N=16384, H=4096, V=151936, bf16).
# Writes into "$OUT" when set (else bench/results/): logprob_entropy_cuda.{json,md},
# logprob_entropy_gpu_tests.txt, logprob_entropy_gpu_env.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-bench/results}"
mkdir -p "$DEST"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  python -c "import triton; print('triton', triton.__version__)" 2>&1 || echo "triton: not importable"
  python -c "import verl; print('verl', verl.__version__)" 2>&1 | tail -1
  python -c "import liger_kernel; print('liger_kernel present')" 2>&1 | tail -1
} > "$DEST/logprob_entropy_gpu_env.txt" 2>&1
cat "$DEST/logprob_entropy_gpu_env.txt"

# Benchmark first (the measurement that matters), then the tests; each under its own limit.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
timeout 100 python bench/logprob_entropy.py --n 16384 --h 4096 --v 151936 --dtype bfloat16 --chunk 2048 --repeats 5
bench_rc=$?
[ "$DEST" != "bench/results" ] && cp bench/results/logprob_entropy_cuda.json bench/results/logprob_entropy_cuda.md "$DEST/" 2>/dev/null

CI=true timeout 70 python -m pytest -q -p no:cacheprovider tests/test_logprob_entropy.py --durations=10 \
  > "$DEST/logprob_entropy_gpu_tests.txt" 2>&1
test_rc=$?
tail -25 "$DEST/logprob_entropy_gpu_tests.txt"
echo "bench rc=$bench_rc tests rc=$test_rc (124 = hit its time limit)"
[ $bench_rc -eq 0 ] && [ $test_rc -eq 0 ]
