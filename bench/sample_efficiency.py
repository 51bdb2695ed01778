"""Sample efficiency of ESPO and the baselines on the built-in tasks (CPU, tiny model).

For each task and seed, one supervised warm-start (shared by every algorithm), then every
algorithm trains for the same number of RL steps on the same prompts and sampling
generators. Reported per task and algorithm, over the seeds: the final reward (mean of the
last 10 steps' training reward), the greedy evaluation accuracy after training, and the
number of steps until the 10-step moving average of the reward first reaches a threshold
(the warm-started policy's own reward + ``--margin``; "-" where a seed never reaches it).
The numbers are what was measured, whichever method wins.

    nice python bench/sample_efficiency.py [--seeds 5] [--steps 150] [--jobs 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, write_results  # noqa: E402

ALGOS = ("espo", "gspo", "grpo", "dapo", "gmpo", "cispo")
TASKS = {
    "arith": {"task_options": {"max_operand": 9}, "sft_steps": 300, "max_new_tokens": 24},
    "reverse": {"task_options": {"length": 3}, "sft_steps": 250, "sft_lr": 1e-3, "max_new_tokens": 16},
}
SETTINGS = dict(model="tiny", model_hidden=64, model_layers=2, prompts_per_step=8, group_size=8, temperature=1.0,
                ppo_epochs=2, minibatches=2, lr=2e-4, grad_clip=1.0, score_truncated=True, sft_batch=32,
                sft_lr=3e-3, sft_correct_fraction=1.0, eval_prompts=200, checkpoint_every=0, device="cpu", threads=1)


def base_config(task: str, seed: int, steps: int, out_dir: str):
    from espo_ref.train import TrainConfig

    return TrainConfig(out_dir=out_dir, task=task, seed=seed, steps=steps, **{**SETTINGS, **TASKS[task]})


def warm_start(job):
    from espo_ref.train.trainer import warm_start_weights

    task, seed, steps, work = job
    config = base_config(task, seed, steps, f"{work}/{task}-{seed}")
    result = warm_start_weights(config, f"{work}/{task}-{seed}/warmstart.pt", progress=False)
    return task, seed, result


def train_one(job):
    from espo_ref.train import train
    from espo_ref.train.metrics import read_metrics

    task, seed, algo, steps, work = job
    out = f"{work}/{task}-{seed}/{algo}"
    config = base_config(task, seed, steps, out).replace(algo=algo, init_weights=f"{work}/{task}-{seed}/warmstart.pt",
                                                         sft_steps=0)
    start = time.perf_counter()
    summary = train(config, progress=False, log=lambda *a: None)
    records = read_metrics(out)
    return {"task": task, "seed": seed, "algo": algo, "steps": steps, "wall_time_s": time.perf_counter() - start,
            "reward": [r["reward"] for r in records], "accuracy": [r["accuracy"] for r in records],
            "clipfrac": [r.get("clipfrac") for r in records], "entropy": [r["entropy"] for r in records],
            "final_reward": summary["reward_last10"], "final_accuracy": summary["accuracy_last10"],
            "eval_accuracy_before": summary.get("eval_accuracy_before"),
            "eval_accuracy_after": summary.get("eval_accuracy_after")}


def moving_average(values, window=10):
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1): i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def steps_to(values, threshold, window=10):
    for i, v in enumerate(moving_average(values, window)):
        if i + 1 >= window and v >= threshold:
            return i + 1
    return None


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs, warm, margin):
    rows = []
    for task in dict.fromkeys(r["task"] for r in runs):
        for algo in ALGOS:
            mine = [r for r in runs if r["task"] == task and r["algo"] == algo]
            if not mine:
                continue
            reached = []
            for r in mine:
                threshold = warm[(task, r["seed"])]["sampled_reward"] + margin
                r["threshold"] = threshold
                r["steps_to_threshold"] = steps_to(r["reward"], threshold)
                reached.append(r["steps_to_threshold"])
            final_mean, final_sd = spread([r["final_reward"] for r in mine])
            eval_mean, eval_sd = spread([r["eval_accuracy_after"] for r in mine])
            hit = [s for s in reached if s is not None]
            rows.append({"task": task, "algo": algo, "seeds": len(mine), "final_reward_mean": final_mean,
                         "final_reward_sd": final_sd, "eval_accuracy_mean": eval_mean, "eval_accuracy_sd": eval_sd,
                         "reached": len(hit), "steps_to_threshold_mean": statistics.mean(hit) if hit else None,
                         "steps_to_threshold_each": reached,
                         "clipfrac_mean": statistics.mean(v for r in mine for v in r["clipfrac"] if v is not None),
                         "wall_time_s_mean": statistics.mean(r["wall_time_s"] for r in mine)})
    return rows


def format_table(rows, margin) -> str:
    head = (f"{'task':<8} {'algo':<6} {'final reward':>16} {'greedy eval acc':>16} "
            f"{'steps to thr.':>14} {'reached':>8} {'clipfrac':>9} {'s/run':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        steps = "-" if r["steps_to_threshold_mean"] is None else f"{r['steps_to_threshold_mean']:.0f}"
        lines.append(f"{r['task']:<8} {r['algo']:<6} {r['final_reward_mean']:>8.3f} +- {r['final_reward_sd']:.3f} "
                     f"{r['eval_accuracy_mean']:>8.3f} +- {r['eval_accuracy_sd']:.3f} {steps:>14} "
                     f"{r['reached']:>4}/{r['seeds']:<3} {r['clipfrac_mean']:>9.4f} {r['wall_time_s_mean']:>6.0f}")
    lines += [
        "",
        "final reward: mean of the last 10 steps' training reward (temperature 1), mean +- sd over seeds.",
        "greedy eval acc: exact-answer accuracy of greedy decoding on 200 fixed prompts after training.",
        "steps to thr.: first step at which the 10-step moving average of the reward reaches the seed's",
        f"  warm-started sampled reward + {margin}; mean over the seeds that reached it (reached: how many).",
        "clipfrac: clipped response tokens / all response tokens, mean over updates (CISPO caps its weight",
        "  at 1 + 4 and never counts as clipped here).",
        "",
        "Setup: tiny Qwen2-style model (2 layers, width 64, character vocabulary); per task and seed one",
        "supervised warm-start on worked examples shared by all algorithms (arith: 300 steps, lr 3e-3;",
        "reverse: 250 steps, lr 1e-3), stopped before mastery; then 8 prompts x G = 8 responses per step at",
        "temperature 1, 2 epochs x 2 mini-batches, AdamW lr 2e-4, same prompts and sampling generators for",
        "every algorithm. arith: ' the answer is N .' template, reward 1/0 (ESPO's structure); reverse: reverse",
        "3 digits, reward = fraction of digits right. Each algorithm at the reference's defaults.",
    ]
    return "\n".join(lines)


def plot(runs, warm, path: Path):
    """Per task: the mean over seeds of the training reward's gain over the seed's
    warm-started policy (10-step moving average), band = +- one standard error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in runs))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for algo in ALGOS:
            mine = [r for r in runs if r["task"] == task and r["algo"] == algo]
            if not mine:
                continue
            curves = [[v - warm[(task, r["seed"])]["sampled_reward"] for v in moving_average(r["reward"])]
                      for r in mine]
            n = min(len(c) for c in curves)
            mean = [statistics.mean(c[i] for c in curves) for i in range(n)]
            se = [statistics.stdev(c[i] for c in curves) / len(curves) ** 0.5 if len(curves) > 1 else 0.0
                  for i in range(n)]
            steps = list(range(1, n + 1))
            (line,) = ax.plot(steps, mean, label=algo.upper())
            ax.fill_between(steps, [m - e for m, e in zip(mean, se)], [m + e for m, e in zip(mean, se)],
                            color=line.get_color(), alpha=0.12)
        ax.set_title(f"{task}: training reward gain over the warm-started policy\n"
                     f"(10-step average, mean over {len({r['seed'] for r in runs})} seeds, band +- 1 s.e.)",
                     fontsize=8)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    tmp.replace(path)


