"""The entropy-group importance ratio, Eqs. 9-10 [ESPO-RATIO], its token-level form and the
clamp of its log [ESPO-RATIO-TOKEN] [ESPO-RATIO-LITERAL] [ESPO-RATIO-CLAMP]."""

from __future__ import annotations

import numpy as np

from ._checks import as_real_array, check_shape, finite_on, log_ratio
from ._segments import Segments
from .config import ESPOConfig
from .grouping import check_groups
from .surrogate import exp_ratio


def group_log_ratio(logp, old_logp, groups) -> np.ndarray:
    """[ESPO-RATIO] Eq. 10 in log space: log s_tau = mean_{t in tau}(logp_t - old_logp_t).

    Returned per token [B, T] (each token carries its group's value), 0 on padding
    (groups == -1). Not clamped: the clamp [ESPO-RATIO-CLAMP] is applied by ``token_ratio``.
    A ``logp - old_logp`` that leaves the float64 range is an error naming both.
    """
    lp = as_real_array(logp, "logp", ndim=2)
    olp = as_real_array(old_logp, "old_logp")
    check_shape(olp, "old_logp", lp.shape, "logp")
    g = check_groups(groups, lp.shape)
    response = g >= 0
    log_r = log_ratio(finite_on(lp, response, "logp"), finite_on(olp, response, "old_logp"), response)
    return _group_log_ratio(log_r, Segments(g, response))


def _group_log_ratio(log_r: np.ndarray, seg: Segments) -> np.ndarray:
    return seg.to_tokens(seg.means(log_r))


def token_ratio(log_s: np.ndarray, log_r: np.ndarray, mask: np.ndarray, config: ESPOConfig):
    """[ESPO-RATIO-TOKEN] / [ESPO-RATIO-LITERAL] / [ESPO-RATIO-CLAMP] Eq. 9 per token.

    Returns (ratio, clamped): the value of s^{i,t}_tau and whether its log was clamped.
    gspo_token: value s_tau, d value / d logp_t = s_tau. literal: value s_tau r_t,
    d value / d logp_t = s_tau r_t. In both forms the derivative equals the value, and a
    clamped token (log value above ``log_ratio_clamp``) has derivative 0.
    """
    with np.errstate(over="ignore"):  # +inf is clamped (or an overflow error), -inf gives 0
        log_value = log_s + log_r if config.ratio_form == "literal" else log_s
    log_value = np.where(mask, log_value, 0.0)
    if config.log_ratio_clamp is None:
        clamped = np.zeros_like(mask)
    else:
        clamped = mask & (log_value > config.log_ratio_clamp)
        log_value = np.minimum(log_value, config.log_ratio_clamp)
    return exp_ratio(log_value, mask), clamped
