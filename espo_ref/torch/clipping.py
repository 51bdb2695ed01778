"""Entropy-adaptive clipping, Eq. 8 [ESPO-CLIP], and the fixed-range ablation; torch mirror
of espo_ref/clipping.py."""

from __future__ import annotations

import torch

from ..config import ESPOConfig
from ..errors import ESPOInputError
from ._checks import as_real_tensor, coerce, compute_dtype, finite_on
from ._segments import Segments
from .grouping import check_groups, trained_tokens


def _group_clip_eps(ent: torch.Tensor, g: torch.Tensor, config: ESPOConfig, width: int | None) -> torch.Tensor:
    response = g >= 0
    scale = config.alpha / config.log_vocab
    if config.eps_reading == "group_mean":
        seg = Segments(g, response, width)
        return scale * seg.to_tokens(seg.means(ent))
    k = Segments(g, trained_tokens(g, config), width).groups_per_row()
    eps = scale * ent / k.clamp(min=1).to(ent.dtype)[:, None]
    return torch.where(response, eps, torch.zeros((), dtype=ent.dtype, device=ent.device))


def group_clip_eps(entropy, groups, config: ESPOConfig, *, validate: bool = True) -> torch.Tensor:
    """[ESPO-CLIP] Eq. 8: eps_tau = alpha * mean_{t in tau}(e_t) / log|V|, per token [B, T].

    With ``eps_reading="token_over_groups"`` [ESPO-CLIP-TOKEN]: alpha * e_t / (log|V| K_i),
    K_i the number of trained groups of response i. 0 on padding. float64 for float64
    entropy, else float32. The number of groups is read from ``groups`` (a host sync).
    """
    if not isinstance(config, ESPOConfig):
        raise ESPOInputError(f"config must be an ESPOConfig, got {type(config).__name__}")
    ent = as_real_tensor(entropy, "entropy", ndim=2)
    g = check_groups(groups, tuple(ent.shape), device=ent.device, validate=validate)
    ent = finite_on(ent, g >= 0, "entropy", compute_dtype(ent), validate)
    return _group_clip_eps(ent, g, config, None)


def _clip_bounds(ent: torch.Tensor, g: torch.Tensor, config: ESPOConfig, width: int | None):
    if config.clip == "adaptive":
        eps = _group_clip_eps(ent, g, config, width)
        return eps, eps
    response = g >= 0
    zero = torch.zeros((), dtype=ent.dtype, device=ent.device)
    return (torch.where(response, torch.full((), config.eps_low, dtype=ent.dtype, device=ent.device), zero),
            torch.where(response, torch.full((), config.eps_high, dtype=ent.dtype, device=ent.device), zero))


def clip_bounds(entropy, groups, config: ESPOConfig, *, validate: bool = True):
    """[ESPO-CLIP-FIXED] The clip offsets (eps_low, eps_high) per token: both equal to Eq. 8
    under ``clip="adaptive"``, the constants ``config.eps_low/eps_high`` under ``"fixed"``."""
    if config.clip == "adaptive":
        eps = group_clip_eps(entropy, groups, config, validate=validate)
        return eps, eps
    g, _ = coerce(groups)
    ent, _ = coerce(entropy, g.device)
    dtype = compute_dtype(ent) if ent is not None else torch.float64
    return _clip_bounds(torch.zeros((), dtype=dtype, device=g.device), g, config, None)