def replot() -> int:
    """Redraw sample_efficiency.png from the committed sample_efficiency.json."""
    payload = json.loads((RESULTS / "sample_efficiency.json").read_text())
    warm = {tuple(k.rsplit("-", 1)): v for k, v in payload["warm_start"].items()}
    warm = {(t, int(s)): v for (t, s), v in warm.items()}
    plot(payload["runs"], warm, RESULTS / "sample_efficiency.png")
    write_results("sample_efficiency", payload, format_table(payload["rows"], payload["settings"]["margin"]))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one CPU thread each)")
    parser.add_argument("--margin", type=float, default=0.1, help="threshold = warm-started reward + margin")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--algos", nargs="+", default=list(ALGOS))
    parser.add_argument("--quick", action="store_true", help="1 seed, 5 steps, results not written")
    parser.add_argument("--replot", action="store_true", help="only redraw the plot from the results JSON")
    args = parser.parse_args(argv)
    if args.replot:
        return replot()
    if args.quick:
        args.seeds, args.steps = 1, 5
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="espo-sample-eff-") as work, \
            ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        jobs = [(task, seed, args.steps, work) for task in args.tasks for seed in range(args.seeds)]
        warm = {}
        for task, seed, result in pool.map(warm_start, jobs):
            warm[(task, seed)] = result
            print(f"warm-start {task} seed {seed}: greedy accuracy {result.get('eval_accuracy', float('nan')):.3f}",
                  flush=True)
        jobs = [(task, seed, algo, args.steps, work) for task in args.tasks for seed in range(args.seeds)
                for algo in args.algos]
        runs = []
        for r in pool.map(train_one, jobs):
            runs.append(r)
            print(f"{r['task']:<8} seed {r['seed']} {r['algo']:<6} final reward {r['final_reward']:.3f} "
                  f"greedy eval {r['eval_accuracy_before']:.3f} -> {r['eval_accuracy_after']:.3f} "
                  f"({r['wall_time_s']:.0f} s)", flush=True)
    for (task, seed), w in warm.items():  # the warm-started policy's sampled reward: first 5 steps, all algos
        firsts = [v for r in runs if r["task"] == task and r["seed"] == seed for v in r["reward"][:5]]
        w["sampled_reward"] = statistics.mean(firsts)
    rows = summarise(runs, warm, args.margin)
    table = format_table(rows, args.margin)
    print(table)
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.quick:
        return 0
    payload = {"machine": {**machine_info(), **_versions()}, "settings": {**SETTINGS, "tasks": TASKS,
               "steps": args.steps, "seeds": args.seeds, "margin": args.margin},
               "warm_start": {f"{t}-{s}": {k: v for k, v in w.items() if k != "eval_example"} for (t, s), w in warm.items()},
               "rows": rows, "runs": runs, "total_time_s": time.perf_counter() - start}
    write_results("sample_efficiency", payload, table)
    plot(runs, warm, RESULTS / "sample_efficiency.png")
    return 0


def _versions() -> dict:
    import matplotlib
    import transformers

    return {"transformers": transformers.__version__, "matplotlib": matplotlib.__version__}


if __name__ == "__main__":
    sys.exit(main())
