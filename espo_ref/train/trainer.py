"""The on-policy RLVR loop, one step (``train_step``) at a time:

    collect -> score -> old_policy -> advantages -> update -> log

1. ``collect``: the step's prompts (a pure function of seed and step: the data position is
   the step) and ``group_size`` sampled responses per prompt at ``temperature``
   (KV-cache sampling loop, generator seeded from (seed, step));
2. ``score``: verifier rewards; valid = the verifier scored a complete response [ESPO-ADV];
3. ``old_policy``: the old policy's log-probs and entropies at the sampling temperature,
   no gradient [ESPO-ENT-DOMAIN];
4. advantages by ``espo_ref.torch.grpo_advantages`` [ESPO-ADV]; the batch is validated here,
   once (``losses.check_batch``: the loss's own checks of old_logp, entropy, mask and
   advantages, on the whole batch), and every update calls the loss with ``validate=False``
   (no host sync in the loss);
5. ``update_policy``: ``ppo_epochs`` x ``minibatches`` updates with the chosen objective
   (``losses.LOSSES``: ``espo_ref.torch.espo_loss`` [ESPO-OBJ] or a baseline's loss), so
   that ratios leave 1 and the clip ranges act; gradient clipping; AdamW;
6. log: the step's record to metrics.jsonl, a checkpoint every ``checkpoint_every`` steps
   (``run_steps``).

Each step is a function that returns what it computed; ``Run`` holds only what lives across
steps (the policy, the optimizer, the step).

Exact resume: every random draw of a step comes from generators seeded by (seed, step) —
the prompts, the sampling generator and the mini-batch order — so a resumed run re-seeds
generation exactly as the uninterrupted run did; the checkpoint restores the weights, the
AdamW state, the global Python/numpy/torch RNG states and the step (= data position). On
CPU the loop runs with deterministic algorithms and a fixed thread count.

A non-finite loss, gradient norm or model activation (hidden state, logits: a diverged
model) raises NonFiniteLossError (naming the step, the phase or mini-batch and the value)
before the optimizer steps; no checkpoint is written after it, so the last good
checkpoint stays the latest. The current policy's log-probabilities are not checked by the
loss (``validate=False``): a non-finite one at a response token makes the update's loss NaN
(``nan_unless_finite``), which stops the run the same way. The loss metrics of a step are
those of all its updates' tokens (``espo_ref.torch.merge_metrics``: fractions and means
token-weighted, an empty entropy bucket left out) [ESPO-METRICS]. A non-finite loss
*metric* (approx_kl, ratio_mean, ...) does not stop the run: it is reported, in the step's
record (the step's value is then non-finite, and ``nonfinite_metrics`` names it) and by a
warning.

The run folder: a fresh run refuses a folder that holds any file of a run (RUN_MARKERS)
unless ``overwrite`` (which removes only the files a run writes); ``resume`` refuses a
folder without a checkpoint, and checks the configuration against the checkpoint's before
anything named in it (a verifier module) is imported.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .._device import torch_device
from .._io import write_atomic
from .._validate_once import nan_unless_finite
from ..errors import ESPOInputError
from ..torch import grpo_advantages, merge_metrics
from . import checkpoint as ckpt
from .config import RESUMABLE_CHANGES, TrainConfig
from .errors import NonFiniteActivationError, NonFiniteLossError, TrainInputError
from .losses import check_batch, compute_loss, loss_config
from .metrics import METRICS_FILE, PANELS, UNLOGGED_LOSS_METRICS, MetricsLog, mean_of, plot_runs, read_metrics
from .model import load_policy, model_positions, vocab_size
from .rollout import (Rollout, Scores, build_rollout, generate, left_pad, old_policy_pass, response_logprobs,
                      right_pad, score, step_generator)
from .samples import BATCHES_DIR, SAMPLES_FILE, TOKEN_VIEW, SampleLog, batch_path, response_tokens, rollout_records, \
    save_update_batch, wants_samples, write_token_view
from .tasks import VerifierError, make_task

__all__ = ["NonFiniteLossError", "RUN_FILES", "RUN_MARKERS", "RunExistsError", "seed_everything", "train",
           "train_step", "warm_start_weights"]

# What a training run writes into its folder (``overwrite`` removes exactly these), and what
# marks a folder as holding a run (those, and a demo's report).
RUN_FILES = (METRICS_FILE, "config.json", "summary.json", "checkpoints", "tensorboard",
             *(f"{name}.png" for name in PANELS), SAMPLES_FILE, BATCHES_DIR, TOKEN_VIEW)
RUN_MARKERS = (*RUN_FILES, "report.md")


# --- the run folder ---------------------------------------------------------------------------


class RunExistsError(TrainInputError, FileExistsError):
    """The output folder already holds a run (or a demo) and neither resume nor overwrite was asked."""


def run_files_in(folder, names=RUN_MARKERS) -> list[str]:
    """The names of ``names`` present in ``folder`` (a file, folder or link)."""
    folder = Path(folder)
    return [name for name in names if (folder / name).exists() or (folder / name).is_symlink()]


def remove_run_files(folder, names=RUN_FILES) -> list[Path]:
    """Remove the run's own files from ``folder`` (nothing else); returns what was removed."""
    removed = []
    for name in run_files_in(folder, names):
        path = Path(folder) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path)
    return removed


