"""The objectives ``--algo`` chooses from: each algorithm's loss in the torch mirror
(``espo_ref.torch``) and the builder of its configuration from a TrainConfig [ESPO-OBJ].

Importing this module imports torch (the trainer's modules do; ``config`` stays cheap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from .._validate_once import check_built_batch
from ..baselines import CISPOConfig, DAPOConfig, GMPOConfig, GRPOConfig, GSPOConfig
from ..config import ESPOConfig
from ..torch import cispo_loss, dapo_loss, espo_loss, gmpo_loss, grpo_loss, gspo_loss
from .config import DEFAULT, TrainConfig

ESPO_ONLY = ("alpha", "top_fraction", "grouping", "eps_reading", "ratio_form", "clip", "drop_low_group")


def _shared_options(config: TrainConfig) -> dict[str, Any]:
    """The loss options every algorithm takes, where the run sets them (None: the default)."""
    options: dict[str, Any] = {}
    if config.log_ratio_clamp != DEFAULT:
        options["log_ratio_clamp"] = config.log_ratio_clamp
    for name in ("eps_low", "eps_high"):
        if getattr(config, name) is not None:
            options[name] = getattr(config, name)
    return options


def espo_config(config: TrainConfig, vocab_size: int) -> ESPOConfig:
    """[ESPO-CONFIG] ESPOConfig with ``vocab_size`` = the model's vocabulary."""
    options = _shared_options(config)
    options.update({name: getattr(config, name) for name in ESPO_ONLY if getattr(config, name) is not None})
    if config.loss_agg_mode is not None:
        raise ValueError("loss_agg_mode is a baseline option; ESPO aggregates by [ESPO-AGG]")
    return ESPOConfig(vocab_size=vocab_size, **options)


def baseline_config(cls: type, config: TrainConfig, vocab_size: int):
    """The baseline's ``cls`` (GSPOConfig, ...); ESPO's options are refused. ``vocab_size``
    is unused (the baselines take no entropy)."""
    given = [name for name in ESPO_ONLY if getattr(config, name) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} only apply to --algo espo, not {config.algo}")
    options = _shared_options(config)
    if config.loss_agg_mode is not None:
        options["loss_agg_mode"] = config.loss_agg_mode
    if "log_ratio_clamp" in options and not hasattr(cls(), "log_ratio_clamp"):
        raise ValueError(f"log_ratio_clamp does not apply to {config.algo}")
    return cls(**options)


@dataclass(frozen=True)
class Loss:
    """One ``--algo``: its loss function and the builder of its configuration."""

    fn: Callable                   # espo_ref.torch.<algo>_loss
    config: Callable               # (TrainConfig, vocab_size) -> the loss's config
    # ESPO: the old policy's token entropies are an input [ESPO-ENT-DOMAIN]
    takes_entropy: bool = field(default=False, kw_only=True)


LOSSES: dict[str, Loss] = {
    "espo": Loss(espo_loss, espo_config, takes_entropy=True),
    "gspo": Loss(gspo_loss, partial(baseline_config, GSPOConfig)),
    "grpo": Loss(grpo_loss, partial(baseline_config, GRPOConfig)),
    "dapo": Loss(dapo_loss, partial(baseline_config, DAPOConfig)),
    "gmpo": Loss(gmpo_loss, partial(baseline_config, GMPOConfig)),
    "cispo": Loss(cispo_loss, partial(baseline_config, CISPOConfig)),
}


def loss_config(config: TrainConfig, vocab_size: int):
    """The reference's loss configuration for ``config.algo``: ESPOConfig with
    ``vocab_size`` = the model's vocabulary ([ESPO-CONFIG]), or the baseline's config."""
    return LOSSES[config.algo].config(config, vocab_size)


def _batch_inputs(loss: Loss, entropy, mask, advantages, config) -> tuple:
    """The loss's arguments after ``old_logp``: the entropy for ESPO only."""
    return (entropy, mask, advantages, config) if loss.takes_entropy else (mask, advantages, config)


def compute_loss(algo: str, logp, old_logp, entropy, mask, advantages, config, *, validate: bool = True):
    """[ESPO-OBJ] The objective's LossResult on a mini-batch: ``espo_loss(logp, old_logp,
    entropy, mask, advantages, config)`` (old-policy entropy in), or a baseline's
    ``<algo>_loss(logp, old_logp, mask, advantages, config)``. ``validate=False``: the loss
    makes no checks (and no host sync); the trainer checks the batch once (``check_batch``)."""
    loss = LOSSES[algo]
    return loss.fn(logp, old_logp, *_batch_inputs(loss, entropy, mask, advantages, config), validate=validate)


def check_batch(algo: str, old_logp, entropy, mask, advantages, config) -> None:
    """[ESPO-INPUT] The checks ``compute_loss(..., validate=True)`` makes, once, on a step's whole
    batch where it is built (old_logp, entropy, mask, advantages): an ESPOInputError naming the
    argument and its position in the batch (``espo_ref._validate_once.check_built_batch``)."""
    loss = LOSSES[algo]
    check_built_batch(loss.fn, old_logp, *_batch_inputs(loss, entropy, mask, advantages, config))
