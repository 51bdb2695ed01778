"""[CONF-PEERS] SkyRL's own policy losses, two releases side by side in one environment (``.venv-skyrl``,
``bash tests/peers/setup_skyrl.sh``): skyrl-train 0.3.1 (``skyrl_train.utils.ppo_utils``, adapter
``skyrl-train``) and skyrl 0.4.0 (``skyrl.backends.skyrl_train.utils.ppo_utils``, adapter ``skyrl``).
``skyrl-0.3.1.txt`` and ``skyrl-0.4.0.txt`` beside this module list the cases each makes fail, each
with its [BASE-PEERS] row in specs/baselines.md; another release is refused by name.

The callables (both releases): ``ppo_policy_loss`` (``policy_loss_type`` ``regular``, or ``dual_clip``),
``gspo_policy_loss`` (GSPO-token) and ``compute_policy_loss_cispo``, each called as SkyRL's worker
calls it: ``fn(log_probs, old_log_probs, advantages, config=, loss_mask=, rollout_logprobs=None)``,
log-probabilities and advantages ``[B, T]`` in the case's dtype (advantages ``[B]`` expanded along T),
the old log-probabilities and advantages without gradient, and the loss mask as float32 0/1 (SkyRL's
``convert_prompts_responses_to_batch_tensors`` builds it so). The loss is the first element of the
returned pair. SkyRL has no GMPO. SkyRL's loguru messages are switched off in the worker (its gspo warns
on every call outside ``sequence_mean``; a log line, not part of the loss).

* skyrl-train 0.3.1 reduces inside the loss (``reduce_loss``). Its config is the shipped
  ``skyrl_train/config/ppo_base_config.yaml`` ``trainer.algorithm`` section (an OmegaConf DictConfig,
  as Hydra gives the worker) with the case's options set.
* skyrl 0.4.0 returns the plain masked sum ``(loss * loss_mask).sum()``: its trainer folds the reduction
  into the advantages beforehand, per mini-batch. The adapter does the same with SkyRL's own
  ``apply_loss_reduction_to_advantages_minibatch(advantages, loss_mask, loss_reduction,
  micro_batch_size=B, max_seq_len)`` (one mini-batch, one process: the worker's ``dp_size`` factor
  is 1), then calls the loss. Its config is a real ``skyrl.train.config.AlgorithmConfig`` (with
  ``CISPOConfig``). On Python < 3.12, skyrl 0.4.0 imports only after ``typing.TypedDict =
  typing_extensions.TypedDict`` (pydantic refuses ``typing.TypedDict`` there); the adapter does it
  before its own import of the config.

Our options onto SkyRL's (specs/baselines.md [BASE-PEERS], subsection SkyRL):

* ``grpo_loss``, ``dapo_loss`` -> ``policy_loss_type="regular"`` (no dual clip); ``dual_clip=c`` ->
  ``"dual_clip"`` with ``clip_ratio_c=c``; ``eps_low``, ``eps_high`` -> ``eps_clip_low``,
  ``eps_clip_high``. ``gspo_loss`` -> ``"gspo"`` with the same epsilons. ``cispo_loss`` -> ``"cispo"``
  with ``cispo.cispo_eps_clip_low/high`` = eps_low/eps_high (offsets, as ours).
* ``loss_agg_mode`` -> ``loss_reduction``: ``token-mean`` -> ``token_mean``; ``seq-mean-token-mean`` ->
  ``sequence_mean``; ``seq-mean-token-sum-norm`` -> ``seq_mean_token_sum_norm`` with ``max_seq_len`` =
  ``max_len`` (None: T); ``seq-mean-token-sum`` -> ``seq_mean_token_sum_norm`` with ``max_seq_len=1``.
* Not offered (declared by ``unsupported``): a ``log_ratio_clamp`` other than SkyRL's fixed ones
  ([-20, 20] for the token ratio, 10 above for GSPO's sequence ratio), and GSPO ``level="sequence"``
  (SkyRL has GSPO-token only).
"""

from __future__ import annotations

import sys
from typing import Any

from ..adapters import implementation_code, register
from ..errors import SetupError
from ..golden import GoldenCase
from . import EngineAdapter

ENGINE = "skyrl"
DISTRIBUTION = "skyrl"  # skyrl 0.4.0; the skyrl-train 0.3.1 rows name their own distribution
ENVIRONMENT = ".venv-skyrl"  # built by tests/peers/setup_skyrl.sh (both releases, shared torch)
TRAIN_PPO = "skyrl_train.utils.ppo_utils"  # skyrl-train 0.3.1
SKYRL_PPO = "skyrl.backends.skyrl_train.utils.ppo_utils"  # skyrl 0.4.0
CALLABLES = {"grpo_loss": "ppo_policy_loss", "dapo_loss": "ppo_policy_loss", "gspo_loss": "gspo_policy_loss",
             "cispo_loss": "compute_policy_loss_cispo"}
