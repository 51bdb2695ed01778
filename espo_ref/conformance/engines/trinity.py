"""[CONF-PEERS] Trinity-RFT's own policy losses (measured on trinity-rft 0.6.0; ``trinity-0.6.0.txt`` beside
this module lists the cases they make fail, each with its [BASE-PEERS] row in specs/baselines.md; another
Trinity-RFT version is refused by name).

The callables are the classes of Trinity's ``POLICY_LOSS_FN`` registry
(``trinity.algorithm.policy_loss_fn``): ``ppo_policy_loss:PPOPolicyLossFn`` (registry name ``ppo``; for
grpo_loss and dapo_loss: Trinity's GRPO and DAPO algorithms are ``ppo`` plus settings),
``gspo_policy_loss:GSPOLossFn`` (``gspo``) and ``cispo_policy_loss:CISPOPolicyLossFn`` (``cispo``).
Trinity has no GMPO (a setup error). The adapter does what Trinity's trainer does
(``trinity.trainer.verl.losses.TrinityPolicyLoss``): it builds the class with ``backend="verl"`` and the
case's options (the constructor's own checks are the engine's: an assert naming ``clip_ratio_c``), then
calls the instance as ``fn(logprob=logp, old_log_probs=old_logp, response_mask=mask, advantages=adv)``
(verl's names, which Trinity's key mapper renames) and takes the first element of the returned
``(loss, metrics)``. The mask goes in as bool (the trainer's ``response_mask.to(bool)``: with a float mask
Trinity's ``masked_mean`` adds 1e-8 to every count), the advantages per token ``[B, T]`` (a ``[B]`` one is
repeated along T, as verl's batch holds it), the old log-probabilities detached. Loss and gradient are
compared (Trinity's metrics have other names and definitions).

Our options onto Trinity's (specs/baselines.md [BASE-PEERS], subsection "Trinity-RFT 0.6.0"):

* ``eps_low``, ``eps_high`` -> ``clip_range_low``, ``clip_range_high`` (offsets in all three classes, as ours).
* ``loss_agg_mode`` -> ``loss_agg_mode``, the same four names (Trinity's ``aggregate_loss``); ``max_len``
  has no Trinity option (``seq-mean-token-sum-norm`` divides by the padded width T): unsupported.
* ``dual_clip=c`` -> ``clip_ratio_c=c``; ``dual_clip=None`` -> ``clip_ratio_c=1e9`` (``ppo`` always
  applies its dual clip and asserts c > 1; a c above every ratio, e^20 after the clamp, never binds).
* ``log_ratio_clamp``: ``ppo`` clamps the log-ratio to [-20, 20], fixed; ``gspo`` and ``cispo`` clamp
  nothing. Our default is always run (a difference it makes is a row); another value that Trinity cannot
  be set to (``ppo`` with 5 or None, ``gspo`` with 5) is unsupported.
* GSPO: ``level="token"`` is Trinity's ``gspo`` (the token form, no level option); ``level="sequence"``
  is unsupported.
* An invalid config (a dual clip of 1, an unknown level, ``max_len`` with token-mean) is run, so that
  Trinity's own checks, or their absence, are measured.
"""

from __future__ import annotations

from typing import Any

from ..adapters import implementation_code, register
from ..golden import GoldenCase
from . import EngineAdapter

ENGINE = "trinity"
DISTRIBUTION = "trinity-rft"
ENVIRONMENT = ".venv-trinity"  # built by tests/peers/setup_trinity.sh (trinity-rft==0.6.0 --no-deps)
PACKAGE = "trinity.algorithm.policy_loss_fn"
LOSS_CLASSES = {
    "grpo_loss": f"{PACKAGE}.ppo_policy_loss:PPOPolicyLossFn",
    "dapo_loss": f"{PACKAGE}.ppo_policy_loss:PPOPolicyLossFn",
    "gspo_loss": f"{PACKAGE}.gspo_policy_loss:GSPOLossFn",
    "cispo_loss": f"{PACKAGE}.cispo_policy_loss:CISPOPolicyLossFn",
}
# [CONF-MATRIX] (our function, Trinity's callable, adapter): the rows of the conformance matrix
MATRIX = tuple((function, callable_, "trinity") for function, callable_ in LOSS_CLASSES.items())

