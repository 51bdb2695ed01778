"""Reference baselines: GRPO, DAPO, GSPO, GMPO, CISPO (specs/baselines.md).

Each loss takes ``(logp, old_logp, mask, advantages, config)`` like ``espo_loss`` and returns
a LossResult: ``loss`` (= -J), ``grad`` (the exact d loss / d logp implied by the
stop-gradients, 0 on padding), per-token ``ratio``, ``clipped_high``, ``clipped_low`` and
``metrics``. Where a peer (verl, TRL) differs from the pinned choice, [BASE-PEERS] in the
spec says which option reproduces it.
"""

from __future__ import annotations

import numpy as np

from ._checks import advantages_2d, token_inputs
from ._checks import log_ratio as raw_log_ratio
from ._stable import in_range, scaled_sum
from .aggregation import _agg_weights
from .config import (GSPO_LEVELS, BaselineConfig, CISPOConfig, DAPOConfig, GMPOConfig, GRPOConfig,
                     GSPOConfig, baseline_config)
from .metrics import baseline_metrics
from .result import LossResult
from .surrogate import check_loss, clipped_surrogate, exp_ratio, ratio_and_advantage

__all__ = [
    "GSPO_LEVELS", "BaselineConfig", "GRPOConfig", "DAPOConfig", "GSPOConfig", "GMPOConfig",
    "CISPOConfig", "row_sum", "row_mean", "to_tokens", "clamp_log_ratio", "token_log_ratio",
    "ppo_clip_token_loss", "grpo_loss", "dapo_loss", "gspo_loss", "gmpo_clipped_log_ratio",
    "gmpo_loss", "cispo_loss",
]

# GMPO's log-ratio is clipped on one side only (by the sign of A), and it has no clamp.
GMPO_OVERFLOW_REMEDY = "GMPO has no log-ratio clamp: keep logp - old_logp within the float range"


def _inputs(logp, old_logp, mask, advantages):
    """[BASE-INPUT] Validated float64 logp, old_logp, bool mask and [B, T] advantages."""
    lp, olp, m = token_inputs(logp, old_logp, mask)
    adv = advantages_2d(advantages, m)
    return lp, olp, m, adv


