"""The on-policy RLVR loop: prompts -> G responses each -> verifier rewards -> old-policy
log-probs and entropies -> advantages (Eq. 11) -> PPO-style mini-batch updates with the
chosen objective -> metrics and checkpoints.

One step, ``train_step``:

1. the step's prompts (a pure function of seed and step: the data position is the step);
2. ``group_size`` sampled responses per prompt at ``temperature`` (KV-cache sampling loop,
   generator seeded from (seed, step));
3. verifier rewards; valid = the verifier scored a complete response [ESPO-ADV];
4. the old policy's log-probs and entropies at the sampling temperature, no gradient
   [ESPO-ENT-DOMAIN];
5. advantages by ``espo_ref.torch.grpo_advantages`` [ESPO-ADV];
6. ``ppo_epochs`` x ``minibatches`` updates with ``espo_ref.torch.espo_loss`` [ESPO-OBJ]
   (or a baseline's loss), so that ratios leave 1 and the clip ranges act; gradient
   clipping; AdamW;
7. metrics, a checkpoint every ``checkpoint_every`` steps.

Exact resume: every random draw of a step comes from generators seeded by (seed, step) —
the prompts, the sampling generator and the mini-batch order — so a resumed run re-seeds
generation exactly as the uninterrupted run did; the checkpoint restores the weights, the
AdamW state, the global Python/numpy/torch RNG states and the step (= data position). On
CPU the loop runs with deterministic algorithms and a fixed thread count.

A non-finite loss, gradient norm or model activation (hidden state, logits: a diverged
model) raises NonFiniteLossError (naming the step, the phase or mini-batch and the value)
before the optimizer steps; no checkpoint is written after it, so the last good
checkpoint stays the latest. A non-finite loss *metric* (approx_kl, ratio_mean, ...) does
not stop the run: it is reported, in the step's record (the step mean over the
mini-batches is then non-finite, and ``nonfinite_metrics`` names it) and by a warning.

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
from pathlib import Path

import numpy as np
import torch

from .._device import torch_device
from .._io import write_atomic
from ..errors import ESPOInputError
from . import checkpoint as ckpt
from .config import RESUMABLE_CHANGES, TrainConfig, loss_config
from .errors import NonFiniteActivationError, NonFiniteLossError, TrainInputError
from .metrics import METRICS_FILE, PANELS, MetricsLog, mean_of, plot_runs, read_metrics
from .model import load_policy, model_positions, vocab_size
from .rollout import (Rollout, build_rollout, generate, old_policy_pass, response_logprobs, score,
                      step_generator)
from .tasks import VerifierError, make_task

__all__ = ["NonFiniteLossError", "RUN_FILES", "RUN_MARKERS", "RunExistsError", "train", "warm_start_weights"]

# What a training run writes into its folder (``overwrite`` removes exactly these), and what
# marks a folder as holding a run (those, and a demo's report).
RUN_FILES = (METRICS_FILE, "config.json", "summary.json", "checkpoints", "tensorboard",
             *(f"{name}.png" for name in PANELS))
RUN_MARKERS = (*RUN_FILES, "report.md")


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


def compute_loss(algo: str, logp, rollout: Rollout, advantages, config):
    """[ESPO-OBJ] The objective's LossResult on a mini-batch: ``espo_ref.torch.espo_loss``
    for ESPO (old-policy entropy in, vocab_size = the model's), else
    ``espo_ref.torch.<algo>_loss(logp, old_logp, mask, advantages, config)``."""
    from .. import torch as backend

    if algo == "espo":
        return backend.espo_loss(logp, rollout.old_logp, rollout.entropy, rollout.response_mask, advantages, config)
    fn = getattr(backend, f"{algo}_loss", None)
    if fn is None:
        raise RuntimeError(f"espo_ref.torch has no {algo}_loss (the torch mirror of the baseline); "
                           f"only --algo espo is available with this version")
    return fn(logp, rollout.old_logp, rollout.response_mask, advantages, config)


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


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _encode_prompts(tokenizer, examples, group_size):
    prompts, index, answers = [], [], []
    for i, ex in enumerate(examples):
        ids = tokenizer.prompt_ids(ex.prompt)
        for _ in range(group_size):
            prompts.append(ids)
            index.append(i)
            answers.append(ex.answer)
    return prompts, index, answers


def sample_rollout(model, tokenizer, task, examples, config: TrainConfig, generator, device,
                   group_size: int, temperature: float) -> Rollout:
    prompts, index, answers = _encode_prompts(tokenizer, examples, group_size)
    p_ids, p_mask, r_ids = generate(model, prompts, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id,
                                    max_new_tokens=config.max_new_tokens, temperature=temperature,
                                    generator=generator, device=device)
    rollout = build_rollout(p_ids, p_mask, r_ids, torch.tensor(index, device=device), answers, tokenizer)
    score(rollout, task, config.score_truncated)
    return rollout


def evaluate(model, tokenizer, task, config: TrainConfig, device) -> dict:
    """Greedy accuracy and mean reward on ``eval_prompts`` fresh prompts (a fixed sample,
    drawn from a stream the training steps do not use)."""
    if not config.eval_prompts:
        return {}
    examples = task.batch(config.seed + 1_000_003, 0, config.eval_prompts)
    model.eval()
    with _verifier_named("in the greedy evaluation"):
        rollout = sample_rollout(model, tokenizer, task, examples, config, None, device, 1, 0.0)
    return {"eval_accuracy": float(rollout.correct.float().mean()), "eval_reward": float(rollout.rewards.mean()),
            "eval_example": f"{examples[0].prompt!r} -> {rollout.texts[0]!r}"}


def warm_start(model, tokenizer, task, config: TrainConfig, device, progress: bool = False) -> list[float]:
    """Supervised warm-start: ``sft_steps`` steps of next-token cross-entropy on responses
    in the task's format (built-in tasks: the right answer with probability
    ``sft_correct_fraction``, else a random one, so the policy learns the template and only
    part of the task). Returns the losses."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng([config.seed, 7919])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.sft_lr, weight_decay=0.0)
    eos = tokenizer.eos_token_id
    losses = []
    model.train()
    for _ in tqdm(range(config.sft_steps), desc="warm-start", disable=not progress, leave=False):
        examples = [task.example(rng) for _ in range(config.sft_batch)]
        prompts = [tokenizer.prompt_ids(ex.prompt) for ex in examples]
        responses = [tokenizer.encode(task.format_response(ex, rng, config.sft_correct_fraction)) + [eos] for ex in examples]
        width = max(len(r) for r in responses)
        r_ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in responses], device=device)
        from .rollout import left_pad

        p_ids, p_mask = left_pad(prompts, tokenizer.pad_token_id, device)
        batch = build_rollout(p_ids, p_mask, r_ids, torch.zeros(len(examples), device=device), [""] * len(examples),
                              tokenizer)
        try:
            logp, _ = response_logprobs(model, batch, 1.0, False, device)
        except NonFiniteActivationError as e:
            raise NonFiniteLossError(f"non-finite warm-start loss at warm-start step {len(losses) + 1}: the model's "
                                     f"{e.what} is {e.value}, the weights diverged (--sft-lr {config.sft_lr})") from e
        loss = -(logp * batch.response_mask).sum() / batch.response_mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise NonFiniteLossError(f"non-finite warm-start loss {losses[-1]} at warm-start step {len(losses)} "
                                     f"(--sft-lr {config.sft_lr})")
    return losses


