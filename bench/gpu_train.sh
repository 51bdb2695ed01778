#!/usr/bin/env bash
# One-command GPU run (about 2-3 minutes on one H100): a larger tiny model (4 layers, width 256)
# trained with ESPO and with GSPO on the templated arithmetic task from one shared warm-start,
# with the per-step time breakdown (generation, old-policy log-prob pass, update).
#
#   bash bench/gpu_train.sh            # writes to $OUT if set, else bench/results/
#   GPU_TRAIN_SMOKE=1 OUT=/tmp/x bash bench/gpu_train.sh   # a few CPU steps: checks the script only
#
# Output: gpu_train.json (machine, versions, settings, per-algorithm breakdown and rewards),
# gpu_train.md (the table), gpu_train_{reward,entropy,clipfrac}.png, and each run's metrics.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-bench/results}"
mkdir -p "$DEST"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
timeout 230 python - "$DEST" "$WORK" <<'PY'
import json, shutil, statistics, sys, time
from pathlib import Path

sys.path.insert(0, "bench")
import torch
from _common import machine_info, write_atomic
from espo_ref.train import TrainConfig, train
from espo_ref.train.metrics import plot_runs, read_metrics
from espo_ref.train.trainer import warm_start_weights

import os

dest, work = Path(sys.argv[1]), Path(sys.argv[2])
smoke = os.environ.get("GPU_TRAIN_SMOKE") == "1"
if not smoke and not torch.cuda.is_available():
    sys.exit("bench/gpu_train.sh needs a CUDA device")
config = TrainConfig(out_dir=str(work / "warm"), task="arith", task_options={"max_operand": 9}, model="tiny",
                     model_hidden=256, model_layers=4, model_heads=8, prompts_per_step=64, group_size=8,
                     max_new_tokens=24, ppo_epochs=2, minibatches=4, lr=1e-4, score_truncated=True,
                     sft_steps=400, sft_batch=128, sft_lr=1e-3, sft_correct_fraction=1.0, eval_prompts=500,
                     steps=60, checkpoint_every=0, device="cuda", seed=0)
if smoke:
    config = config.replace(device="cpu", model_hidden=32, model_layers=1, model_heads=2, prompts_per_step=2,
                            sft_steps=3, sft_batch=8, eval_prompts=4, steps=7)
start = time.perf_counter()
warm = warm_start_weights(config, work / "warm" / "weights.pt", progress=False)
print(f"warm-start: {warm['warm_start_time_s']:.1f} s, greedy accuracy {warm['eval_accuracy']:.3f}", flush=True)
results, runs = {}, {}
for algo in ("espo", "gspo"):
    run = config.replace(algo=algo, out_dir=str(work / algo), init_weights=str(work / "warm" / "weights.pt"),
                         sft_steps=0)
    summary = train(run, progress=False, log=lambda *a: None)
    records = read_metrics(work / algo)
    steady = records[5:] or records  # the first steps include CUDA warm-up
    mean = lambda key: statistics.mean(r[key] for r in steady)
    results[algo] = {
        "steps": len(records), "responses_per_step": run.prompts_per_step * run.group_size,
        "step_time_s": mean("step_time"), "gen_time_s": mean("gen_time"),
        "old_logprob_time_s": mean("old_logprob_time"), "update_time_s": mean("update_time"),
        "tokens_per_s": mean("tokens_per_s"), "reward_first10": statistics.mean(r["reward"] for r in records[:10]),
        "reward_last10": summary["reward_last10"], "eval_accuracy_before": summary.get("eval_accuracy_before"),
        "eval_accuracy_after": summary.get("eval_accuracy_after"), "wall_time_s": summary["wall_time_s"],
        "clipfrac_mean": statistics.mean(r.get("clipfrac", 0.0) for r in records),
    }
    runs[algo.upper()] = records
    shutil.copy(work / algo / "metrics.jsonl", dest / f"gpu_train_{algo}_metrics.jsonl")
    print(algo, json.dumps(results[algo]), flush=True)
for path in plot_runs(runs, work / "plots"):
    shutil.copy(path, dest / f"gpu_train_{path.name}")
head = (f"{'algo':<5} {'step s':>7} {'gen s':>7} {'old-lp s':>9} {'update s':>9} {'tok/s':>9} "
        f"{'reward first10 -> last10':>25} {'greedy acc before -> after':>27}")
lines = [head, "-" * len(head)]
for algo, r in results.items():
    lines.append(f"{algo:<5} {r['step_time_s']:>7.3f} {r['gen_time_s']:>7.3f} {r['old_logprob_time_s']:>9.3f} "
                 f"{r['update_time_s']:>9.3f} {r['tokens_per_s']:>9.0f} "
                 f"{r['reward_first10']:>12.3f} -> {r['reward_last10']:<9.3f} "
                 f"{r['eval_accuracy_before']:>13.3f} -> {r['eval_accuracy_after']:<9.3f}")
table = "\n".join(lines)
print(table)
import transformers
payload = {"machine": {**machine_info(), "transformers": transformers.__version__,
                       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (smoke test)"},
           "settings": config.to_dict(), "warm_start": {k: v for k, v in warm.items() if k != "eval_example"},
           "results": results, "total_time_s": time.perf_counter() - start}
write_atomic(dest / "gpu_train.json", json.dumps(payload, indent=2, sort_keys=True) + "\n")
machine = "\n".join(f"- {k}: {v}" for k, v in payload["machine"].items())
write_atomic(dest / "gpu_train.md", f"# gpu_train\n\n{machine}\n\n```\n{table}\n```\n\nTimes are means per RL step "
             f"after the first 5 steps; {results['espo']['responses_per_step']} responses per step.\n")
PY
echo "results in $DEST"
