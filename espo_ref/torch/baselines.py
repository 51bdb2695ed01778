"""Reference baselines GRPO, DAPO, GSPO, GMPO, CISPO (specs/baselines.md); torch mirror of
espo_ref/baselines.py, name for name and argument for argument.

Same config classes (imported from ``espo_ref.baselines``), same LossResult, same
ESPOInputError messages. Each loss returns a LossResult whose ``loss`` is a 0-d tensor
differentiable w.r.t. ``logp``: autograd through the stop-gradients gives exactly the
core's ``grad`` (also returned, computed in closed form). Clips and clamps are taken
through ``torch.where`` on the decision masks, so a clipped, clamped or dual-clipped token
gets a zero gradient and a token exactly on a bound gets the unclipped branch's, as the
spec pins (``torch.minimum``/``clamp`` would split or pass the gradient at ties).

Dtypes and devices: float64 logp is computed in float64, float32/bfloat16/float16 in
float32; other inputs are moved to logp's device. Per-token fields are detached tensors.
``validate`` (keyword-only, default True) runs the core's checks with its messages (host
syncs); ``validate=False`` skips them, and the loss then makes no host-device sync.
``metrics`` are Python floats fetched in one transfer after the loss is built (one sync).
A ratio, log-ratio or loss that overflows the compute dtype is an error (float32: log-ratio
above ~88.7, where float64 allows ~709: a range limit of the dtype, not a change of
semantics). A metric whose sum leaves the dtype's range is summed again in float64 (the
k3 mean from the float64 raw log-ratio, as the core).
In float32 the clip and clamp decisions compare float32 values with the bound rounded to
float32, so they can differ from the core's float64 decision within an ulp of a bound.
"""

from __future__ import annotations

import torch

from ..baselines import GMPO_OVERFLOW_REMEDY
from ..config import (GSPO_LEVELS, BaselineConfig, CISPOConfig, DAPOConfig, GMPOConfig, GRPOConfig,
                      GSPOConfig, baseline_config)
from ..result import LossResult
from ._checks import advantages_2d, bound, token_inputs
from ._checks import log_ratio as checked_log_ratio
from ._segments import in_range, power_of_two_above
from .aggregation import _agg_weights
from .metrics import baseline_metrics
from .surrogate import _zero, check_loss, clipped_surrogate, exp_ratio, ratio_and_advantage

__all__ = [
    "GSPO_LEVELS", "BaselineConfig", "GRPOConfig", "DAPOConfig", "GSPOConfig", "GMPOConfig",
    "CISPOConfig", "row_sum", "row_mean", "to_tokens", "row_mean_to_tokens", "clamp_log_ratio",
    "token_log_ratio", "ppo_clip_token_loss", "grpo_loss", "dapo_loss",
    "gspo_loss", "gmpo_clipped_log_ratio", "gmpo_loss", "cispo_loss",
]


# --- shared pieces -----------------------------------------------------------------------


def _inputs(logp, old_logp, mask, advantages, validate: bool = True):
    """[BASE-INPUT] Validated logp, old_logp (compute dtype, padding 0, logp keeps its
    graph), bool mask and [B, T] advantages (padding 0)."""
    lp, olp, m = token_inputs(logp, old_logp, mask, validate=validate)
    adv = advantages_2d(advantages, m, dtype=lp.dtype, validate=validate)
    return lp, olp, m, adv


def row_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over the response tokens of each row, [B]."""
    return torch.where(mask, values, _zero(values)).sum(dim=1)


def row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the response tokens of each row, [B] (0 for an empty row). Summed scaled by
    2**-k (2**k >= T) over the scaled length: the value of sum / L in the normal range (exact
    power-of-two scaling), and no sum of finite values leaves the float range (the core's
    fallback, without computing twice or a host sync)."""
    lengths = mask.sum(dim=1).clamp(min=1).to(values.dtype)
    k = power_of_two_above(mask.shape[1])
    if k == 0:
        return row_sum(values, mask) / lengths
    return in_range(row_sum(values * 2.0 ** -k, mask) / (lengths * 2.0 ** -k))