def _lr_at(config: TrainConfig, step: int) -> float:
    if config.warmup_steps and step <= config.warmup_steps:
        return config.lr * step / config.warmup_steps
    return config.lr


def _check_finite(value: float, what: str, step: int, where: str, run, detail: str = "") -> None:
    if not math.isfinite(value):
        last = ckpt.latest_checkpoint(run.ckpt_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        shown = f"non-finite {what} at step {step} ({where}): {detail}" if detail else \
            f"non-finite {what} {value} at step {step} ({where})"
        raise NonFiniteLossError(f"{shown}; stopping without saving; {kept}")


@contextlib.contextmanager
def _activations_checked(step: int, where: str, run):
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


def _nonfinite_params(model) -> bool:
    return any(not bool(torch.isfinite(p).all()) for p in model.parameters())


class Run:
    """State of one training run (model, optimizer, task, paths)."""

    def __init__(self, config: TrainConfig, init_weights: bool = True):
        self.config = config
        self.out_dir = Path(config.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.device = resolve_device(config.device)
        self.task = make_task(config.task, config.verifier, config.task_options)
        self.model, self.tokenizer = load_policy(config.model, config.model_hidden, config.model_layers,
                                                 config.model_heads, seed=config.seed)
        model_positions_ok(self.task, self.tokenizer, self.model, config)
        if config.init_weights and init_weights:  # a resumed run takes its weights from the checkpoint
            load_init_weights(self.model, config.init_weights)
        self.model.to(self.device)
        self.loss_config = loss_config(config, vocab_size(self.model))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, betas=(0.9, 0.99),
                                           weight_decay=config.weight_decay)
        self.step = 0
        self.log = print


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


def train_step(run: Run, step: int) -> dict:
    """One rollout and its updates; returns the step's metrics."""
    config, model, device = run.config, run.model, run.device
    t0 = time.perf_counter()
    examples = run.task.batch(config.seed, step, config.prompts_per_step)
    model.eval()
    generator = step_generator(config.seed, step, device)
    with _activations_checked(step, "sampling", run), _verifier_named(f"at step {step}"):
        rollout = sample_rollout(model, run.tokenizer, run.task, examples, config, generator, device,
                                 config.group_size, config.temperature)
    _sync(device)
    t1 = time.perf_counter()
    try:
        # in chunks of a mini-batch's size: the update's memory footprint, without the gradient
        with _activations_checked(step, "old-policy pass", run):
            old_policy_pass(model, rollout, config.temperature, device,
                            -(-rollout.input_ids.shape[0] // config.minibatches))
    except ESPOInputError:
        if _nonfinite_params(model):
            _check_finite(float("nan"), "model weights", step, "old-policy pass", run)
        raise
    _sync(device)
    t2 = time.perf_counter()
    # [ESPO-ADV] Eq. 11 over the responses of each prompt; unscored responses get 0.
    from .. import torch as backend

    advantages = backend.grpo_advantages(rollout.rewards, rollout.prompt_index, valid=rollout.valid)

    for group in run.optimizer.param_groups:
        group["lr"] = _lr_at(config, step)
    # Eval mode in the update too: dropout would make the current policy differ from the
    # old one (computed in eval mode) at identical weights, and ratios would not start at 1.
    model.eval()
    B = rollout.input_ids.shape[0]
    order_gen = torch.Generator().manual_seed(int(np.random.SeedSequence([config.seed, step, 1]).generate_state(1)[0]))
    loss_metrics: dict[str, list[float]] = {}
    losses, grad_norms = [], []
    params = [p for p in model.parameters() if p.requires_grad]
    for epoch in range(config.ppo_epochs):
        order = torch.randperm(B, generator=order_gen).to(device)
        for mb, rows in enumerate(torch.tensor_split(order, config.minibatches)):
            batch = rollout.rows(rows)
            where = f"epoch {epoch + 1}/{config.ppo_epochs}, mini-batch {mb + 1}/{config.minibatches}"
            with _activations_checked(step, where, run):
                logp, _ = response_logprobs(model, batch, config.temperature, False, device)
            result = compute_loss(config.algo, logp, batch, advantages[rows], run.loss_config)
            loss = result.loss
            loss_value = float(loss.detach())
            _check_finite(loss_value, "loss", step, where, run)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            limit = config.grad_clip if config.grad_clip > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
            _check_finite(grad_norm, "gradient norm", step, where, run)
            run.optimizer.step()
            losses.append(loss_value)
            grad_norms.append(grad_norm)
            for key, value in result.metrics.items():
                loss_metrics.setdefault(key, []).append((float(value), where))
    _sync(device)
    t3 = time.perf_counter()

    mask = rollout.response_mask
    tokens = int(mask.sum())
    record = {
        "step": step,
        "reward": float(rollout.rewards.mean()),
        "accuracy": float(rollout.correct.float().mean()),
        "valid_fraction": float(rollout.valid.float().mean()),
        "truncated_fraction": float((~rollout.ended).float().mean()),
        "response_length": tokens / B,
        "entropy": float((rollout.entropy * mask).sum() / max(tokens, 1)),
        "advantage_abs_mean": float(advantages.abs().mean()),
        "loss": sum(losses) / len(losses),
        "grad_norm": sum(grad_norms) / len(grad_norms),
        "lr": _lr_at(config, step),
        "gen_time": t1 - t0,
        "old_logprob_time": t2 - t1,
        "update_time": t3 - t2,
        "step_time": t3 - t0,
        "tokens_per_s": tokens / (t3 - t0),
        "sample": f"{examples[0].prompt!r} -> {rollout.texts[0]!r}",
    }
    for key in ("clipfrac", "clipfrac_high", "clipfrac_low", "clipfrac_high_group", "clipfrac_low_group",
                "eps_mean_high_group", "eps_mean_low_group", "approx_kl", "ratio_mean", "clamped_frac"):
        if key in loss_metrics:  # the mean over every mini-batch: a non-finite value is kept, not skipped
            values = [v for v, _ in loss_metrics[key]]
            record[key] = sum(values) / len(values)
            bad = [(v, where) for v, where in loss_metrics[key] if not math.isfinite(v)]
            if bad:
                record.setdefault("nonfinite_metrics", []).append(key)
                run.log(f"warning: step {step}: metric {key} is {bad[0][0]} in {len(bad)} of {len(values)} "
                        f"mini-batch updates (first: {bad[0][1]}); the step's {key} is {record[key]}")
    return record


def warm_start_weights(config: TrainConfig, path, progress: bool = True) -> dict:
    """Build the policy of ``config``, run its supervised warm-start (``sft_steps``) and
    save the weights to ``path`` (a state_dict, written atomically), so that several runs
    can start from the same warmed-up policy. Returns the losses and the greedy evaluation."""
    import os

    device = resolve_device(config.device)
    with torch_settings(config, device):
        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        task = make_task(config.task, config.verifier, config.task_options)
        model, tokenizer = load_policy(config.model, config.model_hidden, config.model_layers, config.model_heads,
                                       seed=config.seed)
        model.to(device)
        start = time.perf_counter()
        model_positions_ok(task, tokenizer, model, config)
        losses = warm_start(model, tokenizer, task, config, device, progress)
        result = {"warm_start_steps": config.sft_steps, "warm_start_loss_first": losses[0] if losses else None,
                  "warm_start_loss_last": losses[-1] if losses else None,
                  "warm_start_time_s": time.perf_counter() - start}
        result.update(evaluate(model, tokenizer, task, config, device))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, tmp)
        os.replace(tmp, path)
    return result


def _check_resume_config(saved: dict, config: TrainConfig) -> None:
    now = config.to_dict()
    differ = sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if differ:
        detail = ", ".join(f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in differ)
        raise TrainInputError(f"--resume with a different configuration ({detail}); only {RESUMABLE_CHANGES} "
                              f"may change")


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


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, stop_at_step: int | None = None,
          progress: bool = True, log=print) -> dict:
    """Run (or, with ``resume``, continue) a training; returns the summary (also written to
    ``summary.json``). ``stop_at_step`` stops after that step as if interrupted (the
    checkpoint of that step is written). A folder that already holds a run is refused
    (RunExistsError) unless ``resume`` or ``overwrite`` (which removes the run's own files,
    RUN_FILES, and nothing else)."""
    from tqdm.auto import tqdm

    out = Path(config.out_dir)
    latest = check_out_dir(out, resume=resume, overwrite=overwrite)
    if latest is not None:  # check the configuration before importing anything it names (a verifier)
        _check_resume_config(ckpt.load_state(latest)["config"], config)
    device = resolve_device(config.device)
    with torch_settings(config, device):
        run = Run(config, init_weights=latest is None)
        run.log = log
        for stale in ckpt.remove_stale_temp(run.ckpt_dir):
            log(f"removed {stale} (a checkpoint left unfinished by a process that no longer runs)")
        summary: dict = {}
        if latest is not None:
            loaded = ckpt.load_checkpoint(latest)
            try:
                run.model.load_state_dict(loaded["weights"])
            except RuntimeError as e:
                raise TrainInputError(f"{latest / 'weights.pt'}: does not fit the model") from e
            run.optimizer.load_state_dict(loaded["optimizer"])
            ckpt.restore_rng(loaded["state"]["rng"], loaded["rng"])
            run.step = loaded["state"]["step"]
            summary = dict(loaded["state"].get("summary", {}))
            log(f"resuming from {latest} (step {run.step})")
            metrics = MetricsLog(out, keep_until_step=run.step)
        else:
            random.seed(config.seed)
            np.random.seed(config.seed)
            torch.manual_seed(config.seed)
            if config.sft_steps:
                sft = warm_start(run.model, run.tokenizer, run.task, config, device, progress)
                summary["warm_start_loss_first"], summary["warm_start_loss_last"] = sft[0], sft[-1]
            summary.update({f"{k}_before": v for k, v in evaluate(run.model, run.tokenizer, run.task, config,
                                                                   device).items()})
            for removed in remove_run_files(out) if overwrite else []:  # the inputs were good: replace the run
                log(f"--overwrite: removed {removed}")
            metrics = MetricsLog(out)
            if config.checkpoint_every:
                ckpt.save_checkpoint(run.ckpt_dir, 0, run.model, run.optimizer, config.to_dict(),
                                     {"summary": summary}, config.keep_checkpoints)
        write_atomic(out / "config.json", config.to_json())
        start_time = time.perf_counter()
        bar = tqdm(total=config.steps, initial=run.step, desc=f"{config.algo} {config.task}", disable=not progress,
                   dynamic_ncols=True)
        try:
            while run.step < config.steps:
                step = run.step + 1
                record = train_step(run, step)
                run.step = step
                metrics.write(record)
                bar.update(1)
                bar.set_postfix(reward=f"{record['reward']:.3f}", acc=f"{record['accuracy']:.2f}",
                                clip=f"{record.get('clipfrac', 0.0):.3f}")
                stopping = stop_at_step is not None and step >= stop_at_step
                if config.checkpoint_every and (step % config.checkpoint_every == 0 or step == config.steps or stopping):
                    if _nonfinite_params(run.model):  # never a checkpoint of diverged weights
                        _check_finite(float("nan"), "model weights", step, "after its last update", run)
                    ckpt.save_checkpoint(run.ckpt_dir, step, run.model, run.optimizer, config.to_dict(),
                                         {"summary": summary}, config.keep_checkpoints)
                if stopping:
                    break
        finally:
            bar.close()
            metrics.close()
        records = read_metrics(out)
        summary.update({
            "algo": config.algo, "task": config.task, "steps": run.step, "seed": config.seed,
            "wall_time_s": time.perf_counter() - start_time,
            "reward_last10": mean_of(records, "reward", 10), "accuracy_last10": mean_of(records, "accuracy", 10),
        })
        if run.step >= config.steps:
            with _activations_checked(run.step, "greedy evaluation after training", run):
                summary.update({f"{k}_after": v for k, v in evaluate(run.model, run.tokenizer, run.task, config,
                                                                      device).items()})
        if records:
            plot_runs({config.algo: records}, out)
        write_atomic(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
        run.final_model = run.model
        return summary