def check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> Path | None:
    """The run folder's state against what was asked; returns the checkpoint to resume from.
    Reads only: nothing is removed or written here."""
    if out.exists() and not out.is_dir():
        raise TrainInputError(f"--out {out}: exists and is not a folder")
    ckpt_dir = out / "checkpoints"
    present = run_files_in(out)
    if resume:
        if overwrite:
            raise TrainInputError("--resume and --overwrite exclude each other")
        latest = ckpt.latest_checkpoint(ckpt_dir)
        if latest is None:
            if present:
                raise TrainInputError(f"--resume: {out} holds a run ({', '.join(present)}) but no checkpoint "
                                      f"({ckpt_dir / ckpt.LATEST} is missing; trained with --checkpoint-every 0?): "
                                      f"nothing to resume from")
            raise TrainInputError(f"--resume: {out} holds no run (no {ckpt_dir / ckpt.LATEST}); "
                                  f"drop --resume to start one")
        return latest
    if present and not overwrite:
        raise RunExistsError(f"--out {out} already holds a run ({', '.join(present)}); pass --resume to continue it, "
                             f"--overwrite to replace it, or choose another --out")
    return None


def _check_resume_config(saved: dict, config: TrainConfig) -> None:
    now = config.to_dict()
    differ = sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if differ:
        detail = ", ".join(f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in differ)
        raise TrainInputError(f"--resume with a different configuration ({detail}); only {RESUMABLE_CHANGES} "
                              f"may change")


# --- device, seeds, policy --------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """The torch device of ``--device``; TrainInputError when it is not there."""
    try:
        return torch_device(name)
    except ESPOInputError as e:
        raise TrainInputError(str(e)) from None


@contextlib.contextmanager
def torch_settings(config: TrainConfig, device: torch.device):
    """CPU: ``threads`` intra-op threads and deterministic algorithms (bit-exact resume);
    the previous settings are restored on exit."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        if device.type == "cpu":
            torch.set_num_threads(config.threads)
            torch.use_deterministic_algorithms(True)
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _clock(device: torch.device) -> float:
    """The time once the device's queued work is done (a phase's time includes its kernels)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def seed_everything(seed: int) -> None:
    """Seed the global Python, numpy and torch generators (what the per-step generators do
    not cover; a checkpoint saves their states)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_positions_ok(task, tokenizer, model, config: TrainConfig) -> None:
    """Every prompt the task can give (each JSONL line), plus ``max_new_tokens``, fits the
    model's positions (max_position_embeddings or the config's equivalent); with a
    warm-start, so does prompt + reference response. TrainInputError naming the JSONL line
    otherwise, before the first step."""
    found = model_positions(model)
    if found is None:
        return
    limit, name = found
    rng = np.random.default_rng(0)
    for ex in task.length_probes():
        where = ex.where or f"--task {config.task}"
        prompt = len(tokenizer.prompt_ids(ex.prompt))
        if prompt + config.max_new_tokens > limit:
            raise TrainInputError(
                f"{where}: the prompt is {prompt} tokens; with --max-new-tokens {config.max_new_tokens} a sequence "
                f"needs {prompt + config.max_new_tokens} positions, more than the model's {limit} ({name}); "
                f"shorten the prompt or lower --max-new-tokens")
        if config.sft_steps:
            response = len(tokenizer.encode(task.format_response(ex, rng, 1.0))) + 1
            if prompt + response > limit:
                raise TrainInputError(
                    f"{where}: the prompt ({prompt} tokens) and its warm-start response ({response} tokens) need "
                    f"{prompt + response} positions, more than the model's {limit} ({name}); shorten them or "
                    f"pass --sft-steps 0")


def load_init_weights(model, path) -> None:
    """``--init-weights``: a state_dict file or checkpoint folder that fits ``model``."""
    try:
        weights = ckpt.load_weights(path)
    except TrainInputError as e:
        raise TrainInputError(f"--init-weights {e}") from e
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip())
        raise TrainInputError(f"--init-weights {path}: does not fit the model ({detail[:400]})") from e


def build_policy(config: TrainConfig, device: torch.device, *, init_weights: bool):
    """(task, model, tokenizer) of ``config``, after seeding the global generators: the
    model on ``device``, its positions checked against every prompt, and with the weights
    of ``--init-weights`` when ``init_weights`` (a resumed run takes them from its checkpoint)."""
    seed_everything(config.seed)
    task = make_task(config.task, config.verifier, config.task_options)
    model, tokenizer = load_policy(config.model, config.model_hidden, config.model_layers, config.model_heads,
                                   seed=config.seed)
    model_positions_ok(task, tokenizer, model, config)
    if init_weights and config.init_weights:
        load_init_weights(model, config.init_weights)
    return task, model.to(device), tokenizer


@dataclass
class Run:
    """What lives across the steps of one training run: the policy, its optimizer, the
    loss's configuration and the last step done."""

    config: TrainConfig
    device: torch.device
    task: Any
    model: Any
    tokenizer: Any
    loss_config: Any
    optimizer: torch.optim.Optimizer
    step: int = 0
    log: Callable[[str], Any] = print

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"


