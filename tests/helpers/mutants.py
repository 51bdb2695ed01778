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


def _no_entropy_clamp(logp, old_logp, entropy, mask, advantages, config):
    """Entropies inside the band below 0 reach the grouping and Eq. 8 as given."""
    with patched(objective, "validate_entropy", _validate_entropy_unclamped):
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


# --- [CONF-MISREADINGS] one wrong implementation per catalogued reading --------------------------
#
# Each commits exactly the mistake its reading names and nothing else (it is the reference with one
# piece rewritten the wrong way); the runner must diagnose it as that reading on the cases it fails.
# None of them calls the reading engine.

import espo_ref.aggregation as aggregation_module  # noqa: E402
import espo_ref.baselines as baselines_module  # noqa: E402
import espo_ref.config  # noqa: E402

LN2 = float(np.log(2.0))


def _n_high_round(lengths, rho):
    lengths = np.asarray(lengths)
    return np.minimum(np.maximum(np.round(float(rho) * lengths).astype(np.int64), 1), lengths)


def _n_high_float32_ceil(lengths, rho):
    """torch's default dtype: rho * L in float32, then ceil."""
    lengths = np.asarray(lengths)
    product = np.float32(float(rho)) * lengths.astype(np.float32)
    return np.minimum(np.maximum(np.ceil(product).astype(np.int64), 1), lengths)


def _top_fraction_later_ties(entropy, mask, rho):
    """Per-response top fraction with equal entropies ranked later position first."""
    n_high = grouping._high_group_size(mask.sum(axis=1), rho)
    rank = _rank_later_first(np.where(mask, entropy, -np.inf), axis=1)
    return np.where(rank < n_high[:, None], grouping.HIGH_GROUP, grouping.LOW_GROUP)


def _top_fraction_topk(entropy, mask, rho):
    """The high group of each response chosen by torch.topk over its response tokens."""
    import torch

    n_high = grouping._high_group_size(mask.sum(axis=1), rho)
    groups = np.ones(mask.shape, dtype=np.int64)
    for b in np.flatnonzero(n_high):  # a test helper: one topk per response
        idx = np.flatnonzero(mask[b])
        top = torch.topk(torch.from_numpy(entropy[b, idx].copy()), int(n_high[b])).indices.numpy()
        groups[b, idx[top]] = 0
    return groups


def _top_fraction_quantile(entropy, mask, rho):
    """High group = entropy at or above the response's (1 - rho) quantile."""
    groups = np.ones(mask.shape, dtype=np.int64)
    for b in np.flatnonzero(mask.any(axis=1)):
        threshold = np.quantile(entropy[b, mask[b]], 1.0 - float(rho))
        groups[b] = np.where(entropy[b] >= threshold, 0, 1)
    return groups


def _scaled_clip_bounds(factor):
    """Eq. 8 times factor(config): the reference's eps in another unit."""
    original = objective._clip_bounds

    def clip_bounds(ent, seg, trained_seg, config):
        eps_low, eps_high = original(ent, seg, trained_seg, config)
        if config.clip != "adaptive":
            return eps_low, eps_high
        return eps_low * factor(config), eps_high * factor(config)
    return clip_bounds


def _clip_bounds_of(eps_of):
    """eps = eps_of(entropy, response mask, config) on the response tokens (adaptive clip only)."""
    original = objective._clip_bounds

    def clip_bounds(ent, seg, trained_seg, config):
        if config.clip != "adaptive":
            return original(ent, seg, trained_seg, config)
        eps = np.where(seg.include, eps_of(ent, seg.include, config), 0.0)
        return eps, eps
    return clip_bounds


def _eps_per_token(ent, response, config):
    return config.alpha * ent / config.log_vocab


def _eps_per_response(ent, response, config):
    mean = np.where(response, ent, 0.0).sum(axis=1) / np.maximum(response.sum(axis=1), 1)
    return config.alpha * mean[:, None] / config.log_vocab


def _responses(mask) -> int:
    responses = int(mask.any(axis=1).sum())
    if responses == 0:
        raise espo_ref.ESPOInputError("mask has no response token: the objective is undefined")
    return responses


