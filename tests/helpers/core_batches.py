"""Random espo_loss inputs for the numpy-core tests, drawn to hit the edges the spec names.

Empty rows, L = 1 rows, non-contiguous masks, entropy ties (entropies from a small set that
holds 0.0, -0.0 and log V), extreme log-ratios (so that clamped groups occur), every option
of ESPOConfig, [B] and [B, T] advantages, zero advantages and many prompts; padding filled
with NaN, inf or garbage. ``run_both`` runs the core and the loop oracle (helpers/oracle.py)
on one batch; ``well_conditioned`` says when float64 can decide its sum, clips and clamps.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

import espo_ref
from espo_ref import ESPOConfig
from espo_ref.tolerances import tolerance

from .oracle import oracle_espo_loss, oracle_grpo_advantages

VALUE = tolerance("numpy", "float64", "value")
GRAD = tolerance("numpy", "float64", "grad")
ULP = np.finfo(np.float64).eps

VOCABS = (2, 16, 151936)
EDGE_SETS = ((0.5,), (0.25, 0.75), (0.1, 0.5, 0.9), (0.3, 0.31))
TOP_FRACTIONS = (0.2, 0.28, 0.07, 0.5, 1.0, 1 / 3, 0.01, 0.99)
GROUPINGS = (
    ("top_fraction", "ESPO_GROUP_TOPFRAC"),
    ("batch_top_fraction", "ESPO_GROUP_BATCH"),
    ("entropy_ranges", "ESPO_GROUP_RANGES"),
    ("none", "ESPO_GROUP_NONE"),
    ("token", "ESPO_GROUP_TOKEN"),
)
SPLIT_GROUPINGS = ("top_fraction", "batch_top_fraction", "entropy_ranges")
FIXED_EPS = ((3e-4, 4e-4), (0.2, 0.28), (0.0, 0.0), (0.1, 0.0))



def repro(**arrays) -> str:
    """A copy-paste reproduction of the inputs."""
    lines = []
    for k, v in arrays.items():
        if isinstance(v, np.ndarray):
            lines.append(f"{k} = np.array({np.array2string(v, separator=', ', precision=17, threshold=10**6)})")
        else:
            lines.append(f"{k} = {v!r}")
    return "\nreproduction:\n  " + "\n  ".join(lines)


# ------------------------------------------------------------------ drawing helpers


def entropy_set(vocab_size, edges=(), negatives=False):
    """A small set of entropies: draws from it force ties (0.0, -0.0 and log V included;
    log V + 5e-5 and the negatives lie in the tolerance band and are clamped, so they tie)."""
    lv = math.log(vocab_size)
    values = [0.0, -0.0, lv, 0.5 * lv, 0.25 * lv, 0.1 * lv, 0.9 * lv, lv + 5e-5]
    values += [c * lv for c in edges]
    if negatives:  # inside the tolerance band: clamped to 0 [ESPO-ENT-DOMAIN]
        values += [-5e-5, -1e-5]
    return values


def draw_config(data, grouping=None, **fixed):
    draw = data.draw
    grouping = grouping or draw(st.sampled_from([g for g, _ in GROUPINGS]), label="grouping")
    kw = dict(
        vocab_size=draw(st.sampled_from(VOCABS), label="vocab_size"),
        alpha=draw(st.sampled_from([0.02, 0.0, 0.1, 1.0]), label="alpha"),
        top_fraction=draw(
            st.one_of(st.sampled_from(TOP_FRACTIONS), st.floats(0.001, 1.0)), label="top_fraction"
        ),
        grouping=grouping,
        entropy_edges=draw(
            st.one_of(
                st.sampled_from(EDGE_SETS),
                st.lists(st.floats(0.01, 0.99), min_size=1, max_size=3, unique=True).map(
                    lambda xs: tuple(sorted(xs))
                ),
            ),
            label="entropy_edges",
        )
        if grouping == "entropy_ranges"
        else (),
        drop_low_group=draw(st.booleans(), label="drop_low_group") if grouping in SPLIT_GROUPINGS else False,
        clip=draw(st.sampled_from(["adaptive", "fixed"]), label="clip"),
        eps_reading=draw(st.sampled_from(["group_mean", "token_over_groups"]), label="eps_reading"),
        ratio_form=draw(st.sampled_from(["gspo_token", "literal"]), label="ratio_form"),
        log_ratio_clamp=draw(st.sampled_from([10.0, None, 2.0]), label="log_ratio_clamp"),
    )
    eps_low, eps_high = draw(st.sampled_from(FIXED_EPS), label="fixed_eps")
    kw.update(eps_low=eps_low, eps_high=eps_high)
    kw.update(fixed)
    if len(kw["entropy_edges"]) > 1:
        assume(all(b > a for a, b in zip(kw["entropy_edges"], kw["entropy_edges"][1:])))
    return ESPOConfig(**kw)


def draw_mask(data, B, T, min_tokens=0):
    rows = []
    for b in range(B):
        kind = data.draw(st.sampled_from(["full", "empty", "single", "prefix", "random"]), label=f"mask_kind[{b}]")
        if kind == "full":
            row = [True] * T
        elif kind == "empty":
            row = [False] * T
        elif kind == "single":
            t = data.draw(st.integers(0, T - 1), label=f"single_pos[{b}]")
            row = [t == u for u in range(T)]
        elif kind == "prefix":
            n = data.draw(st.integers(0, T), label=f"prefix_len[{b}]")
            row = [u < n for u in range(T)]
        else:
            row = data.draw(st.lists(st.booleans(), min_size=T, max_size=T), label=f"mask_row[{b}]")
        rows.append(row)
    mask = np.array(rows, dtype=bool).reshape(B, T)
    if mask.sum() < min_tokens:
        mask[0, 0] = True
    as_int = data.draw(st.booleans(), label="mask_as_0_1")
    return mask.astype(np.int64) if as_int else mask


def draw_entropy(data, B, T, config, negatives=True, continuous=False):
    lv = config.log_vocab
    values = entropy_set(config.vocab_size, config.entropy_edges, negatives)
    elem = st.sampled_from(values)
    if continuous:
        elem = st.floats(0.0, lv)
    elif data.draw(st.booleans(), label="entropy_mixed"):
        elem = st.one_of(elem, st.floats(0.0, lv))
    rows = [data.draw(st.lists(elem, min_size=T, max_size=T), label=f"entropy[{b}]") for b in range(B)]
    return np.array(rows, dtype=np.float64).reshape(B, T)


def draw_log_ratio(data, B, T):
    scale = data.draw(st.sampled_from([0.0, 0.01, 0.3, 3.0, 30.0]), label="log_ratio_scale")
    if scale == 0.0:
        return np.zeros((B, T))
    elem = st.one_of(st.floats(-scale, scale), st.just(0.0), st.sampled_from([scale, -scale]))
    rows = [data.draw(st.lists(elem, min_size=T, max_size=T), label=f"log_ratio[{b}]") for b in range(B)]
    return np.array(rows, dtype=np.float64).reshape(B, T)


def draw_advantages(data, B, T):
    form = data.draw(st.sampled_from(["B", "BT", "zero", "grpo"]), label="advantage_form")
    elem = st.one_of(st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]), st.floats(-3, 3))
    if form == "B":
        return np.array(data.draw(st.lists(elem, min_size=B, max_size=B), label="advantages[B]"))
    if form == "BT":
        rows = [data.draw(st.lists(elem, min_size=T, max_size=T), label=f"advantages[{b}]") for b in range(B)]
        return np.array(rows, dtype=np.float64).reshape(B, T)
    if form == "zero":
        shape = data.draw(st.sampled_from([(B,), (B, T)]), label="zero_advantage_shape")
        return np.zeros(shape)
    # many prompts: Eq. 11 advantages from the oracle
    prompts = data.draw(st.lists(st.integers(0, 3), min_size=B, max_size=B), label="prompt_ids")
    rewards = data.draw(st.lists(st.sampled_from([0.0, 1.0, 0.5]), min_size=B, max_size=B), label="rewards")
    return np.array(oracle_grpo_advantages(rewards, prompts))


def fill_padding(data, arrays, mask):
    """Padding may hold anything: NaN, inf or garbage; it must never leak."""
    how = data.draw(st.sampled_from(["zero", "nan", "inf", "garbage"]), label="padding_fill")
    value = {"zero": 0.0, "nan": np.nan, "inf": np.inf, "garbage": -1e300}[how]
    pad = ~np.asarray(mask, dtype=bool)
    out = []
    for a in arrays:
        a = a.copy()
        if a.ndim == 2:
            a[pad] = value
        out.append(a)
    return out


def draw_batch(data, grouping=None, continuous_entropy=False, min_tokens=1, **fixed):
    """A random espo_loss input: dict with logp, old_logp, entropy, mask, advantages, config."""
    config = draw_config(data, grouping, **fixed)
    B = data.draw(st.integers(1, 6), label="B")
    T = data.draw(st.integers(1, 12), label="T")
    mask = draw_mask(data, B, T, min_tokens)
    entropy = draw_entropy(data, B, T, config, continuous=continuous_entropy)
    old_logp = np.array(
        [data.draw(st.lists(st.floats(-20.0, 0.0), min_size=T, max_size=T), label=f"old_logp[{b}]") for b in range(B)]
    ).reshape(B, T)
    logp = old_logp + draw_log_ratio(data, B, T)
    adv = draw_advantages(data, B, T)
    logp, old_logp, entropy, adv = fill_padding(data, [logp, old_logp, entropy, adv], mask)
    return dict(logp=logp, old_logp=old_logp, entropy=entropy, mask=mask, advantages=adv, config=config)


def well_conditioned(want, tol=VALUE):
    """True when the batch's sum, its clip decisions and its clamps are decided stably.

    A clip or clamp decision is unstable when the log of the ratio value lies within 1e-9
    of the log of a bound, unless both are exact (every log-ratio of the group is 0, so the
    value is exactly 1 in any summation order).
    """
    cfg = want["config"]
    o = want["oracle"]
    adv = np.asarray(want["advantages"], dtype=np.float64)
    mask = np.asarray(want["mask"], dtype=bool)
    logp, old = np.asarray(want["logp"]), np.asarray(want["old_logp"])
    for b, t in zip(*np.nonzero(mask)):
        log_r = logp[b, t] - old[b, t]
        raw = o["log_ratio"][b][t] + (0.0 if cfg.ratio_form == "gspo_token" else log_r)
        if cfg.log_ratio_clamp is not None:
            if abs(raw - cfg.log_ratio_clamp) < 1e-9:
                return False
            raw = min(raw, cfg.log_ratio_clamp)
        if not o["trained"][b][t]:
            continue
        A = adv[b] if adv.ndim == 1 else adv[b, t]
        if A == 0:
            continue
        group = [u for u, g in enumerate(o["groups"][b]) if g == o["groups"][b][t]]
        exact_one = all(logp[b, u] - old[b, u] == 0.0 for u in group)
        for bound in (1.0 + o["eps_high"][b][t], 1.0 - o["eps_low"][b][t]):
            if bound <= 0:
                continue
            if exact_one and bound == 1.0:
                continue
            if abs(raw - math.log(bound)) < 1e-9:
                return False
    terms = o["terms"]
    err = 8 * (len(terms) + 16) * ULP * math.fsum(abs(x) for x in terms)
    return err <= 0.5 * (tol.atol + tol.rtol * abs(o["loss"]))


def run_both(batch):
    o = oracle_espo_loss(
        batch["logp"], batch["old_logp"], batch["entropy"], batch["mask"], batch["advantages"], batch["config"]
    )
    got = espo_ref.espo_loss(
        batch["logp"], batch["old_logp"], batch["entropy"], batch["mask"], batch["advantages"], batch["config"]
    )
    return got, dict(batch, oracle=o)
