"""The ESPO objective, Eq. 5 [ESPO-OBJ], with its exact gradient and diagnostics."""

from __future__ import annotations

import numpy as np

from ._checks import advantages_2d, as_real_array, check_shape, log_ratio, loss_overflow, token_inputs
from ._segments import Segments
from ._stable import approx_kl, finite_mean
from .clipping import clip_bounds
from .config import ESPOConfig, check_config
from .errors import ESPOInputError
from .grouping import HIGH_GROUP, entropy_groups, trained_tokens, validate_entropy
from .ratio import group_log_ratio
from .result import LossResult


CLAMP_REMEDY = "set log_ratio_clamp to bound it"


def exp_ratio(log_value: np.ndarray, mask: np.ndarray, remedy: str = CLAMP_REMEDY) -> np.ndarray:
    """[ESPO-RATIO-CLAMP] [BASE-RATIO-CLAMP] exp of a log-ratio on the response tokens (0 on
    padding); a ratio that overflows float64 is an error, never an inf or NaN."""
    with np.errstate(over="ignore"):
        ratio = np.where(mask, np.exp(np.where(mask, log_value, 0.0)), 0.0)
    overflow = mask & ~np.isfinite(ratio)
    if overflow.any():
        idx = [int(i) for i in np.argwhere(overflow)[0]]
        raise ESPOInputError(
            f"logp - old_logp gives a ratio that overflows float64 at response position {idx} "
            f"(log value {log_value[tuple(idx)]:.6g}); {remedy}"
        )
    return ratio


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


def clipped_surrogate(ratio, adv, eps_low, eps_high, trained):
    """[ESPO-CLIPMASK] min(s A, clip(s, 1 - eps_low, 1 + eps_high) A) and the binding clips.

    Clipped-high iff A > 0 and s > 1 + eps_high; clipped-low iff A < 0 and s < 1 - eps_low
    (strict: a token on the boundary is not clipped). Clipped tokens have zero gradient.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported by the loss
        surrogate = np.minimum(ratio * adv, np.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv)
    clipped_high = trained & (adv > 0) & (ratio > 1.0 + eps_high)
    clipped_low = trained & (adv < 0) & (ratio < 1.0 - eps_low)
    return np.where(trained, surrogate, 0.0), clipped_high, clipped_low


def aggregation_weights(groups: np.ndarray, trained: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[ESPO-AGG] Eq. 5 weights: w_t = 1 / (N K_i |tau|) for trained tokens, else 0.

    N = the responses with at least one response token, K_i = the trained non-empty
    groups of response i, |tau| = the trained tokens of the token's group.
    """
    responses = int(mask.any(axis=1).sum())
    if responses == 0:
        raise ESPOInputError("mask has no response token: the objective is undefined")
    seg = Segments(groups, trained)
    k = seg.groups_per_row()
    size = seg.to_tokens(seg.counts.astype(np.float64))
    denom = responses * np.maximum(k, 1)[:, None] * np.where(trained, size, 1.0)
    return np.where(trained, 1.0 / denom, 0.0)


def _safe_mean(values: np.ndarray, where: np.ndarray) -> float:
    count = int(where.sum())
    if not count:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        plain = float(values[where].sum() / count)
    return finite_mean(plain, values, where)


def espo_metrics(entropy, mask, groups, trained, ratio, eps_high, log_r, clipped_high,
                 clipped_low, clamped, config: ESPOConfig) -> dict[str, float]:
    """[ESPO-METRICS] Diagnostics of Figs. 3-5: clip fractions over all response tokens,
    split into the high-entropy bucket (group 0) and the rest, and per-group epsilons.

    Every value is finite: a mean whose plain sum leaves the float range is summed scaled,
    ``approx_kl`` falls back to log space and saturates at the largest float64."""
    tokens = int(mask.sum())
    clipped = clipped_high | clipped_low
    high = mask & (groups == HIGH_GROUP) if config.grouping != "token" else mask.copy()
    low = mask & ~high
    rows = mask.any(axis=1)
    k = Segments(groups, trained).groups_per_row()
    with np.errstate(over="ignore", invalid="ignore"):
        kl = np.where(mask, np.expm1(log_r) - log_r, 0.0)
    return {
        "tokens": float(tokens),
        "responses": float(rows.sum()),
        "clipfrac": float(clipped.sum() / tokens),
        "clipfrac_high": float(clipped_high.sum() / tokens),
        "clipfrac_low": float(clipped_low.sum() / tokens),
        "clipfrac_high_group": _safe_mean(clipped.astype(np.float64), high),
        "clipfrac_low_group": _safe_mean(clipped.astype(np.float64), low),
        "clamped_frac": float((clamped & mask).sum() / tokens),
        "eps_mean_high_group": _safe_mean(eps_high, high),
        "eps_mean_low_group": _safe_mean(eps_high, low),
        "high_group_tokens": float(high.sum()),
        "low_group_tokens": float(low.sum()),
        "trained_tokens": float(trained.sum()),
        "groups_mean": float(k[rows].mean()),
        "entropy_mean": _safe_mean(entropy, mask),
        "entropy_mean_high_group": _safe_mean(entropy, high),
        "entropy_mean_low_group": _safe_mean(entropy, low),
        "ratio_mean": _safe_mean(ratio, trained),
        "approx_kl": approx_kl(_safe_mean(kl, mask), log_r, mask),
    }


def ratio_and_advantage(adv: np.ndarray, ratio: np.ndarray, mask: np.ndarray) -> str:
    """[ESPO-INPUT] The sizes a loss overflow is reported with: the largest |advantage| and ratio."""
    return (f"advantages up to {float(np.abs(adv[mask]).max()):.6g} in magnitude "
            f"times ratios up to {float(ratio[mask].max()):.6g}")


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

    groups = entropy_groups(ent, m, config)
    trained = trained_tokens(groups, config)
    log_r = log_ratio(lp, olp, m)
    log_s = group_log_ratio(lp, olp, groups)
    ratio, clamped = token_ratio(log_s, log_r, m, config)
    eps_low, eps_high = clip_bounds(ent, groups, config)
    surrogate, clipped_high, clipped_low = clipped_surrogate(ratio, adv, eps_low, eps_high, trained)
    weight = aggregation_weights(groups, trained, m)

    with np.errstate(over="ignore", invalid="ignore"):
        objective = float(np.sum(weight * surrogate))
        passes = trained & ~clipped_high & ~clipped_low & ~clamped
        grad = np.where(passes, -weight * adv * ratio, 0.0)
    if not (np.isfinite(objective) and np.isfinite(grad).all()):
        raise loss_overflow(ratio_and_advantage(adv, ratio, m))
    metrics = espo_metrics(ent, m, groups, trained, ratio, eps_high, log_r, clipped_high,
                           clipped_low, clamped, config)
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