def _weights_seq_mean_token_mean(trained_seg, mask):
    trained = trained_seg.include
    responses = _responses(mask)
    length = trained.sum(axis=1, keepdims=True)
    return np.where(trained, 1.0 / (responses * np.maximum(length, 1)), 0.0), trained_seg.groups_per_row()


def _weights_k_fixed_2(trained_seg, mask):
    trained = trained_seg.include
    responses = _responses(mask)
    size = trained_seg.to_tokens(trained_seg.counts.astype(np.float64))
    return np.where(trained, 1.0 / (responses * 2.0 * np.where(trained, size, 1.0)), 0.0), \
        trained_seg.groups_per_row()


def _weights_counting_empty_rows(trained_seg, mask):
    trained = trained_seg.include
    k = trained_seg.groups_per_row()
    size = trained_seg.to_tokens(trained_seg.counts.astype(np.float64))
    denom = max(_responses(mask), mask.shape[0]) * np.maximum(k, 1)[:, None] * np.where(trained, size, 1.0)
    return np.where(trained, 1.0 / denom, 0.0), k


def _token_ratio_clamp_ge(log_s, log_r, mask, config):
    """'>=' in the clamp: a log value exactly at the clamp counts as clamped."""
    log_value = np.where(mask, log_s + log_r if config.ratio_form == "literal" else log_s, 0.0)
    if config.log_ratio_clamp is None:
        return np.where(mask, np.exp(log_value), 0.0), np.zeros_like(mask)
    clamped = mask & (log_value >= config.log_ratio_clamp)
    return np.where(mask, np.exp(np.minimum(log_value, config.log_ratio_clamp)), 0.0), clamped


def _token_ratio_clamping_the_ratio(log_s, log_r, mask, config):
    """min(exp(log value), clamp): the ratio clamped at log_ratio_clamp, not its log."""
    log_value = np.where(mask, log_s + log_r if config.ratio_form == "literal" else log_s, 0.0)
    with np.errstate(over="ignore"):
        ratio = np.where(mask, np.exp(log_value), 0.0)
    if config.log_ratio_clamp is None:
        return ratio, np.zeros_like(mask)
    clamped = mask & (ratio > config.log_ratio_clamp)
    return np.minimum(ratio, config.log_ratio_clamp), clamped


def _gradient_through_clamp(logp, old_logp, entropy, mask, advantages, config):
    """A clamped token keeps the gradient -w A s of an unclamped one."""
    out = espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages, config)
    adv = np.asarray(advantages, dtype=np.float64)
    adv = np.broadcast_to(adv[:, None], out.weight.shape) if adv.ndim == 1 else adv
    passes = out.trained & ~out.clipped_high & ~out.clipped_low
    grad = np.where(passes, -out.weight * np.where(passes, adv, 0.0) * out.ratio, 0.0)
    return type(out)(**{**out.__dict__, "grad": grad})


def _sequence_gradient(logp, old_logp, entropy, mask, advantages, config):
    """GSPO-token's s_tau differentiated through Eq. 10 (the reading covers that form only)."""
    if config.ratio_form == "literal":
        return espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages, config)
    return _grad_through_stop_gradient(logp, old_logp, entropy, mask, advantages, config)


def _ppo_token_ratio(logp, old_logp, entropy, mask, advantages, config):
    """PPO's r_t = exp(logp_t - old_logp_t) in place of Eq. 10's group ratio (the group mean of the
    log-ratio is never taken); grouping, eps, clamp, clip and weights as pinned."""
    with patched(objective, "_group_log_ratio", lambda log_r, seg: np.where(seg.include, log_r, 0.0)):
        return espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages, config.replace(ratio_form="gspo_token"))


def _renormalised_advantages(ddof):
    def loss(logp, old_logp, entropy, mask, advantages, config):
        """(A - A.mean()) / (A.std() + 1e-8) over the batch's responses before the loss."""
        adv = np.asarray(advantages, dtype=np.float64)
        if adv.ndim == 1:
            adv = (adv - adv.mean()) / (adv.std(ddof=ddof) + 1e-8)
        return espo_ref.espo_loss(logp, old_logp, entropy, mask, adv, config)
    return loss


