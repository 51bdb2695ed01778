"""ESPO in verl 0.9.1: the policy loss ``"espo"`` and the plumbing of the old entropy.

Usage (``pip install -e ".[verl]" verl==0.9.1``; exactly verl 0.9.1, other versions refused)::

    import espo_ref.integrations.verl   # registers loss_mode "espo" and installs the wrapper

    actor_rollout_ref.actor.policy_loss._target_=espo_ref.integrations.verl.ESPOPolicyLossConfig
    actor_rollout_ref.actor.policy_loss.loss_mode=espo
    actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean   # ignored: ESPO aggregates per [ESPO-AGG]

The import must happen in every process that builds an actor worker (Ray workers included),
e.g. from a custom worker module or ``PYTHONSTARTUP``/a ``sitecustomize``; the worker
binds ``ppo_loss`` when it builds its model, so importing after that is too late.

What ESPO needs beyond verl's PPO inputs is the **old** policy's entropy of each response
position at the sampling temperature ([ESPO-ENT-DOMAIN]). verl's old-log-prob pass computes
it (``calculate_entropy=True``):

* v1 trainer (``trainer/ppo/v1``): stored next to ``old_log_probs`` as ``"entropy"``;
* v0 trainer (``RayPPOTrainer``): returned as ``"entropys"`` and then dropped by ``fit()``;
  :func:`install` wraps ``RayPPOTrainer._compute_old_log_prob`` so that it also returns a
  copy as ``"espo_old_entropy"``, which ``fit()`` keeps in the batch.

verl's ``ppo_loss`` hands the policy loss only (old_log_prob, log_prob, advantages,
response_mask, loss_agg_mode, config, rollout_is_weights), so :func:`espo_ppo_loss` reads
the old entropy from the micro-batch and passes it to :func:`compute_policy_loss_espo`
through a context variable. :func:`install` makes ``verl.workers.engine_workers.ppo_loss``
that wrapper. Bypass mode (``rollout_correction.bypass_mode``) computes no old entropy and
therefore cannot run ESPO: the loss raises an error saying so.

:func:`install` also wraps the engines' ``train_batch`` (``verl.workers.engine.base.BaseEngine``:
one mini-batch, its micro-batches' forward and backward, one optimizer step) with
``espo_train_batch``: the mini-batch is validated once, before its micro-batches, with
``espo_loss``'s checks and messages (old log-probs, old entropy, mask, advantages), and each
micro-batch calls ``espo_loss(..., validate=False)`` (no host sync in the loss; the current
``log_prob`` is not checked there: a non-finite one makes the loss NaN and is an error after the
mini-batch); the mini-batch's ``actor/espo_*`` are logged once, over all its tokens on all
data-parallel ranks (counts are totals, fractions token-weighted, an empty entropy bucket left
out) [ESPO-METRICS]. verl itself would average a policy loss's metrics over micro-batches and
ranks, and tells the loss the mini-batch's token count but not its entropy buckets' counts.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
    import verl
    from verl.trainer.ppo import core_algos as _core_algos  # noqa: F401
except ImportError as exc:  # pragma: no cover
    raise ImportError(
        f"espo_ref.integrations.verl needs verl and torch ({exc}); install them with: pip install \"espo-ref[verl]\" verl==0.9.1"
    ) from exc

SUPPORTED_VERL_VERSION = "0.9.1"

if getattr(verl, "__version__", None) != SUPPORTED_VERL_VERSION:
    # the plugin patches verl internals (ppo_loss, RayPPOTrainer._compute_old_log_prob) whose
    # shape changes between releases: refuse rather than run a loss with a broken entropy path
    raise ImportError(
        f"espo_ref.integrations.verl supports exactly verl=={SUPPORTED_VERL_VERSION} (the version its "
        f"tests run against), found verl {getattr(verl, '__version__', '?')}: pip install verl=={SUPPORTED_VERL_VERSION}"
    )

from ._loss import (  # noqa: E402
    ENTROPY_KEYS,
    OLD_ENTROPY,
    ESPOPolicyLossConfig,
    check_float32_entropy,
    compute_policy_loss_espo,
    espo_ppo_loss,
    install,
    to_espo_config,
)

__all__ = [
    "ENTROPY_KEYS",
    "OLD_ENTROPY",
    "ESPOPolicyLossConfig",
    "SUPPORTED_VERL_VERSION",
    "check_float32_entropy",
    "compute_policy_loss_espo",
    "espo_ppo_loss",
    "install",
    "to_espo_config",
]

install()