def start_run(config: TrainConfig, device: torch.device, *, init_weights: bool, log=print) -> Run:
    """The run's policy (``build_policy``), loss configuration and AdamW optimizer, at step 0."""
    task, model, tokenizer = build_policy(config, device, init_weights=init_weights)
    objective = loss_config(config, vocab_size(model))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.99),
                                  weight_decay=config.weight_decay)
    return Run(config, device, task, model, tokenizer, objective, optimizer, log=log)


# --- non-finite values and verifier errors, named ----------------------------------------------


def _check_finite(value: float, what: str, step: int, where: str, run: Run, detail: str = "") -> None:
    if not math.isfinite(value):
        last = ckpt.latest_checkpoint(run.ckpt_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        shown = f"non-finite {what} at step {step} ({where}): {detail}" if detail else \
            f"non-finite {what} {value} at step {step} ({where})"
        raise NonFiniteLossError(f"{shown}; stopping without saving; {kept}")


@contextlib.contextmanager
def _activations_checked(step: int, where: str, run: Run):
    """A non-finite hidden state or logit (the model diverged) stops the run like a
    non-finite loss: NonFiniteLossError naming the step, the phase and the value."""
    try:
        yield
    except NonFiniteActivationError as e:
        _check_finite(e.value, "loss", step, where, run,
                      f"the model's {e.what} is {e.value}, the weights diverged (--lr {run.config.lr})")
        raise


@contextlib.contextmanager
def _verifier_named(where: str):
    """A verifier that raises (or returns no reward): the message says where it happened."""
    try:
        yield
    except VerifierError as e:
        raise VerifierError(f"{where}: {e}") from e


def _nonfinite_params(model) -> bool:
    return any(not bool(torch.isfinite(p).all()) for p in model.parameters())


# --- sampling and the greedy evaluation --------------------------------------------------------


def sample(model, tokenizer, examples, config: TrainConfig, *, group_size: int, temperature: float,
           generator: torch.Generator | None, device: torch.device) -> Rollout:
    """``group_size`` responses to each example's prompt, sampled at ``temperature`` with
    ``generator`` (temperature 0: greedy); the rows of one prompt are adjacent."""
    prompts = [ids for ids in (tokenizer.prompt_ids(ex.prompt) for ex in examples) for _ in range(group_size)]
    answers = [ex.answer for ex in examples for _ in range(group_size)]
    prompt_index = torch.arange(len(examples), device=device).repeat_interleave(group_size)
    p_ids, p_mask, r_ids = generate(model, prompts, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id,
                                    max_new_tokens=config.max_new_tokens, temperature=temperature,
                                    generator=generator, device=device)
    return build_rollout(p_ids, p_mask, r_ids, prompt_index, answers, tokenizer)


def evaluate(model, tokenizer, task, config: TrainConfig, device) -> dict:
    """Greedy accuracy and mean reward on ``eval_prompts`` fresh prompts (a fixed sample,
    drawn from a stream the training steps do not use)."""
    if not config.eval_prompts:
        return {}
    examples = task.batch(config.seed + 1_000_003, 0, config.eval_prompts)
    model.eval()
    rollout = sample(model, tokenizer, examples, config, group_size=1, temperature=0.0, generator=None,
                     device=device)
    with _verifier_named("in the greedy evaluation"):
        scores = score(rollout, task, score_truncated=config.score_truncated)
    return {"eval_accuracy": float(scores.correct.float().mean()), "eval_reward": float(scores.rewards.mean()),
            "eval_example": f"{examples[0].prompt!r} -> {rollout.texts[0]!r}"}


# --- supervised warm-start ---------------------------------------------------------------------


def warm_start_batch(task, tokenizer, rng: np.random.Generator, config: TrainConfig, device) -> Rollout:
    """``sft_batch`` examples and their responses in the task's format (the right answer
    with probability ``sft_correct_fraction``), each ended by EOS."""
    examples = [task.example(rng) for _ in range(config.sft_batch)]
    responses = [tokenizer.encode(task.format_response(ex, rng, config.sft_correct_fraction))
                 + [tokenizer.eos_token_id] for ex in examples]
    r_ids = right_pad(responses, tokenizer.pad_token_id, device)
    p_ids, p_mask = left_pad([tokenizer.prompt_ids(ex.prompt) for ex in examples], tokenizer.pad_token_id, device)
    return build_rollout(p_ids, p_mask, r_ids, torch.zeros(len(examples), device=device), [""] * len(examples),
                         tokenizer)


def warm_start_loss(model, batch: Rollout, config: TrainConfig, device, step: int) -> torch.Tensor:
    """Next-token cross-entropy, the token mean over the responses."""
    try:
        logp, _ = response_logprobs(model, batch, 1.0, device)
    except NonFiniteActivationError as e:
        raise NonFiniteLossError(f"non-finite warm-start loss at warm-start step {step}: the model's "
                                 f"{e.what} is {e.value}, the weights diverged (--sft-lr {config.sft_lr})") from e
    return -(logp * batch.response_mask).sum() / batch.response_mask.sum()


def warm_start(model, tokenizer, task, config: TrainConfig, device, *, progress: bool = False) -> list[float]:
    """Supervised warm-start: ``sft_steps`` steps of next-token cross-entropy on responses
    in the task's format (built-in tasks: the right answer with probability
    ``sft_correct_fraction``, else a random one, so the policy learns the template and only
    part of the task). Returns the losses."""
    rng = np.random.default_rng([config.seed, 7919])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.sft_lr, weight_decay=0.0)
    losses = []
    model.train()
    for step in tqdm(range(1, config.sft_steps + 1), desc="warm-start", disable=not progress, leave=False):
        loss = warm_start_loss(model, warm_start_batch(task, tokenizer, rng, config, device), config, device, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise NonFiniteLossError(f"non-finite warm-start loss {losses[-1]} at warm-start step {step} "
                                     f"(--sft-lr {config.sft_lr})")
    return losses


def warm_start_weights(config: TrainConfig, path, *, progress: bool = True) -> dict:
    """Build the policy of ``config``, run its supervised warm-start (``sft_steps``) and
    save the weights to ``path`` (a state_dict, written atomically), so that several runs
    can start from the same warmed-up policy. Returns the losses and the greedy evaluation."""
    device = resolve_device(config.device)
    with torch_settings(config, device):
        # from the built model: --init-weights is what a run starts from, not the warm-start
        task, model, tokenizer = build_policy(config, device, init_weights=False)
        start = time.perf_counter()
        losses = warm_start(model, tokenizer, task, config, device, progress=progress)
        result = {"warm_start_steps": config.sft_steps, "warm_start_loss_first": losses[0] if losses else None,
                  "warm_start_loss_last": losses[-1] if losses else None,
                  "warm_start_time_s": time.perf_counter() - start}
        result.update(evaluate(model, tokenizer, task, config, device))
        ckpt.save_weights(model, path)
    return result


# --- one RL step: collect -> score -> old_policy -> advantages -> update -> log ------------------


def collect(run: Run, step: int) -> tuple[list, Rollout]:
    """(the step's examples, their rollout): ``prompts_per_step`` prompts, a pure function of
    (seed, step), and ``group_size`` responses each sampled with the step's generator."""
    config = run.config
    examples = run.task.batch(config.seed, step, config.prompts_per_step)
    run.model.eval()
    with _activations_checked(step, "sampling", run):
        rollout = sample(run.model, run.tokenizer, examples, config, group_size=config.group_size,
                         temperature=config.temperature, generator=step_generator(config.seed, step, run.device),
                         device=run.device)
    return examples, rollout


def score_step(run: Run, rollout: Rollout, step: int) -> Scores:
    """[ESPO-ADV] The verifier's rewards; a verifier error names the step."""
    with _verifier_named(f"at step {step}"):
        return score(rollout, run.task, score_truncated=run.config.score_truncated)


def old_policy(run: Run, rollout: Rollout, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[ESPO-ENT-DOMAIN] (old_logp, entropy) of the sampling policy at the sampling
    temperature, in chunks of a mini-batch's size (the update's memory, less the gradient)."""
    chunk_rows = -(-rollout.input_ids.shape[0] // run.config.minibatches)
    try:
        with _activations_checked(step, "old-policy pass", run):
            return old_policy_pass(run.model, rollout, run.config.temperature, run.device, chunk_rows)
    except ESPOInputError:
        if _nonfinite_params(run.model):
            _check_finite(float("nan"), "model weights", step, "old-policy pass", run)
        raise


def lr_at(config: TrainConfig, step: int) -> float:
    """The learning rate of ``step``: linear warm-up over ``warmup_steps``, then ``lr``."""
    if config.warmup_steps and step <= config.warmup_steps:
        return config.lr * step / config.warmup_steps
    return config.lr


def minibatch_order_generator(seed: int, step: int) -> torch.Generator:
    """The generator of a step's mini-batch orders, a pure function of (seed, step)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, 1]).generate_state(1)[0]))


@dataclass
class Update:
    """What a step's mini-batch updates give: per update, the loss, the gradient norm, and
    the loss's metrics (unread: device totals) with where they were measured (epoch and
    mini-batch)."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    metrics: list[tuple[Any, str]] = field(default_factory=list)
    # the first and the last update's (rows, current log-probs, loss result, loss, where): what
    # step_samples saves (the last one after the policy moved; the same as the first with one update)
    first: tuple | None = None
    last: tuple | None = None


def optimizer_step(run: Run, loss: torch.Tensor, params: list, step: int, where: str) -> tuple[float, float]:
    """Backward, gradient clipping (``grad_clip``, 0: none) and an AdamW step; (loss, grad
    norm), each checked finite before the optimizer steps."""
    loss_value = float(loss.detach())
    _check_finite(loss_value, "loss", step, where, run)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    limit = run.config.grad_clip if run.config.grad_clip > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
    _check_finite(grad_norm, "gradient norm", step, where, run)
    run.optimizer.step()
    return loss_value, grad_norm


def update_policy(run: Run, rollout: Rollout, old_logp, entropy, advantages, step: int) -> Update:
    """[ESPO-OBJ] ``ppo_epochs`` passes over the rollout in ``minibatches`` mini-batches (a
    fresh order per pass), one optimizer step each with the run's loss, unvalidated (the
    batch was checked where it was built; a non-finite logp makes the loss NaN)."""
    config, model = run.config, run.model
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(config, step)
    # Eval mode in the update too: dropout would make the current policy differ from the
    # old one (computed in eval mode) at identical weights, and ratios would not start at 1.
    model.eval()
    order_gen = minibatch_order_generator(config.seed, step)
    params = [p for p in model.parameters() if p.requires_grad]
    update = Update()
    for epoch in range(config.ppo_epochs):
        order = torch.randperm(rollout.input_ids.shape[0], generator=order_gen).to(run.device)
        for mb, rows in enumerate(torch.tensor_split(order, config.minibatches)):
            where = f"epoch {epoch + 1}/{config.ppo_epochs}, mini-batch {mb + 1}/{config.minibatches}"
            with _activations_checked(step, where, run):
                logp, _ = response_logprobs(model, rollout.rows(rows), config.temperature, run.device)
            mask = rollout.response_mask[rows]
            result = compute_loss(config.algo, logp, old_logp[rows], entropy[rows], mask, advantages[rows],
                                  run.loss_config, validate=False)
            loss, grad_norm = optimizer_step(run, nan_unless_finite(result.loss, logp, mask), params, step, where)
            update.last = (rows, logp.detach(), result, loss, where)
            if update.first is None:
                update.first = update.last
            update.losses.append(loss)
            update.grad_norms.append(grad_norm)
            update.metrics.append((result.metrics, where))
    return update


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def rollout_metrics(rollout: Rollout, scores: Scores, entropy, advantages) -> dict:
    """The step's samples: reward, accuracy, valid and truncated fractions, response length,
    the old policy's mean token entropy [ESPO-ENT], the mean |advantage|."""
    mask = rollout.response_mask
    tokens = int(mask.sum())
    return {
        "reward": float(scores.rewards.mean()),
        "accuracy": float(scores.correct.float().mean()),
        "valid_fraction": float(scores.valid.float().mean()),
        "truncated_fraction": float((~rollout.ended).float().mean()),
        "response_length": tokens / mask.shape[0],
        "entropy": float((entropy * mask).sum() / max(tokens, 1)),
        "advantage_abs_mean": float(advantages.abs().mean()),
    }


