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

    def raw_config(self, config: dict | None):
        """The config object with the case's values set *without* running its checks (an
        invalid value reaches the implementation, whose own validation is then tested)."""
        if self.config_class is None or config is None:
            return None
        import dataclasses

        obj = object.__new__(self.config_class)
        for f in dataclasses.fields(self.config_class):
            value = config.get(f.name, f.default)
            if value is dataclasses.MISSING:
                continue
            if f.name == "entropy_edges" and isinstance(value, list):
                value = tuple(value)
            object.__setattr__(obj, f.name, value)
        return obj


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

# Per-token outputs of a loss result that a case may hold. Every metric of the reference is
# stored; those an implementation returns are compared.
LOSS_TOKEN_FIELDS = ("groups", "eps", "log_ratio", "ratio", "clipped_high", "clipped_low", "weight", "grad")
# The fields every loss case compares unless the user narrows the check (--fields).
LOSS_CORE_FIELDS = ("loss", "grad")

# The order in which fields are computed: the first field that fails names the suspect
# clauses (a wrong grouping makes everything after it wrong too).
FIELD_ORDER = ("n_high", "entropy", "advantages", "groups", "eps", "log_ratio", "ratio",
               "clipped_high", "clipped_low", "weight", "loss", "grad", "metrics")
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
    "weight": ("ESPO-AGG", "BASE-AGG"),
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


# Option fields: a value other than the default is a reading a partial implementation may not
# offer (the case "requires" it). Other fields (alpha, top_fraction, eps_low, ...) are
# hyperparameters every implementation takes. A value of None means "any non-None value".
OPTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "espo_loss": {"grouping": "top_fraction", "eps_reading": "group_mean", "ratio_form": "gspo_token",
                  "clip": "adaptive", "drop_low_group": False, "log_ratio_clamp": None},
    "entropy_groups": {"grouping": "top_fraction"},
    "group_clip_eps": {"grouping": "top_fraction", "eps_reading": "group_mean"},
    "grpo_loss": {"dual_clip": None, "loss_agg_mode": None, "max_len": None, "log_ratio_clamp": None},
    "dapo_loss": {"dual_clip": None, "loss_agg_mode": None, "max_len": None, "log_ratio_clamp": None},
    "gspo_loss": {"level": "token", "loss_agg_mode": None, "max_len": None, "log_ratio_clamp": None},
    "gmpo_loss": {"loss_agg_mode": None, "max_len": None},
    "cispo_loss": {"loss_agg_mode": None, "max_len": None, "log_ratio_clamp": None},
    "grpo_advantages": {"ddof": 1},
}


def required_options(function: str, config: dict | None, kwargs: dict | None) -> list[str]:
    """[CONF-LEVELS] The options a case needs beyond the defaults, as ``field=value`` (empty: a core case).

    ``log_ratio_clamp`` counts only when set to None (no clamp); the value of the clamp is a
    hyperparameter. ``dual_clip`` and ``max_len`` count when set at all.
    """
    given = {**(config or {}), **(kwargs or {})}
    spec = FUNCTIONS[function]
    defaults = {}
    if spec.config_class is not None:
        import dataclasses

        defaults = {f.name: f.default for f in dataclasses.fields(spec.config_class)}
    out = []
    for name, default in OPTION_DEFAULTS.get(function, {}).items():
        if name not in given:
            continue
        value = given[name]
        if name == "log_ratio_clamp":
            needed = value is None
        elif name in ("dual_clip", "max_len"):
            needed = value is not None
        else:
            default = defaults.get(name, default) if default is None else default
            needed = value != default
        if needed:
            out.append(f"{name}={value}")
    return out


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
        out["metrics"] = {k: float(v) for k, v in result.metrics.items()}
        return out
    if cfg is not None:
        args.append(cfg)
    return {spec.output: fn(*args, **kwargs)}
