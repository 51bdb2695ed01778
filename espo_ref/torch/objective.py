"""The ESPO objective, Eq. 5 [ESPO-OBJ], with autograd through Eq. 9's stop-gradients;
torch mirror of espo_ref/objective.py."""

from __future__ import annotations

import torch

from ..config import ESPOConfig, check_config
from ..errors import ESPOInputError
from ..grouping import HIGH_GROUP
from .._checks import loss_overflow
from ..objective import CLAMP_REMEDY
from ..result import LossResult
from ._checks import (advantages_2d, as_real_tensor, bound, check_shape, coerce, dtype_name, first_index,
                      log_ratio, token_inputs)
from ._segments import Segments
from ._stable import approx_kl, finite_mean, k3
from .clipping import _clip_bounds, _segments
from .grouping import _entropy_groups, group_width, validate_entropy
from .ratio import _group_log_ratio


def _zero(like: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=like.dtype, device=like.device)


def exp_ratio(log_value: torch.Tensor, mask: torch.Tensor, remedy: str = CLAMP_REMEDY, *,
              validate: bool = True) -> torch.Tensor:
    """[ESPO-RATIO-CLAMP] [BASE-RATIO-CLAMP] exp of a log-ratio on the response tokens (0 on
    padding); an overflow (of the compute dtype) is an error when ``validate`` (a host sync)."""
    ratio = torch.where(mask, torch.exp(torch.where(mask, log_value, _zero(log_value))), _zero(log_value))
    if validate:
        overflow = mask & ~torch.isfinite(ratio)
        if bool(overflow.any()):
            idx = first_index(overflow)
            dtype = str(ratio.dtype).replace("torch.", "")
            raise ESPOInputError(
                f"logp - old_logp gives a ratio that overflows {dtype} at response position {idx} "
                f"(log value {float(log_value.detach()[tuple(idx)]):.6g}); {remedy}"
            )
    return ratio


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


def clipped_surrogate(ratio, adv, eps_low, eps_high, trained):
    """[ESPO-CLIPMASK] min(s A, clip(s, 1 - eps_low, 1 + eps_high) A) and the binding clips.

    Clipped-high iff A > 0 and s > 1 + eps_high; clipped-low iff A < 0 and s < 1 - eps_low
    (strict: a token on the boundary is not clipped). Clipped tokens have zero gradient.
    The min is taken through these masks: s A where no clip binds (the min's value there),
    the constant clip(s) A where one does, so autograd gives exactly the core's gradient,
    boundary ties included.
    """
    r = ratio.detach()
    lo = 1.0 - eps_low
    hi = 1.0 + eps_high
    clipped_high = trained & (adv > 0) & (r > hi)
    clipped_low = trained & (adv < 0) & (r < lo)
    if not isinstance(lo, torch.Tensor):  # a Python bound beyond the dtype saturates (same decisions)
        lo, hi = bound(lo, r.dtype), bound(hi, r.dtype)
    surrogate = torch.where(clipped_high | clipped_low, torch.clamp(r, lo, hi) * adv, ratio * adv)
    return torch.where(trained, surrogate, _zero(surrogate)), clipped_high, clipped_low


def _aggregation_weights(seg: Segments, mask, dtype, validate=True):
    """Eq. 5 weights from the trained segments ``seg``; also returns K_i."""
    responses = mask.any(dim=1).sum()
    if validate and not bool(responses > 0):
        raise ESPOInputError("mask has no response token: the objective is undefined")
    k = seg.groups_per_row()
    per_group = 1.0 / (responses * k.clamp(min=1)[:, None] * seg.counts.clamp(min=1)).to(dtype)
    return seg.to_tokens(per_group), k


