"""``espo-ref demo``: the tiny model on the templated arithmetic task, ESPO against GSPO.

Both algorithms start from the same short supervised warm-start (a few hundred steps on
worked examples: the policy then follows the template and gets about half of the sums
right, with a spread answer distribution: an under-trained policy for RL to improve),
use the same seed, prompts, sampling budget and update schedule, and are compared in
``report.md`` with the plots of the paper's Figs. 3-5.

The demo writes ``warmstart/weights.pt``, ``espo/`` and ``gspo/`` (two training runs),
``report.md`` and the plots into its folder; a folder that already holds any of them is
refused unless ``overwrite``, which removes exactly those files (a run's own files inside
``espo/`` and ``gspo/``) and keeps everything else.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

from .._io import write_atomic
from .config import TrainConfig
from .errors import TrainInputError
from .metrics import PANELS, mean_of, plot_runs, read_metrics

DEMO_ALGOS = ("espo", "gspo")
DEMO_STEPS = 400
DEMO_SETTINGS = dict(
    task="arith", task_options={"max_operand": 9}, model="tiny", model_hidden=64, model_layers=2,
    prompts_per_step=8, group_size=8, temperature=1.0, max_new_tokens=24, ppo_epochs=2, minibatches=2,
    lr=2e-4, grad_clip=1.0, score_truncated=True, sft_steps=300, sft_batch=32, sft_lr=3e-3,
    sft_correct_fraction=1.0, eval_prompts=200, checkpoint_every=100, device="cpu", threads=1,
)


WARM_START = Path("warmstart") / "weights.pt"
DEMO_FILES = ("report.md", *(f"{name}.png" for name in PANELS))  # beside the run folders


def demo_config(out_dir, steps: int | None = None, seed: int = 0) -> TrainConfig:
    return TrainConfig(out_dir=str(out_dir), steps=DEMO_STEPS if steps is None else steps, seed=seed,
                       **DEMO_SETTINGS)


def demo_outputs_in(out: Path) -> list[Path]:
    """What an earlier demo (or anything in its place) left where this demo writes."""
    names = [WARM_START.parent.name, *DEMO_ALGOS, *DEMO_FILES]
    return [out / name for name in names if (out / name).exists() or (out / name).is_symlink()]


def clear_demo_outputs(out: Path, *, overwrite: bool, log=print) -> None:
    """Refuse (TrainInputError, exit 2) a folder holding a demo's files unless ``overwrite``;
    with it, remove exactly the files a demo writes."""
    from .trainer import RunExistsError, remove_run_files

    present = demo_outputs_in(out)
    if not present:
        return
    if not overwrite:
        raise RunExistsError(f"--out {out}: {', '.join(map(str, present))} already exist(s); pass --overwrite to "
                             f"replace what a demo writes there (other files are kept), or choose another --out")
    for name in (WARM_START.parent.name, *DEMO_ALGOS):
        if (out / name).exists() and not (out / name).is_dir():
            raise TrainInputError(f"--out {out}: {out / name} is not a folder; the demo writes a folder there")
    removed = [out / name for name in DEMO_FILES if (out / name).is_file()]
    warm = out / WARM_START
    removed += [warm] if warm.is_file() else []
    for path in removed:
        path.unlink()
    for algo in DEMO_ALGOS:
        removed += remove_run_files(out / algo)
    for folder in (out / WARM_START.parent.name, *(out / algo for algo in DEMO_ALGOS)):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    if removed:
        log(f"--overwrite: removed {', '.join(map(str, removed))}")


def _fmt(x, digits=3):
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


def _row(label: str, summary: dict, records: list[dict]) -> str:
    first = records[: min(10, len(records))]
    cells = [
        label, str(summary["steps"]), f"{summary['wall_time_s']:.0f}",
        _fmt(mean_of(first, "reward")), _fmt(summary["reward_last10"]), _fmt(summary["accuracy_last10"]),
        f"{_fmt(summary.get('eval_accuracy_before'), 2)} -> {_fmt(summary.get('eval_accuracy_after'), 2)}",
        f"{_fmt(mean_of(records, 'clipfrac_high'), 4)} / {_fmt(mean_of(records, 'clipfrac_low'), 4)}",
        f"{_fmt(mean_of(records, 'clipfrac_high_group'), 4)} / {_fmt(mean_of(records, 'clipfrac_low_group'), 4)}",
        f"{_fmt(mean_of(first, 'entropy'))} -> {_fmt(mean_of(records, 'entropy', 10))}",
        _fmt(mean_of(records, "approx_kl"), 5),
    ]
    return "| " + " | ".join(cells) + " |"


def last_batch_clips(run_dir: Path) -> tuple[Path, dict, int, int, int] | None:
    """[ESPO-CLIPMASK] The run's last saved batch (``batches/step_NNNNNN_last.npz``, the last update of
    its last sampled step, after the policy moved) with what it logged and its response tokens,
    tokens clipped above 1 + eps and below 1 - eps as the reference counts them (what ``espo-ref
    explain`` on it shows); None: the run saved no such batch."""
    from ..explain import espo_config_of, load_batch, token_view
    from .samples import BATCHES_DIR

    saved = sorted((run_dir / BATCHES_DIR).glob("step_*_last.npz"))
    if not saved:
        return None
    batch = load_batch(saved[-1])
    view = token_view(batch, espo_config_of(batch))
    clipped = (int(view.arrays["clipped_high"].sum()), int(view.arrays["clipped_low"].sum()))
    return saved[-1], dict(batch.logged or {}), int(view.arrays["mask"].sum()), *clipped


def last_batch_line(run_dir: Path) -> str | None:
    """One sentence: the last saved batch, its update and its clipped tokens above and below, with
    the ``espo-ref explain`` command that shows them (None: no such batch)."""
    found = last_batch_clips(run_dir)
    if found is None:
        return None
    path, logged, tokens, high, low = found
    return (f"The last saved batch, `{run_dir.name}/batches/{path.name}` (step {logged.get('step', '?')}, the "
            f"step's last update: {logged.get('update', '?')}, after its earlier updates moved the policy), has "
            f"{high} of its {tokens} response tokens clipped above 1 + eps (A > 0) and {low} below 1 - eps (A < 0): "
            f"`espo-ref explain {path}` shows them (the step's first mini-batch has ratio 1 and none).")


def token_view_lines(run_dir: Path) -> list[str]:
    """[ESPO-GROUP] What the ESPO run's sampled rollouts show about the high-entropy group: the
    share of answer-digit tokens in it against the share of template tokens, at the first and
    the last sampled step (whatever it shows)."""
    from .samples import SAMPLES_FILE, TOKEN_VIEW, high_group_share

    records = read_metrics(run_dir / SAMPLES_FILE)
    if not records:
        return []
    steps = sorted({r["step"] for r in records})
    parts = []
    for step in (steps[0], steps[-1]):
        mine = [r for r in records if r["step"] == step]
        digits, n_digits = high_group_share(mine, str.isdigit)
        other, n_other = high_group_share(mine, lambda tok: not tok.isdigit())
        parts.append(f"at step {step}, {digits} of {n_digits} answer-digit tokens "
                     f"({_fmt(digits / max(n_digits, 1), 2)}) were in the high-entropy group against {other} of "
                     f"{n_other} other tokens ({_fmt(other / max(n_other, 1), 2)})")
    return [
        "## What ESPO did to each token",
        "",
        f"[`{run_dir.name}/{TOKEN_VIEW}`]({run_dir.name}/{TOKEN_VIEW}) shows the ESPO run's sampled responses of the "
        "first and the last sampled step, each token coloured by its entropy group and marked where clipping bit "
        f"(hover for its entropy, epsilon and clip side); `{run_dir.name}/batches/` holds each sampled step's "
        "first and last mini-batch updates for `espo-ref explain`. In the samples kept (the first responses of "
        f"each sampled step's last mini-batch update), {parts[0]}; {parts[1]}.",
        "",
        *([line, ""] if (line := last_batch_line(run_dir)) else []),
    ]


def write_report(out: Path, config: TrainConfig, warm: dict, results: dict, total_s: float) -> Path:
    import torch
    import transformers

    n = min(10, config.steps)  # the window of the summaries: a short run has fewer steps than 10
    header = (f"| algorithm | steps | time (s) | reward, first {n} steps | reward, last {n} | accuracy, last {n} "
              "| greedy eval accuracy, before -> after | clip frac upper / lower | clip frac high- / low-entropy "
              f"group | entropy, first -> last {n} | approx KL |")
    rule = "|" + "---|" * 11
    rows = [_row(algo.upper(), summary, records) for algo, (summary, records) in results.items()]
    lines = [
        "# espo-ref demo: ESPO and GSPO on a templated arithmetic task",
        "",
        f"Tiny Qwen2-style model ({config.model_layers} layers, width {config.model_hidden}, character "
        f"vocabulary), task `{config.task}` {json.dumps(config.task_options)}: prompts like `Q: 3+4 = ?` and "
        "answers in the template ` the answer is 7 .` — easy, low-entropy template tokens around one hard "
        "decision token, the structure ESPO's entropy grouping targets. Reward 1 for the exact template "
        "with the right sum, else 0.",
        "",
        f"**Warm-start** (shared by both runs, the same for both algorithms): {warm['warm_start_steps']} "
        f"supervised steps (batch {config.sft_batch}, lr {config.sft_lr}) on template-formatted worked examples "
        f"(right answer with probability {config.sft_correct_fraction}), stopped early so that RL starts from a "
        "policy that follows the template but has not mastered the sums; cross-entropy "
        f"{_fmt(warm['warm_start_loss_first'])} -> {_fmt(warm['warm_start_loss_last'])}, greedy accuracy after "
        f"it {_fmt(warm.get('eval_accuracy'), 2)} on {config.eval_prompts} prompts.",
        "",
        f"**RL**: {config.steps} steps per algorithm, same seed ({config.seed}), same prompts and sampling "
        f"generator per step; {config.prompts_per_step} prompts x G = {config.group_size} responses at "
        f"temperature {config.temperature}; {config.ppo_epochs} epochs x {config.minibatches} mini-batches per "
        f"rollout; AdamW lr {config.lr}, gradient clip {config.grad_clip}. ESPO: the reference defaults "
        "(alpha 0.02, top 20% entropy group, group-mean epsilon, GSPO-token ratio); GSPO: eps 3e-4 / 4e-4. "
        "Advantages by Eq. 11 [ESPO-ADV].",
        "",
        header, rule, *rows,
        "",
        "Reward and accuracy are the training samples' (temperature 1); greedy eval accuracy is on "
        f"{config.eval_prompts} fixed prompts before and after RL. Clip fractions are over all response "
        "tokens, averaged over the mini-batch updates (the first mini-batch of a rollout has ratio 1).",
        "",
        "![reward and accuracy](reward.png)",
        "",
        "![entropy and response length](entropy.png)",
        "",
        "![clip fractions](clipfrac.png)",
        "",
        *(token_view_lines(out / "espo") if "espo" in results else []),
        f"One seed, a 2-layer model, {config.steps} steps: an illustration of the loop and the diagnostics "
        "of the paper's Figs. 3-5, not evidence about large models. `bench/sample_efficiency.py` runs every "
        "algorithm on several seeds.",
        "",
        f"Total wall time {total_s:.0f} s on {platform.machine()} ({platform.platform()}), Python "
        f"{sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}. "
        f"Per-run files: {', '.join(f'`{a}/`' for a in results)} (metrics.jsonl, checkpoints, plots).",
        "",
    ]
    path = out / "report.md"
    write_atomic(path, "\n".join(lines))
    return path


def run_demo(out_dir="runs/demo", steps: int | None = None, seed: int = 0, *, progress: bool = True,
             log=print, overwrite: bool = False) -> Path:
    """Warm-start once, train ESPO and GSPO from it on the same budget, write
    ``report.md`` and the comparison plots into ``out_dir``. Returns the report path.
    A folder that holds a demo's files is refused unless ``overwrite`` (see the module)."""
    from .trainer import train, warm_start_weights

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TrainInputError(f"--out {out}: exists and is not a folder")
    config = demo_config(out, steps, seed)
    clear_demo_outputs(out, overwrite=overwrite, log=log)
    start = time.perf_counter()
    log(f"warm-start: {config.sft_steps} supervised steps on template-formatted examples")
    warm = warm_start_weights(config, out / WARM_START, progress=progress)
    results = {}
    for algo in DEMO_ALGOS:
        log(f"{algo.upper()}: {config.steps} RL steps")
        run_config = config.replace(algo=algo, out_dir=str(out / algo), init_weights=str(out / WARM_START),
                                    sft_steps=0)
        summary = train(run_config, progress=progress, log=log)
        results[algo] = (summary, read_metrics(out / algo))
        log(f"{algo.upper()}: reward last {min(10, config.steps)} steps {summary['reward_last10']:.3f}, "
            "greedy accuracy "
            f"{summary.get('eval_accuracy_before', float('nan')):.2f} -> {summary.get('eval_accuracy_after', float('nan')):.2f}")
        if algo == "espo" and (line := last_batch_line(out / algo)):
            log("ESPO: " + line.replace("`", "").replace("The last", "the last", 1))
    plot_runs({algo.upper(): records for algo, (_, records) in results.items()}, out)
    return write_report(out, config, warm, results, time.perf_counter() - start)
