"""The ``"espo"`` policy loss for verl 0.9.1, the wrapper that hands it the old entropy, and the
engine hook that validates each mini-batch once and logs its metrics over all its tokens."""

from __future__ import annotations

import contextvars
import functools
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from verl.trainer.ppo.core_algos import register_policy_loss
from verl.utils.metric import AggregationType, Metric
from verl.workers.config.actor import PolicyLossConfig
from verl.workers.utils import losses as _verl_losses

from ..._validate_once import check_built_batch, nan_unless_finite
from ...config import ESPOConfig
from ...errors import ESPOInputError
from ...metrics import merge_metrics
from ...torch import espo_loss
from ...torch import merge_metrics as merge_device_metrics

# verl's own ppo_loss, captured before install() replaces the name in engine_workers
_VERL_PPO_LOSS = _verl_losses.ppo_loss

#: batch key written by the v0 wrapper of RayPPOTrainer._compute_old_log_prob
OLD_ENTROPY = "espo_old_entropy"
#: keys the wrapper looks for, in order: ours (v0), then v1's "entropy" (stored with old_log_probs)
ENTROPY_KEYS = (OLD_ENTROPY, "entropy")

_DEFAULTS = ESPOConfig(vocab_size=2)

#: the old entropy of the current micro-batch ([B, T] like response_mask), set by espo_ppo_loss
_OLD_ENTROPY_VAR: contextvars.ContextVar[Optional[torch.Tensor]] = contextvars.ContextVar(
    "espo_old_entropy", default=None
)



@dataclass
class _MiniBatch:
    """What the loss leaves, per micro-batch, for the engine's train_batch of one mini-batch."""

    metrics: list  # each micro-batch's espo_loss metrics (device totals, unread)
    losses: list  # each micro-batch's loss, detached


#: the mini-batch the engine is training on, set by the train_batch hook (None: a direct call)
_MINI_BATCH_VAR: contextvars.ContextVar[Optional[_MiniBatch]] = contextvars.ContextVar(
    "espo_mini_batch", default=None
)

_ENABLE_HINT = (
    "ESPO needs the old policy's per-token entropy at the sampling temperature. Import "
    "espo_ref.integrations.verl in every worker process before the actor is built (it installs "
    "espo_ref.integrations.verl.espo_ppo_loss as verl.workers.engine_workers.ppo_loss, which passes the "
    f"micro-batch's {' or '.join(repr(k) for k in ENTROPY_KEYS)} to the loss), and recompute old log-probs "
    "(rollout_correction.bypass_mode=False: bypass mode uses the rollout log-probs and computes no old entropy); "
    "or call compute_policy_loss_espo(..., old_entropy=...) directly."
)


@dataclass
class ESPOPolicyLossConfig(PolicyLossConfig):
    """verl's PolicyLossConfig plus ESPO's hyperparameters (``espo_<ESPOConfig field>``), loss_mode "espo".

    ``espo_vocab_size`` None reads ``actor.model_config.hf_config.vocab_size``.
    """

    loss_mode: str = "espo"
    espo_alpha: float = _DEFAULTS.alpha
    espo_top_fraction: float = _DEFAULTS.top_fraction
    espo_grouping: str = _DEFAULTS.grouping
    espo_entropy_edges: tuple = _DEFAULTS.entropy_edges
    espo_drop_low_group: bool = _DEFAULTS.drop_low_group
    espo_clip: str = _DEFAULTS.clip
    espo_eps_low: float = _DEFAULTS.eps_low
    espo_eps_high: float = _DEFAULTS.eps_high
    espo_eps_reading: str = _DEFAULTS.eps_reading
    espo_ratio_form: str = _DEFAULTS.ratio_form
    espo_log_ratio_clamp: Optional[float] = _DEFAULTS.log_ratio_clamp
    espo_entropy_tolerance: float = _DEFAULTS.entropy_tolerance
    espo_vocab_size: Optional[int] = None


