"""``espo-ref train`` and ``espo-ref demo``: argument parsers and handlers.

Exit status: 0 success; 1 the run's own negative result (a non-finite loss: the step, the
mini-batch and the value are named) or a failure of the environment while the run wrote
a checkpoint (a full disk: the path and 'no space left'; ``--resume`` continues once there
is space); 2 a usage or input error (a flag, a file and its JSONL line, a run folder). The
message is one line on stderr; ``-v`` adds the traceback.

Importing this module is cheap (no torch, no transformers); the handlers import them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .._argtypes import boolean, one_line_errors

# What ``espo-ref demo`` costs, measured (see the README's Train section).
DEMO_TIME = ("about 3 min on a 2-core CPU (measured 2 min 52 s on an AMD EPYC, torch 2.13 CPU, November "
             "2026; up to about 5 min on slower machines)")


def _none_or_float(text: str):
    return None if text.lower() == "none" else float(text)


def _json_object(text: str) -> dict:
    from .._files import parse_json

    try:
        value = parse_json(text, "<argument>")
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e.reason[:300]}: {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"max_operand\": 5}}', "
                                         f"got {type(value).__name__} {text!r}")
    return value


# (flag, TrainConfig field, type, help); every default is None so that an explicit flag is
# told apart from the default (for --resume, which starts from the saved configuration).
TRAIN_OPTIONS = [
    ("--task", "task", str, "arith, reverse, jsonl:PATH or a .jsonl path (default arith)"),
    ("--task-options", "task_options", _json_object, 'JSON object of task options, e.g. \'{"max_operand": 5}\''),
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
    ("--drop-low-group", "drop_low_group", boolean, "ESPO: train only the high-entropy group (true/false)"),
    ("--log-ratio-clamp", "log_ratio_clamp", _none_or_float, "clamp of the log-ratio, or none"),
    ("--loss-agg-mode", "loss_agg_mode", str, "baselines: the loss aggregation mode"),
    ("--score-truncated", "score_truncated", boolean, "score responses cut at max-new-tokens (default false)"),
    ("--steps", "steps", int, "RL steps (default 100)"),
    ("--samples-every", "samples_every", int, "sampled rollouts (and, for ESPO, the first and last update's "
                                              "batches for espo-ref explain) every N steps, first and last "
                                              "included (default 10; 0: none)"),
    ("--samples-kept", "samples_kept", int, "responses per sampled step in rollouts.jsonl (default 4)"),
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


TRAIN_PACKAGES = ("torch", "transformers", "matplotlib", "tqdm")  # the [train] extra


def _report(command: str, exc: BaseException, code: int, *, verbose: bool, text: str | None = None) -> int:
    """One line on stderr (the traceback too with -v); returns the exit status."""
    text = " ".join((text or str(exc)).split()) or type(exc).__name__
    if code == 1 and not verbose and _unexpected(exc):
        text = f"internal error: {type(exc).__name__}: {text} (run with -v for the traceback)"
    print(f"espo-ref {command}: {text}", file=sys.stderr)
    if verbose:
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__)
    return code


def _unexpected(exc: BaseException) -> bool:
    from .errors import CheckpointWriteError, NonFiniteLossError

    return not isinstance(exc, (CheckpointWriteError, NonFiniteLossError, OSError))


def _guarded(command: str, body, *, verbose: bool) -> int:
    """Run ``body()`` and map what it raises to the exit status of [the module docstring]."""
    from .errors import DISK_FULL, CheckpointWriteError, NonFiniteLossError, TrainInputError, describe_os_error

    try:
        return body()
    except TrainInputError as e:
        return _report(command, e, 2, verbose=verbose)
    except (NonFiniteLossError, CheckpointWriteError) as e:
        return _report(command, e, 1, verbose=verbose)
    except OSError as e:
        if e.errno in DISK_FULL:  # a full disk outside a checkpoint (metrics, plots, summary)
            where = e.filename or "a file of the run"
            return _report(command, e, 1, verbose=verbose, text=f"cannot write {where}: {describe_os_error(e)}")
        return _report(command, e, 2, verbose=verbose)  # a missing or unreadable input file, an unwritable --out
    except ValueError as e:  # an input the configuration or the reference refused
        return _report(command, e, 2, verbose=verbose)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in TRAIN_PACKAGES:  # a `pip install -e .` without the [train] extra
            return _report(command, e, 2, verbose=verbose,
                           text=f"needs the {e.name.split('.')[0]} package: pip install 'espo-ref[train]' "
                                "(in a checkout: pip install -e '.[train]')")
        return _report(command, e, 1, verbose=verbose)
    except Exception as e:  # a bug, or an error of the libraries underneath
        return _report(command, e, 1, verbose=verbose)


def _flagged(message: str) -> str:
    """A TrainConfig message ("steps must be ...") with the flag of its field in front."""
    flags = {field: flag for flag, field, _, _ in TRAIN_OPTIONS}
    field = message.split(" ", 1)[0]
    return f"{flags[field]}: {message}" if field in flags else message


def _train(args: argparse.Namespace) -> int:
    return _guarded("train", lambda: _train_body(args), verbose=args.verbose)


def _train_body(args: argparse.Namespace) -> int:
    from .trainer import train

    given = {field: getattr(args, field) for _, field, _, _ in TRAIN_OPTIONS if getattr(args, field) is not None}
    given["out_dir"] = args.out
    config = config_of(given, Path(args.out) / "config.json" if args.resume else None)
    summary = train(config, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    shown = {k: v for k, v in summary.items() if not k.startswith("eval_example")}
    print(json.dumps(shown, indent=2, sort_keys=True))
    print(f"metrics, plots and checkpoints in {config.out_dir}")
    return 0


def config_of(given: dict, saved: Path | None = None):
    """The run's TrainConfig: the flags ``given`` over, with --resume, the run's config.json
    (``saved``, read by read_saved_config when it exists). A TrainInputError names the flag, or
    the file and the key of a saved value."""
    from .config import TrainConfig
    from .errors import TrainInputError

    base = read_saved_config(saved) if saved is not None and saved.exists() else {}
    try:
        return TrainConfig.from_dict({**base, **given})
    except (TypeError, ValueError) as e:
        field = str(e).split(" ", 1)[0]
        if field in base and field not in given:  # the saved configuration's value, not a flag's
            raise TrainInputError(f"--resume: {saved}: {e}") from e
        raise TrainInputError(_flagged(str(e))) from e


def read_saved_config(saved: Path) -> dict:
    """[CONF-FILES] A run's config.json for --resume: a JSON object (size and nesting bounded) of
    TrainConfig's fields, each of its field's type; a TrainInputError naming the file and the key."""
    import types
    import typing

    from .._files import RUN_FILE_BYTES, FileError, json_type, read_json_object
    from ..config import check_known_fields
    from .config import TrainConfig
    from .errors import TrainInputError

    try:
        base = read_json_object(saved, max_bytes=RUN_FILE_BYTES, what="a run's config.json")
        check_known_fields(TrainConfig, base, str(saved))
    except ValueError as e:
        raise TrainInputError(f"--resume: {e}") from e
    for name, hint in typing.get_type_hints(TrainConfig).items():
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        allowed = [typing.get_origin(t) or t for t in (typing.get_args(hint) if union else (hint,))]
        if name in base and not any(_JSON_TYPES[t](base[name]) for t in allowed):
            names = " or ".join(_JSON_NAMES[t] for t in allowed)
            problem = FileError(saved, f"must be {names}, got {json_type(base[name])}", name)
            raise TrainInputError(f"--resume: {problem}")
    return base


_JSON_TYPES = {bool: lambda v: type(v) is bool, int: lambda v: type(v) is int,
               float: lambda v: type(v) is float or (type(v) is int and abs(v) < 2**1023),
               str: lambda v: type(v) is str, dict: lambda v: type(v) is dict, type(None): lambda v: v is None}
_JSON_NAMES = {bool: "true or false", int: "an int", float: "a number", str: "a string", dict: "an object",
               type(None): "null"}


def _demo(args: argparse.Namespace) -> int:
    from .errors import TrainInputError

    def body():
        from .demo import run_demo

        if args.steps is not None and args.steps < 1:
            raise TrainInputError(f"--steps must be >= 1, got {args.steps}")
        report = run_demo(out_dir=args.out, steps=args.steps, seed=args.seed, progress=not args.quiet,
                          overwrite=args.overwrite)
        print(f"report written to {report}")
        return 0

    return _guarded("demo", body, verbose=args.verbose)


def add_parsers(sub) -> None:
    """Add the ``train`` and ``demo`` subcommands to the ``espo-ref`` parser."""
    train = sub.add_parser("train", help="train a policy with ESPO or a baseline (on-policy RLVR)",
                           description="Train a causal LM on a verifiable task with ESPO or a baseline.")
    train.add_argument("--out", default="runs/train", help="run folder: metrics.jsonl, plots, checkpoints")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its latest checkpoint (its saved config is the base)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out (its metrics, config, summary, plots, checkpoints, "
                            "tensorboard; other files are kept)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("-v", "--verbose", action="store_true", help="tracebacks with the error messages")
    for flag, field, kind, text in TRAIN_OPTIONS:
        train.add_argument(flag, dest=field, type=kind, default=None, help=text)
    train.set_defaults(handler=_train)
    one_line_errors(train, "train")

    demo = sub.add_parser("demo", help="train the tiny model with ESPO and GSPO on the templated task (CPU, "
                                       "about 3 min)",
                          description="Train the tiny model with ESPO and with GSPO (same seeds and budget) and "
                                      f"write a report with a table and plots; {DEMO_TIME}. An --out that holds "
                                      "a demo's files (espo/, gspo/, warmstart/, report.md, plots) is refused "
                                      "unless --overwrite.")
    demo.add_argument("--out", default="runs/demo", help="report folder (default runs/demo)")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace an earlier demo in --out (only the files a demo writes; other files are kept)")
    demo.add_argument("--steps", type=int, default=None, help="RL steps per algorithm (default: the demo's)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("-v", "--verbose", action="store_true", help="tracebacks with the error messages")
    demo.set_defaults(handler=_demo)
    one_line_errors(demo, "demo")