def step_loss_metrics(metrics: list[tuple[Any, str]], step: int, log) -> dict:
    """[ESPO-METRICS] The loss metrics of the step's updates merged (``espo_ref.torch.merge_metrics``:
    the values over all the updates' tokens, each fraction and mean weighted by its count, an
    update with an empty bucket left out of that bucket's value; read in one transfer), but
    UNLOGGED_LOSS_METRICS. A non-finite value is kept, not skipped: the step's value is
    non-finite, ``nonfinite_metrics`` names it and a warning says where it was first seen."""
    merged = merge_metrics([part for part, _ in metrics])
    record: dict[str, Any] = {}
    for key, value in merged.items():
        if key in UNLOGGED_LOSS_METRICS:
            continue
        record[key] = value
        if not math.isfinite(value):
            bad = [(part[key], where) for part, where in metrics if not math.isfinite(part[key])]
            first = f"{bad[0][0]} in {len(bad)} of {len(metrics)} mini-batch updates (first: {bad[0][1]})" if bad \
                else f"not finite over the {len(metrics)} mini-batch updates"
            record.setdefault("nonfinite_metrics", []).append(key)
            log(f"warning: step {step}: metric {key} is {first}; the step's {key} is {value}")
    return record


def step_samples(run: Run, step: int, examples, rollout: Rollout, scores: Scores, old_logp, entropy, advantages,
                 update: Update) -> list[dict]:
    """[ESPO-GROUP] [ESPO-CLIPMASK] A sampled step's updates as explainable batches (ESPO): the first
    mini-batch update (batches/step_NNNNNN.npz, ratio 1) and, when the step made more than one, the
    last (batches/step_NNNNNN_last.npz: its old_logp from the rollout, its logp under the policy the
    earlier updates moved, so its clipped tokens show); returns the last update's first responses'
    token records (for rollouts.jsonl, every algorithm)."""
    espo = run.config.algo == "espo"
    saved = [(update.first, False)] + ([] if update.last is update.first else [(update.last, True)])
    records: list[dict] = []
    for (rows, logp, result, loss, where), last in saved:
        mask = rollout.response_mask[rows]
        inputs = {"logp": logp, "old_logp": old_logp[rows], "entropy": entropy[rows], "mask": mask,
                  "advantages": advantages[rows]}
        tokens = response_tokens(run.tokenizer, rollout.response_ids[rows], mask)
        path = batch_path(run.out_dir, step, last=last) if espo else None
        if path is not None:  # explain runs the ESPO reference: a baseline's batch has nothing to explain
            save_update_batch(path, inputs, run.loss_config, tokens=tokens,
                              logged={"step": step, "loss": loss, "update": where})
        prompts = [examples[int(rollout.prompt_index[i])].prompt for i in rows.tolist()]
        records = rollout_records(step, prompts=prompts, rewards=scores.rewards[rows].tolist(), tokens=tokens,
                                  inputs=inputs, result=result, kept=run.config.samples_kept, batch=path)
    return records


