"""The ESPO objective, Eq. 5 [ESPO-OBJ], differentiated by autograd through Eq. 9's
stop-gradients, token by token: the paper's formulation, kept as a second derivation of the
gradient that ``espo_ref.torch.espo_loss`` applies analytically (the tests compare the two, and
the conformance tests build implementations that forget a stop-gradient from it). Slower than
``espo_loss``; not part of the public API.
"""

from __future__ import annotations

import torch

from ..config import ESPOConfig, check_config
from ..result import LossResult
from ._checks import advantages_2d, as_real_array, check_shape, log_ratio, token_inputs
from ._segments import group_segments
from .aggregation import _aggregation_weights
from .clipping import _clip_bounds
from .entropy import validate_entropy
from .grouping import _entropy_groups, group_width, trained_tokens
from .metrics import _espo_metrics
from .ratio import _group_log_ratio, token_ratio
from .surrogate import _zero, check_loss, clipped_surrogate, ratio_and_advantage


def espo_loss_autograd(logp, old_logp, entropy, mask, advantages, config: ESPOConfig, *,
              validate: bool = True) -> LossResult:
    """[ESPO-OBJ] Eq. 5 through autograd: loss = -J with J the mean over responses of the mean over groups of
    the group token mean of min(s A, clip(s, 1 - eps_tau, 1 + eps_tau) A).

    ``loss`` is a 0-d tensor; ``loss.backward()`` gives d loss / d logp through the
    stop-gradients of Eq. 9 (entropy, old_logp and advantages are constants), equal to
    the analytic ``grad`` field. Computed in float64 for float64 logp, else in float32
    (bfloat16/float16 upcast); per-token fields are detached tensors of that dtype on
    logp's device (other inputs are moved there); old_logp, entropy and advantages are
    detached, so passing old_logp = logp (the first update) gives the same gradient as a
    detached copy. ``validate=True`` runs the core's checks
    with its messages, at the cost of a few host syncs; ``validate=False`` skips them (no
    sync in the loss; inputs the core rejects then give unspecified values). ``metrics``
    are Python floats, fetched in one sync after the loss is built. With ``validate``, finite
    inputs give finite outputs or an ESPOInputError naming the argument [ESPO-INPUT].
    """
    check_config(config, ESPOConfig)
    lp, olp, m = token_inputs(logp, old_logp, mask, validate=validate)
    check_shape(as_real_array(entropy, "entropy", ndim=2, device=lp.device), "entropy", tuple(lp.shape), "logp")
    ent, _ = validate_entropy(entropy, m, config, device=lp.device, validate=validate)
    dtype = lp.dtype
    adv = advantages_2d(advantages, m, dtype=dtype, validate=validate)

    groups = _entropy_groups(ent, m, config)
    trained = trained_tokens(groups, config)
    seg, trained_seg = group_segments(groups, trained, config.drop_low_group, group_width(config, lp.shape[1]))
    ent = ent.to(dtype)
    log_r = log_ratio(lp, olp, m, validate)
    log_s = _group_log_ratio(log_r.detach(), seg)
    ratio, clamped = token_ratio(log_s, log_r, m, config, validate=validate)
    eps_low, eps_high = _clip_bounds(ent, seg, trained_seg, config, validate=validate)
    surrogate, clipped_high, clipped_low = clipped_surrogate(ratio, adv, eps_low, eps_high, trained)
    weight, k = _aggregation_weights(trained_seg, m, dtype=dtype, validate=validate)

    objective = torch.sum(weight * surrogate)
    ratio = ratio.detach()
    passes = trained & ~clipped_high & ~clipped_low & ~clamped
    grad = torch.where(passes, -weight * adv * ratio, _zero(ratio))
    if validate:
        check_loss(objective, grad, lambda: ratio_and_advantage(adv, ratio, m))
    metrics = _espo_metrics(ent, m, groups, trained, ratio, eps_high, log_r, clipped_high, clipped_low,
                            clamped, config, k, lp=lp, olp=olp)
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
        log_ratio=torch.where(m, log_s, _zero(log_s)),
        weight=weight,
        trained=trained,
        extras={"clamped": clamped},
    )