def to_tokens(per_row: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-row value [B] to the response tokens [B, T] (0 on padding)."""
    return torch.where(mask, per_row[:, None], _zero(per_row))


class _RowMeanToTokens(torch.autograd.Function):
    """``to_tokens(row_mean(values, mask), mask)`` whose backward is the row mean of the incoming
    gradient on the row's tokens: (sum_t g_t) / L taken as a mean, so that a row sum beyond the
    float range (float32 gradients near its maximum) does not overflow where the gradient
    itself fits. The same derivative, 1 / L per token, as autograd through the two ops."""

    @staticmethod
    def forward(ctx, values, mask):
        ctx.save_for_backward(mask)
        return to_tokens(row_mean(values, mask), mask)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return to_tokens(row_mean(grad, mask), mask), None


def row_mean_to_tokens(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[BASE-GSPO-SEQ] [BASE-GMPO] Each token carries its row's mean of ``values`` (0 on
    padding), differentiable with an overflow-safe backward (``_RowMeanToTokens``)."""
    if not values.requires_grad:
        return to_tokens(row_mean(values, mask), mask)
    return _RowMeanToTokens.apply(values, mask)


def clamp_log_ratio(log_value: torch.Tensor, mask: torch.Tensor, low, high):
    """[BASE-RATIO-CLAMP] Clamp a log-ratio to [low, high] (None: unbounded on that side).

    Returns (clamped value, clamped): a token strictly outside the bounds is clamped and its
    log-ratio has derivative 0 (the bound replaces it through ``torch.where``); a token
    exactly on a bound is not clamped and keeps derivative 1.
    """
    clamped = torch.zeros_like(mask)
    if low is not None:
        below = mask & (log_value < low)
        clamped = clamped | below
        log_value = torch.where(below, torch.full((), bound(low, log_value.dtype), dtype=log_value.dtype,
                                                  device=log_value.device), log_value)
    if high is not None:
        above = mask & (log_value > high)
        clamped = clamped | above
        log_value = torch.where(above, torch.full((), bound(high, log_value.dtype), dtype=log_value.dtype,
                                                  device=log_value.device), log_value)
    return torch.where(mask, log_value, _zero(log_value)), clamped


def token_log_ratio(lp, olp, mask, config):
    """[BASE-RATIO-CLAMP] log r = logp - old_logp, clamped to [-c, c] with c = log_ratio_clamp."""
    c = config.log_ratio_clamp
    return clamp_log_ratio(lp - olp, mask, None if c is None else -c, c)


def _result(loss, grad, ratio, clipped_high, clipped_low, metrics, weight, mask, log_ratio, extras):
    return LossResult(
        loss=loss,
        grad=torch.where(mask, grad, _zero(grad)),
        ratio=ratio.detach(),
        clipped_high=clipped_high,
        clipped_low=clipped_low,
        metrics=metrics,
        log_ratio=log_ratio.detach(),
        weight=weight,
        trained=mask.clone(),
        extras=extras,
    )


# --- GRPO and DAPO -----------------------------------------------------------------------


def ppo_clip_token_loss(ratio, adv, mask, eps_low, eps_high, dual_clip):
    """[BASE-GRPO] [BASE-GRPO-DUALCLIP] Per-token loss max(-A r, -A clip(r, 1 - eps_low,
    1 + eps_high)); with a dual clip c, for A < 0, min(that, -A c).

    Returns (loss, clipped_high, clipped_low, dual_clipped); dual-clipped iff A < 0 and
    r > c (strict). The max and min are taken through the decision masks (same values),
    so clipped and dual-clipped tokens have zero gradient and ties take the unclipped one.
    """
    surrogate, clipped_high, clipped_low = clipped_surrogate(ratio, adv, eps_low, eps_high, mask)
    loss = -surrogate
    if dual_clip is None:
        return loss, clipped_high, clipped_low, torch.zeros_like(mask)
    negative = mask & (adv < 0)
    dual_clipped = negative & (ratio.detach() > dual_clip)
    loss = torch.where(dual_clipped, -adv * dual_clip, loss)
    return loss, clipped_high, clipped_low, dual_clipped


def _ppo_clip_loss(logp, old_logp, mask, advantages, config, validate) -> LossResult:
    lp, olp, m, adv = _inputs(logp, old_logp, mask, advantages, validate)
    raw = checked_log_ratio(lp.detach(), olp, m, validate)
    log_r, clamped = token_log_ratio(lp, olp, m, config)
    ratio = exp_ratio(log_r, m, validate=validate)
    per_token, clipped_high, clipped_low, dual = ppo_clip_token_loss(
        ratio, adv, m, config.eps_low, config.eps_high, config.dual_clip
    )
    weight = _agg_weights(m, config.loss_agg_mode, config.max_len, lp.dtype, validate)
    loss = torch.sum(weight * per_token)
    ratio = ratio.detach()
    passes = m & ~clipped_high & ~clipped_low & ~dual & ~clamped
    grad = torch.where(passes, -weight * adv * ratio, _zero(ratio))
    if validate:
        check_loss(loss, grad, lambda: ratio_and_advantage(adv, ratio, m))
    metrics = baseline_metrics(m, ratio, raw, clipped_high, clipped_low, clamped, extra_counts={"clipfrac_dual": dual},
                               raw=(logp, old_logp))
    extras = {"clamped": clamped, "dual_clipped": dual, "per_token_loss": per_token.detach()}
    return _result(loss, grad, ratio, clipped_high, clipped_low, metrics, weight, m, log_r, extras)


def grpo_loss(logp, old_logp, mask, advantages, config: GRPOConfig | None = None, *,
              validate: bool = True) -> LossResult:
    """[BASE-GRPO] Eq. 1: loss = agg(max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))).

    r = exp(clamp(logp - old_logp, -20, 20)) [BASE-RATIO-CLAMP]; d loss / d logp_t =
    -w_t A_t r_t unless the token is clipped, dual-clipped or clamped (then 0).
    """
    return _ppo_clip_loss(logp, old_logp, mask, advantages, baseline_config(config, GRPOConfig), validate)


def dapo_loss(logp, old_logp, mask, advantages, config: DAPOConfig | None = None, *,
              validate: bool = True) -> LossResult:
    """[BASE-DAPO] DAPO: the GRPO surrogate with clip-higher (0.2, 0.28), token-mean."""
    return _ppo_clip_loss(logp, old_logp, mask, advantages, baseline_config(config, DAPOConfig), validate)


# --- GSPO --------------------------------------------------------------------------------


def gspo_loss(logp, old_logp, mask, advantages, config: GSPOConfig | None = None, *,
              validate: bool = True) -> LossResult:
    """[BASE-GSPO] Eqs. 2-4: s_i = exp(mean_t log r_{i,t}), clamped above at log_ratio_clamp;
    loss = agg(-min(s A, clip(s, 1 - eps_low, 1 + eps_high) A)).

    Token form (GSPO-token): s_{i,t} = sg[s_i] exp(log r_t - sg[log r_t]), value s_i and
    d s_{i,t} / d logp_t = s_i. Sequence form [BASE-GSPO-SEQ]: the plain differentiable
    s_i, d s_i / d logp_t = s_i / L_i. Both equal with a per-response advantage
    [BASE-IDENTITIES]. A clamped response has gradient 0.
    """
    config = baseline_config(config, GSPOConfig)
    lp, olp, m, adv = _inputs(logp, old_logp, mask, advantages, validate)
    log_r = checked_log_ratio(lp, olp, m, validate)
    sequence = config.level == "sequence"
    log_s = row_mean_to_tokens(log_r if sequence else log_r.detach(), m)
    log_s, clamped = clamp_log_ratio(log_s, m, None, config.log_ratio_clamp)
    ratio = exp_ratio(log_s, m, validate=validate)
    if not sequence and log_r.requires_grad:
        live = m & ~clamped
        ratio = ratio * torch.exp(torch.where(live, log_r - log_r.detach(), _zero(log_r)))
    surrogate, clipped_high, clipped_low = clipped_surrogate(
        ratio, adv, config.eps_low, config.eps_high, m
    )
    per_token = -surrogate
    weight = _agg_weights(m, config.loss_agg_mode, config.max_len, lp.dtype, validate)
    loss = torch.sum(weight * per_token)
    ratio = ratio.detach()
    passes = m & ~clipped_high & ~clipped_low & ~clamped
    grad = torch.where(passes, -weight * adv * ratio, _zero(ratio))
    if sequence:
        grad = to_tokens(row_mean(grad, m), m)
    if validate:
        check_loss(loss, grad, lambda: ratio_and_advantage(adv, ratio, m))
    metrics = baseline_metrics(m, ratio, log_r, clipped_high, clipped_low, clamped,
                               raw=(logp, old_logp))
    extras = {"clamped": clamped, "per_token_loss": per_token.detach()}
    return _result(loss, grad, ratio, clipped_high, clipped_low, metrics, weight, m, log_s, extras)


# --- GMPO --------------------------------------------------------------------------------


def gmpo_clipped_log_ratio(log_r, adv, mask, eps_low, eps_high):
    """[BASE-GMPO] Sign-aware log-space clip: c = clamp(log r, -eps_low, eps_high);
    A > 0: min(log r, c); A < 0: max(log r, c); A = 0: 0 (verl's sign(A) form).

    Returns (clipped log-ratio, clipped_high, clipped_low): clipped-high iff A > 0 and
    log r > eps_high, clipped-low iff A < 0 and log r < -eps_low (strict). Written through
    the masks (A > 0: eps_high where clipped-high, else log r; A < 0: -eps_low where
    clipped-low, else log r: the same values), so only unclipped tokens with A != 0 carry
    a gradient.
    """
    d = log_r.detach()
    clipped_high = mask & (adv > 0) & (d > eps_high)
    clipped_low = mask & (adv < 0) & (d < -eps_low)
    full = lambda v: torch.full((), bound(v, log_r.dtype), dtype=log_r.dtype, device=log_r.device)  # noqa: E731
    clipped = torch.where(clipped_high, full(eps_high),
                          torch.where(clipped_low, full(-eps_low),
                                      torch.where(mask & (adv != 0), log_r, _zero(log_r))))
    return clipped, clipped_high, clipped_low


def gmpo_loss(logp, old_logp, mask, advantages, config: GMPOConfig | None = None, *,
              validate: bool = True) -> LossResult:
    """[BASE-GMPO] GMPO: ratio_i = exp(mean_t clipped log r), A_i = mean_t A_t, per-response
    loss -A_i ratio_i on every token of response i, aggregated by loss_agg_mode.

    d loss / d logp_t = W_i (-A_i ratio_i) / L_i with W_i = sum of the aggregation weights of
    row i, for tokens whose clipped log-ratio passes (A_t != 0 and not clipped); else 0.
    Autograd: ratio_i = exp(row mean of the clipped log-ratio), differentiable through the
    passing tokens.
    """
    config = baseline_config(config, GMPOConfig)
    lp, olp, m, adv = _inputs(logp, old_logp, mask, advantages, validate)
    log_r = checked_log_ratio(lp, olp, m, validate)
    clipped_lr, clipped_high, clipped_low = gmpo_clipped_log_ratio(
        log_r, adv, m, config.eps_low, config.eps_high
    )
    log_ratio = row_mean_to_tokens(clipped_lr, m)
    ratio = exp_ratio(log_ratio, m, GMPO_OVERFLOW_REMEDY, validate=validate)
    adv_seq = to_tokens(row_mean(adv, m), m)
    per_token = -adv_seq * ratio
    weight = _agg_weights(m, config.loss_agg_mode, config.max_len, lp.dtype, validate)
    loss = torch.sum(weight * per_token)
    per_token = per_token.detach()
    row_weight = to_tokens(row_sum(weight, m), m)
    lengths = m.sum(dim=1).clamp(min=1).to(weight.dtype)[:, None]
    passes = m & (adv != 0) & ~clipped_high & ~clipped_low
    grad = torch.where(passes, row_weight * per_token / lengths, _zero(per_token))
    if validate:
        check_loss(loss, grad, lambda: ratio_and_advantage(adv_seq, ratio.detach(), m))
    metrics = baseline_metrics(m, ratio, log_r, clipped_high, clipped_low, torch.zeros_like(m),
                               raw=(logp, old_logp))
    extras = {"clipped_log_ratio": clipped_lr.detach(), "advantage_seq": adv_seq, "per_token_loss": per_token}
    return _result(loss, grad, ratio, clipped_high, clipped_low, metrics, weight, m, log_ratio, extras)


# --- CISPO -------------------------------------------------------------------------------


def cispo_sizes(adv, is_weight, lp, mask) -> str:
    """[BASE-INPUT] The sizes a CISPO loss overflow is reported with (the core's text)."""
    return (f"advantages up to {float(adv[mask].abs().max()):.6g} in magnitude times weights up to "
            f"{float(is_weight[mask].max()):.6g} times |logp| up to {float(lp.detach()[mask].abs().max()):.6g}")


def cispo_loss(logp, old_logp, mask, advantages, config: CISPOConfig | None = None, *,
               validate: bool = True) -> LossResult:
    """[BASE-CISPO] CISPO: loss = agg(-sg(clip(r, 1 - eps_low, 1 + eps_high)) A logp).

    r = exp(clamp(logp - old_logp, -20, 20)); d loss / d logp_t = -w_t clip(r_t) A_t on every
    response token (the clip caps the weight, it never zeroes the gradient). The weight is
    computed from the detached ratio; the gradient flows through ``logp`` only.
    """
    config = baseline_config(config, CISPOConfig)
    lp, olp, m, adv = _inputs(logp, old_logp, mask, advantages, validate)
    raw = checked_log_ratio(lp.detach(), olp, m, validate)
    log_r, clamped = token_log_ratio(lp.detach(), olp, m, config)
    ratio = exp_ratio(log_r, m, validate=validate)
    low, high = 1.0 - config.eps_low, 1.0 + config.eps_high
    is_weight = torch.where(m, torch.clamp(ratio, bound(low, ratio.dtype), bound(high, ratio.dtype)), _zero(ratio))
    clipped_high = m & (adv > 0) & (ratio > high)
    clipped_low = m & (adv < 0) & (ratio < low)
    capped = m & ((ratio > high) | (ratio < low))
    per_token = -is_weight * adv * lp
    weight = _agg_weights(m, config.loss_agg_mode, config.max_len, lp.dtype, validate)
    loss = torch.sum(weight * per_token)
    grad = torch.where(m, -weight * is_weight * adv, _zero(is_weight))
    if validate:
        check_loss(loss, grad, lambda: cispo_sizes(adv, is_weight, lp, m))
    metrics = baseline_metrics(m, ratio, raw, clipped_high, clipped_low, clamped, extra_counts={"capped_frac": capped},
                               raw=(logp, old_logp))
    extras = {"clamped": clamped, "is_weight": is_weight, "capped": capped,
              "per_token_loss": per_token.detach()}
    return _result(loss, grad, ratio, clipped_high, clipped_low, metrics, weight, m, log_r, extras)
