"""Token entropy of the old policy, Eq. 6 [ESPO-ENT], and its domain [ESPO-ENT-DOMAIN]."""

from __future__ import annotations

import math

import numpy as np

from ._checks import as_mask, as_real_array, entropy_in_range, finite_on
from .config import is_real_number
from .errors import ESPOInputError


def token_entropy(logits, temperature: float = 1.0) -> np.ndarray:
    """[ESPO-ENT] Eq. 6: e = -sum_v p_v log p_v of p = softmax(logits / temperature), in nats.

    Reduces the last axis; stable via log-sum-exp. Entries of -inf are vocabulary items
    with probability zero; NaN and +inf are errors. Returns float64 of shape
    ``logits.shape[:-1]``, clamped below at 0 against rounding. Finite logits give a finite
    entropy for every temperature: a row whose ``logits / temperature`` leaves the float range
    is shifted by its maximum before the division.
    """
    z = np.asarray(logits)
    if z.dtype == object or z.dtype.kind not in "fiu":
        raise ESPOInputError(f"logits must be a real numeric array, got dtype {z.dtype}")
    if z.ndim < 1 or z.shape[-1] < 1:
        raise ESPOInputError(f"logits must have a non-empty last (vocabulary) axis, got {z.shape}")
    if not is_real_number(temperature) or not (math.isfinite(temperature) and temperature > 0):
        raise ESPOInputError(f"temperature must be a finite number > 0, got {temperature!r}")
    raw = as_real_array(z, "logits")
    if np.isnan(raw).any() or np.isposinf(raw).any():
        idx = tuple(int(i) for i in np.argwhere(np.isnan(raw) | np.isposinf(raw))[0])
        raise ESPOInputError(f"logits has a NaN or +inf value at index {list(idx)}")
    raw_top = raw.max(axis=-1, keepdims=True)
    if np.isneginf(raw_top).any():
        idx = tuple(int(i) for i in np.argwhere(np.isneginf(raw_top[..., 0]))[0])
        raise ESPOInputError(f"logits is -inf over the whole vocabulary at index {list(idx)}")
    with np.errstate(over="ignore", invalid="ignore"):
        z = raw / float(temperature)
        top = z.max(axis=-1, keepdims=True)
        shifted = z - top
        # A finite logit that leaves the float range on division by a small temperature:
        # that row is shifted before dividing (the same z - max in exact arithmetic).
        overflow = (np.isfinite(raw) & ~np.isfinite(z)).any(axis=-1, keepdims=True)
        if overflow.any():
            shifted = np.where(overflow, (raw - raw_top) / float(temperature), shifted)
    alive = np.isfinite(shifted)
    shifted = np.where(alive, shifted, 0.0)
    weights = np.where(alive, np.exp(shifted), 0.0)
    total = weights.sum(axis=-1)
    prob = weights / total[..., None]
    entropy = np.log(total) - np.sum(prob * shifted, axis=-1)
    return np.maximum(entropy, 0.0)


def validate_entropy(entropy, mask, config, name: str = "entropy"):
    """[ESPO-ENT-DOMAIN] The validated float64 entropy [B, T] (padding zeroed, values inside
    the tolerance band below 0 clamped to 0) and the boolean mask."""
    ent = as_real_array(entropy, name, ndim=2)
    m = as_mask(mask, "mask", ent.shape)
    ent = finite_on(ent, m, name)
    entropy_in_range(ent, m, config.log_vocab, config.entropy_tolerance)
    return np.maximum(ent, 0.0), m
