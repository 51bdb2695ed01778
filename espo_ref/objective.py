"""The ESPO objective, Eq. 5 [ESPO-OBJ], with its exact gradient and diagnostics.

``espo_loss`` validates its inputs once and composes the clause kernels in the order of the
spec (grouping, ratio, clipping, surrogate, aggregation, metrics); the torch backend's
``espo_loss`` composes its kernels of the same names in the same order.
"""

from __future__ import annotations

import numpy as np

from ._checks import advantages_2d, as_real_array, check_shape, log_ratio, token_inputs
from ._segments import group_segments
from .aggregation import _aggregation_weights
from .clipping import _clip_bounds
from .config import ESPOConfig, check_config
from .entropy import validate_entropy
from .grouping import _entropy_groups, trained_tokens
from .metrics import _espo_metrics
from .ratio import _group_log_ratio, token_ratio
from .result import LossResult
from .surrogate import check_loss, clipped_surrogate, ratio_and_advantage


def espo_loss(logp, old_logp, entropy, mask, advantages, config: ESPOConfig) -> LossResult:
    """[ESPO-OBJ] Eq. 5: loss = -J with J the mean over responses of the mean over groups of
    the group token mean of min(s A, clip(s, 1 - eps_tau, 1 + eps_tau) A).

    ``grad`` is the exact d loss / d logp implied by the stop-gradients of Eq. 9; entropy,
    old_logp and advantages are constants. See specs/ESPO.md for every pinned reading.
    Finite inputs give finite outputs or an ESPOInputError naming the argument: a log-ratio
    or a loss beyond the float64 range is an error [ESPO-INPUT].
    """
    check_config(config, ESPOConfig)
    lp, olp, m = token_inputs(logp, old_logp, mask)
    check_shape(as_real_array(entropy, "entropy", ndim=2), "entropy", lp.shape, "logp")
    ent, _ = validate_entropy(entropy, m, config)
    adv = advantages_2d(advantages, m)

    groups = _entropy_groups(ent, m, config)
    trained = trained_tokens(groups, config)
    seg, trained_seg = group_segments(groups, trained, config.drop_low_group)
    log_r = log_ratio(lp, olp, m)
    log_s = _group_log_ratio(log_r, seg)
    ratio, clamped = token_ratio(log_s, log_r, m, config)
    eps_low, eps_high = _clip_bounds(ent, seg, trained_seg, config)
    surrogate, clipped_high, clipped_low = clipped_surrogate(ratio, adv, eps_low, eps_high, trained)
    weight, k = _aggregation_weights(trained_seg, m)

    with np.errstate(over="ignore", invalid="ignore"):
        objective = float(np.sum(weight * surrogate))
        passes = trained & ~clipped_high & ~clipped_low & ~clamped
        grad = np.where(passes, -weight * adv * ratio, 0.0)
    check_loss(objective, grad, lambda: ratio_and_advantage(adv, ratio, m))
    metrics = _espo_metrics(ent, m, groups, trained, ratio, eps_high, log_r, clipped_high,
                            clipped_low, clamped, config, k)
    return LossResult(
        loss=-objective,
        grad=grad,
        ratio=ratio,
        clipped_high=clipped_high,
        clipped_low=clipped_low,
        metrics=metrics,
        groups=groups,
        eps=eps_high,
        eps_low=eps_low,
        eps_high=eps_high,
        log_ratio=np.where(m, log_s, 0.0),
        weight=weight,
        trained=trained,
        extras={"clamped": clamped},
    )
