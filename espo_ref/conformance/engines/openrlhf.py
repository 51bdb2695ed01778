"""[CONF-PEERS] OpenRLHF's own policy loss: ``openrlhf.models.loss:PolicyLoss`` (measured on openrlhf
0.11.2; ``openrlhf-0.11.2.txt`` beside this module lists the cases it makes fail, each with its
[BASE-PEERS] row in specs/baselines.md; another version is refused by name).

``PolicyLoss`` is an ``nn.Module``. The adapter builds the real one from the case's config,
``PolicyLoss(clip_eps_low=, clip_eps_high=, dual_clip=, token_level_loss=, policy_loss_type=)``
(importance-sampling correction off, its default), and calls it as OpenRLHF's actor trainer does
(``ActorPPOTrainer.training_step``): ``loss_fn(log_probs, old_log_probs, advantages,
action_mask=, rollout_log_probs=None, **get_loss_batch_info(strategy, action_mask))``, with the
normalisers of OpenRLHF's own ``openrlhf.utils.loss_utils.get_loss_batch_info`` (one process:
``dp_size`` 1, ``batch_num_tokens`` = the batch's response tokens, ``global_batch_size`` = its
responses with a token). The mask goes in as bool (the trainer's ``Experience.action_mask`` is a
BoolTensor), the advantages per token ([B, T], as the trainer's), the old log-probabilities
detached. The first of the five returned values is the loss; loss and gradient are compared.

Our options onto OpenRLHF's (specs/baselines.md [BASE-PEERS], subsection OpenRLHF 0.11.2):

* ``grpo_loss``, ``dapo_loss`` -> ``policy_loss_type="ppo"``, ``clip_eps_low`` / ``clip_eps_high`` =
  ``eps_low`` / ``eps_high``, ``dual_clip`` = ``dual_clip`` (None: off, OpenRLHF's default).
  OpenRLHF clamps the log-ratio to [-20, 20], fixed: another ``log_ratio_clamp`` is unsupported.
* ``gspo_loss`` -> ``policy_loss_type="gspo"``: the sequence form without a clamp, a per-sample
  mean (OpenRLHF forces it); our token form and our default clamp at 10 are run and differ where
  [BASE-PEERS] rows ``gspo-level`` / ``gspo-clamp`` say; a clamp other than 10 or None (OpenRLHF's
  own) is unsupported.
* ``loss_agg_mode``: ``token-mean`` -> ``token_level_loss=True``; ``seq-mean-token-mean`` ->
  ``token_level_loss=False`` (OpenRLHF's ``--actor.loss_agg_mode`` offers these two);
  ``seq-mean-token-sum`` and ``seq-mean-token-sum-norm`` (and so ``max_len``) are unsupported, as
  is any mode but ``seq-mean-token-mean`` for GSPO.
* GMPO, CISPO: OpenRLHF has neither (a setup error naming it).

The engine is imported on first use, once per worker process (this module imports without it);
its environment (``bash tests/peers/setup_openrlhf.sh``) carries a stand-in ``flash_attn`` that
``openrlhf.models`` imports and ``PolicyLoss`` never calls (tests/peers/ENGINES.md).
"""

from __future__ import annotations

from typing import Any

from ..adapters import implementation_code, register
from ..errors import SetupError
from ..golden import GoldenCase
from . import EngineAdapter

ENGINE = "openrlhf"
DISTRIBUTION = "openrlhf"
ENVIRONMENT = ".venv-openrlhf"  # built by tests/peers/setup_openrlhf.sh (stand-in flash_attn, deepspeed on CPU)
POLICY_LOSS = "openrlhf.models.loss:PolicyLoss"
# [CONF-MATRIX] (our function, OpenRLHF's callable, adapter): the rows of the conformance matrix
MATRIX = tuple((function, POLICY_LOSS, "openrlhf") for function in ("grpo_loss", "dapo_loss", "gspo_loss"))

OPENRLHF_FUNCTIONS = ("grpo_loss", "dapo_loss", "gspo_loss")
POLICY_LOSS_TYPES = {"grpo_loss": "ppo", "dapo_loss": "ppo", "gspo_loss": "gspo"}
# our loss_agg_mode -> PolicyLoss(token_level_loss=...), as OpenRLHF's trainer maps --actor.loss_agg_mode
TOKEN_LEVEL_LOSS = {"token-mean": True, "seq-mean-token-mean": False}
LOG_RATIO_CLAMP = 20.0  # PolicyLoss("ppo") clamps log r to [-20, 20], not configurable
GSPO_CLAMP = 10.0  # our GSPO default, run against OpenRLHF's unclamped gspo ([BASE-PEERS] gspo-clamp)


