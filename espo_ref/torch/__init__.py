"""espo_ref.torch: the torch backend, a line-for-line mirror of the numpy core.

Same function names, arguments and order as ``espo_ref``; same ESPOConfig, LossResult and
ESPOInputError (with the same messages). It adds vectorised tensor code, autograd through
Eq. 9's stop-gradients, CUDA, and a keyword-only ``validate`` on the functions whose checks
read tensor values (each such check is a host-device sync; ``validate=False`` skips them).
Inputs in float64 are computed in float64; float32, bfloat16 and float16 in float32.
"""

from ..config import ESPOConfig
from ..errors import ESPOInputError
from ..result import LossResult
from .advantage import grpo_advantages
from .aggregation import aggregation_weights
from .clipping import clip_bounds, group_clip_eps
from .entropy import token_entropy
from .grouping import entropy_groups, high_group_size, trained_tokens
from .metrics import DeviceMetrics, espo_metrics, merge_metrics
from .objective import espo_loss
from .ratio import group_log_ratio, token_ratio
from .surrogate import clipped_surrogate

__all__ = [
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
    "DeviceMetrics",
]

# --- baselines ---
from ..config import BaselineConfig, CISPOConfig, DAPOConfig, GMPOConfig, GRPOConfig, GSPOConfig
from .aggregation import LOSS_AGG_MODES, agg_loss, agg_weights
from .baselines import cispo_loss, dapo_loss, gmpo_loss, grpo_loss, gspo_loss

__all__ += ["LOSS_AGG_MODES", "agg_loss", "agg_weights", "BaselineConfig", "GRPOConfig", "DAPOConfig",
            "GSPOConfig", "GMPOConfig", "CISPOConfig", "grpo_loss", "dapo_loss", "gspo_loss", "gmpo_loss",
            "cispo_loss"]
# --- end baselines ---

# --- log-probabilities and entropies from hidden states (Eq. 6 without materialised logits) ---
from .logprob_entropy import token_logprobs_and_entropy, token_logprobs_and_entropy_from_logits

__all__ += ["token_logprobs_and_entropy", "token_logprobs_and_entropy_from_logits"]
