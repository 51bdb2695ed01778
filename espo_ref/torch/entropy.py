"""Token entropy of the old policy, Eq. 6 [ESPO-ENT]; torch mirror of espo_ref/entropy.py."""

from __future__ import annotations

import math

import torch

from ..errors import ESPOInputError
from ._checks import coerce, compute_dtype, first_index, is_real


def token_entropy(logits, temperature: float = 1.0, *, validate: bool = True) -> torch.Tensor:
    """[ESPO-ENT] Eq. 6: e = -sum_v p_v log p_v of p = softmax(logits / temperature), in nats.

    Reduces the last axis; stable via log-sum-exp. Entries of -inf are vocabulary items
    with probability zero; NaN and +inf are errors (checked with a host sync unless
    ``validate=False``). Returns shape ``logits.shape[:-1]``, float64 for float64 logits
    and float32 otherwise, clamped below at 0 against rounding.
    """
    z, numpy_name = coerce(logits)
    if z is None or not is_real(z.dtype):
        raise ESPOInputError(f"logits must be a real numeric array, got dtype {numpy_name}")
    if z.ndim < 1 or z.shape[-1] < 1:
        raise ESPOInputError(f"logits must have a non-empty last (vocabulary) axis, got {tuple(z.shape)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise ESPOInputError(f"temperature must be a finite number > 0, got {temperature!r}")
    z = z.to(compute_dtype(z)) / float(temperature)
    top = z.amax(dim=-1, keepdim=True)
    if validate:
        bad = torch.isnan(z) | torch.isposinf(z)
        if bool(bad.any()):
            raise ESPOInputError(f"logits has a NaN or +inf value at index {first_index(bad)}")
        dead = torch.isneginf(top[..., 0])
        if bool(dead.any()):
            raise ESPOInputError(f"logits is -inf over the whole vocabulary at index {first_index(dead)}")
    shifted = z - top
    alive = torch.isfinite(shifted)
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    shifted = torch.where(alive, shifted, zero)
    weights = torch.where(alive, torch.exp(shifted), zero)
    total = weights.sum(dim=-1)
    prob = weights / total[..., None]
    entropy = torch.log(total) - torch.sum(prob * shifted, dim=-1)
    return entropy.clamp(min=0.0)