def before_import() -> None:
    """[CONF-PEERS] Run by the runner before it imports OpenRLHF: deepspeed's accelerator said, not
    detected (else every run prints its "Setting accelerator to CPU" warning)."""
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _loss_batch_info():
    """OpenRLHF's ``get_loss_batch_info`` (imported once per process, with the engine)."""
    try:
        from openrlhf.utils.loss_utils import get_loss_batch_info
    except ImportError as exc:
        raise SetupError(f"--adapter openrlhf needs openrlhf 0.11.2 and what it imports "
                         f"(bash tests/peers/setup_openrlhf.sh): {exc}") from None
    return get_loss_batch_info


def policy_loss_options(function: str, config: dict) -> dict[str, Any]:
    """The ``PolicyLoss`` keyword arguments for a case of ``function`` with our config ``config``."""
    from ..functions import FUNCTIONS

    ours = FUNCTIONS[function].raw_config(config)
    return {"clip_eps_low": ours.eps_low, "clip_eps_high": ours.eps_high,
            "dual_clip": getattr(ours, "dual_clip", None),
            "token_level_loss": TOKEN_LEVEL_LOSS[ours.loss_agg_mode],
            "policy_loss_type": POLICY_LOSS_TYPES[function]}


@register("openrlhf")
class OpenRLHFAdapter(EngineAdapter):
    """OpenRLHF's ``PolicyLoss`` (see the module docstring); loss and gradient are compared."""

    engine, distribution, functions = "openrlhf", DISTRIBUTION, OPENRLHF_FUNCTIONS
    checks, title = "OpenRLHF's PolicyLoss", "OpenRLHF"

    def load(self, impl) -> None:
        self.loss_batch_info = _loss_batch_info()

    @staticmethod
    def unsupported(function: str, config: dict, kwargs: dict) -> str | None:
        from ..functions import FUNCTIONS

        if function not in OPENRLHF_FUNCTIONS:
            return None
        ours = FUNCTIONS[function].raw_config(config)
        mode = ours.loss_agg_mode
        if function == "gspo_loss" and mode != "seq-mean-token-mean":
            return f"loss_agg_mode={mode} (OpenRLHF's gspo is a per-sample mean, token_level_loss forced off)"
        if mode not in TOKEN_LEVEL_LOSS:
            return f"loss_agg_mode={mode} (OpenRLHF aggregates by token-mean or seq-mean-token-mean only)"
        if function != "gspo_loss" and ours.log_ratio_clamp != LOG_RATIO_CLAMP:
            return (f"log_ratio_clamp={ours.log_ratio_clamp} (OpenRLHF's ppo loss clamps the log-ratio at "
                    f"[-20, 20], fixed)")
        if function == "gspo_loss" and ours.log_ratio_clamp not in (GSPO_CLAMP, None):
            return (f"log_ratio_clamp={ours.log_ratio_clamp} (OpenRLHF's gspo does not clamp the sequence "
                    f"log-ratio)")
        return None

    def run(self, case: GoldenCase) -> dict[str, Any]:
        import torch

        t = self.tensors(case, attach_constants=False)  # the trainer's old log-probs carry no gradient
        mask = t["mask"].to(torch.bool)  # Experience.action_mask is a BoolTensor
        adv = t["advantages"]
        if adv.dim() == 1:
            adv = adv[:, None].expand(mask.shape).contiguous()  # the trainer's advantages are per token
        options = policy_loss_options(case.function, case.config or {})
        loss_fn = self.impl(**options)  # PolicyLoss's own checks (dual_clip > 1) are the engine's
        with implementation_code():
            info = self.loss_batch_info(None, mask)  # one process: no dp group, dp_size 1
            out = loss_fn(t["logp"], t["old_logp"].detach(), adv, action_mask=mask, rollout_log_probs=None, **info)
        loss = out[0] if isinstance(out, (tuple, list)) else out
        return {"loss": self.scalar(loss), "grad": self.grad(loss, t["logp"])}
