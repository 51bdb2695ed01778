"""The ESPO objective, Eq. 5 [ESPO-OBJ], with the exact gradient of Eq. 9's stop-gradients;
torch mirror of espo_ref/objective.py.

``espo_loss`` validates its inputs once and composes the clause kernels in the core's order
(grouping, ratio, clipping, surrogate, aggregation, metrics), each of the same name as the
core's. Everything it computes is a tensor: with ``validate=False`` there is no host sync and
no branch on tensor values, so ``torch.compile(espo_loss, fullgraph=True)`` traces it whole.

Where the clause allows, a quantity that is constant on a group (the ratio of Eq. 10 under
``ratio_form="gspo_token"``, the group-mean epsilon, the aggregation weight) is computed on the
[B, W] group table and broadcast to the tokens once; the clip decisions compare the same
values the per-token form compares, so every decision and value is the same. The backward is
the analytic gradient of Eq. 9 (``grad``), applied by one product.
"""

from __future__ import annotations

import math

import torch

from ..config import ESPOConfig, check_config
from ..result import LossResult
from ._checks import (advantages_2d, as_mask, as_real_array, bound, check_shape, compute_dtype, entropy_in_range,
                      log_ratio, require_finite, zero_padding)
from ._segments import Segments, factor, group_segments
from .aggregation import _aggregation_table
from .clipping import _clip_bounds, _eps_cannot_overflow
from .grouping import _groups_and_members, group_width, trained_tokens
from .metrics import _espo_metrics
from .ratio import _group_log_ratio, token_ratio
from .surrogate import _zero, check_loss, ratio_and_advantage


class _Objective(torch.autograd.Function):
    """loss = -J with d loss / d logp = ``grad`` (the analytic gradient of Eq. 9, 0 on padding)."""

    @staticmethod
    def forward(ctx, logp, loss, grad):
        ctx.save_for_backward(grad)
        ctx.logp_dtype = logp.dtype
        return loss.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return (grad_output * grad).to(ctx.logp_dtype), None, None