def _batch_top_fraction(logp, old_logp, entropy, mask, advantages, config):
    """One top fraction of all the batch's response tokens, where each response's is pinned."""
    if config.grouping == "top_fraction":
        config = config.replace(grouping="batch_top_fraction")
    return espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages, config)


def _torch_with_patch(name, replacement):
    """The torch loss differentiated by autograd (the analytic backward of espo_loss has no
    stop-gradient to forget) with one of its input steps replaced."""
    def loss(logp, old_logp, entropy, mask, advantages, config):
        import espo_ref.torch._autograd_objective as torch_objective

        with patched(torch_objective, name, replacement):
            return torch_objective.espo_loss_autograd(logp, old_logp, entropy, mask, advantages, config)
    return loss


def _token_inputs_not_detached(logp, old_logp, mask, names=("logp", "old_logp"), *, validate=True):
    """espo_ref.torch's token_inputs without ``.detach()`` on old_logp."""
    from espo_ref.torch._checks import as_mask, as_real_array, check_shape, compute_dtype, finite_on

    lp = as_real_array(logp, names[0], ndim=2)
    olp = as_real_array(old_logp, names[1], device=lp.device)
    check_shape(olp, names[1], tuple(lp.shape), names[0])
    m = as_mask(mask, "mask", tuple(lp.shape), device=lp.device, validate=validate)
    dtype = compute_dtype(lp)
    return finite_on(lp, m, names[0], dtype, validate), finite_on(olp, m, names[1], dtype, validate), m


def _validate_entropy_not_detached(entropy, mask, config, name="entropy", *, device=None, validate=True):
    """espo_ref.torch's validate_entropy without ``.detach()``."""
    from espo_ref.torch._checks import as_mask, as_real_array, compute_dtype, entropy_in_range, finite_on

    ent = as_real_array(entropy, name, ndim=2, device=device)
    m = as_mask(mask, "mask", tuple(ent.shape), device=ent.device, validate=validate)
    ent = finite_on(ent, m, name, compute_dtype(ent), validate)
    if validate:
        entropy_in_range(ent.detach(), m, config.log_vocab, config.entropy_tolerance)
    return ent.clamp(min=0.0), m


def _advantages_2d_not_detached(advantages, mask, name="advantages", *, dtype, validate=True):
    """espo_ref.torch's advantages_2d without ``.detach()`` (valid inputs only)."""
    from espo_ref.torch._checks import as_real_array, finite_on

    adv = as_real_array(advantages, name, device=mask.device)
    if adv.ndim == 1:
        adv = adv[:, None].expand(*mask.shape)
    return finite_on(adv, mask, name, dtype, validate)


def _advantages_ddof1(rewards, prompt_ids, valid=None, ddof=1, eps=1e-6):
    return espo_ref.grpo_advantages(rewards, prompt_ids, valid, ddof=1, eps=eps)


def _advantages_ignoring_valid(rewards, prompt_ids, valid=None, ddof=1, eps=1e-6):
    return espo_ref.grpo_advantages(rewards, prompt_ids, None, ddof=ddof, eps=eps)


def _advantages_singleton_raw(rewards, prompt_ids, valid=None, ddof=1, eps=1e-6):
    """verl: a prompt's only valid response keeps its score, divided by (1 + eps)."""
    adv = espo_ref.grpo_advantages(rewards, prompt_ids, valid, ddof=ddof, eps=eps)
    rewards = np.asarray(rewards, dtype=np.float64)
    valid = np.ones(rewards.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    _, prompt = np.unique(np.asarray(prompt_ids), return_inverse=True)
    count = np.bincount(prompt.reshape(-1), weights=valid.astype(np.float64))
    lone = valid & (count[prompt.reshape(-1)] == 1)
    return np.where(lone, rewards / (1.0 + eps), adv)


def _baseline_with_config(function, **changes):
    """The baseline with some config fields changed (its own config checked first)."""
    from espo_ref.conformance.functions import FUNCTIONS

    def loss(logp, old_logp, mask, advantages, config):
        config = espo_ref.config.baseline_config(config, FUNCTIONS[function].config_class)
        if changes.get("loss_agg_mode", "seq-mean-token-sum-norm") != "seq-mean-token-sum-norm":
            config = config.replace(max_len=None)
        return getattr(espo_ref, function)(logp, old_logp, mask, advantages, config.replace(**changes))
    return loss


def _agg_weights_counting_empty_rows(m, mode, max_len):
    """The sequence means divide by every row, empty responses included."""
    weights = aggregation_module._agg_weights(m, mode, max_len)
    if mode == "token-mean":
        return weights
    return weights * (int(m.any(axis=1).sum()) / m.shape[0])


def _grpo_counting_empty_rows(logp, old_logp, mask, advantages, config):
    with patched(baselines_module, "_agg_weights", _agg_weights_counting_empty_rows):
        return espo_ref.grpo_loss(logp, old_logp, mask, advantages, config)


def _padding_leak(logp, old_logp, entropy, mask, advantages, config):
    """Multiplies by the mask after the arithmetic: NaN padding reaches the gradient."""
    out = espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages, config)
    grad = out.grad + 0.0 * np.where(mask, 0.0, np.asarray(logp, dtype=np.float64))
    return type(out)(**{**out.__dict__, "grad": grad})