def train_step(run: Run, step: int, *, samples: SampleLog | None = None) -> dict:
    """One RL step, collect -> score -> old_policy -> advantages -> update; returns the
    step's record (its line of metrics.jsonl). With ``samples``, a sampled step's first and last
    mini-batch updates and responses are written too (see ``samples``)."""
    t0 = time.perf_counter()
    examples, rollout = collect(run, step)
    scores = score_step(run, rollout, step)
    t1 = _clock(run.device)
    old_logp, entropy = old_policy(run, rollout, step)
    t2 = _clock(run.device)
    # [ESPO-ADV] Eq. 11 over the responses of each prompt; unscored responses get 0.
    advantages = grpo_advantages(scores.rewards, rollout.prompt_index, valid=scores.valid)
    # [ESPO-INPUT] the batch is complete: validated once here, not in each update's loss
    check_batch(run.config.algo, old_logp, entropy, rollout.response_mask, advantages, run.loss_config)
    update = update_policy(run, rollout, old_logp, entropy, advantages, step)
    t3 = _clock(run.device)
    if samples is not None and wants_samples(run.config, step):
        samples.write(step_samples(run, step, examples, rollout, scores, old_logp, entropy, advantages, update))
    return {
        "step": step,
        **rollout_metrics(rollout, scores, entropy, advantages),
        "loss": _mean(update.losses),
        "grad_norm": _mean(update.grad_norms),
        "lr": lr_at(run.config, step),
        "gen_time": t1 - t0,
        "old_logprob_time": t2 - t1,
        "update_time": t3 - t2,
        "step_time": t3 - t0,
        "tokens_per_s": int(rollout.response_mask.sum()) / (t3 - t0),
        "sample": f"{examples[0].prompt!r} -> {rollout.texts[0]!r}",
        **step_loss_metrics(update.metrics, step, run.log),
    }


