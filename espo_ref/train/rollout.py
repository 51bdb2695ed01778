"""Rollouts: batched sampling with a KV cache, verifier rewards, and the per-token
log-probabilities and entropies of a policy on its responses.

Layout of a batch of sequences: each prompt left-padded to the longest prompt P, then its
response right-padded to the longest response R; ``input_ids [B, P + R]``. The response
mask is True from the first response token up to and including the first EOS, False on
padding and on everything after the EOS. Position ids count the real tokens only.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import numpy as np
import torch

from ..torch.logprob_entropy import token_logprobs_and_entropy, token_logprobs_and_entropy_from_logits
from .errors import NonFiniteActivationError
from .model import hidden_path_ok


def check_finite(values: torch.Tensor, what: str) -> None:
    """NonFiniteActivationError (with the first bad value) when ``values`` holds a NaN or an
    infinity: a diverged model, reported by the trainer as a non-finite loss at its step."""
    bad = ~torch.isfinite(values.detach())
    if bool(bad.any()):
        raise NonFiniteActivationError(what, float(values.detach()[bad][0]))


def autocast_context(device: torch.device):
    """bf16 autocast on CUDA; nothing on CPU (float32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The sampling generator of one step, a pure function of (seed, step): a resumed run
    samples exactly what the uninterrupted run sampled."""
    value = int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0] >> 1)
    gen = torch.Generator(device=device)
    gen.manual_seed(value)
    return gen


def left_pad(sequences: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, P], attention mask [B, P]) with each sequence right-aligned."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def right_pad(sequences: list[list[int]], pad: int, device) -> torch.Tensor:
    """ids [B, R] with each sequence left-aligned (responses)."""
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [pad] * (width - len(s)) for s in sequences], dtype=torch.long, device=device)


def response_mask_of(response_ids: torch.Tensor, eos: int) -> torch.Tensor:
    """True up to and including the first EOS of each row; False after it."""
    is_eos = (response_ids == eos).long()
    before = torch.cumsum(is_eos, dim=1) - is_eos
    return before == 0


def _cache_kwarg(model) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _keep_last(model, n: int) -> dict:
    """The keyword that limits the logits to the last ``n`` positions, as the model names it."""
    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: n}
    return {}


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.no_grad()
def generate(model, prompts: list[list[int]], *, eos: int, pad: int, max_new_tokens: int,
             temperature: float, generator: torch.Generator | None, device: torch.device):
    """Sample a response for each prompt (token ids): temperature sampling with
    ``generator`` (temperature 0: greedy). Returns (prompt ids [B, P], prompt mask [B, P],
    response ids [B, R]); rows that ended are padded with ``pad`` after their EOS."""
    prompt_ids, prompt_mask = left_pad(prompts, pad, device)
    attention = prompt_mask
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    cache_kw = _cache_kwarg(model)
    B = prompt_ids.shape[0]
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    tokens = []
    with autocast_context(device):
        out = model(input_ids=prompt_ids, attention_mask=attention, position_ids=positions,
                    use_cache=True, **_keep_last(model, 1))
        for _ in range(max_new_tokens):
            logits = out.logits[:, -1].float()
            check_finite(logits, "logits")
            if temperature == 0:
                nxt = logits.argmax(dim=-1)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            tokens.append(nxt)
            finished = finished | (nxt == eos)
            if bool(finished.all()):
                break
            attention = torch.cat([attention, torch.ones((B, 1), dtype=attention.dtype, device=device)], dim=1)
            positions = positions[:, -1:] + 1
            out = model(input_ids=nxt[:, None], attention_mask=attention, position_ids=positions,
                        use_cache=True, **{cache_kw: _cache_of(out)})
    return prompt_ids, prompt_mask, torch.stack(tokens, dim=1)


@dataclass(frozen=True)
class Rollout:
    """One step's samples: the sequences and their masks. What is computed from them is
    returned apart: the rewards by ``score``, the old policy's log-probs and entropies by
    ``old_policy_pass``."""

    input_ids: torch.Tensor          # [B, P + R]
    attention_mask: torch.Tensor     # [B, P + R]
    response_ids: torch.Tensor       # [B, R]
    response_mask: torch.Tensor      # [B, R] bool
    ended: torch.Tensor              # [B] bool: the response has an EOS
    prompt_index: torch.Tensor       # [B] which prompt of the step
    texts: list[str]
    answers: list[str]

    def rows(self, index: torch.Tensor) -> "Rollout":
        """The sub-batch of the given rows (for mini-batches)."""
        idx = index.tolist()
        return Rollout(self.input_ids[index], self.attention_mask[index], self.response_ids[index],
                       self.response_mask[index], self.ended[index], self.prompt_index[index],
                       [self.texts[i] for i in idx], [self.answers[i] for i in idx])


@dataclass(frozen=True)
class Scores:
    """The verifier's verdict on each response of a rollout [ESPO-ADV]."""

    rewards: torch.Tensor            # [B] float32 (0 where unscored)
    valid: torch.Tensor              # [B] bool: the verifier scored it
    correct: torch.Tensor            # [B] bool: valid and reward >= 1


def build_rollout(prompt_ids, prompt_mask, response_ids, prompt_index, answers, tokenizer) -> Rollout:
    """The rollout of sampled responses; each text is its response up to, without, the EOS."""
    eos = tokenizer.eos_token_id
    mask = response_mask_of(response_ids, eos)
    ended = ((response_ids == eos) & mask).any(dim=1)
    # the mask is a prefix ending at the first EOS: the text is the prefix less that EOS
    lengths = (mask.sum(dim=1) - ended.long()).tolist()
    texts = [tokenizer.decode(row[:n]) for row, n in zip(response_ids.tolist(), lengths)]
    return Rollout(
        input_ids=torch.cat([prompt_ids, response_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, mask.long()], dim=1),
        response_ids=response_ids, response_mask=mask, ended=ended,
        prompt_index=prompt_index, texts=texts, answers=list(answers),
    )


def score(rollout: Rollout, task, *, score_truncated: bool = False) -> Scores:
    """Verifier rewards. A response without EOS (truncated at max_new_tokens) is unscored
    unless ``score_truncated`` [ESPO-ADV]: valid = the verifier returned a score for a
    complete response."""
    rewards, valid = [], []
    for text, answer, ended in zip(rollout.texts, rollout.answers, rollout.ended.tolist()):
        reward = task.verify(text, answer) if (ended or score_truncated) else None
        valid.append(reward is not None)
        rewards.append(0.0 if reward is None else reward)
    device = rollout.response_ids.device
    rewards = torch.tensor(rewards, dtype=torch.float32, device=device)
    valid = torch.tensor(valid, dtype=torch.bool, device=device)
    return Scores(rewards=rewards, valid=valid, correct=valid & (rewards >= 1.0))


def position_ids_of(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


def response_logprobs(model, batch: Rollout, temperature: float, device: torch.device, *, with_entropy: bool = False):
    """[ESPO-ENT] (logp [B, R], entropy [B, R] or None) of the response tokens under
    ``model`` at ``temperature``; 0 off the response mask. logp carries the gradient when
    grad is enabled; entropy (Eq. 6, over the model's whole vocabulary) is detached.

    Where the logits are exactly lm_head(last hidden state), only the response rows go
    through the lm-head (``token_logprobs_and_entropy``, chunked over the vocabulary);
    otherwise the model's logits of the response positions are used
    (``token_logprobs_and_entropy_from_logits``)."""
    R = batch.response_ids.shape[1]
    mask = batch.response_mask
    targets = batch.response_ids[mask]
    positions = position_ids_of(batch.attention_mask)
    with autocast_context(device):
        if hidden_path_ok(model):
            hidden = model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                      position_ids=positions, use_cache=False).last_hidden_state
            rows = hidden[:, -R - 1:-1][mask]
            check_finite(rows, "hidden state")
            head = model.get_output_embeddings()
            bias = None if head.bias is None else head.bias.to(rows.dtype)
            with torch.autocast(device.type, enabled=False):  # its products accumulate in float32
                logp, entropy = token_logprobs_and_entropy(rows, head.weight.to(rows.dtype), targets, temperature,
                                                           bias=bias, with_entropy=with_entropy)
        else:
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions,
                           use_cache=False, **_keep_last(model, R + 1)).logits[:, -R - 1:-1]
            check_finite(logits[mask], "logits")
            with torch.autocast(device.type, enabled=False):
                logp, entropy = token_logprobs_and_entropy_from_logits(logits[mask], targets, temperature)
    full_logp = torch.zeros(mask.shape, dtype=logp.dtype, device=logp.device)
    full_logp = full_logp.index_put((mask.nonzero(as_tuple=True)), logp)
    full_entropy = None
    if entropy is not None:
        full_entropy = torch.zeros(mask.shape, dtype=entropy.dtype, device=entropy.device)
        full_entropy[mask] = entropy
    return full_logp, full_entropy


@torch.no_grad()
def old_policy_pass(model, rollout: Rollout, temperature: float, device: torch.device,
                    chunk_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[ESPO-ENT-DOMAIN] (old_logp [B, R], entropy [B, R]): the old (sampling) policy's
    log-probabilities and entropies at the sampling temperature, without gradient, in
    chunks of ``chunk_rows`` sequences (a chunk's memory is a mini-batch's, less the gradient)."""
    logps, entropies = [], []
    B = rollout.input_ids.shape[0]
    for start in range(0, B, chunk_rows):
        part = rollout.rows(torch.arange(start, min(start + chunk_rows, B), device=device))
        logp, entropy = response_logprobs(model, part, temperature, device, with_entropy=True)
        logps.append(logp)
        entropies.append(entropy)
    return torch.cat(logps), torch.cat(entropies)
