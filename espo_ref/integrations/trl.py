"""ESPO in TRL: ``ESPOTrainer``, a ``trl.GRPOTrainer`` whose loss is ``espo_ref.torch.espo_loss``.

Supports exactly trl==1.16.0, the version the tests run against (``pip install "espo-ref[trl]"``);
any other version fails at import with a message that says so, because the trainer overrides
private methods of ``GRPOTrainer`` whose signatures TRL changes between releases.

Everything but the loss is TRL's: generation, rewards, group advantages, batching, logging.
What ESPO needs beyond TRL's GRPO inputs is the **old** policy's entropy of each completion
position, at the sampling temperature ([ESPO-ENT-DOMAIN], Eq. 6). It flows like TRL's old
log-probabilities:

* off-policy update (``num_iterations > 1``, or ``gradient_accumulation_steps`` not a multiple
  of ``steps_per_generation * num_iterations``, or vLLM with importance-sampling correction):
  TRL computes ``old_per_token_logps`` in ``_generate_and_score_completions``, with the
  weights that sampled the completions. The overridden ``_get_per_token_logps_and_entropies``
  asks that same forward pass for the entropies too (``compute_entropy=True``; TRL's fused LM
  head divides the logits by ``args.temperature``), and the overridden
  ``_generate_and_score_completions`` stores them beside the log-probs as
  ``old_per_token_entropies``; TRL then shuffles and splits them with the rest of the batch.
* on-policy update: TRL computes no old log-probs and uses ``per_token_logps.detach()``;
  the policy being differentiated is the one that sampled, so the old entropies are the
  current entropies, detached.

The loss of a micro-batch is ``espo_loss(...).loss`` [ESPO-OBJ] divided by the number of
gradient-accumulation steps, as TRL's ``loss_type="grpo"`` does: [ESPO-AGG]'s mean over
responses is taken per micro-batch, and the optimiser step averages micro-batches (and
processes). ``grouping="batch_top_fraction"`` likewise ranks the tokens of a micro-batch.
ESPO's diagnostics [ESPO-METRICS] go to TRL's logs as ``espo/<key>``, once per optimizer step:
the values over all the step's tokens, on all its micro-batches and processes
(``espo_ref.merge_metrics``: counts summed, fractions and means token-weighted, a micro-batch
with an empty entropy bucket left out of that bucket's values); TRL's ``entropy`` likewise.

Validation once, where the batch is built: ``_generate_and_score_completions`` checks the
batch's old log-probabilities, old entropies, completion mask and advantages with
``espo_loss``'s own checks and messages (``espo_validate``); each micro-batch then calls
``espo_loss(..., validate=False)``, without a host sync. The current policy's log-probabilities
are not checked per micro-batch: a non-finite one makes that micro-batch's loss NaN, and the
optimizer step is refused (ESPOInputError) at its last micro-batch, before the optimizer steps.

GRPO options that would change the objective are refused (``beta``, ``delta``,
``top_entropy_quantile``, ``off_policy_mask_threshold``, the entropy bonus, vLLM's
importance-sampling correction); ``loss_type``, ``epsilon``, ``epsilon_high`` and
``importance_sampling_level`` are ignored (with a warning when set).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

SUPPORTED_TRL_VERSION = "1.16.0"
INSTALL_HINT = 'pip install "espo-ref[trl]"'


def check_trl_version(version: str) -> None:
    """Refuse any trl but the one version this integration is tested with."""
    if version != SUPPORTED_TRL_VERSION:
        raise ImportError(
            f"espo_ref.integrations.trl supports exactly trl=={SUPPORTED_TRL_VERSION} (the version its tests run "
            f"against; it overrides private GRPOTrainer methods that change between trl releases), but trl "
            f"{version} is installed. Install the supported version: {INSTALL_HINT}"
        )


try:
    import torch
    import trl
except ImportError as exc:  # pragma: no cover - exercised by a test that hides trl
    raise ImportError(
        f"espo_ref.integrations.trl needs the optional dependencies trl and torch ({exc}); "
        f"install them with: {INSTALL_HINT}"
    ) from exc

check_trl_version(trl.__version__)

from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from .._validate_once import check_built_batch, nan_unless_finite  # noqa: E402
from ..config import ESPOConfig  # noqa: E402
from ..errors import ESPOInputError  # noqa: E402
from ..metrics import ESPO_METRIC_KEYS, merge_metrics  # noqa: E402
from ..torch import espo_loss  # noqa: E402
from ..torch import merge_metrics as merge_device_metrics  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["ESPOGRPOConfig", "ESPOTrainer", "SUPPORTED_TRL_VERSION", "check_trl_version"]

OLD_ENTROPIES = "old_per_token_entropies"

# GRPOConfig fields that would change the objective: (field, is the value supported, why not).
_REFUSED = (
    ("beta", lambda a: a.beta == 0.0, "ESPOTrainer adds no KL term to the ESPO objective; set beta=0.0"),
    ("delta", lambda a: a.delta is None, "two-sided GRPO clipping is not part of ESPO; set delta=None"),
    ("top_entropy_quantile", lambda a: a.top_entropy_quantile == 1.0,
     "ESPO selects high-entropy tokens itself (espo_top_fraction, espo_drop_low_group); set top_entropy_quantile=1.0"),
    ("off_policy_mask_threshold", lambda a: a.off_policy_mask_threshold is None,
     "off-policy sequence masking is not part of ESPO; set off_policy_mask_threshold=None"),
    ("entropy_coef", lambda a: a.entropy_coef == 0.0 and not a.use_adaptive_entropy,
     "an entropy bonus is not part of ESPO; set entropy_coef=0.0 and use_adaptive_entropy=False"),
    ("vllm_importance_sampling_correction", lambda a: not (a.use_vllm and a.vllm_importance_sampling_correction),
     "espo_loss takes no per-token importance weights, so vLLM's sampler/trainer correction cannot be applied; "
     "set vllm_importance_sampling_correction=False"),
)
# GRPOConfig fields the ESPO loss does not read: (field, its GRPOConfig default).
_IGNORED = (("loss_type", "dapo"), ("epsilon", 0.2), ("epsilon_high", None), ("importance_sampling_level", "token"))


@dataclass
class ESPOGRPOConfig(GRPOConfig):
    """``GRPOConfig`` plus the ESPO options of ``espo_ref.ESPOConfig`` [ESPO-CONFIG], prefixed ``espo_``.

    ``vocab_size`` is not an option: the trainer takes it from the model (the width of its
    logits, the rows of the output embedding). The entropy is taken at ``temperature``, the
    sampling temperature. The defaults are the paper's (alpha 0.02, top 20%). GRPO's clip
    options (``epsilon``, ``epsilon_high``), ``loss_type`` and ``importance_sampling_level``
    are not used by the ESPO loss.
    """

    espo_alpha: float = field(default=0.02, metadata={"help": "ESPO: scale alpha of the adaptive clip range (Eq. 8)."})
    espo_top_fraction: float = field(
        default=0.2, metadata={"help": "ESPO: fraction of each response's tokens in the high-entropy group."}
    )
    espo_grouping: str = field(
        default="top_fraction",
        metadata={"help": "ESPO: top_fraction, batch_top_fraction, entropy_ranges, none or token."},
    )
    espo_entropy_edges: list[float] | None = field(
        default=None, metadata={"help": "ESPO: normalised entropy edges for grouping=entropy_ranges."}
    )
    espo_drop_low_group: bool = field(default=False, metadata={"help": "ESPO: train only the high-entropy group."})
    espo_clip: str = field(default="adaptive", metadata={"help": "ESPO: adaptive (Eq. 8) or fixed clip range."})
    espo_eps_low: float = field(default=3e-4, metadata={"help": "ESPO: lower clip offset, for espo_clip=fixed."})
    espo_eps_high: float = field(default=4e-4, metadata={"help": "ESPO: upper clip offset, for espo_clip=fixed."})
    espo_eps_reading: str = field(
        default="group_mean", metadata={"help": "ESPO: reading of Eq. 8, group_mean or token_over_groups."}
    )
    espo_ratio_form: str = field(
        default="gspo_token", metadata={"help": "ESPO: reading of Eq. 9, gspo_token or literal."}
    )
    espo_log_ratio_clamp: float | None = field(
        default=10.0, metadata={"help": "ESPO: upper clamp of the log-ratio before exp (None: no clamp)."}
    )
    espo_entropy_tolerance: float = field(
        default=1e-4, metadata={"help": "ESPO: tolerance (nats) of the entropy range check [0, log V]."}
    )
    espo_validate: bool = field(
        default=True,
        metadata={"help": "ESPO: check each batch once where it is built (old log-probs, entropies, mask, "
                          "advantages) and refuse an optimizer step whose loss is not finite; False skips both. "
                          "Micro-batches never validate (no host sync in the loss)."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.espo_config(vocab_size=2)  # validate the ESPO options now, not at the first step

    def espo_config(self, vocab_size: int) -> ESPOConfig:
        """The ``espo_ref.ESPOConfig`` of these options for a model with ``vocab_size`` logits."""
        return ESPOConfig(
            vocab_size=vocab_size,
            alpha=self.espo_alpha,
            top_fraction=self.espo_top_fraction,
            grouping=self.espo_grouping,
            entropy_edges=tuple(self.espo_entropy_edges or ()),
            drop_low_group=self.espo_drop_low_group,
            clip=self.espo_clip,
            eps_low=self.espo_eps_low,
            eps_high=self.espo_eps_high,
            eps_reading=self.espo_eps_reading,
            ratio_form=self.espo_ratio_form,
            log_ratio_clamp=self.espo_log_ratio_clamp,
            entropy_tolerance=self.espo_entropy_tolerance,
        )


def _check_supported(args: GRPOConfig) -> None:
    for name, ok, why in _REFUSED:
        if not ok(args):
            raise ValueError(f"ESPOTrainer does not support {name}={getattr(args, name)!r}: {why}")
    for name, default in _IGNORED:
        if getattr(args, name) != default:
            logger.warning("ESPOTrainer ignores %s=%r: the ESPO loss has its own grouping, ratio and clip range "
                           "(the espo_* options)", name, getattr(args, name))


def _completion_mask(batch) -> torch.Tensor:
    """The positions ESPO trains: the completion tokens, less tool output (TRL's ``tool_mask``)."""
    mask = batch["completion_mask"] if "tool_mask" not in batch else batch["completion_mask"] * batch["tool_mask"]
    return mask.bool()


@dataclass
class _StepParts:
    """What the micro-batches of one optimizer step (or of one evaluation) leave for its log."""

    metrics: list = field(default_factory=list)  # each micro-batch's espo_loss metrics (device totals, unread)
    entropy: list = field(default_factory=list)  # each micro-batch's [sum, count] of the current entropies
    losses: list = field(default_factory=list)  # each micro-batch's loss, detached
    pending: bool = False  # a micro-batch ran since the last log (alike on every process)


def logits_width(model) -> int:
    """The number of logits the model produces per position (V of Eq. 6): the rows of its
    output embedding; the config's vocab_size when the weight is partitioned (ZeRO-3)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    weight = getattr(head, "weight", None)
    shape = getattr(weight, "ds_shape", None) or getattr(weight, "shape", None)
    if shape is not None and len(shape) == 2 and shape[0] >= 2:
        return int(shape[0])
    return int(base.config.get_text_config().vocab_size)


class ESPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` with the ESPO loss (``espo_ref.torch.espo_loss``) and the old policy's entropies.

    Same arguments as ``GRPOTrainer``; ``args`` must be an ``ESPOGRPOConfig``. ``espo_config``
    (an ``espo_ref.ESPOConfig``) is built from it and the model's logits width. Batches are
    validated once where they are built, micro-batches call ``espo_loss(..., validate=False)``,
    and ``espo/<key>`` is logged once per optimizer step over all its tokens (module docstring).
    """

    _tag_names = ["trl", "espo"]

    def __init__(self, model, reward_funcs, args: ESPOGRPOConfig | None = None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
            args = ESPOGRPOConfig(f"{name.split('/')[-1]}-ESPO")
        elif not isinstance(args, ESPOGRPOConfig):
            raise TypeError(f"ESPOTrainer needs args to be an ESPOGRPOConfig, got {type(args).__name__}")
        _check_supported(args)
        self._espo_capture: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._espo_step = {"train": _StepParts(), "eval": _StepParts()}
        super().__init__(model, reward_funcs, args=args, **kwargs)
        self.espo_config = args.espo_config(vocab_size=logits_width(self.model))

    # --- the old policy's entropies ---------------------------------------------------------------

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, **kwargs):
        # While a generation batch is scored, the policy's log-prob pass (TRL's old_per_token_logps) also
        # returns the entropies, recorded beside the log-prob tensor they come with.
        capture = self._espo_capture is not None and model is self.model and not compute_entropy
        logps, entropies, aux_loss = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
            compute_entropy=compute_entropy or capture, **kwargs,
        )
        if capture:
            self._espo_capture.append((logps, entropies))
            entropies = None
        return logps, entropies, aux_loss

    def _generate_and_score_completions(self, inputs):
        self._espo_capture = []
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            captured, self._espo_capture = self._espo_capture, None
        old_logps = output.get("old_per_token_logps")
        if old_logps is not None:
            # [ESPO-ENT-DOMAIN] the entropies of the very pass that gave the old log-probs
            match = [entropies for logps, entropies in captured if logps is old_logps]
            if len(match) != 1:
                raise RuntimeError(
                    "ESPOTrainer could not find the forward pass that produced old_per_token_logps, so it has no "
                    f"old-policy entropies (trl {trl.__version__}; supported: {SUPPORTED_TRL_VERSION})"
                )
            output[OLD_ENTROPIES] = match[0]
        if self.args.espo_validate:
            self._check_espo_batch(output)
        return output

    def _check_espo_batch(self, batch) -> None:
        """[ESPO-INPUT] The batch's ESPO inputs, checked once where it is built (every micro-batch calls
        espo_loss with validate=False): the old log-probs, old entropies, mask and advantages, with
        espo_loss's checks and messages (positions are the batch's). On-policy TRL makes no old-policy
        pass (each micro-batch's own forward gives them): the mask and advantages are checked."""
        mask = _completion_mask(batch)
        if not bool(mask.any()):
            return  # no completion token at all: every micro-batch contributes 0 (see _compute_loss)
        old = batch.get("old_per_token_logps")
        if old is None:
            old = torch.zeros(mask.shape, device=mask.device)
            entropy = torch.zeros_like(old)
        else:
            entropy = batch[OLD_ENTROPIES]
        check_built_batch(espo_loss, old, entropy, mask, batch["advantages"], self.espo_config)

    # --- the loss ---------------------------------------------------------------------------------

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits_to_keep = completion_ids.size(1)
        mask = _completion_mask(inputs)

        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            logits_to_keep,
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
            num_images=inputs.get("num_images"),
            pixel_attention_mask=inputs.get("pixel_attention_mask"),
            spatial_shapes=inputs.get("spatial_shapes"),
            num_tiles=inputs.get("num_tiles"),
            image_sizes=inputs.get("image_sizes"),
            token_type_ids=inputs.get("token_type_ids"),
            mm_token_type_ids=inputs.get("mm_token_type_ids"),
            image_position_ids=inputs.get("image_position_ids"),
        )

        old_per_token_logps = inputs.get("old_per_token_logps")
        if old_per_token_logps is None:
            # On-policy: the weights being differentiated sampled the batch, so the old policy's
            # log-probs and entropies are the current ones, without gradient.
            old_per_token_logps = per_token_logps.detach()
            old_entropies = entropies.detach()
        else:
            old_entropies = inputs.get(OLD_ENTROPIES)
            if old_entropies is None:
                raise RuntimeError(f"the batch has old_per_token_logps but no {OLD_ENTROPIES}: it was not built by "
                                   "ESPOTrainer._generate_and_score_completions")

        mode = "train" if self.model.training else "eval"
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        step = self._espo_step[mode]
        step.pending = True
        # (a host sync: espo_loss without validation gives NaN on a micro-batch without a response token)
        if bool(mask.any()):
            # [ESPO-INPUT] the batch was checked where it was built; logp is not checked here
            result = espo_loss(per_token_logps, old_per_token_logps, old_entropies, mask, inputs["advantages"],
                               self.espo_config, validate=False)
            loss = nan_unless_finite(result.loss, per_token_logps, mask) / normalizer
            step.metrics.append(result.metrics)
            step.losses.append(loss.detach())
        else:
            # A micro-batch without a completion token (all truncated and masked, say) has no ESPO
            # objective [ESPO-AGG]; it contributes 0, still attached to the graph for backward.
            loss = per_token_logps.sum() * 0.0

        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / normalizer
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        # TRL's own entropy metric (the current policy's): its token sum and count, logged with the step
        ent = entropies.detach()
        step.entropy.append(torch.stack([(ent * mask).sum(), mask.sum().to(ent.dtype)]))
        return loss

    # --- the metrics: once per optimizer step ------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:  # the optimizer step's last micro-batch, before the optimizer steps
            self._log_espo_step("train")
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        if self._espo_step[mode].pending:  # an evaluation's micro-batches: logged as one
            self._log_espo_step(mode)
        super().log(logs, start_time)

    def _log_espo_step(self, mode: str) -> None:
        """[ESPO-METRICS] The micro-batches since the last call (an optimizer step's, or an evaluation's)
        into TRL's logs once, as ``espo/<key>``: the values over all their tokens on all processes
        (``espo_ref.merge_metrics``: counts summed, fractions and means token-weighted, a micro-batch with
        an empty bucket left out of that bucket's values), and TRL's ``entropy`` as their token mean.

        TRL logs the mean of each key's entries since its last log: one entry per optimizer step is
        that step's value (``logging_steps`` > 1: the mean over the logged steps, as for TRL's own
        per-step metrics), where an entry per micro-batch gave counts divided by the number of
        micro-batches and fractions weighted by micro-batch instead of by token. One transfer and
        one gather per step. In training, with ``espo_validate``, a micro-batch whose loss was not
        finite (logp, not checked per micro-batch, was not finite, or the loss overflowed) refuses
        the step with an ESPOInputError."""
        step, self._espo_step[mode] = self._espo_step[mode], _StepParts()
        device = self.accelerator.device
        keys = ESPO_METRIC_KEYS
        if step.metrics:
            merged = merge_device_metrics(step.metrics)
            values = [merged[key] for key in keys]  # the one device -> host transfer
        else:  # no completion token on this process: every count 0, left out of every mean
            values = [0.0] * len(keys)
        local = torch.cat([
            torch.tensor(values, dtype=torch.float64, device=device),
            torch.stack(step.entropy).sum(dim=0).to(device=device, dtype=torch.float64) if step.entropy
            else torch.zeros(2, dtype=torch.float64, device=device),
            torch.stack([~torch.isfinite(loss) for loss in step.losses]).sum().to(device, torch.float64).reshape(1)
            if step.losses else torch.zeros(1, dtype=torch.float64, device=device),
        ])
        rows = self.accelerator.gather(local).reshape(-1, local.numel()).tolist()
        nonfinite = sum(row[-1] for row in rows)
        if mode == "train" and self.args.espo_validate and nonfinite:
            raise ESPOInputError(
                f"ESPOTrainer: the ESPO loss of {int(nonfinite)} micro-batch(es) of optimizer step "
                f"{self.state.global_step + 1} is not finite, so the step is refused: the current policy's "
                "log-probabilities (logp, not checked per micro-batch) are not finite at a completion token, or the "
                "loss overflowed (the batch's old log-probs, entropies, mask and advantages were checked when it "
                "was built)")
        metrics = merge_metrics([dict(zip(keys, row)) for row in rows])
        for key in keys:
            self._metrics[mode][f"espo/{key}"].append(metrics[key])
        entropy_sum, count = sum(row[len(keys)] for row in rows), sum(row[len(keys) + 1] for row in rows)
        self._metrics[mode]["entropy"].append(entropy_sum / max(count, 1.0))