def aggregation_weights(groups, trained, mask, *, dtype: torch.dtype = torch.float64,
                        validate: bool = True) -> torch.Tensor:
    """[ESPO-AGG] Eq. 5 weights: w_t = 1 / (N K_i |tau|) for trained tokens, else 0.

    N = the responses with at least one response token, K_i = the trained non-empty
    groups of response i, |tau| = the trained tokens of the token's group. ``dtype``
    (keyword-only) defaults to the core's float64; the group count is read from the data
    and the empty-batch check syncs.
    """
    g, _ = coerce(groups)
    t, _ = coerce(trained, g.device)
    m, _ = coerce(mask, g.device)
    return _aggregation_weights(Segments(g.to(torch.int64), t, None), m, dtype, validate)[0]


def espo_metrics(entropy, mask, groups, trained, ratio, eps_high, log_r, clipped_high,
                 clipped_low, clamped, config: ESPOConfig, k=None, *, raw_log_r=None) -> dict[str, float]:
    """[ESPO-METRICS] Diagnostics of Figs. 3-5: clip fractions over all response tokens,
    split into the high-entropy bucket (group 0) and the rest, and per-group epsilons.

    Python floats: every count and sum is computed on the device and all of them cross to
    the host in one transfer (one sync). Every value is finite: a mean whose sum leaves the
    range of the dtype is summed again in float64, scaled, and ``approx_kl`` falls back to log
    space from the float64 raw log-ratio (``raw_log_r``, keyword-only: a callable giving it,
    as the core computes it; default ``log_r`` in float64) and saturates at the largest
    float64. The fallbacks cost more syncs, only when a sum is not finite.
    """
    clipped = clipped_high | clipped_low
    high = mask & (groups == HIGH_GROUP) if config.grouping != "token" else mask
    low = mask & ~high
    rows = mask.any(dim=1)
    if k is None:
        k = Segments(groups, trained).groups_per_row()
    log_r = log_r.detach()
    kl = torch.where(mask, k3(log_r), _zero(log_r))

    # count_nonzero and a product are exact and several times faster than a bool .sum()
    # (which copies to int64) and a where().sum() on CPU; values are finite off the mask.
    def total(values, where):
        return (values * where).sum()

    count = torch.count_nonzero
    counts = torch.stack([
        count(mask), count(rows), count(clipped), count(clipped_high), count(clipped_low),
        count(clipped & high), count(high), count(clipped & low), count(low),
        count(clamped & mask), count(trained), (k * rows).sum(),
    ])
    sums = torch.stack([
        total(eps_high, high), total(eps_high, low), total(entropy, mask), total(entropy, high),
        total(entropy, low), total(ratio, trained), total(kl, mask),
    ])
    host = torch.cat([counts.to(torch.float64), sums.to(torch.float64)]).tolist()
    (tokens, responses, n_clip, n_high_clip, n_low_clip, n_clip_hi_bucket, n_hi_bucket,
     n_clip_lo_bucket, n_lo_bucket, n_clamped, n_trained, k_sum) = (int(x) for x in host[:12])
    eps_hi, eps_lo, ent_all, ent_hi, ent_lo, ratio_sum, kl_sum = host[12:]

    def frac(num, den):  # a batch without tokens is rejected upstream unless validate=False
        return num / den if den else float("nan")

    def mean(num, count, values, where):
        return finite_mean(num / count, values, where) if count else 0.0

    return {
        "tokens": float(tokens),
        "responses": float(responses),
        "clipfrac": frac(n_clip, tokens),
        "clipfrac_high": frac(n_high_clip, tokens),
        "clipfrac_low": frac(n_low_clip, tokens),
        "clipfrac_high_group": n_clip_hi_bucket / n_hi_bucket if n_hi_bucket else 0.0,
        "clipfrac_low_group": n_clip_lo_bucket / n_lo_bucket if n_lo_bucket else 0.0,
        "clamped_frac": frac(n_clamped, tokens),
        "eps_mean_high_group": mean(eps_hi, n_hi_bucket, eps_high, high),
        "eps_mean_low_group": mean(eps_lo, n_lo_bucket, eps_high, low),
        "high_group_tokens": float(n_hi_bucket),
        "low_group_tokens": float(n_lo_bucket),
        "trained_tokens": float(n_trained),
        "groups_mean": frac(k_sum, responses),
        "entropy_mean": mean(ent_all, tokens, entropy, mask),
        "entropy_mean_high_group": mean(ent_hi, n_hi_bucket, entropy, high),
        "entropy_mean_low_group": mean(ent_lo, n_lo_bucket, entropy, low),
        "ratio_mean": mean(ratio_sum, n_trained, ratio, trained),
        "approx_kl": approx_kl(mean(kl_sum, tokens, kl, mask),
                               raw_log_r if raw_log_r is not None else (lambda: log_r), mask),
    }


