"""espo-ref: the executable reference for ESPO (arXiv 2512.00499).

The numpy core here is normative together with specs/ESPO.md; ``espo_ref.torch`` mirrors
it function for function.
"""

from ._version import SPEC_VERSION, __version__
from .advantage import grpo_advantages
from .clipping import clip_bounds, group_clip_eps
from .config import ESPOConfig
from .entropy import token_entropy
from .errors import ESPOInputError
from .grouping import entropy_groups, high_group_size, trained_tokens
from .aggregation import aggregation_weights
from .metrics import espo_metrics, merge_metrics
from .objective import espo_loss
from .ratio import group_log_ratio, token_ratio
from .result import LossResult
from .surrogate import clipped_surrogate

__all__ = [
    "SPEC_VERSION",
    "__version__",
    "ESPOConfig",
    "ESPOInputError",
    "LossResult",
    "token_entropy",
    "entropy_groups",
    "high_group_size",
    "trained_tokens",
    "group_clip_eps",
    "clip_bounds",
    "group_log_ratio",
    "token_ratio",
    "clipped_surrogate",
    "aggregation_weights",
    "grpo_advantages",
    "espo_loss",
    "espo_metrics",
    "merge_metrics",
]

# --- baselines ---
from .aggregation import LOSS_AGG_MODES, agg_loss, agg_weights
from .config import BaselineConfig, CISPOConfig, DAPOConfig, GMPOConfig, GRPOConfig, GSPOConfig
from .baselines import (
    cispo_loss,
    dapo_loss,
    gmpo_loss,
    grpo_loss,
    gspo_loss,
)

__all__ += ["LOSS_AGG_MODES", "agg_loss", "agg_weights", "BaselineConfig", "GRPOConfig", "DAPOConfig", "GSPOConfig", "GMPOConfig", "CISPOConfig", "grpo_loss", "dapo_loss", "gspo_loss", "gmpo_loss", "cispo_loss"]
# --- end baselines ---
