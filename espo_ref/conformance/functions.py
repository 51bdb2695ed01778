"""The functions the golden cases exercise: their inputs, config class and outputs.

This table is what lets one case format serve every function of the reference, and what
an adapter reads to call a foreign implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import espo_ref


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    inputs: tuple[str, ...]
    config_class: Any  # a config dataclass, or None
    kwargs: tuple[str, ...] = ()
    output: str | None = None  # the array output of a component function; None for losses

    @property
    def is_loss(self) -> bool:
        return self.output is None

    def reference(self) -> Callable:
        return getattr(espo_ref, self.name)

    def make_config(self, config: dict | None):
        if self.config_class is None or config is None:
            return None
        return self.config_class.from_dict(config)


_TOKEN_LOSS = ("logp", "old_logp", "mask", "advantages")

FUNCTIONS: dict[str, FunctionSpec] = {
    "espo_loss": FunctionSpec("espo_loss", ("logp", "old_logp", "entropy", "mask", "advantages"), espo_ref.ESPOConfig),
    "grpo_loss": FunctionSpec("grpo_loss", _TOKEN_LOSS, espo_ref.GRPOConfig),
    "dapo_loss": FunctionSpec("dapo_loss", _TOKEN_LOSS, espo_ref.DAPOConfig),
    "gspo_loss": FunctionSpec("gspo_loss", _TOKEN_LOSS, espo_ref.GSPOConfig),
    "gmpo_loss": FunctionSpec("gmpo_loss", _TOKEN_LOSS, espo_ref.GMPOConfig),
    "cispo_loss": FunctionSpec("cispo_loss", _TOKEN_LOSS, espo_ref.CISPOConfig),
    "token_entropy": FunctionSpec("token_entropy", ("logits",), None, ("temperature",), "entropy"),
    "high_group_size": FunctionSpec("high_group_size", ("lengths",), None, ("top_fraction",), "n_high"),
    "entropy_groups": FunctionSpec("entropy_groups", ("entropy", "mask"), espo_ref.ESPOConfig, (), "groups"),
    "group_clip_eps": FunctionSpec("group_clip_eps", ("entropy", "groups"), espo_ref.ESPOConfig, (), "eps"),
    "group_log_ratio": FunctionSpec("group_log_ratio", ("logp", "old_logp", "groups"), None, (), "log_ratio"),
    "grpo_advantages": FunctionSpec("grpo_advantages", ("rewards", "prompt_ids", "valid"), None, ("ddof", "eps"), "advantages"),
}

# Per-token outputs of a loss result that a case may hold, and the metrics compared.
LOSS_TOKEN_FIELDS = ("groups", "eps", "log_ratio", "ratio", "clipped_high", "clipped_low", "grad")
COMPARED_METRICS = ("tokens", "clipfrac", "clipfrac_high", "clipfrac_low")

# The order in which fields are computed: the first field that fails names the suspect
# clauses (a wrong grouping makes everything after it wrong too).
FIELD_ORDER = ("n_high", "entropy", "advantages", "groups", "eps", "log_ratio", "ratio",
               "clipped_high", "clipped_low", "loss", "grad", "metrics")
FIELD_CLAUSES: dict[str, tuple[str, ...]] = {
    "n_high": ("ESPO-GROUP-TOPFRAC",),
    "entropy": ("ESPO-ENT",),
    "advantages": ("ESPO-ADV",),
    "groups": ("ESPO-GROUP",),
    "eps": ("ESPO-CLIP",),
    "log_ratio": ("ESPO-RATIO", "BASE-"),
    "ratio": ("ESPO-RATIO", "BASE-"),
    "clipped_high": ("ESPO-CLIPMASK", "BASE-"),
    "clipped_low": ("ESPO-CLIPMASK", "BASE-"),
    "loss": ("ESPO-OBJ", "ESPO-AGG", "BASE-"),
    "grad": ("ESPO-RATIO-TOKEN", "ESPO-RATIO-LITERAL", "ESPO-RATIO-CLAMP", "ESPO-AGG", "BASE-"),
    "metrics": ("ESPO-METRICS", "BASE-METRICS"),
}


def _in_family(clause: str, family: str) -> bool:
    """ESPO-CLIP's family is ESPO-CLIP and ESPO-CLIP-*, not ESPO-CLIPMASK; "BASE-" is every BASE clause."""
    return clause.startswith(family) if family.endswith("-") else (clause == family or clause.startswith(family + "-"))


def suspects(failed_fields: list[str], case_clauses: list[str]) -> list[str]:
    """The clauses a failure points at: those of the case that match its first failed field."""
    for field_name in FIELD_ORDER:
        if field_name in failed_fields:
            families = FIELD_CLAUSES[field_name]
            named = [c for c in case_clauses if any(_in_family(c, f) for f in families)]
            return named or list(case_clauses)
    return list(case_clauses)


def reference_outputs(spec: FunctionSpec, inputs: dict[str, np.ndarray], config: dict | None,
                      kwargs: dict) -> dict[str, Any]:
    """Expected outputs of the numpy reference for a case (losses: loss, grad, fields, metrics)."""
    fn = spec.reference()
    args = [inputs[name] for name in spec.inputs]
    cfg = spec.make_config(config)
    if spec.is_loss:
        result = fn(*args, cfg)
        out: dict[str, Any] = {"loss": float(result.loss), "grad": result.grad}
        for name in LOSS_TOKEN_FIELDS:
            value = getattr(result, name, None)
            if value is not None and name != "grad":
                out[name] = value
        out["metrics"] = {k: float(result.metrics[k]) for k in COMPARED_METRICS if k in result.metrics}
        return out
    if cfg is not None:
        args.append(cfg)
    return {spec.output: fn(*args, **kwargs)}
