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
from .objective import aggregation_weights, clipped_surrogate, espo_loss, token_ratio
from .ratio import group_log_ratio
from .result import LossResult

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
]

# --- baselines ---
from .aggregation import LOSS_AGG_MODES, agg_loss, agg_weights
from .baselines import (
    BaselineConfig,
    CISPOConfig,
    DAPOConfig,
    GMPOConfig,
    GRPOConfig,
    GSPOConfig,
    cispo_loss,
    dapo_loss,
    gmpo_loss,
    grpo_loss,
    gspo_loss,
)

__all__ += ["LOSS_AGG_MODES", "agg_loss", "agg_weights", "BaselineConfig", "GRPOConfig", "DAPOConfig", "GSPOConfig", "GMPOConfig", "CISPOConfig", "grpo_loss", "dapo_loss", "gspo_loss", "gmpo_loss", "cispo_loss"]
# --- end baselines ---
