"""Deliberately wrong implementations of ESPO: each must FAIL the conformance runner, and the
failure must name the clause it breaks. Each mutant changes one pinned decision of the spec.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np

import espo_ref
import espo_ref.entropy as entropy_module
import espo_ref.grouping as grouping
import espo_ref.objective as objective
from espo_ref._segments import Segments


@contextlib.contextmanager
def patched(module, name: str, replacement):
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


def _with_patch(module, name, replacement) -> Callable:
    def loss(logp, old_logp, entropy, mask, advantages, config):
        with patched(module, name, replacement):
            return espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages, config)
    return loss


def _with_config(**changes) -> Callable:
    def loss(logp, old_logp, entropy, mask, advantages, config):
        return espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages, config.replace(**changes))
    return loss


def _n_high_floor(lengths, rho):
    lengths = np.asarray(lengths)
    return np.minimum(np.maximum(np.floor(float(rho) * lengths).astype(np.int64), 1), lengths)


def _n_high_float_ceil(lengths, rho):
    lengths = np.asarray(lengths)
    return np.minimum(np.maximum(np.ceil(float(rho) * lengths).astype(np.int64), 1), lengths)


def _rank_later_first(key, axis):
    """Ties broken by the later position: a stable sort of the reversed axis."""
    flipped = np.flip(key, axis=axis)
    order = np.argsort(-flipped, axis=axis, kind="stable")
    order = key.shape[axis] - 1 - order
    rank = np.empty_like(order)
    positions = np.broadcast_to(
        np.arange(key.shape[axis]).reshape([-1 if a == axis else 1 for a in range(key.ndim)]), order.shape)
    np.put_along_axis(rank, order, positions, axis=axis)
    return rank


def _token_mean_weights(trained_seg, mask):
    trained = trained_seg.include
    count = trained.sum()
    if count == 0:
        raise espo_ref.ESPOInputError("mask has no response token: the objective is undefined")
    return np.where(trained, 1.0 / count, 0.0), trained_seg.groups_per_row()


def _grad_through_stop_gradient(logp, old_logp, entropy, mask, advantages, config):
    """Differentiates s_tau through Eq. 10 for every token of the group (no stop-gradient)."""
    result = espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages, config)
    seg = Segments(result.groups, result.trained)
    per_group = seg.sums(result.grad) / np.maximum(seg.counts, 1)
    grad = np.where(result.trained, per_group[seg.seg], 0.0)
    return type(result)(**{**result.__dict__, "grad": grad})


def _clipped_surrogate_ge(ratio, adv, eps_low, eps_high, trained):
    """'>=' in the clip mask: a token exactly on the boundary counts as clipped."""
    surrogate = np.minimum(ratio * adv, np.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv)
    clipped_high = trained & (adv > 0) & (ratio >= 1.0 + eps_high)
    clipped_low = trained & (adv < 0) & (ratio <= 1.0 - eps_low)
    return np.where(trained, surrogate, 0.0), clipped_high, clipped_low


def _validate_entropy_unclamped(entropy, mask, config, name="entropy"):
    """The range check without the clamp of slightly negative entropies to 0."""
    from espo_ref._checks import as_mask, as_real_array, entropy_in_range, finite_on

    ent = as_real_array(entropy, name, ndim=2)
    m = as_mask(mask, "mask", ent.shape)
    ent = finite_on(ent, m, name)
    entropy_in_range(ent, m, config.log_vocab, config.entropy_tolerance)
    return ent, m


def _clip_bounds_unclamped(entropy, seg, trained_seg, config):
    eps = config.alpha / config.log_vocab * seg.to_tokens(seg.means(np.where(seg.include, entropy, 0.0)))
    return eps, eps


def _no_entropy_clamp(logp, old_logp, entropy, mask, advantages, config):
    with patched(objective, "validate_entropy", _validate_entropy_unclamped), \
            patched(objective, "_clip_bounds", _clip_bounds_unclamped):
        return espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages, config)


def _validate_entropy_without_band(entropy, mask, config, name="entropy"):
    """Rejects any entropy outside [0, log V]: no tolerance band."""
    return entropy_module.validate_entropy(entropy, mask, config.replace(entropy_tolerance=0.0), name)


def _advantages_without_bessel(rewards, prompt_ids, valid=None, ddof=1, eps=1e-6):
    return espo_ref.grpo_advantages(rewards, prompt_ids, valid, ddof=0, eps=eps)


# name -> (function the mutant implements, mutant, the clause its failure must name)
MUTANTS: dict[str, tuple[str, Callable, str]] = {
    "std-without-bessel": ("grpo_advantages", _advantages_without_bessel, "ESPO-ADV"),
    "n-high-floor": ("espo_loss", _with_patch(grouping, "_high_group_size", _n_high_floor), "ESPO-GROUP-TOPFRAC"),
    "n-high-float-ceil": ("espo_loss", _with_patch(grouping, "_high_group_size", _n_high_float_ceil), "ESPO-GROUP-TOPFRAC"),
    "ties-later-first": ("espo_loss", _with_patch(grouping, "_rank_descending", _rank_later_first), "ESPO-GROUP-TOPFRAC"),
    "eq9-literal": ("espo_loss", _with_config(ratio_form="literal"), "ESPO-RATIO-TOKEN"),
    "eps-per-token": ("espo_loss", _with_config(eps_reading="token_over_groups"), "ESPO-CLIP"),
    "token-mean-aggregation": ("espo_loss", _with_patch(objective, "_aggregation_weights", _token_mean_weights), "ESPO-AGG"),
    "no-clamp": ("espo_loss", _with_config(log_ratio_clamp=None), "ESPO-RATIO-CLAMP"),
    "grad-through-stop-gradient": ("espo_loss", _grad_through_stop_gradient, "ESPO-RATIO-TOKEN"),
    "clip-mask-ge": ("espo_loss", _with_patch(objective, "clipped_surrogate", _clipped_surrogate_ge), "ESPO-CLIPMASK"),
    "no-entropy-clamp": ("espo_loss", _no_entropy_clamp, "ESPO-ENT-DOMAIN"),
    "no-entropy-band": ("espo_loss", _with_patch(objective, "validate_entropy", _validate_entropy_without_band),
                        "ESPO-ENT-DOMAIN"),
}

# The wrong variants of a default-only implementation that --profile core must catch, and the
# misreading the runner must name for each.
CORE_MUTANTS = {"clip-mask-ge": "clip-mask-ge", "no-entropy-clamp": "no-entropy-clamp",
                "no-entropy-band": "no-entropy-band"}
