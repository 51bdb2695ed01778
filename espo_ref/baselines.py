"""Reference baselines: GRPO, DAPO, GSPO, GMPO, CISPO (specs/baselines.md).

Each loss takes ``(logp, old_logp, mask, advantages, config)`` like ``espo_loss`` and returns
a LossResult: ``loss`` (= -J), ``grad`` (the exact d loss / d logp implied by the
stop-gradients, 0 on padding), per-token ``ratio``, ``clipped_high``, ``clipped_low`` and
``metrics``. Where a peer (verl, TRL) differs from the pinned choice, [BASE-PEERS] in the
spec says which option reproduces it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ._checks import advantages_2d, loss_overflow, token_inputs
from ._checks import log_ratio as raw_log_ratio
from ._stable import approx_kl, finite_mean, in_range, scaled_sum
from .aggregation import agg_weights, check_agg_mode
from .config import _check_real, check_known_fields, plain_scalars
from .errors import ESPOInputError
from .objective import clipped_surrogate, exp_ratio, ratio_and_advantage
from .result import LossResult

GSPO_LEVELS = ("token", "sequence")
# GMPO's log-ratio is clipped on one side only (by the sign of A), and it has no clamp.
GMPO_OVERFLOW_REMEDY = "GMPO has no log-ratio clamp: keep logp - old_logp within the float range"


# --- configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class BaselineConfig:
    """[BASE-CONFIG] Fields shared by every baseline: clip offsets and the aggregation.

    ``eps_low``, ``eps_high`` >= 0 (offsets: the range is [1 - eps_low, 1 + eps_high], in
    log space [-eps_low, eps_high] for GMPO); ``loss_agg_mode`` one of LOSS_AGG_MODES;
    ``max_len`` (int >= 1) only with ``"seq-mean-token-sum-norm"`` (None: T).
    """

    method: ClassVar[str] = "base"

    eps_low: float = 0.2
    eps_high: float = 0.2
    loss_agg_mode: str = "seq-mean-token-mean"
    max_len: int | None = None

    def __post_init__(self) -> None:
        plain_scalars(self)  # numpy scalars are accepted as the Python values they hold
        for name in ("eps_low", "eps_high"):
            if _check_real(name, getattr(self, name)) < 0:
                raise ESPOInputError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_agg_mode(self.loss_agg_mode, self.max_len)
        clamp = getattr(self, "log_ratio_clamp", None)
        if clamp is not None and _check_real("log_ratio_clamp", clamp) <= 0:
            raise ESPOInputError(f"log_ratio_clamp must be > 0 or None, got {clamp}")

    def replace(self, **changes: Any) -> "BaselineConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BaselineConfig":
        check_known_fields(cls, data)
        return cls(**data)


def _check_dual_clip(value) -> None:
    if value is not None and _check_real("dual_clip", value) <= 1.0:
        raise ESPOInputError(f"dual_clip must be > 1 or None, got {value}")


@dataclass(frozen=True)
class GRPOConfig(BaselineConfig):
    """[BASE-GRPO] GRPO (Eq. 1): eps 0.2/0.2, seq-mean-token-mean, log-ratio clamp [-20, 20],
    dual clip off [BASE-GRPO-DUALCLIP]."""

    method: ClassVar[str] = "grpo"

    log_ratio_clamp: float | None = 20.0
    dual_clip: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_dual_clip(self.dual_clip)


@dataclass(frozen=True)
class DAPOConfig(GRPOConfig):
    """[BASE-DAPO] DAPO: the GRPO surrogate with clip-higher 0.2/0.28 and token-mean (GRPO's
    fields and checks, other defaults; dapo_loss still accepts a DAPOConfig only)."""

    method: ClassVar[str] = "dapo"

    eps_high: float = 0.28
    loss_agg_mode: str = "token-mean"


@dataclass(frozen=True)
class GSPOConfig(BaselineConfig):
    """[BASE-GSPO] GSPO: eps 3e-4/4e-4, seq-mean-token-mean, log s clamped above at 10;
    ``level="sequence"`` is the plain sequence form [BASE-GSPO-SEQ]."""

    method: ClassVar[str] = "gspo"

    eps_low: float = 3e-4
    eps_high: float = 4e-4
    log_ratio_clamp: float | None = 10.0
    level: str = "token"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.level not in GSPO_LEVELS:
            raise ESPOInputError(f"level must be one of {GSPO_LEVELS}, got {self.level!r}")


@dataclass(frozen=True)
class GMPOConfig(BaselineConfig):
    """[BASE-GMPO] GMPO: sign-aware log-space clip 0.4/0.4, seq-mean-token-mean (the mean
    over responses), no log-ratio clamp."""

    method: ClassVar[str] = "gmpo"

    eps_low: float = 0.4
    eps_high: float = 0.4


@dataclass(frozen=True)
class CISPOConfig(BaselineConfig):
    """[BASE-CISPO] CISPO: weight offsets eps_low 1.0 / eps_high 4.0 (TRL cap 5.0),
    token-mean, log-ratio clamp [-20, 20]."""

    method: ClassVar[str] = "cispo"

    eps_low: float = 1.0
    eps_high: float = 4.0
    loss_agg_mode: str = "token-mean"
    log_ratio_clamp: float | None = 20.0


# --- shared pieces -----------------------------------------------------------------------


def _config(config, cls):
    if config is None:
        return cls()
    if type(config) is not cls:
        raise ESPOInputError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    config.__post_init__()  # a config built without its checks is still refused [BASE-CONFIG]
    return config


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


def _mean_on(values: np.ndarray, where: np.ndarray) -> float:
    count = int(where.sum())
    if not count:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        plain = float(np.where(where, values, 0.0).sum() / count)
    return finite_mean(plain, values, where)


def check_loss(loss, grad, what) -> None:
    """[BASE-INPUT] A loss or gradient beyond the float64 range is an error (``what()`` gives
    the sizes to report)."""
    if not (np.isfinite(loss) and np.isfinite(grad).all()):
        raise loss_overflow(what())


def baseline_metrics(mask, ratio, log_r, clipped_high, clipped_low, clamped) -> dict[str, float]:
    """[BASE-METRICS] Clip fractions over all response tokens (TRL's binding definitions),
    the mean ratio, and the KL estimates of the raw log-ratio (k3 ``approx_kl``, k1 ``ppo_kl``).
    Every value is finite: means are summed scaled where a plain sum would overflow, and the
    k3 mean saturates at the largest float64."""
    tokens = int(mask.sum())
    with np.errstate(over="ignore", invalid="ignore"):
        k3 = np.where(mask, np.expm1(log_r) - log_r, 0.0)
        neg_log_r = -log_r
    return {
        "tokens": float(tokens),
        "responses": float(mask.any(axis=1).sum()),
        "clipfrac": float((clipped_high | clipped_low).sum() / tokens),
        "clipfrac_high": float(clipped_high.sum() / tokens),
        "clipfrac_low": float(clipped_low.sum() / tokens),
        "clamped_frac": float(clamped.sum() / tokens),
        "ratio_mean": _mean_on(ratio, mask),
        "approx_kl": approx_kl(_mean_on(k3, mask), log_r, mask),
        "ppo_kl": _mean_on(neg_log_r, mask),
    }


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
    weight = agg_weights(m, config.loss_agg_mode, config.max_len)
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
    return _ppo_clip_loss(logp, old_logp, mask, advantages, _config(config, GRPOConfig))


def dapo_loss(logp, old_logp, mask, advantages, config: DAPOConfig | None = None) -> LossResult:
    """[BASE-DAPO] DAPO: the GRPO surrogate with clip-higher (0.2, 0.28), token-mean."""
    return _ppo_clip_loss(logp, old_logp, mask, advantages, _config(config, DAPOConfig))


# --- GSPO --------------------------------------------------------------------------------


def gspo_loss(logp, old_logp, mask, advantages, config: GSPOConfig | None = None) -> LossResult:
    """[BASE-GSPO] Eqs. 2-4: s_i = exp(mean_t log r_{i,t}), clamped above at log_ratio_clamp;
    loss = agg(-min(s A, clip(s, 1 - eps_low, 1 + eps_high) A)).

    Token form (GSPO-token): d s_{i,t} / d logp_t = s_i. Sequence form [BASE-GSPO-SEQ]:
    d s_i / d logp_t = s_i / L_i. Both equal with a per-response advantage
    [BASE-IDENTITIES]. A clamped response has gradient 0.
    """
    config = _config(config, GSPOConfig)
    lp, olp, m, adv = _inputs(logp, old_logp, mask, advantages)
    log_r = raw_log_ratio(lp, olp, m)
    log_s = to_tokens(row_mean(log_r, m), m)
    log_s, clamped = clamp_log_ratio(log_s, m, None, config.log_ratio_clamp)
    ratio = exp_ratio(log_s, m)
    surrogate, clipped_high, clipped_low = clipped_surrogate(
        ratio, adv, config.eps_low, config.eps_high, m
    )
    per_token = -surrogate
    weight = agg_weights(m, config.loss_agg_mode, config.max_len)
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
    config = _config(config, GMPOConfig)
    lp, olp, m, adv = _inputs(logp, old_logp, mask, advantages)
    log_r = raw_log_ratio(lp, olp, m)
    clipped_lr, clipped_high, clipped_low = gmpo_clipped_log_ratio(
        log_r, adv, m, config.eps_low, config.eps_high
    )
    log_ratio = to_tokens(row_mean(clipped_lr, m), m)
    ratio = exp_ratio(log_ratio, m, GMPO_OVERFLOW_REMEDY)
    adv_seq = to_tokens(row_mean(adv, m), m)
    weight = agg_weights(m, config.loss_agg_mode, config.max_len)
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
    config = _config(config, CISPOConfig)
    lp, olp, m, adv = _inputs(logp, old_logp, mask, advantages)
    raw = raw_log_ratio(lp, olp, m)
    log_r, clamped = token_log_ratio(lp, olp, m, config)
    ratio = exp_ratio(log_r, m)
    low, high = 1.0 - config.eps_low, 1.0 + config.eps_high
    is_weight = np.where(m, np.clip(ratio, low, high), 0.0)
    clipped_high = m & (adv > 0) & (ratio > high)
    clipped_low = m & (adv < 0) & (ratio < low)
    capped = m & ((ratio > high) | (ratio < low))
    weight = agg_weights(m, config.loss_agg_mode, config.max_len)
    with np.errstate(over="ignore", invalid="ignore"):
        per_token = -is_weight * adv * lp
        loss = np.sum(weight * per_token)
        grad = np.where(m, -weight * is_weight * adv, 0.0)
    check_loss(loss, grad, lambda: cispo_sizes(adv, is_weight, lp, m))
    metrics = baseline_metrics(m, ratio, raw, clipped_high, clipped_low, clamped)
    metrics["capped_frac"] = float(capped.sum() / m.sum())
    extras = {"clamped": clamped, "is_weight": is_weight, "capped": capped, "per_token_loss": per_token}
    return _result(loss, grad, ratio, clipped_high, clipped_low, metrics, weight, m, log_r, extras)
