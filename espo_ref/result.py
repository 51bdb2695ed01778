"""The result object every loss in the reference returns [ESPO-METRICS]."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LossResult:
    """Loss value, exact gradient d loss / d logp, per-token diagnostics and metrics.

    Per-token arrays are [B, T] and 0 (or False, or -1 for ``groups``) on padding.
    ``loss`` is -J (the quantity to minimise). ``weight`` is each token's aggregation
    weight in J; ``trained`` marks the tokens that enter the objective.
    """

    loss: Any
    grad: Any
    ratio: Any
    clipped_high: Any
    clipped_low: Any
    metrics: dict[str, float]
    groups: Any = None
    eps: Any = None
    eps_low: Any = None
    eps_high: Any = None
    log_ratio: Any = None
    weight: Any = None
    trained: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