# --- the run: start or resume, the steps, the summary ------------------------------------------


def save_checkpoint(run: Run, summary: dict) -> None:
    """The checkpoint of ``run.step`` (weights, optimizer, RNG states, the summary so far)."""
    ckpt.save_checkpoint(run.ckpt_dir, run.step, run.model, run.optimizer, run.config.to_dict(),
                         {"summary": summary}, run.config.keep_checkpoints)


def _suffixed(values: dict, suffix: str) -> dict:
    return {f"{key}{suffix}": value for key, value in values.items()}


def begin(run: Run, *, overwrite: bool, progress: bool) -> tuple[dict, MetricsLog]:
    """A fresh run: the warm-start (``sft_steps``) and the greedy evaluation before RL; then,
    the inputs being good, the old run's files removed (``overwrite``), an empty
    metrics.jsonl and the checkpoint of step 0. Returns (the summary so far, the metrics log)."""
    config = run.config
    summary: dict = {}
    if config.sft_steps:
        sft = warm_start(run.model, run.tokenizer, run.task, config, run.device, progress=progress)
        summary["warm_start_loss_first"], summary["warm_start_loss_last"] = sft[0], sft[-1]
    summary.update(_suffixed(evaluate(run.model, run.tokenizer, run.task, config, run.device), "_before"))
    for removed in remove_run_files(run.out_dir) if overwrite else []:
        run.log(f"--overwrite: removed {removed}")
    metrics = MetricsLog(run.out_dir)
    if config.checkpoint_every:
        save_checkpoint(run, summary)
    return summary, metrics


