"""[CONF-PEERS] TRL's own GRPO loss: ``trl.trainer.grpo_trainer:GRPOTrainer._compute_loss`` (measured on
trl 1.16.0; ``trl-1.16.0.txt`` beside this module lists the cases it makes fail, each with its
[BASE-PEERS] row in specs/baselines.md).

TRL has no standalone loss function: the loss is computed inline by the trainer's
``_compute_loss(self, model, inputs)``. The adapter calls that real method, unbound, on a small
state object holding exactly the attributes the method reads (the loss type, the clip
epsilons, one process, no KL, no entropy mask, no vLLM correction, gradient accumulation 1),
whose ``_get_per_token_logps_and_entropies`` returns the case's ``logp`` (so the gradient flows
into it through TRL's own arithmetic). The old log-probabilities go in
``inputs["old_per_token_logps"]`` detached, as TRL's trainer computes them without gradient.

Our options onto TRL's (specs/baselines.md [BASE-PEERS]):

* ``loss_agg_mode``: ``token-mean`` -> ``loss_type="dapo"`` (normalised by ``num_items_in_batch``,
  here the batch's response tokens: one process, one accumulation step); ``seq-mean-token-mean``
  -> ``"grpo"``; ``seq-mean-token-sum-norm`` -> ``"dr_grpo"`` with ``max_completion_length`` =
  ``max_len`` (None: T); ``seq-mean-token-sum`` has no TRL loss type (unsupported).
* ``eps_low``, ``eps_high`` -> ``epsilon_low``, ``epsilon_high``; ``dual_clip=c`` -> ``args.delta=c``.
* GSPO -> ``importance_sampling_level="sequence"``; CISPO -> ``loss_type="cispo"`` with the
  absolute cap ``epsilon_high = 1 + eps_high`` (TRL has no lower bound: ``eps_low < 1`` is
  unsupported). GMPO: TRL has none.
"""

from __future__ import annotations

import types
from collections import defaultdict
from typing import Any

from ..adapters import register
from ..golden import GoldenCase
from . import EngineAdapter

ENGINE = "trl"
DISTRIBUTION = "trl"
ENVIRONMENT = None  # the project's own environment ([trl] extra, trl==1.16.0)
COMPUTE_LOSS = "trl.trainer.grpo_trainer:GRPOTrainer._compute_loss"
# [CONF-MATRIX] (our function, TRL's callable, adapter): the rows of the conformance matrix
MATRIX = tuple((function, COMPUTE_LOSS, "trl") for function in ("grpo_loss", "dapo_loss", "gspo_loss", "cispo_loss"))

TRL_FUNCTIONS = ("grpo_loss", "dapo_loss", "gspo_loss", "cispo_loss")
LOSS_TYPES = {"token-mean": "dapo", "seq-mean-token-mean": "grpo", "seq-mean-token-sum-norm": "dr_grpo"}


class _OneProcess:
    """accelerate's Accelerator as TRL's loss uses it, for one process."""

    num_processes = 1
    sync_gradients = True

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather

    @staticmethod
    def reduce(x, reduction="sum"):
        return x


def trl_state(function: str, config: dict, logp, max_completion_length: int):
    """The trainer attributes ``GRPOTrainer._compute_loss`` reads, for a case of ``function``."""
    from ..functions import FUNCTIONS

    ours = FUNCTIONS[function].raw_config(config)
    eps_low, eps_high = ours.eps_low, ours.eps_high
    loss_type = LOSS_TYPES[ours.loss_agg_mode]
    if function == "cispo_loss":
        loss_type, eps_high = "cispo", 1.0 + eps_high  # TRL's cap is absolute
    max_len = getattr(ours, "max_len", None)
    state = types.SimpleNamespace(
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high,
        importance_sampling_level="sequence" if function == "gspo_loss" else "token",
        beta=0.0, top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False,
        vllm_importance_sampling_correction=False, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        max_completion_length=max_len if max_len is not None else max_completion_length,
        current_gradient_accumulation_steps=1, model=types.SimpleNamespace(training=True),
        accelerator=_OneProcess(), _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        args=types.SimpleNamespace(delta=getattr(ours, "dual_clip", None), use_bias_correction_kl=False,
                                   steps_per_generation=1),
    )
    entropy = logp.detach() * 0.0  # logged by TRL, not part of the loss
    state._get_per_token_logps_and_entropies = lambda *args, **kwargs: (logp, entropy, None)
    return state


@register("trl")
class TRLAdapter(EngineAdapter):
    """TRL's ``GRPOTrainer._compute_loss`` (see the module docstring); loss and gradient are compared."""

    engine, distribution, functions = "trl", "trl", TRL_FUNCTIONS
    checks, title = "TRL's GRPO losses", "TRL"

    @staticmethod
    def unsupported(function: str, config: dict, kwargs: dict) -> str | None:
        mode = config.get("loss_agg_mode")
        if mode is not None and mode not in LOSS_TYPES and function != "cispo_loss":
            return f"loss_agg_mode={mode} (no TRL loss_type aggregates so)"
        if function == "cispo_loss":
            if config.get("loss_agg_mode", "token-mean") != "token-mean":
                return f"loss_agg_mode={config['loss_agg_mode']} (TRL's cispo is a token mean)"
            if config.get("eps_low", 1.0) < 1.0:
                return "eps_low < 1 (TRL's CISPO has no lower bound)"
        return None

    def run(self, case: GoldenCase) -> dict[str, Any]:
        import torch

        t = self.tensors(case, attach_constants=False)  # TRL computes the old log-probs without gradient
        mask = t["mask"].to(torch.bool)
        B, T = mask.shape
        state = trl_state(case.function, case.config or {}, t["logp"], T)
        inputs = {
            "prompt_ids": torch.zeros((B, 1), dtype=torch.long, device=self.device),
            "prompt_mask": torch.ones((B, 1), dtype=torch.long, device=self.device),
            "completion_ids": torch.zeros((B, T), dtype=torch.long, device=self.device),
            "completion_mask": mask.to(torch.long),
            "advantages": t["advantages"],
            "old_per_token_logps": t["old_logp"].detach(),
            "num_items_in_batch": mask.sum(),
        }
        loss = self.impl(state, None, inputs)
        return {"loss": self.scalar(loss), "grad": self.grad(loss, t["logp"])}
