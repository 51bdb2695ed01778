"""[CONF-PEERS] Adapters for verl's own functions (checked against verl 0.9.1; specs/baselines.md
[BASE-PEERS] explains every difference, and ``verl-0.9.1.txt`` beside this module lists the cases
it makes fail; another verl version is refused by name).

``verl``: a policy loss of ``verl.trainer.ppo.core_algos`` (``compute_policy_loss_vanilla``
for grpo_loss and dapo_loss, ``_gspo``, ``_geo_mean`` for gmpo_loss, ``_cispo``), called with
verl's keyword signature ``fn(old_log_prob=, log_prob=, advantages=, response_mask=,
loss_agg_mode=, config=ActorConfig)``. The ActorConfig is a real one, built from the case's
config with each method's defaults: ``clip_ratio_low/high`` = eps_low/high, the dual clip off
by a ``clip_ratio_c`` of 1e9 (verl asserts c > 1 and has no "off"), ``max_len`` as
``global_batch_info["loss_scale_factor"]``. Advantages go in per token. ``espo_loss`` checks
ESPO's own verl loss (``espo_ref.integrations.verl``): its options go in an
``ESPOPolicyLossConfig`` and the old entropy in the ``old_entropy=`` keyword.

``verl-advantage``: ``compute_grpo_outcome_advantage(token_level_rewards=, response_mask=,
index=, epsilon=)`` against grpo_advantages. verl has no ``valid`` mask (every response is
scored) and no ``ddof`` (it uses ``torch.std``, Bessel's correction); a prompt with one
response keeps its raw score.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..adapters import Adapter, register
from ..errors import SetupError
from ..golden import GoldenCase
from . import EngineAdapter, known_differences

ENGINE = "verl"
DISTRIBUTION = "verl"
ENVIRONMENT = ".venv-verl"  # built by tests/peers/setup_verl.sh (verl pins transformers < 5.11)
CORE = "verl.trainer.ppo.core_algos"
# [CONF-MATRIX] (our function, verl's callable, adapter): the rows of the conformance matrix
MATRIX = (
    ("grpo_loss", f"{CORE}:compute_policy_loss_vanilla", "verl"),
    ("dapo_loss", f"{CORE}:compute_policy_loss_vanilla", "verl"),
    ("gspo_loss", f"{CORE}:compute_policy_loss_gspo", "verl"),
    ("gmpo_loss", f"{CORE}:compute_policy_loss_geo_mean", "verl"),
    ("cispo_loss", f"{CORE}:compute_policy_loss_cispo", "verl"),
    ("grpo_advantages", f"{CORE}:compute_grpo_outcome_advantage", "verl-advantage"),
)

VERL_POLICY_LOSSES = ("grpo_loss", "dapo_loss", "gspo_loss", "gmpo_loss", "cispo_loss", "espo_loss")
LOSS_MODES = {"grpo_loss": "vanilla", "dapo_loss": "vanilla", "gspo_loss": "gspo", "gmpo_loss": "geo_mean",
              "cispo_loss": "cispo", "espo_loss": "espo"}
DUAL_CLIP_OFF = 1e9  # verl asserts clip_ratio_c > 1; a c this large never binds


def _import_verl_config():
    try:
        from verl.workers.config import ActorConfig, PolicyLossConfig
    except ImportError as exc:
        raise SetupError(f"--adapter verl needs verl installed (pip install verl==0.9.1 and what it imports): {exc}") \
            from None
    return ActorConfig, PolicyLossConfig


def actor_config(function: str, fields: dict[str, Any]):
    """A real verl ActorConfig for a case of ``function`` with our config ``fields``."""
    from ..functions import FUNCTIONS

    ActorConfig, PolicyLossConfig = _import_verl_config()
    ours = FUNCTIONS[function].raw_config(fields)
    if function == "espo_loss":  # espo_ref.integrations.verl's loss: ESPO's options in the policy-loss config
        import dataclasses

        from ...integrations.verl import ESPOPolicyLossConfig

        options = {f"espo_{f.name}": getattr(ours, f.name) for f in dataclasses.fields(ours)
                   if f.name != "vocab_size" and hasattr(ours, f.name)}
        return ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1,
                           policy_loss=ESPOPolicyLossConfig(espo_vocab_size=getattr(ours, "vocab_size", None),
                                                            **options))
    dual = getattr(ours, "dual_clip", None)
    config = ActorConfig(
        strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1,
        clip_ratio=ours.eps_low, clip_ratio_low=ours.eps_low, clip_ratio_high=ours.eps_high,
        clip_ratio_c=DUAL_CLIP_OFF if dual is None else dual, loss_agg_mode=ours.loss_agg_mode,
        policy_loss=PolicyLossConfig(loss_mode=LOSS_MODES[function]))
    if ours.max_len is not None:
        config.global_batch_info["loss_scale_factor"] = ours.max_len
    return config


@register("verl")
class VerlAdapter(EngineAdapter):
    """A verl policy loss (see the module docstring); loss and gradient are compared."""

    engine, distribution, functions = "verl", "verl", VERL_POLICY_LOSSES
    checks = "verl's policy losses"

    def load(self, impl) -> None:
        _import_verl_config()

    @staticmethod
    def unsupported(function: str, config: dict, kwargs: dict) -> str | None:
        if function == "gspo_loss" and config.get("level", "token") == "sequence":
            return "level=sequence (verl's GSPO is the token form only)"
        return None

    def run(self, case: GoldenCase) -> dict[str, Any]:
        import torch

        t = self.tensors(case, attach_constants=False)  # verl's callers pass old_log_prob without grad
        mask = t["mask"].to(torch.bool)
        adv = t["advantages"]
        if adv.dim() == 1:
            adv = adv[:, None].expand(mask.shape).contiguous()
        config = actor_config(case.function, case.config or {})
        extra = {"old_entropy": t["entropy"]} if "entropy" in t else {}  # how the ESPO plugin receives it
        out = self.impl(old_log_prob=t["old_logp"], log_prob=t["logp"], advantages=adv, response_mask=mask,
                        loss_agg_mode=config.loss_agg_mode, config=config, **extra)
        loss = out[0] if isinstance(out, (tuple, list)) else out
        return {"loss": self.scalar(loss), "grad": self.grad(loss, t["logp"])}


@register("verl-advantage")
class VerlAdvantageAdapter(Adapter):
    """verl's compute_grpo_outcome_advantage against grpo_advantages (one token per response,
    the reward on it; the advantage read back from that token)."""

    backend_default = "torch"

    def __init__(self, impl, function: str, backend: str = "torch", device: str = "cpu"):
        self.known_differences = known_differences("verl", "verl")
        if function != "grpo_advantages":
            raise SetupError(f"--adapter verl-advantage checks grpo_advantages; got --function {function}")
        super().__init__(impl, function, "torch", device)

    def run(self, case: GoldenCase) -> dict[str, Any]:
        import torch

        rewards = torch.tensor(case.inputs["rewards"], dtype=torch.float64, device=self.device)[:, None]
        mask = torch.ones_like(rewards)
        index = np.array([str(i) for i in case.inputs["prompt_ids"]], dtype=object)
        out = self.impl(token_level_rewards=rewards, response_mask=mask, index=index,
                        epsilon=case.kwargs.get("eps", 1e-6))
        adv = out[0] if isinstance(out, (tuple, list)) else out
        return {"advantages": self.numpy(adv)[:, 0]}