_FIELDS = ("alpha", "top_fraction", "grouping", "entropy_edges", "drop_low_group", "clip", "eps_low", "eps_high",
           "eps_reading", "ratio_form", "log_ratio_clamp", "entropy_tolerance")


def _policy_loss_config(config: Any) -> Any:
    """The policy-loss config of an ActorConfig (or the policy-loss config itself)."""
    pl = config.get("policy_loss", None) if hasattr(config, "get") else getattr(config, "policy_loss", None)
    return config if pl is None else pl


def _vocab_size(config: Any) -> int:
    pl = _policy_loss_config(config)
    vocab = pl.get("espo_vocab_size", None) if hasattr(pl, "get") else getattr(pl, "espo_vocab_size", None)
    if vocab is None:
        try:
            vocab = config.model_config.hf_config.vocab_size
        except AttributeError:
            vocab = None
    if vocab is None:
        raise ESPOInputError(
            "ESPO needs the vocabulary size V (its clip range is alpha * entropy / log V): set "
            "actor.policy_loss.espo_vocab_size, or give the actor a model_config with hf_config.vocab_size"
        )
    return vocab


def to_espo_config(actor_config: Any, vocab_size: int | None = None) -> ESPOConfig:
    """The ESPOConfig of an ActorConfig whose policy_loss is an ESPOPolicyLossConfig (or of that
    policy-loss config, or any mapping with the ``espo_*`` keys; missing keys take ESPOConfig's defaults).
    ``vocab_size`` None reads espo_vocab_size, then model_config.hf_config.vocab_size."""
    pl = _policy_loss_config(actor_config)
    get = pl.get if hasattr(pl, "get") else (lambda k, d=None: getattr(pl, k, d))
    values = {}
    for name in _FIELDS:
        value = get(f"espo_{name}", getattr(_DEFAULTS, name))
        if name == "entropy_edges" and value is not None and not isinstance(value, tuple):
            value = tuple(value)  # hydra hands a ListConfig
        values[name] = value
    return ESPOConfig(vocab_size=_vocab_size(actor_config) if vocab_size is None else vocab_size, **values)


def _espo_config(config: Any) -> ESPOConfig:
    if config is None:
        raise ESPOInputError("compute_policy_loss_espo needs config (verl's ActorConfig with an ESPOPolicyLossConfig)")
    cfg = to_espo_config(config)
    info = getattr(config, "global_batch_info", None) or {}
    if cfg.grouping == "batch_top_fraction" and info.get("global_batch_size") is not None:
        # one call on a whole batch (no global batch size: a direct call) may rank it; a
        # micro-batch of verl's gradient accumulation may not
        raise ESPOInputError(
            "espo_grouping='batch_top_fraction' ranks the tokens of the whole mini-batch, but verl computes the "
            "loss per micro-batch (and per data-parallel rank): use 'top_fraction', 'entropy_ranges', 'none' or 'token'"
        )
    return cfg