def resume_from(run: Run, latest: Path) -> tuple[dict, MetricsLog]:
    """Weights, optimizer, RNG states and step from the checkpoint ``latest``; metrics.jsonl
    cut back to its step. Returns (the saved summary, the metrics log)."""
    loaded = ckpt.load_checkpoint(latest)
    try:
        run.model.load_state_dict(loaded["weights"])
    except RuntimeError as e:
        raise TrainInputError(f"{latest / 'weights.pt'}: does not fit the model") from e
    run.optimizer.load_state_dict(loaded["optimizer"])
    ckpt.restore_rng(loaded["state"]["rng"], loaded["rng"])
    run.step = loaded["state"]["step"]
    run.log(f"resuming from {latest} (step {run.step})")
    return dict(loaded["state"].get("summary", {})), MetricsLog(run.out_dir, keep_until_step=run.step)


def last_step(run: Run, stop_at_step: int | None) -> int:
    """The last step this call runs: ``steps``, or ``stop_at_step`` (but at least one step)."""
    if stop_at_step is None:
        return run.config.steps
    return min(run.config.steps, max(stop_at_step, run.step + 1))


def run_steps(run: Run, metrics: MetricsLog, summary: dict, *, stop_at_step: int | None, progress: bool) -> None:
    """The steps after ``run.step`` up to ``last_step``: each step's record to metrics.jsonl,
    a checkpoint every ``checkpoint_every`` steps and after the last one."""
    config = run.config
    last = last_step(run, stop_at_step)
    samples = SampleLog(run.out_dir, keep_until_step=run.step)
    bar = tqdm(total=config.steps, initial=run.step, desc=f"{config.algo} {config.task}", disable=not progress,
               dynamic_ncols=True)
    try:
        for step in range(run.step + 1, last + 1):
            record = train_step(run, step, samples=samples)
            run.step = step
            metrics.write(record)
            bar.update(1)
            bar.set_postfix(reward=f"{record['reward']:.3f}", acc=f"{record['accuracy']:.2f}",
                            clip=f"{record.get('clipfrac', 0.0):.3f}")
            if config.checkpoint_every and (step % config.checkpoint_every == 0 or step == last):
                if _nonfinite_params(run.model):  # never a checkpoint of diverged weights
                    _check_finite(float("nan"), "model weights", step, "after its last update", run)
                save_checkpoint(run, summary)
    finally:
        bar.close()