# [CONF-MATRIX] (our function, SkyRL's callable, adapter, distribution): the rows of the conformance matrix
MATRIX = tuple((function, f"{TRAIN_PPO}:{name}", "skyrl-train", "skyrl-train") for function, name in CALLABLES.items()) \
    + tuple((function, f"{SKYRL_PPO}:{name}", "skyrl", "skyrl") for function, name in CALLABLES.items())

SKYRL_FUNCTIONS = tuple(CALLABLES)
POLICY_LOSS_TYPES = {"grpo_loss": "regular", "dapo_loss": "regular", "gspo_loss": "gspo", "cispo_loss": "cispo"}
LOSS_REDUCTIONS = {"token-mean": "token_mean", "seq-mean-token-mean": "sequence_mean",
                   "seq-mean-token-sum": "seq_mean_token_sum_norm", "seq-mean-token-sum-norm": "seq_mean_token_sum_norm"}
FIXED_CLAMPS = {"grpo_loss": 20.0, "dapo_loss": 20.0, "cispo_loss": 20.0, "gspo_loss": 10.0}  # SkyRL's, not settable


def skyrl_options(function: str, config: dict, T: int) -> dict[str, Any]:
    """SkyRL's algorithm options for a case of ``function`` with our config ``config`` and width T."""
    from ..functions import FUNCTIONS

    ours = FUNCTIONS[function].raw_config(config)
    mode = ours.loss_agg_mode
    max_len = getattr(ours, "max_len", None)
    dual = getattr(ours, "dual_clip", None)
    options = {"policy_loss_type": POLICY_LOSS_TYPES[function], "loss_reduction": LOSS_REDUCTIONS.get(mode, mode),
               "eps_clip_low": 0.2, "eps_clip_high": 0.2, "clip_ratio_c": 3.0, "max_seq_len": None,
               "cispo_eps_clip_low": 1.0, "cispo_eps_clip_high": 4.0}
    if function == "cispo_loss":
        options.update(cispo_eps_clip_low=ours.eps_low, cispo_eps_clip_high=ours.eps_high)
    else:
        options.update(eps_clip_low=ours.eps_low, eps_clip_high=ours.eps_high)
    if dual is not None:
        options.update(policy_loss_type="dual_clip", clip_ratio_c=dual)
    if mode == "seq-mean-token-sum":
        options["max_seq_len"] = 1  # a token sum per response, averaged over the batch
    elif mode == "seq-mean-token-sum-norm":
        options["max_seq_len"] = max_len if max_len is not None else T
    return options


# --- the engine, imported once per worker process --------------------------------------------

_LOADED: dict[str, Any] = {}


def _quiet(package: str) -> None:
    """SkyRL's gspo logs a loguru warning on every call outside sequence_mean: not part of the loss."""
    try:
        from loguru import logger
    except ImportError:
        return
    logger.disable(package)


def _typed_dict_for_pydantic() -> None:
    """skyrl 0.4.0 on Python < 3.12: pydantic accepts typing_extensions.TypedDict only (skyrl.tinker.types)."""
    if sys.version_info < (3, 12):
        import typing

        import typing_extensions

        typing.TypedDict = typing_extensions.TypedDict


def before_import() -> None:
    """[CONF-PEERS] Run by the runner before it imports a SkyRL callable: the TypedDict shim."""
    _typed_dict_for_pydantic()


def _skyrl_train_config():
    """skyrl-train 0.3.1: the shipped trainer.algorithm defaults (OmegaConf)."""
    if "skyrl-train" not in _LOADED:
        try:
            from importlib.resources import files

            from omegaconf import OmegaConf

            import skyrl_train.config

            shipped = files(skyrl_train.config) / "ppo_base_config.yaml"
            _LOADED["skyrl-train"] = OmegaConf.create(OmegaConf.to_container(OmegaConf.load(shipped).trainer.algorithm))
        except ImportError as exc:
            raise SetupError(f"--adapter skyrl-train needs skyrl-train 0.3.1 (bash tests/peers/setup_skyrl.sh): {exc}") \
                from None
    return _LOADED["skyrl-train"]


def _skyrl_modules():
    """skyrl 0.4.0: (AlgorithmConfig, CISPOConfig, apply_loss_reduction_to_advantages_minibatch)."""
    if "skyrl" not in _LOADED:
        _typed_dict_for_pydantic()
        try:
            from skyrl.backends.skyrl_train.utils.ppo_utils import apply_loss_reduction_to_advantages_minibatch
            from skyrl.train.config import AlgorithmConfig, CISPOConfig
        except ImportError as exc:
            raise SetupError(f"--adapter skyrl needs skyrl 0.4.0 (bash tests/peers/setup_skyrl.sh): {exc}") from None
        _LOADED["skyrl"] = (AlgorithmConfig, CISPOConfig, apply_loss_reduction_to_advantages_minibatch)
    return _LOADED["skyrl"]