# our loss_agg_mode -> Trinity's (aggregate_loss has the same four names)
LOSS_AGG_MODES = {"token-mean": "token-mean", "seq-mean-token-mean": "seq-mean-token-mean",
                  "seq-mean-token-sum": "seq-mean-token-sum", "seq-mean-token-sum-norm": "seq-mean-token-sum-norm"}
# the log-ratio clamp each Trinity class applies, fixed (None: none)
TRINITY_CLAMP = {"grpo_loss": 20.0, "dapo_loss": 20.0, "gspo_loss": None, "cispo_loss": None}
DUAL_CLIP_OFF = 1e9  # Trinity's ppo asserts clip_ratio_c > 1 and always applies it; a c this large never binds
MASK_DTYPE = "bool"  # TrinityPolicyLoss passes response_mask.to(bool) (a float mask adds 1e-8 to every count)


def trinity_args(function: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of Trinity's loss class for a case of ``function`` with our config ``fields``
    (built without our checks: an invalid value reaches Trinity)."""
    from ..functions import FUNCTIONS

    ours = FUNCTIONS[function].raw_config(fields)
    args: dict[str, Any] = {"backend": "verl", "clip_range_low": ours.eps_low, "clip_range_high": ours.eps_high,
                            "loss_agg_mode": LOSS_AGG_MODES.get(ours.loss_agg_mode, ours.loss_agg_mode)}
    if function in ("grpo_loss", "dapo_loss"):
        dual = getattr(ours, "dual_clip", None)
        args["clip_ratio_c"] = DUAL_CLIP_OFF if dual is None else dual
    elif function == "cispo_loss":
        args["enable_mask_clip"] = False  # the masking variant is another algorithm (off by default)
    return args


@register("trinity")
class TrinityAdapter(EngineAdapter):
    """A Trinity-RFT policy-loss class (see the module docstring); loss and gradient are compared."""

    engine, distribution, functions = "trinity", DISTRIBUTION, tuple(LOSS_CLASSES)
    checks, title = "Trinity-RFT's policy losses", "Trinity"

    @staticmethod
    def unsupported(function: str, config: dict, kwargs: dict) -> str | None:
        """[CONF-PEERS] The option of a valid case that Trinity cannot be set to, in words; None otherwise."""
        from ..functions import FUNCTIONS

        if function not in LOSS_CLASSES:
            return None  # refused at setup
        cls = FUNCTIONS[function].config_class
        try:
            ours = cls.from_dict(dict(config or {}))
        except ValueError:
            return None  # an invalid option: run, Trinity's own checks (or their absence) are measured
        if ours.max_len is not None:
            return (f"max_len={ours.max_len} (Trinity's seq-mean-token-sum-norm divides by the padded width T; "
                    "no option sets it)")
        if function == "gspo_loss" and ours.level != "token":
            return f"level={ours.level} (Trinity's gspo is the token form only)"
        clamp, fixed = ours.log_ratio_clamp, TRINITY_CLAMP[function]
        if clamp != cls().log_ratio_clamp and clamp != fixed:
            what = "clamps the log-ratio to [-20, 20], fixed" if fixed is not None else "has no log-ratio clamp"
            name = "ppo" if function in ("grpo_loss", "dapo_loss") else function.removesuffix("_loss")
            return f"log_ratio_clamp={clamp} (Trinity's {name} {what})"
        return None

    def run(self, case: GoldenCase) -> dict[str, Any]:
        import torch

        t = self.tensors(case, attach_constants=False)  # Trinity's trainer computes old_log_probs without grad
        mask = t["mask"].to(getattr(torch, MASK_DTYPE))  # as TrinityPolicyLoss passes it
        adv = t["advantages"]
        if adv.dim() == 1:
            adv = adv[:, None].expand(mask.shape).contiguous()
        loss_fn = self.impl(**trinity_args(case.function, case.config or {}))  # the engine's constructor
        with implementation_code():
            out = loss_fn(logprob=t["logp"], old_log_probs=t["old_logp"].detach(), response_mask=mask,
                          advantages=adv)
        loss = out[0] if isinstance(out, (tuple, list)) else out
        return {"loss": self.scalar(loss), "grad": self.grad(loss, t["logp"])}