def finish(run: Run, summary: dict, start_time: float) -> dict:
    """The summary (last-10-step means, the greedy evaluation after a complete run), the
    plots and summary.json; returns the summary."""
    config, out = run.config, run.out_dir
    records = read_metrics(out)
    summary.update({
        "algo": config.algo, "task": config.task, "steps": run.step, "seed": config.seed,
        "wall_time_s": time.perf_counter() - start_time,
        "reward_last10": mean_of(records, "reward", 10), "accuracy_last10": mean_of(records, "accuracy", 10),
    })
    if run.step >= config.steps:
        with _activations_checked(run.step, "greedy evaluation after training", run):
            summary.update(_suffixed(evaluate(run.model, run.tokenizer, run.task, config, run.device), "_after"))
    if records:
        plot_runs({config.algo: records}, out)
    write_token_view(out, f"{config.algo.upper()} on {config.task}: what the loss did to each token")
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, stop_at_step: int | None = None,
          progress: bool = True, log=print) -> dict:
    """Run (or, with ``resume``, continue) a training; returns the summary (also written to
    ``summary.json``). ``stop_at_step`` stops after that step as if interrupted (the
    checkpoint of that step is written). A folder that already holds a run is refused
    (RunExistsError) unless ``resume`` or ``overwrite`` (which removes the run's own files,
    RUN_FILES, and nothing else)."""
    out = Path(config.out_dir)
    check_out_dir(out, resume=resume, overwrite=overwrite)  # before the lock creates the folder
    with run_lock(out):  # one training per folder: checked again under the lock
        return _train_locked(config, out, resume=resume, overwrite=overwrite, stop_at_step=stop_at_step,
                             progress=progress, log=log)


RUN_LOCK = ".espo-ref.lock"


@contextlib.contextmanager
def run_lock(out: Path):
    """An exclusive lock on the run folder for the whole training (flock on ``out/.espo-ref.lock``,
    released by the kernel when the process ends, however it ends): a second training into the
    same ``--out`` is refused naming the first one's pid, instead of both writing there."""
    import fcntl
    import os

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise TrainInputError(f"--out {out}: another training (pid {holder}) is writing there; wait for it "
                                  f"to end or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            if created and [p.name for p in out.iterdir()] == [RUN_LOCK]:  # refused before writing: leave nothing
                (out / RUN_LOCK).unlink()
                out.rmdir()
    finally:
        os.close(fd)


def _train_locked(config: TrainConfig, out: Path, *, resume: bool, overwrite: bool, stop_at_step: int | None,
                  progress: bool, log) -> dict:
    latest = check_out_dir(out, resume=resume, overwrite=overwrite)
    if latest is not None:  # check the configuration before importing anything it names (a verifier)
        _check_resume_config(ckpt.load_state(latest)["config"], config)
    device = resolve_device(config.device)
    with torch_settings(config, device):
        run = start_run(config, device, init_weights=latest is None, log=log)
        for stale in ckpt.remove_stale_temp(run.ckpt_dir):
            log(f"removed {stale} (a checkpoint left unfinished by a process that no longer runs)")
        if latest is not None:
            summary, metrics = resume_from(run, latest)
        else:
            summary, metrics = begin(run, overwrite=overwrite, progress=progress)
        write_atomic(out / "config.json", config.to_json())
        start_time = time.perf_counter()
        try:
            run_steps(run, metrics, summary, stop_at_step=stop_at_step, progress=progress)
        finally:
            metrics.close()
        return finish(run, summary, start_time)
