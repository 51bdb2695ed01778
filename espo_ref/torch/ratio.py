"""The entropy-group importance ratio, Eqs. 9-10 [ESPO-RATIO], its token-level form and the
clamp of its log [ESPO-RATIO-TOKEN] [ESPO-RATIO-LITERAL] [ESPO-RATIO-CLAMP]; torch mirror of
espo_ref/ratio.py."""

from __future__ import annotations

import torch

from ..config import ESPOConfig
from ._checks import as_real_array, bound, check_shape, compute_dtype, finite_on, log_ratio
from ._segments import Segments
from .grouping import check_groups
from .surrogate import _zero, exp_ratio


def group_log_ratio(logp, old_logp, groups, *, validate: bool = True) -> torch.Tensor:
    """[ESPO-RATIO] Eq. 10 in log space: log s_tau = mean_{t in tau}(logp_t - old_logp_t).

    Returned per token [B, T] (each token carries its group's value), 0 on padding
    (groups == -1). Not clamped: the clamp [ESPO-RATIO-CLAMP] is applied by ``token_ratio``.
    Differentiable w.r.t. logp (this is s_tau itself, without Eq. 9's stop-gradient);
    old_logp is a constant (detached). A ``logp - old_logp`` that leaves the range of the
    compute dtype is an error naming both.
    """
    lp = as_real_array(logp, "logp", ndim=2)
    olp = as_real_array(old_logp, "old_logp", device=lp.device).detach()
    check_shape(olp, "old_logp", tuple(lp.shape), "logp")
    g = check_groups(groups, tuple(lp.shape), device=lp.device, validate=validate)
    response = g >= 0
    dtype = compute_dtype(lp)
    log_r = log_ratio(finite_on(lp, response, "logp", dtype, validate),
                      finite_on(olp, response, "old_logp", dtype, validate), response, validate)
    return _group_log_ratio(log_r, Segments(g, response))


def _group_log_ratio(log_r: torch.Tensor, seg: Segments) -> torch.Tensor:
    """Eq. 10 from the response segments; ``log_r`` is 0 on padding."""
    return seg.to_tokens(seg.means(log_r, clean=True))


def token_ratio(log_s, log_r, mask, config: ESPOConfig, *, validate: bool = True):
    """[ESPO-RATIO-TOKEN] / [ESPO-RATIO-LITERAL] / [ESPO-RATIO-CLAMP] Eq. 9 per token.

    Returns (ratio, clamped): the value of s^{i,t}_tau and whether its log was clamped.
    gspo_token: value s_tau, d value / d logp_t = s_tau. literal: value s_tau r_t,
    d value / d logp_t = s_tau r_t. In both forms the derivative equals the value, and a
    clamped token (log value above ``log_ratio_clamp``) has derivative 0. Autograd: log_s
    is a stop-gradient (sg[s_tau]); when ``log_r`` carries a graph, ratio is
    ``value * exp(log_r - sg[log_r])`` on unclamped response tokens, whose value is exactly
    ``value`` and whose derivative w.r.t. logp_t is ``value``. The overflow check syncs.
    """
    log_s = log_s.detach()
    log_value = log_s + log_r.detach() if config.ratio_form == "literal" else log_s
    log_value = torch.where(mask, log_value, _zero(log_value))
    if config.log_ratio_clamp is None:
        clamped = torch.zeros_like(mask)
    else:
        clamped = mask & (log_value > config.log_ratio_clamp)
        log_value = log_value.clamp(max=bound(config.log_ratio_clamp, log_value.dtype))
    value = exp_ratio(log_value, mask, validate=validate)
    if not log_r.requires_grad:
        return value, clamped
    live = mask & ~clamped
    delta = torch.where(live, log_r - log_r.detach(), _zero(log_r))
    return value * torch.exp(delta), clamped
