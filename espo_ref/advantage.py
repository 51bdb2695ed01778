"""Group-normalised advantage, Eq. 11 [ESPO-ADV]."""

from __future__ import annotations

import math

import numpy as np

from ._checks import as_mask, as_real_array
from .config import is_real_number
from .errors import ESPOInputError


def grpo_advantages(rewards, prompt_ids, valid=None, ddof: int = 1, eps: float = 1e-6) -> np.ndarray:
    """[ESPO-ADV] Eq. 11: A_i = 1[i in G] (R_i - mu_G) / (sigma_G + eps), per prompt.

    G = the responses of the same prompt with ``valid`` True; mu, sigma their mean and std
    (``ddof=1``: Bessel's correction). Invalid responses get 0; a prompt with fewer than
    two valid responses gives 0 to all of its responses. Returns float64 [B]. Each prompt is
    computed on its rewards scaled by a power of two (exact), so finite rewards of any
    magnitude give finite advantages.
    """
    r = as_real_array(rewards, "rewards", ndim=1)
    B = r.shape[0]
    ids = np.asarray(prompt_ids)
    if ids.ndim != 1 or ids.shape[0] != B:
        raise ESPOInputError(f"prompt_ids must have shape ({B},) like rewards, got {ids.shape}")
    if ids.dtype == object or ids.dtype.kind not in "iuUS":
        raise ESPOInputError(f"prompt_ids must be integers or strings, got dtype {ids.dtype}")
    v = np.ones(B, dtype=bool) if valid is None else as_mask(valid, "valid", (B,))
    if isinstance(ddof, (bool, np.bool_)) or ddof not in (0, 1):
        raise ESPOInputError(f"ddof must be 0 or 1, got {ddof!r}")
    if not is_real_number(eps) or not (math.isfinite(eps) and eps >= 0):
        raise ESPOInputError(f"eps must be a finite number >= 0, got {eps!r}")
    bad = v & ~np.isfinite(r)
    if bad.any():
        i = int(np.argmax(bad))
        raise ESPOInputError(f"rewards has a non-finite value {r[i]!r} for valid response {i}")
    r = np.where(v, r, 0.0)
    _, prompt = np.unique(ids, return_inverse=True)
    prompt = prompt.reshape(-1)
    n = np.bincount(prompt, weights=v.astype(np.float64))
    # Each prompt's rewards and eps are scaled by the power of two 2**-e with e the exponent of
    # its largest |reward|: exact (power-of-two scaling commutes with every operation below), the
    # advantage is scale-free, and the squares of huge or tiny rewards neither overflow nor
    # underflow.
    largest = np.zeros(n.shape)
    np.maximum.at(largest, prompt[v], np.abs(r[v]))
    exponent = np.frexp(largest)[1]
    r = np.ldexp(r, -exponent[prompt])
    with np.errstate(over="ignore"):  # a huge eps over tiny rewards: inf, and the advantage 0
        eps_scaled = np.ldexp(float(eps), -exponent)
    # Mean about a per-prompt shift (its largest valid reward): equal rewards then give
    # R - mu = 0 exactly, where a plain float mean (0.1 + 0.1 + 0.1) / 3 != 0.1 would not.
    shift = np.full(n.shape, -np.inf)
    np.maximum.at(shift, prompt[v], r[v])
    shift = np.where(np.isfinite(shift), shift, 0.0)
    offset = np.where(v, r - shift[prompt], 0.0)
    mu = shift + np.bincount(prompt, weights=offset) / np.maximum(n, 1)
    dev = np.where(v, r - mu[prompt], 0.0)
    var = np.bincount(prompt, weights=dev * dev) / np.maximum(n - ddof, 1)
    sigma = np.sqrt(var)
    scored = v & (n[prompt] >= 2)
    denom = sigma[prompt] + eps_scaled[prompt]
    # eps = 0 with equal rewards gives 0 / 0; the advantage of an all-equal group is 0.
    safe = scored & (denom > 0)
    return np.where(safe, dev / np.where(safe, denom, 1.0), 0.0)