def row_sum(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sum over the response tokens of each row, [B]."""
    return np.sum(np.where(mask, values, 0.0), axis=1)


def row_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the response tokens of each row, [B] (0 for an empty row). A row whose sum
    leaves the float range (finite values of huge magnitude) is averaged as the sum of
    value / length instead."""
    lengths = np.maximum(mask.sum(axis=1), 1)
    with np.errstate(over="ignore", invalid="ignore"):
        mean = row_sum(values, mask) / lengths
    overflow = ~np.isfinite(mean)
    if overflow.any():
        with np.errstate(over="ignore", invalid="ignore"):
            mean = np.where(overflow, in_range(row_sum(scaled_sum(values, lengths[:, None]), mask)), mean)
    return mean


def to_tokens(per_row: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Broadcast a per-row value [B] to the response tokens [B, T] (0 on padding)."""
    return np.where(mask, per_row[:, None], 0.0)


def clamp_log_ratio(log_value: np.ndarray, mask: np.ndarray, low, high):
    """[BASE-RATIO-CLAMP] Clamp a log-ratio to [low, high] (None: unbounded on that side).

    Returns (clamped value, clamped): a token strictly outside the bounds is clamped and its
    log-ratio has derivative 0; a token exactly on a bound is not clamped.
    """
    clamped = np.zeros_like(mask)
    if low is not None:
        clamped = clamped | (mask & (log_value < low))
        log_value = np.maximum(log_value, low)
    if high is not None:
        clamped = clamped | (mask & (log_value > high))
        log_value = np.minimum(log_value, high)
    return np.where(mask, log_value, 0.0), clamped


def token_log_ratio(lp, olp, mask, config):
    """[BASE-RATIO-CLAMP] log r = logp - old_logp, clamped to [-c, c] with c = log_ratio_clamp."""
    c = config.log_ratio_clamp
    return clamp_log_ratio(lp - olp, mask, None if c is None else -c, c)


def _result(loss, grad, ratio, clipped_high, clipped_low, metrics, weight, mask, log_ratio, extras):
    return LossResult(
        loss=float(loss),
        grad=np.where(mask, grad, 0.0),
        ratio=ratio,
        clipped_high=clipped_high,
        clipped_low=clipped_low,
        metrics=metrics,
        log_ratio=log_ratio,
        weight=weight,
        trained=mask.copy(),
        extras=extras,
    )


# --- GRPO and DAPO -----------------------------------------------------------------------


def ppo_clip_token_loss(ratio, adv, mask, eps_low, eps_high, dual_clip):
    """[BASE-GRPO] [BASE-GRPO-DUALCLIP] Per-token loss max(-A r, -A clip(r, 1 - eps_low,
    1 + eps_high)); with a dual clip c, for A < 0, min(that, -A c).

    Returns (loss, clipped_high, clipped_low, dual_clipped); dual-clipped iff A < 0 and
    r > c (strict).
    """
    surrogate, clipped_high, clipped_low = clipped_surrogate(ratio, adv, eps_low, eps_high, mask)
    loss = -surrogate
    if dual_clip is None:
        return loss, clipped_high, clipped_low, np.zeros_like(mask)
    negative = mask & (adv < 0)
    dual_clipped = negative & (ratio > dual_clip)
    with np.errstate(over="ignore", invalid="ignore"):  # -A c = +inf for A < 0 is never the min
        loss = np.where(negative, np.minimum(loss, -adv * dual_clip), loss)
    return loss, clipped_high, clipped_low, dual_clipped


def _ppo_clip_loss(logp, old_logp, mask, advantages, config) -> LossResult:
    lp, olp, m, adv = _inputs(logp, old_logp, mask, advantages)
    raw = raw_log_ratio(lp, olp, m)
    log_r, clamped = token_log_ratio(lp, olp, m, config)
    ratio = exp_ratio(log_r, m)
    per_token, clipped_high, clipped_low, dual = ppo_clip_token_loss(
        ratio, adv, m, config.eps_low, config.eps_high, config.dual_clip
    )
    weight = _agg_weights(m, config.loss_agg_mode, config.max_len)
    with np.errstate(over="ignore", invalid="ignore"):
        loss = np.sum(weight * per_token)
        passes = m & ~clipped_high & ~clipped_low & ~dual & ~clamped
        grad = np.where(passes, -weight * adv * ratio, 0.0)
    check_loss(loss, grad, lambda: ratio_and_advantage(adv, ratio, m))
    metrics = baseline_metrics(m, ratio, raw, clipped_high, clipped_low, clamped)
    metrics["clipfrac_dual"] = float(dual.sum() / m.sum())
    extras = {"clamped": clamped, "dual_clipped": dual, "per_token_loss": per_token}
    return _result(loss, grad, ratio, clipped_high, clipped_low, metrics, weight, m, log_r, extras)


def grpo_loss(logp, old_logp, mask, advantages, config: GRPOConfig | None = None) -> LossResult:
    """[BASE-GRPO] Eq. 1: loss = agg(max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))).

    r = exp(clamp(logp - old_logp, -20, 20)) [BASE-RATIO-CLAMP]; d loss / d logp_t =
    -w_t A_t r_t unless the token is clipped, dual-clipped or clamped (then 0).
    """
    return _ppo_clip_loss(logp, old_logp, mask, advantages, baseline_config(config, GRPOConfig))


def dapo_loss(logp, old_logp, mask, advantages, config: DAPOConfig | None = None) -> LossResult:
    """[BASE-DAPO] DAPO: the GRPO surrogate with clip-higher (0.2, 0.28), token-mean."""
    return _ppo_clip_loss(logp, old_logp, mask, advantages, baseline_config(config, DAPOConfig))


# --- GSPO --------------------------------------------------------------------------------


def gspo_loss(logp, old_logp, mask, advantages, config: GSPOConfig | None = None) -> LossResult:
    """[BASE-GSPO] Eqs. 2-4: s_i = exp(mean_t log r_{i,t}), clamped above at log_ratio_clamp;
    loss = agg(-min(s A, clip(s, 1 - eps_low, 1 + eps_high) A)).

    Token form (GSPO-token): d s_{i,t} / d logp_t = s_i. Sequence form [BASE-GSPO-SEQ]:
    d s_i / d logp_t = s_i / L_i. Both equal with a per-response advantage
    [BASE-IDENTITIES]. A clamped response has gradient 0.
    """
    config = baseline_config(config, GSPOConfig)
    lp, olp, m, adv = _inputs(logp, old_logp, mask, advantages)
    log_r = raw_log_ratio(lp, olp, m)
    log_s = to_tokens(row_mean(log_r, m), m)
    log_s, clamped = clamp_log_ratio(log_s, m, None, config.log_ratio_clamp)
    ratio = exp_ratio(log_s, m)
    surrogate, clipped_high, clipped_low = clipped_surrogate(
        ratio, adv, config.eps_low, config.eps_high, m
    )
    per_token = -surrogate
    weight = _agg_weights(m, config.loss_agg_mode, config.max_len)
    with np.errstate(over="ignore", invalid="ignore"):
        loss = np.sum(weight * per_token)
        passes = m & ~clipped_high & ~clipped_low & ~clamped
        grad = np.where(passes, -weight * adv * ratio, 0.0)
    if config.level == "sequence":
        grad = to_tokens(row_mean(grad, m), m)
    check_loss(loss, grad, lambda: ratio_and_advantage(adv, ratio, m))
    metrics = baseline_metrics(m, ratio, log_r, clipped_high, clipped_low, clamped)
    extras = {"clamped": clamped, "per_token_loss": per_token}
    return _result(loss, grad, ratio, clipped_high, clipped_low, metrics, weight, m, log_s, extras)


# --- GMPO --------------------------------------------------------------------------------


def gmpo_clipped_log_ratio(log_r, adv, mask, eps_low, eps_high):
    """[BASE-GMPO] Sign-aware log-space clip: c = clamp(log r, -eps_low, eps_high);
    A > 0: min(log r, c); A < 0: max(log r, c); A = 0: 0 (verl's sign(A) form).

    Returns (clipped log-ratio, clipped_high, clipped_low): clipped-high iff A > 0 and
    log r > eps_high, clipped-low iff A < 0 and log r < -eps_low (strict).
    """
    c = np.clip(log_r, -eps_low, eps_high)
    clipped = np.where(adv > 0, np.minimum(log_r, c), np.where(adv < 0, np.maximum(log_r, c), 0.0))
    clipped_high = mask & (adv > 0) & (log_r > eps_high)
    clipped_low = mask & (adv < 0) & (log_r < -eps_low)
    return np.where(mask, clipped, 0.0), clipped_high, clipped_low


def gmpo_loss(logp, old_logp, mask, advantages, config: GMPOConfig | None = None) -> LossResult:
    """[BASE-GMPO] GMPO: ratio_i = exp(mean_t clipped log r), A_i = mean_t A_t, per-response
    loss -A_i ratio_i on every token of response i, aggregated by loss_agg_mode.

    d loss / d logp_t = W_i (-A_i ratio_i) / L_i with W_i = sum of the aggregation weights of
    row i, for tokens whose clipped log-ratio passes (A_t != 0 and not clipped); else 0.
    """
    config = baseline_config(config, GMPOConfig)
    lp, olp, m, adv = _inputs(logp, old_logp, mask, advantages)
    log_r = raw_log_ratio(lp, olp, m)
    clipped_lr, clipped_high, clipped_low = gmpo_clipped_log_ratio(
        log_r, adv, m, config.eps_low, config.eps_high
    )
    log_ratio = to_tokens(row_mean(clipped_lr, m), m)
    ratio = exp_ratio(log_ratio, m, GMPO_OVERFLOW_REMEDY)
    adv_seq = to_tokens(row_mean(adv, m), m)
    weight = _agg_weights(m, config.loss_agg_mode, config.max_len)
    with np.errstate(over="ignore", invalid="ignore"):
        per_token = -adv_seq * ratio
        loss = np.sum(weight * per_token)
        row_weight = to_tokens(row_sum(weight, m), m)
        lengths = np.maximum(m.sum(axis=1), 1)[:, None]
        passes = m & (adv != 0) & ~clipped_high & ~clipped_low
        grad = np.where(passes, row_weight * per_token / lengths, 0.0)
    check_loss(loss, grad, lambda: ratio_and_advantage(adv_seq, ratio, m))
    metrics = baseline_metrics(m, ratio, log_r, clipped_high, clipped_low, np.zeros_like(m))
    extras = {"clipped_log_ratio": clipped_lr, "advantage_seq": adv_seq, "per_token_loss": per_token}
    return _result(loss, grad, ratio, clipped_high, clipped_low, metrics, weight, m, log_ratio, extras)


# --- CISPO -------------------------------------------------------------------------------


def cispo_sizes(adv, is_weight, lp, mask) -> str:
    """[BASE-INPUT] The sizes a CISPO loss overflow is reported with: |advantage|, weight, |logp|."""
    return (f"advantages up to {float(np.abs(adv[mask]).max()):.6g} in magnitude times weights up to "
            f"{float(is_weight[mask].max()):.6g} times |logp| up to {float(np.abs(lp[mask]).max()):.6g}")


def cispo_loss(logp, old_logp, mask, advantages, config: CISPOConfig | None = None) -> LossResult:
    """[BASE-CISPO] CISPO: loss = agg(-sg(clip(r, 1 - eps_low, 1 + eps_high)) A logp).

    r = exp(clamp(logp - old_logp, -20, 20)); d loss / d logp_t = -w_t clip(r_t) A_t on every
    response token (the clip caps the weight, it never zeroes the gradient).
    """
    config = baseline_config(config, CISPOConfig)
    lp, olp, m, adv = _inputs(logp, old_logp, mask, advantages)
    raw = raw_log_ratio(lp, olp, m)
    log_r, clamped = token_log_ratio(lp, olp, m, config)
    ratio = exp_ratio(log_r, m)
    low, high = 1.0 - config.eps_low, 1.0 + config.eps_high
    is_weight = np.where(m, np.clip(ratio, low, high), 0.0)
    clipped_high = m & (adv > 0) & (ratio > high)
    clipped_low = m & (adv < 0) & (ratio < low)
    capped = m & ((ratio > high) | (ratio < low))
    weight = _agg_weights(m, config.loss_agg_mode, config.max_len)
    with np.errstate(over="ignore", invalid="ignore"):
        per_token = -is_weight * adv * lp
        loss = np.sum(weight * per_token)
        grad = np.where(m, -weight * is_weight * adv, 0.0)
    check_loss(loss, grad, lambda: cispo_sizes(adv, is_weight, lp, m))
    metrics = baseline_metrics(m, ratio, raw, clipped_high, clipped_low, clamped)
    metrics["capped_frac"] = float(capped.sum() / m.sum())
    extras = {"clamped": clamped, "is_weight": is_weight, "capped": capped, "per_token_loss": per_token}
    return _result(loss, grad, ratio, clipped_high, clipped_low, metrics, weight, m, log_r, extras)