def skyrl_train_config(options: dict):
    """skyrl-train 0.3.1's algorithm config (OmegaConf) with ``options`` set."""
    from omegaconf import OmegaConf

    fields = {k: v for k, v in options.items() if not k.startswith("cispo_")}
    fields["cispo"] = {"cispo_eps_clip_low": options["cispo_eps_clip_low"],
                       "cispo_eps_clip_high": options["cispo_eps_clip_high"]}
    return OmegaConf.merge(_skyrl_train_config(), fields)


def skyrl_config(options: dict):
    """skyrl 0.4.0's ``AlgorithmConfig`` with ``options`` set."""
    AlgorithmConfig, CISPOConfig, _ = _skyrl_modules()
    fields = {k: v for k, v in options.items() if not k.startswith("cispo_")}
    return AlgorithmConfig(**fields, cispo=CISPOConfig(cispo_eps_clip_low=options["cispo_eps_clip_low"],
                                                       cispo_eps_clip_high=options["cispo_eps_clip_high"]))


class _SkyRLAdapter(EngineAdapter):
    """A SkyRL policy loss (see the module docstring); loss and gradient are compared."""

    engine, distribution, functions = "skyrl", "skyrl", SKYRL_FUNCTIONS
    checks, title = "SkyRL's policy losses", "SkyRL"
    module = SKYRL_PPO

    def load(self, impl) -> None:
        where = getattr(getattr(impl, "fn", impl), "__module__", "") or ""
        other = SKYRL_PPO if self.module == TRAIN_PPO else TRAIN_PPO
        if where.startswith(other.split(".", 1)[0] + "."):
            raise SetupError(f"--adapter {self.name} calls {self.module}; {where} is the other SkyRL release "
                             f"(--adapter {'skyrl' if other == SKYRL_PPO else 'skyrl-train'})")
        self.load_release()

    def load_release(self) -> None:
        raise NotImplementedError

    @staticmethod
    def unsupported(function: str, config: dict, kwargs: dict) -> str | None:
        """[CONF-PEERS] The option of a valid case that SkyRL cannot be set to, in words; None otherwise."""
        from ..functions import FUNCTIONS

        if function not in SKYRL_FUNCTIONS:
            return None  # refused at setup
        try:
            ours = FUNCTIONS[function].config_class.from_dict(dict(config or {}))
        except ValueError:
            return None  # an invalid option: run it, SkyRL's own checks (or their absence) are measured
        if function == "gspo_loss" and ours.level != "token":
            return f"level={ours.level} (SkyRL's gspo is GSPO-token only)"
        if ours.log_ratio_clamp != FIXED_CLAMPS[function]:
            where = "GSPO's sequence log-ratio above at 10" if function == "gspo_loss" else \
                "the token log-ratio to [-20, 20]"
            return f"log_ratio_clamp={ours.log_ratio_clamp} (SkyRL clamps {where}, fixed)"
        return None

    def inputs(self, case: GoldenCase):
        import torch

        t = self.tensors(case, attach_constants=False)  # SkyRL's worker passes old log-probs and advantages without grad
        mask = t["mask"].to(torch.float32)  # SkyRL's loss_mask: float32 0/1
        adv = t["advantages"]
        if adv.dim() == 1:
            adv = adv[:, None].expand(mask.shape).contiguous()
        return t["logp"], t["old_logp"], adv, mask

    def loss_of(self, out):
        return out[0] if isinstance(out, (tuple, list)) else out


@register("skyrl-train")
class SkyRLTrainAdapter(_SkyRLAdapter):
    """skyrl-train 0.3.1: the loss reduces inside (``reduce_loss``)."""

    distribution = "skyrl-train"
    module = TRAIN_PPO

    def load_release(self) -> None:
        _skyrl_train_config()
        _quiet("skyrl_train")

    def run(self, case: GoldenCase) -> dict[str, Any]:
        logp, old, adv, mask = self.inputs(case)
        config = skyrl_train_config(skyrl_options(case.function, case.config or {}, mask.shape[1]))
        loss = self.loss_of(self.impl(logp, old, adv, config=config, loss_mask=mask, rollout_logprobs=None))
        return {"loss": self.scalar(loss), "grad": self.grad(loss, logp)}


@register("skyrl")
class SkyRLBackendAdapter(_SkyRLAdapter):
    """skyrl 0.4.0: the reduction is folded into the advantages by SkyRL's trainer function first."""

    distribution = "skyrl"
    module = SKYRL_PPO

    def load_release(self) -> None:
        _skyrl_modules()
        _quiet("skyrl")

    def run(self, case: GoldenCase) -> dict[str, Any]:
        logp, old, adv, mask = self.inputs(case)
        options = skyrl_options(case.function, case.config or {}, mask.shape[1])
        config = skyrl_config(options)
        *_, scale = _skyrl_modules()
        with implementation_code():  # SkyRL's own code: what it raises is the engine's
            adv = scale(adv, mask, options["loss_reduction"], micro_batch_size=mask.shape[0],
                        max_seq_len=options["max_seq_len"])
        loss = self.loss_of(self.impl(logp, old, adv, config=config, loss_mask=mask, rollout_logprobs=None))
        return {"loss": self.scalar(loss), "grad": self.grad(loss, logp)}