class ReadingMutant:
    """A wrong implementation of ``function`` committing one reading; ``include`` selects the cases
    it is run on, ``backend`` how it is called (torch: its gradient is autograd's, the constants
    arrive attached to logp's graph)."""

    def __init__(self, function, fn, include, backend="numpy"):
        self.function, self.fn, self.include, self.backend = function, fn, tuple(include), backend


_ESPO = ("handworked/*", "espo_loss/default/*")
# torch mutants compute in the case dtype: a float32 case is diagnosed on its float64 twin, by the runner
_ESPO64 = ("handworked/*", "espo_loss/default/float64/*")
_ADV = ("handworked/*", "grpo_advantages/*")

# reading name -> the mutant that commits it
READING_MUTANTS: dict[str, ReadingMutant] = {
    "n-high-floor": ReadingMutant("espo_loss", MUTANTS["n-high-floor"][1], _ESPO),
    "n-high-round": ReadingMutant("espo_loss", _with_patch(grouping, "_high_group_size", _n_high_round),
                                  _ESPO + ("espo_loss/top30/*",)),
    "n-high-float32-ceil": ReadingMutant("espo_loss", _with_patch(grouping, "_high_group_size", _n_high_float32_ceil),
                                         ("espo_loss/top30-long/*", "espo_loss/top30/*")),
    "n-high-float-ceil": ReadingMutant("espo_loss", MUTANTS["n-high-float-ceil"][1], ("espo_loss/top28*",)),
    "later-ties": ReadingMutant("espo_loss", _with_patch(grouping, "_top_fraction", _top_fraction_later_ties), _ESPO),
    "topk-ties": ReadingMutant("espo_loss", _with_patch(grouping, "_top_fraction", _top_fraction_topk),
                               _ESPO + ("espo_loss/top30/*",)),
    "quantile-threshold": ReadingMutant("espo_loss", _with_patch(grouping, "_top_fraction", _top_fraction_quantile),
                                        _ESPO),
    "entropy-bits": ReadingMutant("espo_loss", _with_patch(objective, "_clip_bounds",
                                                           _scaled_clip_bounds(lambda c: 1.0 / LN2)), _ESPO),
    "entropy-unnormalised": ReadingMutant("espo_loss", _with_patch(objective, "_clip_bounds", _scaled_clip_bounds(
        lambda c: c.log_vocab)), _ESPO),
    "eps-per-token": ReadingMutant("espo_loss", _with_patch(objective, "_clip_bounds", _clip_bounds_of(_eps_per_token)),
                                   _ESPO),
    "eps-per-token-over-groups": ReadingMutant("espo_loss", MUTANTS["eps-per-token"][1], _ESPO),
    "eps-per-response": ReadingMutant("espo_loss", _with_patch(objective, "_clip_bounds",
                                                               _clip_bounds_of(_eps_per_response)), _ESPO),
    "literal-eq9": ReadingMutant("espo_loss", MUTANTS["eq9-literal"][1], _ESPO),
    "sequence-gradient": ReadingMutant("espo_loss", _sequence_gradient,
                                       ("handworked/HW-B07", "espo_loss/top28/*", "espo_loss/alpha10/*")),
    "token-mean": ReadingMutant("espo_loss", MUTANTS["token-mean-aggregation"][1], _ESPO),
    "seq-mean-token-mean": ReadingMutant("espo_loss", _with_patch(objective, "_aggregation_weights",
                                                                  _weights_seq_mean_token_mean), _ESPO),
    "k-fixed-2": ReadingMutant("espo_loss", _with_patch(objective, "_aggregation_weights", _weights_k_fixed_2), _ESPO),
    "empty-responses-counted": ReadingMutant("espo_loss", _with_patch(objective, "_aggregation_weights",
                                                                      _weights_counting_empty_rows), _ESPO),
    "no-clamp": ReadingMutant("espo_loss", MUTANTS["no-clamp"][1], _ESPO),
    "clamp-ge": ReadingMutant("espo_loss", _with_patch(objective, "token_ratio", _token_ratio_clamp_ge), _ESPO),
    "gradient-through-clamp": ReadingMutant("espo_loss", _gradient_through_clamp, _ESPO + ("espo_loss/top30/*",)),
    "clip-mask-ge": ReadingMutant("espo_loss", MUTANTS["clip-mask-ge"][1], _ESPO),
    "no-entropy-clamp": ReadingMutant("espo_loss", MUTANTS["no-entropy-clamp"][1], _ESPO),
    "no-entropy-band": ReadingMutant("espo_loss", MUTANTS["no-entropy-band"][1], _ESPO),
    "padding-leak": ReadingMutant("espo_loss", _padding_leak, _ESPO),
    "ppo-token-ratio": ReadingMutant("espo_loss", _ppo_token_ratio, _ESPO),
    "adv-batch-renorm": ReadingMutant("espo_loss", _renormalised_advantages(0), _ESPO),
    "adv-batch-renorm-bessel": ReadingMutant("espo_loss", _renormalised_advantages(1), _ESPO),
    "batch-top-fraction": ReadingMutant("espo_loss", _batch_top_fraction, _ESPO),
    "old-logp-not-detached": ReadingMutant("espo_loss", _torch_with_patch("token_inputs", _token_inputs_not_detached),
                                           _ESPO64, "torch"),
    "entropy-not-detached": ReadingMutant("espo_loss", _torch_with_patch("validate_entropy",
                                                                         _validate_entropy_not_detached),
                                          _ESPO64 + ("espo_loss/token-eps/float64/*",), "torch"),
    "advantages-not-detached": ReadingMutant("espo_loss", _torch_with_patch("advantages_2d",
                                                                            _advantages_2d_not_detached),
                                             _ESPO64, "torch"),
    "eps-over-log2-vocab": ReadingMutant("espo_loss", _with_patch(objective, "_clip_bounds", _scaled_clip_bounds(
        lambda c: c.log_vocab / np.log2(c.vocab_size))), _ESPO),
    "ratio-clamped": ReadingMutant("espo_loss", _with_patch(objective, "token_ratio", _token_ratio_clamping_the_ratio),
                                   _ESPO + ("espo_loss/top30/*",)),
    "population-std": ReadingMutant("grpo_advantages", _advantages_without_bessel, _ADV),
    "bessel-std": ReadingMutant("grpo_advantages", _advantages_ddof1, _ADV),
    "no-valid-mask": ReadingMutant("grpo_advantages", _advantages_ignoring_valid, _ADV),
    "singleton-raw-score": ReadingMutant("grpo_advantages", _advantages_singleton_raw, _ADV),
    "agg-token-mean": ReadingMutant("grpo_loss", _baseline_with_config("grpo_loss", loss_agg_mode="token-mean"),
                                    ("handworked/*", "grpo_loss/default/*")),
    "agg-seq-mean-token-mean": ReadingMutant("dapo_loss", _baseline_with_config(
        "dapo_loss", loss_agg_mode="seq-mean-token-mean"), ("handworked/*", "dapo_loss/*")),
    "agg-empty-responses-counted": ReadingMutant("grpo_loss", _grpo_counting_empty_rows,
                                                 ("handworked/*", "grpo_loss/default/*", "grpo_loss/token-sum/*")),
    "baseline-no-clamp": ReadingMutant("grpo_loss", _baseline_with_config("grpo_loss", log_ratio_clamp=None),
                                       ("handworked/*", "grpo_loss/default/*")),
    "gspo-sequence-gradient": ReadingMutant("gspo_loss", _baseline_with_config("gspo_loss", level="sequence"),
                                            ("handworked/*", "gspo_loss/*")),
}