def espo_loss(logp, old_logp, entropy, mask, advantages, config: ESPOConfig, *,
              validate: bool = True) -> LossResult:
    """[ESPO-OBJ] Eq. 5: loss = -J with J the mean over responses of the mean over groups of
    the group token mean of min(s A, clip(s, 1 - eps_tau, 1 + eps_tau) A).

    ``loss`` is a 0-d tensor; ``loss.backward()`` gives d loss / d logp through the
    stop-gradients of Eq. 9 (entropy, old_logp and advantages are constants): exactly the
    analytic ``grad`` field. Computed in float64 for float64 logp, else in float32
    (bfloat16/float16 upcast); per-token fields are detached tensors of that dtype on
    logp's device (other inputs are moved there). ``validate=True`` runs the core's checks
    with its messages, at the cost of a few host syncs; ``validate=False`` skips them: no host
    sync and no data-dependent shape (inputs the core rejects then give unspecified values).
    A NaN logp on a response token gives a NaN loss and gradient (validation off) rather than a
    number; +-inf is not guaranteed to (the integrations add ``nan_unless_finite``). ``metrics`` is a ``DeviceMetrics``: Python floats, fetched in one transfer
    when first read.
    With ``validate``, finite inputs give finite outputs or an ESPOInputError naming the
    argument [ESPO-INPUT].
    """
    check_config(config, ESPOConfig)
    raw = as_real_array(logp, "logp", ndim=2)
    shape = tuple(raw.shape)
    olp_in = as_real_array(old_logp, "old_logp", device=raw.device).detach()
    check_shape(olp_in, "old_logp", shape, "logp")
    m = as_mask(mask, "mask", shape, device=raw.device, validate=validate)
    dtype = compute_dtype(raw)
    if validate:
        require_finite(raw, m, "logp")
        require_finite(olp_in, m, "old_logp")
    ent_in = as_real_array(entropy, "entropy", ndim=2, device=raw.device).detach()
    check_shape(ent_in, "entropy", shape, "logp")
    if validate:
        require_finite(ent_in, m, "entropy")
    mask_f = factor(m, dtype)
    # logp is the one input a training step brings anew (old_logp, entropy and advantages are
    # validated once where the batch is built): a NaN logp on a response token makes the loss and
    # its gradient NaN even without validation, as a plain masked loss would
    lp = torch.where(m, raw.detach(), torch.zeros((), dtype=raw.dtype, device=raw.device)).to(dtype)
    olp = zero_padding(olp_in, mask_f)
    ent_dtype = compute_dtype(ent_in)  # the grouping sees the entropy in its own precision
    ent = zero_padding(ent_in, mask_f if ent_dtype == dtype else factor(m, ent_dtype))
    if validate:
        entropy_in_range(ent, m, config.log_vocab, config.entropy_tolerance)
    ent = ent.clamp(min=0.0)
    adv = advantages_2d(advantages, m, dtype=dtype, validate=validate, mask_f=mask_f)

    groups, members = _groups_and_members(ent, m, config)
    trained = trained_tokens(groups, config)
    seg, trained_seg = group_segments(groups, trained, config.drop_low_group, group_width(config, shape[1]),
                                      include=m, members=members)
    if members is not None and len(members) == 2 and ent.dtype == dtype:  # low = mask - high: one cast fewer
        high_f = factor(members[0], dtype)
        seg._factors[dtype] = [high_f, mask_f - high_f]
    ent = ent.to(dtype)
    log_r = log_ratio(lp, olp, m, validate)
    rows = seg.counts.sum(dim=1) > 0
    weight_tab, k = _aggregation_table(trained_seg, rows, dtype=dtype, validate=validate)
    weight = trained_seg.to_tokens(weight_tab)

    if seg.dense and _by_group_fits(config, dtype, shape[1]) and adv.shape[1] == 1:
        out = _by_group(seg, trained_seg, log_r, ent, adv, weight_tab, rows, k, config)
        objective, grad, ratio, clamped, log_s, eps_low, eps_high, clipped_high, clipped_low, totals = out
    else:
        log_s = _group_log_ratio(log_r, seg)
        ratio, clamped = token_ratio(log_s, log_r.detach(), m, config, validate=validate)
        eps_low, eps_high = _clip_bounds(ent, seg, trained_seg, config, validate=validate)
        ratio, clipped_high, clipped_low, surrogate = _per_token(ratio, adv, eps_low, eps_high, trained)
        objective = torch.sum(weight * surrogate)
        passes = trained & ~clipped_high & ~clipped_low & ~clamped
        grad = -(weight * adv * ratio) * factor(passes, dtype)
        totals = None
    if validate:
        check_loss(objective, grad, lambda: ratio_and_advantage(adv.expand(shape), ratio, m))
    loss = _Objective.apply(raw, -objective, grad) if raw.requires_grad else -objective
    metrics = _espo_metrics(ent, m, groups, trained, ratio, eps_high, log_r, clipped_high, clipped_low,
                            clamped, config, k, raw=(raw, olp_in, ent_in), totals=totals)
    return LossResult(
        loss=loss,
        grad=grad,
        ratio=ratio,
        clipped_high=clipped_high,
        clipped_low=clipped_low,
        metrics=metrics,
        groups=groups,
        eps=eps_high,
        eps_low=eps_low,
        eps_high=eps_high,
        log_ratio=log_s,
        weight=weight,
        trained=trained,
        extras={"clamped": clamped},
    )


def _by_group_fits(config: ESPOConfig, dtype: torch.dtype, length: int) -> bool:
    """Whether the ratio and the clip range are constant on each group (``gspo_token`` ratio;
    group-mean or fixed epsilon) and cannot overflow ``dtype`` (a clamp below its log max, an
    ``alpha`` with alpha e / log|V| in range, ``length`` entropies summing in range), so that
    the group table needs no check."""
    if length * (config.log_vocab + config.entropy_tolerance) >= 0.5 * float(torch.finfo(dtype).max):
        return False
    if config.ratio_form != "gspo_token" or config.log_ratio_clamp is None or config.grouping == "token":
        return False  # (token grouping: the high bucket is every token, not group 0)
    if config.log_ratio_clamp >= math.log(torch.finfo(dtype).max):
        return False
    if config.clip == "fixed":  # (an offset beyond the dtype is the per-token path's error)
        top = float(torch.finfo(dtype).max)
        return abs(config.eps_low) <= top and abs(config.eps_high) <= top
    return config.eps_reading == "group_mean" and _eps_cannot_overflow(config, dtype)


