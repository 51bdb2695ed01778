"""The pieces ESPO and the baselines share: the exp of a clamped log-ratio, the PPO-clip
surrogate, and the loss-overflow check; torch mirror of espo_ref/surrogate.py."""

from __future__ import annotations

import torch

from .._checks import loss_overflow
from ..surrogate import CLAMP_REMEDY
from ._checks import bound, dtype_name, raise_at_first


def _zero(like: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=like.dtype, device=like.device)


def exp_ratio(log_value: torch.Tensor, mask: torch.Tensor, remedy: str = CLAMP_REMEDY, *,
              validate: bool = True) -> torch.Tensor:
    """[ESPO-RATIO-CLAMP] [BASE-RATIO-CLAMP] exp of a log-ratio on the response tokens (0 on
    padding); an overflow (of the compute dtype) is an error when ``validate`` (a host sync)."""
    ratio = torch.where(mask, torch.exp(torch.where(mask, log_value, _zero(log_value))), _zero(log_value))
    if validate:
        raise_at_first(mask & ~torch.isfinite(ratio),
                       lambda idx: f"logp - old_logp gives a ratio that overflows {dtype_name(ratio.dtype)} at "
                                   f"response position {idx} (log value {float(log_value.detach()[tuple(idx)]):.6g}); "
                                   f"{remedy}")
    return ratio


def clipped_surrogate(ratio, adv, eps_low, eps_high, trained):
    """[ESPO-CLIPMASK] [BASE-GRPO] min(s A, clip(s, 1 - eps_low, 1 + eps_high) A) and the
    binding clips.

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


def ratio_and_advantage(adv: torch.Tensor, ratio: torch.Tensor, mask: torch.Tensor) -> str:
    """[ESPO-INPUT] [BASE-INPUT] The sizes a loss overflow is reported with (the core's text):
    the largest |advantage| and ratio."""
    return (f"advantages up to {float(adv[mask].abs().max()):.6g} in magnitude "
            f"times ratios up to {float(ratio[mask].max()):.6g}")


def check_loss(loss: torch.Tensor, grad: torch.Tensor, what) -> None:
    """[ESPO-INPUT] [BASE-INPUT] A loss or gradient beyond the range of the compute dtype is an
    error (one host sync); ``what()`` gives the sizes to report."""
    if not bool(torch.isfinite(loss.detach()) & torch.isfinite(grad).all()):
        raise loss_overflow(what(), dtype_name(grad.dtype))