# --- wrong implementations whose mistake is in no catalogue: nothing may be named -------------------


def _low_group_sign_flipped(logp, old_logp, entropy, mask, advantages, config):
    """The low-entropy group's term enters Eq. 5 with a minus sign."""
    out = espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages, config)
    adv = np.asarray(advantages, dtype=np.float64)
    adv = np.broadcast_to(adv[:, None], out.weight.shape) if adv.ndim == 1 else adv
    surrogate, _, _ = objective.clipped_surrogate(out.ratio, np.where(out.trained, adv, 0.0), out.eps_low,
                                                  out.eps_high, out.trained)
    low = out.groups == 1
    loss = out.loss + 2.0 * float(np.sum(np.where(low, out.weight * surrogate, 0.0)))
    return type(out)(**{**out.__dict__, "loss": loss, "grad": np.where(low, -out.grad, out.grad)})


def _scaled_loss(logp, old_logp, entropy, mask, advantages, config):
    """Loss, gradient and weights 1% too large."""
    out = espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages, config)
    return type(out)(**{**out.__dict__, "loss": 1.01 * out.loss, "grad": 1.01 * out.grad,
                        "weight": 1.01 * out.weight})


def _perturbed_gradient(logp, old_logp, entropy, mask, advantages, config):
    """The gradient plus a relative 1e-6 of noise on the response tokens (seeded by the inputs)."""
    out = espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages, config)
    m = np.asarray(mask, dtype=bool)
    rng = np.random.default_rng(int(m.sum()) * 1009 + m.size)
    noise = rng.normal(size=m.shape) * (1e-6 * np.abs(out.grad) + 1e-9)
    return type(out)(**{**out.__dict__, "grad": np.where(m, out.grad + noise, 0.0)})


