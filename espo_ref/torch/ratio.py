"""The entropy-grouping importance ratio, Eqs. 9-10 [ESPO-RATIO]; torch mirror of
espo_ref/ratio.py."""

from __future__ import annotations

import torch

from ._checks import as_real_tensor, check_shape, compute_dtype, finite_on, log_ratio
from ._segments import Segments
from .grouping import check_groups


def _group_log_ratio(log_r: torch.Tensor, seg: Segments) -> torch.Tensor:
    """Eq. 10 from the response segments; ``log_r`` is 0 on padding."""
    return seg.to_tokens(seg.means(log_r, clean=True))


def group_log_ratio(logp, old_logp, groups, *, validate: bool = True) -> torch.Tensor:
    """[ESPO-RATIO] Eq. 10 in log space: log s_tau = mean_{t in tau}(logp_t - old_logp_t).

    Returned per token [B, T] (each token carries its group's value), 0 on padding
    (groups == -1). Not clamped: the clamp [ESPO-RATIO-CLAMP] is applied by the objective.
    Differentiable w.r.t. logp (this is s_tau itself, without Eq. 9's stop-gradient);
    old_logp is a constant (detached). A ``logp - old_logp`` that leaves the range of the
    compute dtype is an error naming both.
    """
    lp = as_real_tensor(logp, "logp", ndim=2)
    olp = as_real_tensor(old_logp, "old_logp", device=lp.device).detach()
    check_shape(olp, "old_logp", tuple(lp.shape), "logp")
    g = check_groups(groups, tuple(lp.shape), device=lp.device, validate=validate)
    response = g >= 0
    dtype = compute_dtype(lp)
    log_r = log_ratio(finite_on(lp, response, "logp", dtype, validate),
                      finite_on(olp, response, "old_logp", dtype, validate), response, validate)
    return _group_log_ratio(log_r, Segments(g, response))
