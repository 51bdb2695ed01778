"""The pieces ESPO and the baselines share: the exp of a clamped log-ratio, the PPO-clip
surrogate, and the loss-overflow check. Below both objectives, so that neither is built on
the other (specs/ESPO.md sections 5-6, specs/baselines.md sections 3-4)."""

from __future__ import annotations

import numpy as np

from ._checks import loss_overflow, raise_at_first

CLAMP_REMEDY = "set log_ratio_clamp to bound it"


def exp_ratio(log_value: np.ndarray, mask: np.ndarray, remedy: str = CLAMP_REMEDY) -> np.ndarray:
    """[ESPO-RATIO-CLAMP] [BASE-RATIO-CLAMP] exp of a log-ratio on the response tokens (0 on
    padding); a ratio that overflows float64 is an error, never an inf or NaN."""
    with np.errstate(over="ignore"):
        ratio = np.where(mask, np.exp(np.where(mask, log_value, 0.0)), 0.0)
    raise_at_first(mask & ~np.isfinite(ratio),
                   lambda idx: f"logp - old_logp gives a ratio that overflows float64 at response position "
                               f"{list(idx)} (log value {log_value[idx]:.6g}); {remedy}")
    return ratio


def clipped_surrogate(ratio, adv, eps_low, eps_high, trained):
    """[ESPO-CLIPMASK] [BASE-GRPO] min(s A, clip(s, 1 - eps_low, 1 + eps_high) A) and the
    binding clips.

    Clipped-high iff A > 0 and s > 1 + eps_high; clipped-low iff A < 0 and s < 1 - eps_low
    (strict: a token on the boundary is not clipped). Clipped tokens have zero gradient.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported by the loss
        surrogate = np.minimum(ratio * adv, np.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv)
    clipped_high = trained & (adv > 0) & (ratio > 1.0 + eps_high)
    clipped_low = trained & (adv < 0) & (ratio < 1.0 - eps_low)
    return np.where(trained, surrogate, 0.0), clipped_high, clipped_low


def ratio_and_advantage(adv: np.ndarray, ratio: np.ndarray, mask: np.ndarray) -> str:
    """[ESPO-INPUT] [BASE-INPUT] The sizes a loss overflow is reported with: the largest
    |advantage| and ratio."""
    return (f"advantages up to {float(np.abs(adv[mask]).max()):.6g} in magnitude "
            f"times ratios up to {float(ratio[mask].max()):.6g}")


def check_loss(loss, grad, what) -> None:
    """[ESPO-INPUT] [BASE-INPUT] A loss or gradient beyond the float64 range is an error
    (``what()`` gives the sizes to report)."""
    if not (np.isfinite(loss) and np.isfinite(grad).all()):
        raise loss_overflow(what())
