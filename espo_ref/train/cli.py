"""``espo-ref train`` and ``espo-ref demo``: argument parsers and handlers.

Importing this module is cheap (no torch, no transformers); the handlers import them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _none_or_float(text: str):
    return None if text.lower() == "none" else float(text)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# (flag, TrainConfig field, type, help); every default is None so that an explicit flag is
# told apart from the default (for --resume, which starts from the saved configuration).
TRAIN_OPTIONS = [
    ("--task", "task", str, "arith, reverse, jsonl:PATH or a .jsonl path (default arith)"),
    ("--task-options", "task_options", json.loads, 'JSON object of task options, e.g. \'{"max_operand": 5}\''),
    ("--verifier", "verifier", str, "exact, numeric or module:function (fn(response, answer) -> float|bool|None)"),
    ("--model", "model", str, "tiny (built from a Qwen2 config) or a local Hugging Face model folder"),
    ("--model-hidden", "model_hidden", int, "tiny model width (default 64)"),
    ("--model-layers", "model_layers", int, "tiny model layers (default 2)"),
    ("--model-heads", "model_heads", int, "tiny model attention heads (default 4)"),
    ("--init-weights", "init_weights", str, "start from this state_dict (.pt) or checkpoint folder"),
    ("--algo", "algo", str, "espo, gspo, grpo, dapo, gmpo or cispo (default espo)"),
    ("--alpha", "alpha", float, "ESPO: clip scale alpha of Eq. 8 (default 0.02)"),
    ("--top-fraction", "top_fraction", float, "ESPO: high-entropy group fraction (default 0.2)"),
    ("--grouping", "grouping", str, "ESPO: top_fraction, batch_top_fraction, entropy_ranges, none, token"),
    ("--eps-reading", "eps_reading", str, "ESPO: group_mean or token_over_groups"),
    ("--ratio-form", "ratio_form", str, "ESPO: gspo_token or literal"),
    ("--clip", "clip", str, "ESPO: adaptive or fixed"),
    ("--eps-low", "eps_low", float, "lower clip offset (ESPO with --clip fixed, and the baselines)"),
    ("--eps-high", "eps_high", float, "upper clip offset (ESPO with --clip fixed, and the baselines)"),
    ("--drop-low-group", "drop_low_group", _bool, "ESPO: train only the high-entropy group (true/false)"),
    ("--log-ratio-clamp", "log_ratio_clamp", _none_or_float, "clamp of the log-ratio, or none"),
    ("--loss-agg-mode", "loss_agg_mode", str, "baselines: the loss aggregation mode"),
    ("--score-truncated", "score_truncated", _bool, "score responses cut at max-new-tokens (default false)"),
    ("--steps", "steps", int, "RL steps (default 100)"),
    ("--prompts-per-step", "prompts_per_step", int, "prompts per step (default 8)"),
    ("--group-size", "group_size", int, "responses per prompt, G (default 8)"),
    ("--temperature", "temperature", float, "sampling temperature (default 1.0)"),
    ("--max-new-tokens", "max_new_tokens", int, "response length limit (default 24)"),
    ("--ppo-epochs", "ppo_epochs", int, "passes over each rollout (default 2)"),
    ("--minibatches", "minibatches", int, "mini-batches per pass (default 2)"),
    ("--lr", "lr", float, "AdamW learning rate (default 1e-3)"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay (default 0)"),
    ("--warmup-steps", "warmup_steps", int, "linear learning-rate warm-up steps (default 0)"),
    ("--grad-clip", "grad_clip", float, "gradient-norm clip, 0 for none (default 1.0)"),
    ("--sft-steps", "sft_steps", int, "supervised warm-start steps on the task's format (default 0)"),
    ("--sft-batch", "sft_batch", int, "warm-start batch size (default 32)"),
    ("--sft-lr", "sft_lr", float, "warm-start learning rate (default 3e-3)"),
    ("--sft-correct-fraction", "sft_correct_fraction", float,
     "warm-start: fraction of examples with the right answer, the rest random (default 0)"),
    ("--eval-prompts", "eval_prompts", int, "greedy evaluation prompts before and after (default 0)"),
    ("--seed", "seed", int, "seed (default 0)"),
    ("--checkpoint-every", "checkpoint_every", int, "checkpoint every N steps, 0 for never (default 50)"),
    ("--keep-checkpoints", "keep_checkpoints", int, "checkpoints kept, 0 for all (default 2)"),
    ("--device", "device", str, "cpu or cuda (bf16 autocast on cuda)"),
    ("--threads", "threads", int, "CPU threads (default 1: fastest for tiny models)"),
]


def _train(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .trainer import NonFiniteLossError, train

    given = {field: getattr(args, field) for _, field, _, _ in TRAIN_OPTIONS if getattr(args, field) is not None}
    given["out_dir"] = args.out
    base = {}
    saved = Path(args.out) / "config.json"
    if args.resume and saved.exists():
        base = json.loads(saved.read_text())
    try:
        config = TrainConfig.from_dict({**base, **given})
    except (TypeError, ValueError) as e:
        print(f"espo-ref train: {e}", file=sys.stderr)
        return 2
    try:
        summary = train(config, resume=args.resume, progress=not args.quiet)
    except NonFiniteLossError as e:
        print(f"espo-ref train: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:  # a missing task file or checkpoint, bad input
        print(f"espo-ref train: {e}", file=sys.stderr)
        return 2
    shown = {k: v for k, v in summary.items() if not k.startswith("eval_example")}
    print(json.dumps(shown, indent=2, sort_keys=True))
    print(f"metrics, plots and checkpoints in {config.out_dir}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = run_demo(out_dir=args.out, steps=args.steps, seed=args.seed, progress=not args.quiet)
    print(f"report written to {report}")
    return 0


def add_parsers(sub) -> None:
    """Add the ``train`` and ``demo`` subcommands to the ``espo-ref`` parser."""
    train = sub.add_parser("train", help="train a policy with ESPO or a baseline (on-policy RLVR)",
                           description="Train a causal LM on a verifiable task with ESPO or a baseline.")
    train.add_argument("--out", default="runs/train", help="run folder: metrics.jsonl, plots, checkpoints")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its latest checkpoint (its saved config is the base)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    for flag, field, kind, text in TRAIN_OPTIONS:
        train.add_argument(flag, dest=field, type=kind, default=None, help=text)
    train.set_defaults(handler=_train)

    demo = sub.add_parser("demo", help="train the tiny model with ESPO and GSPO on the templated task (CPU, minutes)",
                          description="Train the tiny model with ESPO and with GSPO (same seeds and budget) and "
                                      "write a report with a table and plots.")
    demo.add_argument("--out", default="runs/demo", help="report folder (default runs/demo)")
    demo.add_argument("--steps", type=int, default=None, help="RL steps per algorithm (default: the demo's)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(handler=_demo)