def _alpha_ten_percent_wider(logp, old_logp, entropy, mask, advantages, config):
    """eps 10% wider than Eq. 8's (alpha * 1.1): close to the eps readings, none of them."""
    return espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages, config.replace(alpha=config.alpha * 1.1))


def _gradient_scaled_torch(logp, old_logp, entropy, mask, advantages, config):
    """The torch reference with 0.7 times its gradient (the value is the reference's). Not 0.5: on
    HW-017 (loss 0, one group per response) half the gradient is exactly what k-fixed-2 gives."""
    import espo_ref.torch

    out = espo_ref.torch.espo_loss(logp, old_logp, entropy, mask, advantages, config)
    loss = 0.7 * out.loss + 0.3 * out.loss.detach()
    return type(out)(**{**out.__dict__, "loss": loss})


def _grpo_without_clip(logp, old_logp, mask, advantages, config):
    """GRPO with no clip at all (eps of 1e9)."""
    return _baseline_with_config("grpo_loss", eps_low=1e9, eps_high=1e9)(logp, old_logp, mask, advantages, config)


def _advantages_doubled(rewards, prompt_ids, valid=None, ddof=1, eps=1e-6):
    return 2.0 * espo_ref.grpo_advantages(rewards, prompt_ids, valid, ddof=ddof, eps=eps)


INNOCENT_MUTANTS: dict[str, ReadingMutant] = {
    "low-group-sign-flipped": ReadingMutant("espo_loss", _low_group_sign_flipped, _ESPO),
    "loss-scaled-1.01": ReadingMutant("espo_loss", _scaled_loss, _ESPO),
    "gradient-perturbed": ReadingMutant("espo_loss", _perturbed_gradient, _ESPO),
    "alpha-10-percent-wider": ReadingMutant("espo_loss", _alpha_ten_percent_wider, _ESPO),
    "gradient-scaled-torch": ReadingMutant("espo_loss", _gradient_scaled_torch, _ESPO64, "torch"),
    "grpo-without-clip": ReadingMutant("grpo_loss", _grpo_without_clip, ("handworked/*", "grpo_loss/default/*")),
    "advantages-doubled": ReadingMutant("grpo_advantages", _advantages_doubled, _ADV),
}
