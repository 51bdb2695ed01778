"""Entropy-adaptive clipping, Eq. 8 [ESPO-CLIP], and the fixed-range ablation."""

from __future__ import annotations

import numpy as np

from ._checks import as_real_array, entropy_in_range, finite_on, raise_at_first
from ._segments import Segments, group_segments
from .config import ESPOConfig, check_config
from .grouping import check_groups, trained_tokens


def group_clip_eps(entropy, groups, config: ESPOConfig) -> np.ndarray:
    """[ESPO-CLIP] Eq. 8: eps_tau = alpha * mean_{t in tau}(e_t) / log|V|, per token [B, T].

    With ``eps_reading="token_over_groups"`` [ESPO-CLIP-TOKEN]: alpha * e_t / (log|V| K_i),
    K_i the number of trained groups of response i. 0 on padding. An epsilon beyond the
    float64 range (a huge ``alpha``) is an error naming ``alpha``.
    """
    ent, g = _clip_inputs(entropy, groups, config)
    return _group_clip_eps(ent, *group_segments(g, trained_tokens(g, config), config.drop_low_group), config)


def _clip_inputs(entropy, groups, config: ESPOConfig) -> tuple[np.ndarray, np.ndarray]:
    """[ESPO-ENT-DOMAIN] The validated entropy (padding 0, clamped below at 0: never a
    negative epsilon) and groups."""
    check_config(config, ESPOConfig)
    ent = as_real_array(entropy, "entropy", ndim=2)
    g = check_groups(groups, ent.shape)
    response = g >= 0
    ent = finite_on(ent, response, "entropy")
    entropy_in_range(ent, response, config.log_vocab, config.entropy_tolerance)
    return np.maximum(ent, 0.0), g


def _group_clip_eps(ent: np.ndarray, seg: Segments, trained_seg: Segments, config: ESPOConfig) -> np.ndarray:
    scale = config.alpha / config.log_vocab
    response = seg.include
    if config.eps_reading == "group_mean":
        mean = seg.to_tokens(seg.means(ent))
        with np.errstate(over="ignore", invalid="ignore"):
            return finite_eps(scale * mean, mean, response, config)
    k = trained_seg.groups_per_row()
    with np.errstate(over="ignore", invalid="ignore"):
        eps = np.where(response, scale * ent / np.maximum(k, 1)[:, None], 0.0)
        return finite_eps(eps, ent / np.maximum(k, 1)[:, None], response, config)


def finite_eps(eps: np.ndarray, entropy: np.ndarray, response: np.ndarray, config: ESPOConfig) -> np.ndarray:
    """[ESPO-CLIP] eps = alpha / log|V| * e, and where that product leaves the float range
    (alpha / log|V| alone may overflow) alpha * (e / log|V|); an epsilon still beyond the
    float64 range is an error naming ``alpha``."""
    if np.isfinite(eps).all():
        return eps
    with np.errstate(over="ignore", invalid="ignore"):
        eps = np.where(np.isfinite(eps), eps, config.alpha * (entropy / config.log_vocab))
    eps = np.where(response, eps, 0.0)
    raise_at_first(~np.isfinite(eps),
                   lambda idx: f"alpha = {config.alpha!r} is too large: the clip range alpha * e / log(vocab_size) "
                               f"overflows float64 at response position {list(idx)}")
    return eps


def clip_bounds(entropy, groups, config: ESPOConfig) -> tuple[np.ndarray, np.ndarray]:
    """[ESPO-CLIP-FIXED] The clip offsets (eps_low, eps_high) per token: both equal to Eq. 8
    under ``clip="adaptive"``, the constants ``config.eps_low/eps_high`` under ``"fixed"``."""
    if config.clip == "adaptive":
        ent, g = _clip_inputs(entropy, groups, config)
    else:  # the fixed range reads only which tokens are response tokens
        ent, g = None, check_groups(groups, None)
    return _clip_bounds(ent, *group_segments(g, trained_tokens(g, config), config.drop_low_group), config)


def _clip_bounds(ent, seg: Segments, trained_seg: Segments, config: ESPOConfig) -> tuple[np.ndarray, np.ndarray]:
    if config.clip == "adaptive":
        eps = _group_clip_eps(ent, seg, trained_seg, config)
        return eps, eps
    response = seg.include
    return np.where(response, config.eps_low, 0.0), np.where(response, config.eps_high, 0.0)
