"""What ESPO did to the tokens of a training run: sampled rollouts and explainable batches.

Every ``samples_every`` steps (and at the first and the last step) an ESPO run writes

* ``rollouts.jsonl``: ``samples_kept`` responses of the step's first mini-batch update, each
  with its prompt, its tokens, the old policy's entropy [ESPO-ENT-DOMAIN], the token's group
  [ESPO-GROUP], epsilon [ESPO-CLIP], clip side [ESPO-CLIPMASK], advantage and reward;
* ``batches/step_NNNNNN.npz``: that whole mini-batch as ``espo-ref explain`` reads it (the
  inputs of the loss, the tokens, the ESPOConfig and the loss the trainer computed on it), so
  that ``espo-ref explain`` reproduces the logged loss with the numpy reference;

and ``token_view.html`` shows the first and the last sampled step.
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
    """[ESPO-GROUP] Whether ``step`` writes samples: ESPO runs, every ``samples_every`` steps, the
    first and the last step (``samples_every`` 0: never)."""
    if config.algo != "espo" or not config.samples_every:
        return False
    return step == 1 or step == config.steps or step % config.samples_every == 0


def batch_path(out_dir, step: int) -> Path:
    return Path(out_dir) / BATCHES_DIR / f"step_{step:06d}.npz"


def _host(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy()


def response_tokens(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor) -> list[list[str]]:
    """Each response's token strings, up to its last response token."""
    lengths = mask.sum(dim=1).tolist()
    return [tokenizer.token_strings(row[:n]) for row, n in zip(response_ids.tolist(), lengths)]


def write_samples(out_dir, step: int, *, prompts: list[str], rewards, tokens: list[list[str]], inputs: dict,
                  result, loss_config, logged: dict[str, Any], kept: int) -> list[dict]:
    """[ESPO-GROUP] [ESPO-CLIPMASK] Write the step's batch (``batches/``) and its first ``kept``
    responses' records (groups, eps, clip sides); returns
    the records (appended to rollouts.jsonl by the caller's SampleLog)."""
    arrays = {name: _host(value) for name, value in inputs.items()}
    save_batch(batch_path(out_dir, step), arrays, loss_config.to_dict(), tokens=tokens, logged=logged)
    mask = arrays["mask"].astype(bool)
    adv = arrays["advantages"]
    adv = adv if adv.ndim == 1 else adv[:, 0]
    fields = {name: _host(getattr(result, name)) for name in ("groups", "eps_high", "clipped_high", "clipped_low",
                                                                "trained")}
    records = []
    for b in range(min(kept, mask.shape[0])):
        n = int(mask[b].sum())
        side = np.where(fields["clipped_high"][b, :n], "high", np.where(fields["clipped_low"][b, :n], "low", ""))
        records.append({
            "step": step, "index": b, "batch": f"{BATCHES_DIR}/{batch_path(out_dir, step).name}",
            "prompt": prompts[b], "tokens": tokens[b][:n], "entropy": arrays["entropy"][b, :n].tolist(),
            "group": fields["groups"][b, :n].tolist(), "eps": fields["eps_high"][b, :n].tolist(),
            "clipped": side.tolist(), "trained": fields["trained"][b, :n].tolist(),
            "advantage": float(adv[b]), "reward": float(rewards[b]),
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
    records = read_metrics(Path(out_dir) / SAMPLES_FILE)
    if not records:
        return None
    steps = sorted({r["step"] for r in records})
    shown = [r for r in records if r["step"] in (steps[0], steps[-1])]
    intro = (f"Sampled responses of the first and the last sampled step (of {len(steps)}); the whole mini-batch "
             f"of each is in {BATCHES_DIR}/ for espo-ref explain. Hover a token for its numbers.")
    path = Path(out_dir) / TOKEN_VIEW
    write_atomic(path, rollouts_page(title, shown, intro))
    return path
