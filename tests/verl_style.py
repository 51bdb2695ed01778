"""A verl-style policy-loss function wrapping espo_ref.torch, to exercise the verl adapter
the way a verl integration would be checked."""

import espo_ref
import espo_ref.torch as et

_ESPO_FIELDS = set(espo_ref.ESPOConfig.__dataclass_fields__)


def compute_policy_loss_espo(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config):
    """verl signature; the old-policy entropy arrives in ``config.entropy``."""
    cfg = espo_ref.ESPOConfig(**{k: v for k, v in config.items() if k in _ESPO_FIELDS})
    out = et.espo_loss(log_prob, old_log_prob, config.entropy, response_mask, advantages, cfg)
    return out.loss, {"actor/pg_clipfrac": out.metrics["clipfrac"]}
