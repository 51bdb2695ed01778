"""Entropy-adaptive clipping, Eq. 8 [ESPO-CLIP], and the fixed-range ablation; torch mirror
of espo_ref/clipping.py."""

from __future__ import annotations

import torch

from ..config import ESPOConfig, check_config
from ..errors import ESPOInputError
from ._checks import as_real_array, coerce, compute_dtype, dtype_name, entropy_in_range, finite_on, raise_at_first
from ._segments import Segments, group_segments
from .grouping import check_groups, trained_tokens


def group_clip_eps(entropy, groups, config: ESPOConfig, *, validate: bool = True) -> torch.Tensor:
    """[ESPO-CLIP] Eq. 8: eps_tau = alpha * mean_{t in tau}(e_t) / log|V|, per token [B, T].

    With ``eps_reading="token_over_groups"`` [ESPO-CLIP-TOKEN]: alpha * e_t / (log|V| K_i),
    K_i the number of trained groups of response i. 0 on padding. float64 for float64
    entropy, else float32. The number of groups is read from ``groups`` (a host sync). An
    epsilon beyond the range of the dtype (a huge ``alpha``) is an error naming ``alpha``.
    The entropy is a constant (detached).
    """
    ent, g = _clip_inputs(entropy, groups, config, validate)
    return _group_clip_eps(ent, *group_segments(g, trained_tokens(g, config), config.drop_low_group), config,
                           validate=validate)


def _clip_inputs(entropy, groups, config: ESPOConfig, validate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """[ESPO-ENT-DOMAIN] The validated entropy (padding 0, clamped below at 0: never a
    negative epsilon) and groups."""
    check_config(config, ESPOConfig)
    ent = as_real_array(entropy, "entropy", ndim=2).detach()
    g = check_groups(groups, tuple(ent.shape), device=ent.device, validate=validate)
    response = g >= 0
    ent = finite_on(ent, response, "entropy", compute_dtype(ent), validate)
    if validate:
        entropy_in_range(ent, response, config.log_vocab, config.entropy_tolerance)
    return ent.clamp(min=0.0), g


def _group_clip_eps(ent: torch.Tensor, seg: Segments, trained_seg: Segments, config: ESPOConfig, *,
                    validate: bool = True) -> torch.Tensor:
    scale = config.alpha / config.log_vocab
    response = seg.include
    if config.eps_reading == "group_mean":
        mean = seg.to_tokens(seg.means(ent, clean=True))
        return finite_eps(scale * mean, mean, response, config, validate=validate)
    k = trained_seg.groups_per_row()
    share = ent / k.clamp(min=1).to(ent.dtype)[:, None]
    eps = scale * ent / k.clamp(min=1).to(ent.dtype)[:, None]
    return finite_eps(eps, share, response, config, validate=validate)


def _eps_cannot_overflow(config: ESPOConfig, dtype: torch.dtype) -> bool:
    """[ESPO-CLIP] alpha e / log|V| <= alpha (log|V| + tol) / log|V| stays well inside ``dtype``."""
    top = float(torch.finfo(dtype).max)
    return config.alpha * (config.log_vocab + config.entropy_tolerance) < 0.5 * top * config.log_vocab


def finite_eps(eps: torch.Tensor, entropy: torch.Tensor, response: torch.Tensor, config: ESPOConfig, *,
               validate: bool = True) -> torch.Tensor:
    """[ESPO-CLIP] eps = alpha / log|V| * e, and where that leaves the float range (alpha /
    log|V| alone may overflow) alpha * (e / log|V|), 0 on padding; an epsilon still beyond
    the range of the compute dtype is an error naming ``alpha`` (a sync, if ``validate``).
    Skipped (no work) when the config bounds eps well inside the dtype's range."""
    if _eps_cannot_overflow(config, eps.dtype):
        return eps
    zero = torch.zeros((), dtype=eps.dtype, device=eps.device)
    eps = torch.where(torch.isfinite(eps), eps, config.alpha * (entropy / config.log_vocab))
    eps = torch.where(response, eps, zero)
    if validate:
        raise_at_first(~torch.isfinite(eps),
                       lambda idx: f"alpha = {config.alpha!r} is too large: the clip range alpha * e / "
                                   f"log(vocab_size) overflows {dtype_name(eps.dtype)} at response position {idx}")
    return eps


def clip_bounds(entropy, groups, config: ESPOConfig, *, validate: bool = True):
    """[ESPO-CLIP-FIXED] The clip offsets (eps_low, eps_high) per token: both equal to Eq. 8
    under ``clip="adaptive"``, the constants ``config.eps_low/eps_high`` under ``"fixed"``."""
    if config.clip == "adaptive":
        ent, g = _clip_inputs(entropy, groups, config, validate)
    else:  # the fixed range reads only which tokens are response tokens (and the entropy's dtype)
        g = check_groups(groups, None, validate=validate)
        raw, _ = coerce(entropy, g.device, "entropy")
        ent = torch.zeros((), dtype=compute_dtype(raw) if raw is not None else torch.float64, device=g.device)
    width = None if config.clip == "adaptive" else 1  # the fixed range needs no group table
    return _clip_bounds(ent, *group_segments(g, trained_tokens(g, config), config.drop_low_group, width), config,
                        validate=validate)


def _clip_bounds(ent: torch.Tensor, seg: Segments, trained_seg: Segments, config: ESPOConfig, *,
                 validate: bool = True):
    if config.clip == "adaptive":
        eps = _group_clip_eps(ent, seg, trained_seg, config, validate=validate)
        return eps, eps
    response = seg.include
    zero = torch.zeros((), dtype=ent.dtype, device=ent.device)
    for name in ("eps_low", "eps_high"):  # reported per token: a value the dtype cannot hold is an error
        if abs(getattr(config, name)) > torch.finfo(ent.dtype).max:
            raise ESPOInputError(f"{name} = {getattr(config, name)!r} does not fit {dtype_name(ent.dtype)}, "
                                 f"the dtype of the clip offsets it is reported in")
    return (torch.where(response, torch.full((), config.eps_low, dtype=ent.dtype, device=ent.device), zero),
            torch.where(response, torch.full((), config.eps_high, dtype=ent.dtype, device=ent.device), zero))
