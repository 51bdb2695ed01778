"""Group-normalised advantage, Eq. 11 [ESPO-ADV]; torch mirror of espo_ref/advantage.py."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..config import is_real_number
from ..errors import ESPOInputError
from ._checks import as_mask, as_real_array, coerce, compute_dtype, first_index, float_repr, is_integer


def _ldexp(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """[ESPO-ADV] x * 2**e elementwise, in two factors so that each power of two is representable in
    x's dtype (2**1074 is not); exact unless the result leaves the normal range."""
    half = e // 2
    two = torch.full((), 2.0, dtype=x.dtype, device=x.device)
    return x * torch.pow(two, half.to(x.dtype)) * torch.pow(two, (e - half).to(x.dtype))


def grpo_advantages(rewards, prompt_ids, valid=None, ddof: int = 1, eps: float = 1e-6, *,
                    validate: bool = True) -> torch.Tensor:
    """[ESPO-ADV] Eq. 11: A_i = 1[i in G] (R_i - mu_G) / (sigma_G + eps), per prompt.

    G = the responses of the same prompt with ``valid`` True; mu, sigma their mean and std
    (``ddof=1``: Bessel's correction). Invalid responses get 0; a prompt with fewer than
    two valid responses gives 0 to all of its responses. Returns [B] (float64 for float64
    rewards, else float32) on the rewards' device. ``prompt_ids``: an integer tensor, or
    integers or strings as numpy accepts them. Finding the prompts (``unique``) syncs. Each
    prompt is computed on its rewards scaled by a power of two (exact), so finite rewards of
    any magnitude give finite advantages.
    """
    r = as_real_array(rewards, "rewards", ndim=1)
    B = r.shape[0]
    ids, numpy_name = coerce(prompt_ids, r.device, "prompt_ids") if isinstance(prompt_ids, torch.Tensor) else (None, None)
    if ids is None:
        host_ids = np.asarray(prompt_ids)
        shape, ok_dtype, numpy_name = host_ids.shape, host_ids.dtype.kind in "iuUS", str(host_ids.dtype)
    else:
        shape, ok_dtype = tuple(ids.shape), is_integer(ids.dtype)
    if len(shape) != 1 or shape[0] != B:
        raise ESPOInputError(f"prompt_ids must have shape ({B},) like rewards, got {shape}")
    if not ok_dtype:
        raise ESPOInputError(f"prompt_ids must be integers or strings, got dtype {numpy_name}")
    if valid is None:
        v = torch.ones(B, dtype=torch.bool, device=r.device)
    else:
        v = as_mask(valid, "valid", (B,), device=r.device, validate=validate)
    if isinstance(ddof, (bool, np.bool_)) or ddof not in (0, 1):
        raise ESPOInputError(f"ddof must be 0 or 1, got {ddof!r}")
    if not is_real_number(eps) or not (math.isfinite(eps) and eps >= 0):
        raise ESPOInputError(f"eps must be a finite number >= 0, got {eps!r}")
    if validate:
        bad = v & ~torch.isfinite(r)
        if bool(bad.any()):
            i = first_index(bad)[0]
            raise ESPOInputError(f"rewards has a non-finite value {float_repr(r, [i])} for valid response {i}")
    dtype = compute_dtype(r)
    zero = torch.zeros((), dtype=dtype, device=r.device)
    r = torch.where(v, r, torch.zeros((), dtype=r.dtype, device=r.device)).to(dtype)
    if ids is None:
        _, inverse = np.unique(host_ids, return_inverse=True)
        prompt = torch.from_numpy(inverse.reshape(-1).astype(np.int64)).to(r.device)
    else:
        _, prompt = torch.unique(ids, return_inverse=True)
    P = int(prompt.max()) + 1 if B else 0

    def per_prompt(values):
        return torch.zeros(P, dtype=dtype, device=r.device).index_add(0, prompt, values)

    n = per_prompt(v.to(dtype))
    # Each prompt scaled by 2**-e, e the exponent of its largest |reward| (the core's exact
    # power-of-two scaling): huge or tiny rewards neither overflow nor underflow when squared.
    largest = torch.zeros(P, dtype=dtype, device=r.device).scatter_reduce(
        0, prompt, torch.where(v, r.abs(), zero), reduce="amax")
    exponent = torch.frexp(largest).exponent.to(torch.int64)
    r = _ldexp(r, -exponent[prompt])
    # eps scaled in float64 (eps itself may lie beyond float32), then rounded to the dtype
    eps_scaled = _ldexp(torch.full((P,), float(eps), dtype=torch.float64, device=r.device), -exponent).to(dtype)
    # Mean about a per-prompt shift (its largest valid reward), as the numpy core: equal
    # rewards then give R - mu = 0 exactly.
    neg_inf = torch.full((), -math.inf, dtype=dtype, device=r.device)
    shift = torch.full((P,), -math.inf, dtype=dtype, device=r.device).scatter_reduce(
        0, prompt, torch.where(v, r, neg_inf), reduce="amax")
    shift = torch.where(torch.isfinite(shift), shift, zero)
    mu = shift + per_prompt(torch.where(v, r - shift[prompt], zero)) / n.clamp(min=1)
    dev = torch.where(v, r - mu[prompt], zero)
    var = per_prompt(dev * dev) / (n - ddof).clamp(min=1)
    sigma = torch.sqrt(var)
    scored = v & (n[prompt] >= 2)
    denom = sigma[prompt] + eps_scaled[prompt]
    # eps = 0 with equal rewards gives 0 / 0; the advantage of an all-equal group is 0.
    safe = scored & (denom > 0)
    return torch.where(safe, dev / torch.where(safe, denom, torch.ones((), dtype=dtype, device=r.device)), zero)