def raw_log_ratio(lp: torch.Tensor, olp: torch.Tensor, mask: torch.Tensor, log_r: torch.Tensor) -> torch.Tensor:
    """[ESPO-METRICS] logp - old_logp in float64 for the metrics, as the core computes it (the float64
    difference of the inputs, not the float32 one), detached; 0 on padding."""
    if log_r.dtype == torch.float64:
        return log_r.detach()
    return torch.where(mask, lp.detach().to(torch.float64) - olp.to(torch.float64),
                       torch.zeros((), dtype=torch.float64, device=lp.device))


def ratio_and_advantage(adv: torch.Tensor, ratio: torch.Tensor, mask: torch.Tensor) -> str:
    """[ESPO-INPUT] The sizes a loss overflow is reported with (the core's text): the largest |advantage|
    and ratio."""
    return (f"advantages up to {float(adv[mask].abs().max()):.6g} in magnitude "
            f"times ratios up to {float(ratio[mask].max()):.6g}")


def check_loss(loss: torch.Tensor, grad: torch.Tensor, what) -> None:
    """[ESPO-INPUT] [BASE-INPUT] A loss or gradient beyond the range of the compute dtype is an
    error (one host sync); ``what()`` gives the sizes to report."""
    if not bool(torch.isfinite(loss.detach()) & torch.isfinite(grad).all()):
        raise loss_overflow(what(), dtype_name(grad.dtype))


def espo_loss(logp, old_logp, entropy, mask, advantages, config: ESPOConfig, *,
              validate: bool = True) -> LossResult:
    """[ESPO-OBJ] Eq. 5: loss = -J with J the mean over responses of the mean over groups of
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
    are Python floats, fetched in one sync after the loss is built.
    """
    check_config(config, ESPOConfig)
    lp, olp, m = token_inputs(logp, old_logp, mask, validate=validate)
    check_shape(as_real_tensor(entropy, "entropy", ndim=2, device=lp.device), "entropy", tuple(lp.shape), "logp")
    ent, _ = validate_entropy(entropy, m, config, device=lp.device, validate=validate)
    dtype = lp.dtype
    adv = advantages_2d(advantages, m, dtype, validate=validate)

    groups = _entropy_groups(ent, m, config)
    seg, trained_seg = _segments(groups, config, group_width(config, lp.shape[1]))
    trained = trained_seg.include
    ent = ent.to(dtype)
    log_r = log_ratio(lp, olp, m, validate)
    log_s = _group_log_ratio(log_r.detach(), seg)
    ratio, clamped = token_ratio(log_s, log_r, m, config, validate=validate)
    eps_low, eps_high = _clip_bounds(ent, seg, trained_seg, config, validate)
    surrogate, clipped_high, clipped_low = clipped_surrogate(ratio, adv, eps_low, eps_high, trained)
    weight, k = _aggregation_weights(trained_seg, m, dtype, validate)

    objective = torch.sum(weight * surrogate)
    ratio = ratio.detach()
    passes = trained & ~clipped_high & ~clipped_low & ~clamped
    grad = torch.where(passes, -weight * adv * ratio, _zero(ratio))
    if validate:
        check_loss(objective, grad, lambda: ratio_and_advantage(adv, ratio, m))
    metrics = espo_metrics(ent, m, groups, trained, ratio, eps_high, log_r, clipped_high, clipped_low,
                           clamped, config, k, raw_log_r=lambda: raw_log_ratio(lp, olp, m, log_r))
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
