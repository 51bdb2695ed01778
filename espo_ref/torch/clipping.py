"""Entropy-adaptive clipping, Eq. 8 [ESPO-CLIP], and the fixed-range ablation; torch mirror
of espo_ref/clipping.py."""

from __future__ import annotations

import torch

from ..config import ESPOConfig, check_config
from ._checks import as_real_tensor, coerce, compute_dtype, entropy_in_range, finite_on
from ._segments import Segments
from .grouping import check_groups, trained_tokens


def _group_clip_eps(ent: torch.Tensor, seg: Segments, trained_seg: Segments, config: ESPOConfig) -> torch.Tensor:
    """Eq. 8 from the response segments ``seg`` and the trained segments ``trained_seg``;
    ``ent`` is 0 on padding."""
    scale = config.alpha / config.log_vocab
    if config.eps_reading == "group_mean":
        return scale * seg.to_tokens(seg.means(ent, clean=True))
    k = trained_seg.groups_per_row()
    eps = scale * ent / k.clamp(min=1).to(ent.dtype)[:, None]
    return torch.where(seg.include, eps, torch.zeros((), dtype=ent.dtype, device=ent.device))


def _segments(g: torch.Tensor, config: ESPOConfig, width: int | None):
    """(response segments, trained segments): the same object unless drop_low_group."""
    seg = Segments(g, g >= 0, width)
    trained = trained_tokens(g, config)
    return seg, (Segments(g, trained, seg.width) if config.drop_low_group else seg)


def group_clip_eps(entropy, groups, config: ESPOConfig, *, validate: bool = True) -> torch.Tensor:
    """[ESPO-CLIP] Eq. 8: eps_tau = alpha * mean_{t in tau}(e_t) / log|V|, per token [B, T].

    With ``eps_reading="token_over_groups"`` [ESPO-CLIP-TOKEN]: alpha * e_t / (log|V| K_i),
    K_i the number of trained groups of response i. 0 on padding. float64 for float64
    entropy, else float32. The number of groups is read from ``groups`` (a host sync).
    """
    check_config(config, ESPOConfig)
    ent = as_real_tensor(entropy, "entropy", ndim=2)
    g = check_groups(groups, tuple(ent.shape), device=ent.device, validate=validate)
    ent = finite_on(ent, g >= 0, "entropy", compute_dtype(ent), validate)
    if validate:
        entropy_in_range(ent, g >= 0, config.log_vocab, config.entropy_tolerance)
    ent = ent.clamp(min=0.0)  # [ESPO-ENT-DOMAIN]: never a negative epsilon
    return _group_clip_eps(ent, *_segments(g, config, None), config)


def _clip_bounds(ent: torch.Tensor, seg: Segments, trained_seg: Segments, config: ESPOConfig):
    if config.clip == "adaptive":
        eps = _group_clip_eps(ent, seg, trained_seg, config)
        return eps, eps
    response = seg.include
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
    seg = Segments(g, g >= 0, 1)  # only the response mask is used by the fixed range
    return _clip_bounds(torch.zeros((), dtype=dtype, device=g.device), seg, seg, config)