def _by_group(seg: Segments, trained_seg: Segments, log_r, ent, adv, weight_tab, rows, k, config: ESPOConfig):
    """[ESPO-RATIO] [ESPO-RATIO-CLAMP] [ESPO-CLIP] [ESPO-CLIPMASK] [ESPO-AGG] [ESPO-METRICS] ESPO on the
    [B, W] group table, for one advantage per response: the ratio, its clamp, the clip range, the
    clip decisions and each token's weighted surrogate and gradient are constant on a group.

    The surrogate min(s A, clip(s, 1 - eps, 1 + eps) A) is A min(s, 1 + eps) for A > 0 and
    A max(s, 1 - eps) otherwise (A = 0 gives 0 either way): the clip binds exactly where the
    clipped-high / clipped-low masks say. J sums each group's token value times its trained
    token count. Per-token fields are the tables broadcast to the tokens; the metrics' counts
    and sums come from the tables (exact counts; sums in another order than the tokens').
    ``rows``: the responses with a token; ``k``: K_i, the trained groups of each response."""
    dtype = log_r.dtype
    n, n_trained = seg.counts, trained_seg.counts
    log_s_tab = seg.means(log_r, clean=True)
    clamped_tab = log_s_tab > config.log_ratio_clamp
    ratio_tab = torch.exp(log_s_tab.clamp(max=bound(config.log_ratio_clamp, dtype)))  # finite (_by_group_fits)
    ent_sums = seg.sums(ent, clean=True)  # T (log|V| + tol) in range (_by_group_fits)
    if config.clip == "adaptive":
        low_tab = high_tab = (config.alpha / config.log_vocab) * (ent_sums / n.clamp(min=1).to(dtype))
    else:
        low_tab = torch.full_like(log_s_tab, config.eps_low)
        high_tab = torch.full_like(log_s_tab, config.eps_high)
    positive = adv > 0
    clipped_high_tab = positive & (ratio_tab > 1.0 + high_tab)
    clipped_low_tab = (adv < 0) & (ratio_tab < 1.0 - low_tab)
    bounded = torch.where(positive, torch.minimum(ratio_tab, 1.0 + high_tab), torch.maximum(ratio_tab, 1.0 - low_tab))
    trained_n = n_trained.to(dtype)
    objective = torch.sum(trained_n * (weight_tab * (adv * bounded)))
    passes = ~(clipped_high_tab | clipped_low_tab | clamped_tab)
    grad_tab = -(weight_tab * adv * ratio_tab) * passes.to(dtype)

    clipped_tab = clipped_high_tab | clipped_low_tab
    eps_n = n.to(dtype) * high_tab
    totals = {
        "tokens": n.sum(), "responses": torch.count_nonzero(rows),
        "clip": (n_trained * clipped_tab).sum(), "clip_high": (n_trained * clipped_high_tab).sum(),
        "clip_low": (n_trained * clipped_low_tab).sum(), "clamped": (n * clamped_tab).sum(),
        "trained": n_trained.sum(), "ratio": (trained_n * ratio_tab).sum(),
        "clip_in_high": (n_trained[:, :1] * clipped_tab[:, :1]).sum(), "high": n[:, :1].sum(),
        "clip_in_low": (n_trained[:, 1:] * clipped_tab[:, 1:]).sum(), "low": n[:, 1:].sum(),
        "k_sum": (k * rows).sum(), "eps_high": eps_n[:, :1].sum(), "eps_low": eps_n[:, 1:].sum(),
        "entropy": ent_sums.sum(), "entropy_high": ent_sums[:, :1].sum(), "entropy_low": ent_sums[:, 1:].sum(),
    }
    eps_low = seg.to_tokens(low_tab)
    eps_high = eps_low if high_tab is low_tab else seg.to_tokens(high_tab)
    return (objective, trained_seg.to_tokens(grad_tab), seg.to_tokens(ratio_tab), seg.to_tokens(clamped_tab),
            seg.to_tokens(log_s_tab), eps_low, eps_high, trained_seg.to_tokens(clipped_high_tab),
            trained_seg.to_tokens(clipped_low_tab), totals)


def _per_token(ratio, adv, eps_low, eps_high, trained):
    """[ESPO-CLIPMASK] The per-token form (literal ratio, per-token epsilon, token grouping)."""
    lo, hi = 1.0 - eps_low, 1.0 + eps_high
    positive = adv > 0
    clipped_high = trained & positive & (ratio > hi)
    clipped_low = trained & (adv < 0) & (ratio < lo)
    bounded = torch.where(positive, torch.minimum(ratio, hi), torch.maximum(ratio, lo))
    surrogate = torch.where(trained, adv * bounded, _zero(ratio))
    return ratio, clipped_high, clipped_low, surrogate
