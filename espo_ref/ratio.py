"""The entropy-grouping importance ratio, Eqs. 9-10 [ESPO-RATIO]."""

from __future__ import annotations

import numpy as np

from ._checks import as_real_array, check_shape, finite_on, log_ratio
from ._segments import Segments
from .grouping import check_groups


def group_log_ratio(logp, old_logp, groups) -> np.ndarray:
    """[ESPO-RATIO] Eq. 10 in log space: log s_tau = mean_{t in tau}(logp_t - old_logp_t).

    Returned per token [B, T] (each token carries its group's value), 0 on padding
    (groups == -1). Not clamped: the clamp [ESPO-RATIO-CLAMP] is applied by the objective.
    A ``logp - old_logp`` that leaves the float64 range is an error naming both.
    """
    lp = as_real_array(logp, "logp", ndim=2)
    olp = as_real_array(old_logp, "old_logp")
    check_shape(olp, "old_logp", lp.shape, "logp")
    g = check_groups(groups, lp.shape)
    response = g >= 0
    log_r = log_ratio(finite_on(lp, response, "logp"), finite_on(olp, response, "old_logp"), response)
    seg = Segments(g, response)
    return seg.to_tokens(seg.means(log_r))
