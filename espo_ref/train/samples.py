"""What the loss did to the tokens of a training run: sampled rollouts and explainable batches.

Every ``samples_every`` steps (and at the first and the last step) a run writes

* ``batches/step_NNNNNN.npz`` (ESPO runs): the step's first mini-batch update as ``espo-ref
  explain`` reads it (the inputs of the loss, the tokens, the ESPOConfig and the loss the trainer
  computed on it, so that ``espo-ref explain`` reproduces the logged loss with the numpy
  reference); its policy is the old one, so every ratio is 1 and no token is clipped;
* ``batches/step_NNNNNN_last.npz`` (ESPO runs, when a step makes more than one update): the
  mini-batch of the step's last update, after the policy moved (its ``old_logp`` from the
  rollout, its ``logp`` under the current policy): there the clipping shows [ESPO-CLIPMASK];
* ``rollouts.jsonl`` (every algorithm): ``samples_kept`` responses of the step's last update,
  each with its prompt, its tokens, the old policy's entropy [ESPO-ENT-DOMAIN], the clip side
  of each token, advantage and reward, and for ESPO the token's group [ESPO-GROUP], epsilon
  [ESPO-CLIP] and the batch file it comes from (a baseline has no entropy groups: ``group``,
  ``eps`` and ``batch`` are null);

and, for ESPO, ``token_view.html`` shows the first and the last sampled step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import write_atomic
from ..explain import save_batch
from ..explain.html import rollouts_page
from .metrics import read_metrics

SAMPLES_FILE = "rollouts.jsonl"
BATCHES_DIR = "batches"
TOKEN_VIEW = "token_view.html"


def wants_samples(config, step: int) -> bool:
    """[ESPO-GROUP] Whether ``step`` writes samples: every ``samples_every`` steps, the first and the
    last step (``samples_every`` 0: never)."""
    if not config.samples_every:
        return False
    return step == 1 or step == config.steps or step % config.samples_every == 0


def batch_path(out_dir, step: int, *, last: bool = False) -> Path:
    """batches/step_NNNNNN.npz, the step's first update; ``last``: step_NNNNNN_last.npz, its last
    update (it sorts after the first, and the last step's after every other batch)."""
    return Path(out_dir) / BATCHES_DIR / f"step_{step:06d}{'_last' if last else ''}.npz"


def _host(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy()


def response_tokens(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor) -> list[list[str]]:
    """Each response's token strings, up to its last response token."""
    lengths = mask.sum(dim=1).tolist()
    return [tokenizer.token_strings(row[:n]) for row, n in zip(response_ids.tolist(), lengths)]


def save_update_batch(path: Path, inputs: dict, loss_config, *, tokens: list[list[str]],
                      logged: dict[str, Any]) -> None:
    """[ESPO-OBJ] One mini-batch update as an explainable batch: the loss's inputs (on the host), the
    tokens, the loss configuration and what the trainer logged there (its loss, which update)."""
    arrays = {name: _host(value) for name, value in inputs.items()}
    save_batch(path, arrays, loss_config.to_dict(), tokens=tokens, logged=logged)


def rollout_records(step: int, *, prompts: list[str], rewards, tokens: list[list[str]], inputs: dict, result,
                    kept: int, batch: Path | None) -> list[dict]:
    """[ESPO-GROUP] [ESPO-CLIPMASK] The first ``kept`` responses of one mini-batch update as
    rollouts.jsonl records: tokens, old-policy entropies, clip sides, trained flags, advantage and
    reward; groups and epsilons where the loss has them (ESPO; null for a baseline), and ``batch``,
    the file holding the whole mini-batch (null: none was saved)."""
    mask = _host(inputs["mask"]).astype(bool)
    entropy = _host(inputs["entropy"])
    adv = _host(inputs["advantages"])
    adv = adv if adv.ndim == 1 else adv[:, 0]
    fields = {name: (None if getattr(result, name) is None else _host(getattr(result, name)))
              for name in ("groups", "eps_high", "clipped_high", "clipped_low", "trained")}
    records = []
    for b in range(min(kept, mask.shape[0])):
        n = int(mask[b].sum())
        side = np.where(fields["clipped_high"][b, :n], "high", np.where(fields["clipped_low"][b, :n], "low", ""))
        per_token = {key: (None if fields[name] is None else fields[name][b, :n].tolist())
                     for key, name in (("group", "groups"), ("eps", "eps_high"), ("trained", "trained"))}
        records.append({
            "step": step, "index": b, "batch": None if batch is None else f"{BATCHES_DIR}/{batch.name}",
            "prompt": prompts[b], "tokens": tokens[b][:n], "entropy": entropy[b, :n].tolist(),
            **per_token, "clipped": side.tolist(), "advantage": float(adv[b]), "reward": float(rewards[b]),
        })
    return records


class SampleLog:
    """rollouts.jsonl, appended step by step; on resume the records after the checkpoint go."""

    def __init__(self, out_dir, keep_until_step: int | None = None):
        self.path = Path(out_dir) / SAMPLES_FILE
        kept = [] if keep_until_step is None else [r for r in read_metrics(self.path)
                                                   if r.get("step", 0) <= keep_until_step]
        write_atomic(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def write(self, records: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def high_group_share(records: list[dict], predicate) -> tuple[int, int]:
    """(tokens matching ``predicate`` that are in the high-entropy group, tokens matching it)."""
    hits = [(g == 0) for r in records for tok, g in zip(r["tokens"], r["group"]) if predicate(tok)]
    return sum(hits), len(hits)


def write_token_view(out_dir, title: str) -> Path | None:
    """[ESPO-GROUP] ``token_view.html``: the first and the last sampled step of the run (None: no samples)."""
    records = [r for r in read_metrics(Path(out_dir) / SAMPLES_FILE) if r.get("group") is not None]
    if not records:  # no samples, or a baseline's (no entropy groups to show)
        return None
    steps = sorted({r["step"] for r in records})
    shown = [r for r in records if r["step"] in (steps[0], steps[-1])]
    intro = (f"Sampled responses of the first and the last sampled step (of {len(steps)}), as the step's last "
             f"mini-batch update saw them (after the policy moved); the whole mini-batch of each is in "
             f"{BATCHES_DIR}/ for espo-ref explain. Hover a token for its numbers.")
    path = Path(out_dir) / TOKEN_VIEW
    write_atomic(path, rollouts_page(title, shown, intro))
    return path