@register_policy_loss("espo")
def compute_policy_loss_espo(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "seq-mean-token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
    old_entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """[ESPO-OBJ] as verl's policy loss ``"espo"``: ``espo_ref.torch.espo_loss`` on a micro-batch.

    ``old_entropy`` [B, T]: the old policy's entropy at each response position (None: the one
    :func:`espo_ppo_loss` set for this micro-batch). ``loss_agg_mode`` is ignored: ESPO's
    aggregation is [ESPO-AGG]. Advantages may be per token [B, T] (verl's) or per response [B].

    Scaling to verl's gradient accumulation: with G = ``config.global_batch_info["global_batch_size"]``
    (responses in the mini-batch over all data-parallel ranks) and dp its ``"dp_size"``, the returned
    loss is ``espo_loss * N_m * dp / G`` with N_m the responses of this micro-batch with a response
    token; summed over micro-batches and averaged over ranks this is the mean over the mini-batch's
    responses, which equals espo_loss of the whole mini-batch when no response is empty (G counts
    empty responses, [ESPO-AGG]'s N does not). When G is None the loss is espo_loss of the micro-batch.

    Called directly, it validates its inputs (``espo_loss(..., validate=True)``) and returns the
    call's metrics [ESPO-METRICS] as ``actor/espo_<key>`` floats. Inside verl's update (the
    engine's ``train_batch``, hooked by :func:`install`) the mini-batch was validated once, so each
    micro-batch calls ``espo_loss(..., validate=False)`` (a non-finite current ``log_prob`` makes
    the loss NaN, see :func:`espo_train_batch`) and leaves its metrics to the hook, which logs the
    mini-batch's over all its tokens.
    """
    cfg = _espo_config(config)
    if rollout_is_weights is not None:
        raise ESPOInputError(
            "the ESPO loss does not apply rollout importance-sampling weights: set "
            "algorithm.rollout_correction.rollout_is=null (or use another loss_mode)"
        )
    if old_entropy is None:
        old_entropy = _OLD_ENTROPY_VAR.get()
    if old_entropy is None:
        raise ESPOInputError("no old entropy reached the ESPO loss. " + _ENABLE_HINT)
    mask = response_mask.bool()
    n_m = int(mask.any(dim=1).sum())  # a host sync (verl reads each micro-batch's loss anyway)
    info = getattr(config, "global_batch_info", None) or {}
    global_batch_size = info.get("global_batch_size")
    mini_batch = _MINI_BATCH_VAR.get()
    if n_m == 0 and global_batch_size is not None:
        # a micro-batch of empty responses inside a mini-batch contributes nothing; a direct call
        # on a batch without a response token is an error ([ESPO-AGG]), raised by espo_loss
        return (log_prob * 0.0).sum(), {}
    result = espo_loss(log_prob, old_log_prob, old_entropy, mask, advantages, cfg, validate=mini_batch is None)
    loss = result.loss if mini_batch is None else nan_unless_finite(result.loss, log_prob, mask)
    dp_size = info.get("dp_size", 1) or 1
    if global_batch_size is None:
        if dp_size > 1:
            raise ESPOInputError("global_batch_info['global_batch_size'] is required when dp_size > 1")
    else:
        loss = loss * (n_m * dp_size / global_batch_size)
    if mini_batch is not None:
        mini_batch.metrics.append(result.metrics)
        mini_batch.losses.append(loss.detach())
        return loss, {}
    metrics = {}
    for key, value in result.metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics[f"actor/espo_{key}"] = float(value)
    return loss, metrics


def _entropy_key(data) -> str | None:
    return next((key for key in ENTROPY_KEYS if key in data.keys()), None)


def _padded(data, *keys: str) -> dict[str, torch.Tensor]:
    """``keys`` of a (micro- or mini-) batch padded like its response_mask ([B, T]), and the mask."""
    padded = data.select("response_mask", *keys).to_padded_tensor()
    width = padded["response_mask"].shape[-1]
    out = {"response_mask": padded["response_mask"]}
    for key in keys:
        value = padded[key]
        if value.shape[-1] > width:
            value = value[..., :width]
        elif value.shape[-1] < width:
            value = torch.nn.functional.pad(value, (0, width - value.shape[-1]))
        out[key] = value.detach()
    return out


def _old_entropy_of(data) -> torch.Tensor | None:
    """The micro-batch's old entropy, padded like its response_mask ([B, T])."""
    key = _entropy_key(data)
    return None if key is None else _padded(data, key)[key]


def check_float32_entropy(config: Any) -> None:
    """Refuse an FSDP actor whose old-log-prob pass computes the entropy from bf16 logits.

    verl's FSDP engine computes the entropy from the logits in the model's compute dtype unless
    ``entropy_from_logits_with_chunking`` is set (which upcasts each chunk to float32). Measured on
    CPU with verl 0.9.1's own functions, V = 151936: bf16 logits give entropies off by 0.1 to 0.23
    nat (and exact zeros where the true entropy is positive); the chunked path stays within 1e-3.
    ESPO ranks and clips by that entropy ([ESPO-ENT-DOMAIN]), so the plugin asks for the float32 path.
    """
    strategy = getattr(config, "strategy", None)
    chunked = getattr(config, "entropy_from_logits_with_chunking", None)
    if strategy in ("fsdp", "fsdp2") and chunked is False:
        raise ESPOInputError(
            "ESPO needs the old entropy in float32, but this FSDP actor computes it from the logits in the "
            "model's dtype (bf16 under mixed precision: off by tenths of a nat): set "
            "actor_rollout_ref.actor.entropy_from_logits_with_chunking=True"
        )


def espo_ppo_loss(config, model_output, data, dp_group=None):
    """verl's ``ppo_loss`` that, for loss_mode "espo", hands the micro-batch's old entropy to the loss."""
    if _policy_loss_config(config).get("loss_mode", "vanilla") != "espo":
        return _VERL_PPO_LOSS(config, model_output, data, dp_group=dp_group)
    check_float32_entropy(config)
    token = _OLD_ENTROPY_VAR.set(_old_entropy_of(data))
    try:
        return _VERL_PPO_LOSS(config, model_output, data, dp_group=dp_group)
    finally:
        _OLD_ENTROPY_VAR.reset(token)


def _espo_actor_config(loss_function) -> Any:
    """The actor config of a worker's loss function when it is :func:`espo_ppo_loss` with loss_mode
    "espo" (``partial(ppo_loss, config=...)``, as the worker binds it), else None."""
    if not (isinstance(loss_function, functools.partial) and loss_function.func is espo_ppo_loss):
        return None
    config = loss_function.keywords.get("config")
    if config is None or _policy_loss_config(config).get("loss_mode", "vanilla") != "espo":
        return None
    return config


def check_mini_batch(data, config: Any) -> None:
    """[ESPO-INPUT] A mini-batch's ESPO inputs, checked once before its micro-batches (which call
    espo_loss with validate=False): old log-probs, old entropy, response mask and advantages, with
    espo_loss's checks and messages (positions are the mini-batch's, padded)."""
    key = _entropy_key(data)
    if key is None:
        raise ESPOInputError("no old entropy reached the ESPO loss. " + _ENABLE_HINT)
    batch = _padded(data, "old_log_probs", "advantages", key)
    check_built_batch(espo_loss, batch["old_log_probs"], batch[key], batch["response_mask"].bool(),
                      batch["advantages"], to_espo_config(config))


def _over_ranks(mini_batch: _MiniBatch, group) -> tuple[dict[str, float] | None, int]:
    """[ESPO-METRICS] (the mini-batch's metrics over all its micro-batches and data-parallel ranks,
    None when no rank had a response token; the number of micro-batches whose loss was not finite):
    each rank's micro-batches merged on its device and read in one transfer, the ranks' merged with
    ``espo_ref.merge_metrics`` after one all_gather_object, as verl gathers its own metrics."""
    local = dict(merge_device_metrics(mini_batch.metrics)) if mini_batch.metrics else None
    bad = int(torch.stack([~torch.isfinite(loss) for loss in mini_batch.losses]).sum()) if mini_batch.losses else 0
    ranks = [(local, bad)]
    if group is not None and torch.distributed.is_initialized():
        ranks = [None] * torch.distributed.get_world_size(group=group)
        torch.distributed.all_gather_object(ranks, (local, bad), group=group)
    parts = [metrics for metrics, _ in ranks if metrics is not None]
    return (merge_metrics(parts) if parts else None), sum(count for _, count in ranks)


def espo_train_batch(original):
    """verl's engine ``train_batch`` (one mini-batch: its micro-batches' forward and backward, one
    optimizer step) for loss_mode "espo": the mini-batch validated once before its micro-batches
    (:func:`check_mini_batch`), and its metrics logged once after them, over all its tokens on all
    data-parallel ranks, as ``actor/espo_<key>``: counts are totals, fractions and means
    token-weighted, a micro-batch with an empty entropy bucket left out of that bucket's values
    [ESPO-METRICS]. (verl averages a policy loss's metrics over the micro-batches, then over the
    ranks, and gives the loss no count of the mini-batch's entropy buckets: the loss alone cannot
    weight them.) A micro-batch whose loss was not finite (its current log_prob, not checked per
    micro-batch, was not finite, or the loss overflowed; the gradient is NaN too, and verl's FSDP
    engine skips such an update) raises ESPOInputError after the mini-batch. Other losses: as verl."""

    @functools.wraps(original)
    def train_batch(self, data, loss_function):
        config = _espo_actor_config(loss_function)
        if config is None:
            return original(self, data, loss_function)
        check_mini_batch(data, config)
        mini_batch = _MiniBatch(metrics=[], losses=[])
        token = _MINI_BATCH_VAR.set(mini_batch)
        try:
            outputs = original(self, data, loss_function)
        finally:
            _MINI_BATCH_VAR.reset(token)
        metrics, bad = _over_ranks(mini_batch, self.get_data_parallel_group())
        if bad:
            raise ESPOInputError(
                f"the ESPO loss of {bad} micro-batch(es) of this mini-batch is not finite: the current policy's "
                "log_prob (not checked per micro-batch) is not finite at a response token, or the loss overflowed "
                "(the mini-batch's old log-probs, old entropy, mask and advantages were checked)")
        if metrics is not None and outputs is not None and self.is_mp_src_rank_with_outputs():
            outputs["metrics"].update({f"actor/espo_{key}": Metric(AggregationType.MEAN, value)
                                       for key, value in metrics.items()})
        return outputs

    train_batch._espo_wrapped = True
    return train_batch


def _trainer_uses_espo(trainer: Any) -> bool:
    """Whether a RayPPOTrainer's actor loss is "espo" (True when its config cannot be read)."""
    try:
        return trainer.config.actor_rollout_ref.actor.policy_loss.loss_mode == "espo"
    except AttributeError:
        return True


def _wrap_compute_old_log_prob(original):
    @functools.wraps(original)
    def compute_old_log_prob(self, batch):
        out = original(self, batch)
        if not _trainer_uses_espo(self):  # other losses: the batch stays as verl makes it
            return out
        old, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
        entropys = old.batch.get("entropys", None) if old.batch is not None else None
        if entropys is not None:
            old.batch[OLD_ENTROPY] = entropys.clone()
        return (old, *rest) if isinstance(out, tuple) else old

    compute_old_log_prob._espo_wrapped = True
    return compute_old_log_prob


def install() -> dict[str, bool]:
    """Idempotently make verl's workers call :func:`espo_ppo_loss` (and its engines' ``train_batch``
    :func:`espo_train_batch`), and have the v0 trainer keep the old entropy (as
    ``"espo_old_entropy"``). Returns what was patched."""
    done = {"engine_workers": False, "engine": False, "ray_trainer": False}
    try:
        import verl.workers.engine_workers as engine_workers
        from verl.workers.engine.base import BaseEngine
    except ImportError:  # verl's worker dependencies (ray, uvicorn, ...) are missing: no worker can run here
        return done
    engine_workers.ppo_loss = espo_ppo_loss
    done["engine_workers"] = True
    if not getattr(BaseEngine.train_batch, "_espo_wrapped", False):
        BaseEngine.train_batch = espo_train_batch(BaseEngine.train_batch)
    done["engine"] = True
    try:
        from verl.trainer.ppo.ray_trainer import RayPPOTrainer
    except ImportError:  # the v0 trainer cannot run here anyway
        return done
    current = RayPPOTrainer._compute_old_log_prob
    if not getattr(current, "_espo_wrapped", False):
        RayPPOTrainer._compute_old_log_prob = _wrap_compute_old_log_prob(current)
    done["ray_trainer"] = True
    return done
