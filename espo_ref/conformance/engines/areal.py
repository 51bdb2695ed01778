"""[CONF-PEERS] AReaL's own PPO actor loss: ``areal.utils.functional.functional:ppo_actor_loss_fn``
(measured on areal 1.0.4; ``areal-1.0.4.txt`` beside this module lists the cases it makes fail,
each with its [BASE-PEERS] row in specs/baselines.md, "AReaL 1.0.4").

AReaL has one policy loss for PPO, GRPO, DAPO (clip-higher), the dual clip and GSPO. The adapter
calls that real function as AReaL's trainer does (``areal.trainer.ppo.actor.grpo_loss_fn``):
``ppo_actor_loss_fn(logprobs=logp, proximal_logprobs=old_logp, old_logprobs=old_logp,
advantages=A [B, T], eps_clip=, loss_mask=mask as bool, eps_clip_higher=, c_clip=,
rejection_sampling=None, importance_sampling_level=)`` and differentiates the loss it returns
(the first element of ``(loss, stat)``). The ratio is ``logprobs / proximal_logprobs``;
``old_logprobs`` is read only by rejection sampling (off), so the case's ``old_logp`` goes in both,
detached (AReaL computes them without gradient). The mask goes in as ``bool`` (AReaL's
``torch.where`` refuses a float mask; its trainer calls ``.bool()``), a per-response advantage
broadcast over the response's tokens (AReaL's advantages are per token). 2-D padded tensors,
so no ``cu_seqlens``.

Our options onto AReaL's (specs/baselines.md [BASE-PEERS], "AReaL 1.0.4"):

* ``eps_low`` -> ``eps_clip``; ``eps_high`` -> ``eps_clip_higher`` (always given, so AReaL's
  "None = eps_clip" never applies); ``dual_clip=c`` -> ``c_clip=c``, ``dual_clip=None`` ->
  ``c_clip=None`` (AReaL's dual clip is off by default: nothing to turn off).
* ``grpo_loss``, ``dapo_loss`` -> ``importance_sampling_level="token"``; ``gspo_loss`` (either
  ``level``) -> ``"sequence"``, AReaL's GSPO (the sequence form; the token form has no AReaL
  setting, and its value, and its gradient with a per-response advantage, are the same: row
  ``gspo-level``). An unknown ``level`` goes through as ``importance_sampling_level`` for AReaL's
  own check to refuse.
* ``loss_agg_mode``: ``token-mean`` only (AReaL divides the masked sum by the batch's response
  tokens; its trainer weights micro-batches by token count, a global token mean). Every
  ``seq-mean-*`` mode is unsupported, and so with it ``max_len``.
* ``log_ratio_clamp``: AReaL has no clamp (rows ``token-clamp``, ``gspo-clamp``).
* GMPO, CISPO: AReaL has neither (its other loss, ``sapo_loss_fn``, is SAPO).
"""

from __future__ import annotations

import functools
from typing import Any

from ..adapters import register
from ..errors import SetupError
from ..golden import GoldenCase
from . import EngineAdapter

ENGINE = "areal"
DISTRIBUTION = "areal"
ENVIRONMENT = ".venv-areal"  # built by tests/peers/setup_areal.sh (AReaL declares torch < 2.11 and 80 requirements)
PPO_ACTOR_LOSS = "areal.utils.functional.functional:ppo_actor_loss_fn"
AREAL_FUNCTIONS = ("grpo_loss", "dapo_loss", "gspo_loss")
# [CONF-MATRIX] (our function, AReaL's callable, adapter): the rows of the conformance matrix
MATRIX = tuple((function, PPO_ACTOR_LOSS, "areal") for function in AREAL_FUNCTIONS)

# our function -> AReaL's importance_sampling_level (GSPO's level through LEVELS)
IMPORTANCE_SAMPLING_LEVELS = {"grpo_loss": "token", "dapo_loss": "token", "gspo_loss": "sequence"}
# our GSPO level -> AReaL's importance_sampling_level: AReaL has the sequence form only
LEVELS = {"token": "sequence", "sequence": "sequence"}
# our config field -> AReaL's keyword (dual_clip=None is c_clip=None: AReaL's dual clip is off by default)
OPTIONS = {"eps_low": "eps_clip", "eps_high": "eps_clip_higher", "dual_clip": "c_clip"}
# our loss_agg_mode -> what AReaL computes: its loss is a token mean, nothing else
LOSS_AGG_MODES = {"token-mean": "token-mean"}


@functools.lru_cache(maxsize=None)
def _import_areal():
    """AReaL's loss module, imported once per process (the conformance package imports without AReaL)."""
    try:
        import areal.utils.functional.functional as module
    except ImportError as exc:
        raise SetupError("--adapter areal needs areal 1.0.4 and what its loss module imports "
                         f"(bash tests/peers/setup_areal.sh builds .venv-areal): {exc}") from None
    return module


def areal_options(function: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The keyword options of ``ppo_actor_loss_fn`` for a case of ``function`` with our config ``fields``."""
    from ..functions import FUNCTIONS

    ours = FUNCTIONS[function].raw_config(fields)
    level = IMPORTANCE_SAMPLING_LEVELS[function]
    if function == "gspo_loss":
        level = LEVELS.get(ours.level, ours.level)  # an unknown level: AReaL's own check refuses it
    options = {theirs: getattr(ours, field) for field, theirs in OPTIONS.items() if hasattr(ours, field)}
    return {**options, "importance_sampling_level": level}


@register("areal")
class ArealAdapter(EngineAdapter):
    """AReaL's ``ppo_actor_loss_fn`` (see the module docstring); loss and gradient are compared."""

    engine, distribution, functions = "areal", "areal", AREAL_FUNCTIONS
    checks, title = "AReaL's PPO actor loss", "AReaL"

    def load(self, impl) -> None:
        _import_areal()

    @staticmethod
    def unsupported(function: str, config: dict, kwargs: dict) -> str | None:
        from ..functions import FUNCTIONS

        if function not in AREAL_FUNCTIONS:
            return None
        mode = FUNCTIONS[function].raw_config(config).loss_agg_mode
        if mode not in LOSS_AGG_MODES:
            return f"loss_agg_mode={mode} (AReaL's loss is a token mean only)"
        return None

    def run(self, case: GoldenCase) -> dict[str, Any]:
        import torch

        t = self.tensors(case, attach_constants=False)  # AReaL's proximal/old log-probs carry no gradient
        mask = t["mask"].to(torch.bool)  # as AReaL's grpo_loss_fn passes it
        adv = t["advantages"]
        if adv.dim() == 1:
            adv = adv[:, None].expand(mask.shape).contiguous()
        old = t["old_logp"].detach()
        options = areal_options(case.function, case.config or {})
        out = self.impl(logprobs=t["logp"], proximal_logprobs=old, old_logprobs=old, advantages=adv,
                        loss_mask=mask, rejection_sampling=None, **options)
        loss = out[0] if isinstance(out, (tuple, list)) else out
        return {"loss": self.scalar(loss), "grad": self.grad(loss, t["logp"])}
