#!/usr/bin/env bash
# Every GPU check of the project in one command (for a lent GPU machine, no network):
# the torch backend's CUDA tests and loss benchmark (bench/gpu_check.sh), the golden vectors
# on cuda, the log-prob/entropy kernels' tests and benchmark (bench/gpu_logprob.sh), and,
# when present, the trainer's GPU run (bench/gpu_train.sh), and the ESPO/GSPO ratios eager,
# validated and compiled with the host syncs per call (bench/loss_overhead.py --ratios). Results are packed into
# "$OUT/gpu_results.tgz" (the device tool returns at most 8 files) plus "$OUT/summary.txt".
# Usage: OUT=/some/dir bash bench/gpu_all.sh [check] [conform] [logprob] [train] [ratios]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
FINAL="${OUT:-bench/results/gpu}"
mkdir -p "$FINAL"
WORK=$(mktemp -d)
export OUT="$WORK"
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(ratios check conform logprob train)
summary="$FINAL/summary.txt"
: > "$summary"
for part in "${parts[@]}"; do
  start=$(date +%s)
  case "$part" in
    check) bash bench/gpu_check.sh > "$WORK/check.log" 2>&1 ;;
    conform) CI=1 timeout 100 python -m pytest -q -p no:cacheprovider tests/test_conformance_torch.py -k cuda -rfE \
               > "$WORK/conform.log" 2>&1 ;;
    logprob) bash bench/gpu_logprob.sh > "$WORK/logprob.log" 2>&1 ;;
    train) if [ -f bench/gpu_train.sh ]; then bash bench/gpu_train.sh > "$WORK/train.log" 2>&1; else echo "no bench/gpu_train.sh" > "$WORK/train.log"; fi ;;
    ratios) timeout 240 python bench/loss_overhead.py --ratios --device cuda --sizes 64x4096,256x8192,1024x16384 \
              --rounds 5 --out "$WORK" > "$WORK/ratios.log" 2>&1 ;;
    *) echo "unknown part $part" > "$WORK/$part.log" ;;
  esac
  rc=$?
  echo "== $part: rc=$rc in $(( $(date +%s) - start )) s" >> "$summary"
  tail -n 30 "$WORK/$part.log" >> "$summary"
done
# Files the sub-scripts wrote under bench/results (when they ignore $OUT) travel too.
cp bench/results/*cuda* "$WORK/" 2>/dev/null
tar -czf "$FINAL/gpu_results.tgz" -C "$WORK" .
cat "$summary"
