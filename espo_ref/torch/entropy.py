"""Token entropy of the old policy, Eq. 6 [ESPO-ENT], and its domain [ESPO-ENT-DOMAIN]; torch
mirror of espo_ref/entropy.py."""

from __future__ import annotations

import math

import torch

from ..errors import ESPOInputError
from ..config import is_real_number
from ._checks import as_mask, as_real_array, coerce, compute_dtype, entropy_in_range, finite_on, first_index, is_real

# Temperatures whose float32 value divides without rounding to 0 or inf (the float32 normal range).
_FLOAT32_SAFE = (2.0 ** -126, 2.0 ** 127)


def token_entropy(logits, temperature: float = 1.0, *, validate: bool = True) -> torch.Tensor:
    """[ESPO-ENT] Eq. 6: e = -sum_v p_v log p_v of p = softmax(logits / temperature), in nats.

    Reduces the last axis; stable via log-sum-exp. Entries of -inf are vocabulary items
    with probability zero; NaN and +inf are errors (checked with a host sync unless
    ``validate=False``). Returns shape ``logits.shape[:-1]``, float64 for float64 logits
    and float32 otherwise, clamped below at 0 against rounding. Finite logits give a finite
    entropy for every temperature (a row whose ``logits / temperature`` overflows is shifted
    by its maximum before the division, as in the core).
    """
    z, numpy_name = coerce(logits, name="logits")
    if z is None or not is_real(z.dtype):
        raise ESPOInputError(f"logits must be a real numeric array, got dtype {numpy_name}")
    if z.ndim < 1 or z.shape[-1] < 1:
        raise ESPOInputError(f"logits must have a non-empty last (vocabulary) axis, got {tuple(z.shape)}")
    if not is_real_number(temperature) or not (math.isfinite(temperature) and temperature > 0):
        raise ESPOInputError(f"temperature must be a finite number > 0, got {temperature!r}")
    temperature = float(temperature)
    raw = z.to(compute_dtype(z))
    raw_top = raw.amax(dim=-1, keepdim=True)
    if validate:
        bad = torch.isnan(raw) | torch.isposinf(raw)
        if bool(bad.any()):
            raise ESPOInputError(f"logits has a NaN or +inf value at index {first_index(bad)}")
        dead = torch.isneginf(raw_top[..., 0])
        if bool(dead.any()):
            raise ESPOInputError(f"logits is -inf over the whole vocabulary at index {first_index(dead)}")
    # A float32 division by a temperature float32 cannot hold (it would round to 0 or inf)
    # is taken in float64: the core's float64 division, rounded to float32 after the shift.
    wide = raw if raw.dtype == torch.float64 or _FLOAT32_SAFE[0] <= temperature <= _FLOAT32_SAFE[1] \
        else raw.to(torch.float64)
    z = wide / temperature
    shifted = z - z.amax(dim=-1, keepdim=True)
    # A finite logit that leaves the float range on division by a small temperature: that
    # row is shifted before dividing (the core's fallback; both forms are computed, no sync).
    overflow = (torch.isfinite(wide) & ~torch.isfinite(z)).any(dim=-1, keepdim=True)
    shifted = torch.where(overflow, (wide - wide.amax(dim=-1, keepdim=True)) / temperature, shifted).to(raw.dtype)
    alive = torch.isfinite(shifted)
    zero = torch.zeros((), dtype=raw.dtype, device=raw.device)
    shifted = torch.where(alive, shifted, zero)
    weights = torch.where(alive, torch.exp(shifted), zero)
    total = weights.sum(dim=-1)
    prob = weights / total[..., None]
    entropy = torch.log(total) - torch.sum(prob * shifted, dim=-1)
    return entropy.clamp(min=0.0)


def validate_entropy(entropy, mask, config, name: str = "entropy", *, device=None, validate: bool = True):
    """[ESPO-ENT-DOMAIN] The validated entropy [B, T] (padding zeroed, values inside the
    tolerance band below 0 clamped to 0; float64 stays float64, anything else is float32) and
    the boolean mask. Detached: the entropy is a constant of the objective."""
    ent = as_real_array(entropy, name, ndim=2, device=device).detach()
    m = as_mask(mask, "mask", tuple(ent.shape), device=ent.device, validate=validate)
    ent = finite_on(ent, m, name, compute_dtype(ent), validate)
    if validate:
        entropy_in_range(ent, m, config.log_vocab, config.entropy_tolerance)
    return ent.clamp(min=0.0), m
