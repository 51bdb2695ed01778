"""The vectorised numpy core against the loop oracle of tests/oracle.py, on random batches.

Each test is named after the core function and the clause it checks. Inputs are drawn to
hit the edges the spec names: empty rows, L = 1 rows, non-contiguous masks, entropy ties
(entropies from a small set that holds 0.0, -0.0 and log V), extreme log-ratios (so that
clamped groups occur), every option of ESPOConfig, [B] and [B, T] advantages, zero
advantages and many prompts. Ill-conditioned examples are rejected with ``assume``; the
tolerance is always ``tolerance("numpy", "float64", kind)``.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

import espo_ref
from espo_ref import ESPOConfig
from espo_ref.tolerances import compare, tolerance

import handworked
from oracle import (
    oracle_clip_bounds,
    oracle_entropy_groups,
    oracle_espo_loss,
    oracle_group_clip_eps,
    oracle_group_log_ratio,
    oracle_grpo_advantages,
    oracle_high_group_size,
    oracle_token_entropy,
)

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


# ------------------------------------------------------------------ assertion helpers


def assert_close(got, want, tol, clause, name, ctx=""):
    """compare() with NaN in ``want`` meaning 'undefined by the spec: not compared'."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    undefined = np.isnan(want)
    if undefined.any():
        got, want = np.where(undefined, 0.0, got), np.where(undefined, 0.0, want)
    report = compare(got, want, tol)
    assert report["ok"], f"[{clause}] {name}: core disagrees with the loop oracle: {report}{ctx}"


def assert_equal(got, want, clause, name, ctx=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"[{clause}] {name}: shape {got.shape} != {want.shape}{ctx}"
    bad = np.argwhere(got != want)
    assert bad.size == 0, (
        f"[{clause}] {name}: {len(bad)} of {got.size} differ; first at {tuple(bad[0])}: "
        f"got {got[tuple(bad[0])]!r}, want {want[tuple(bad[0])]!r}{ctx}"
    )


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


# ------------------------------------------------------------------ the oracle itself


def _oracle_loss_fn(logp, old_logp, entropy, mask, adv, config):
    o = oracle_espo_loss(logp, old_logp, entropy, mask, adv, config)
    arrays = {k: np.array(v) for k, v in o.items() if k not in ("loss", "metrics", "terms", "K")}
    return types.SimpleNamespace(loss=o["loss"], metrics=o["metrics"], **arrays)


def _oracle_runners():
    def groups_runner(case):
        arrays, mask, keys = handworked.token_arrays(case, ("entropy",))
        g = oracle_entropy_groups(arrays["entropy"], mask, ESPOConfig(**case.config))
        return handworked.Outcome({}, {"groups": np.array(g)}), {"keys": keys}

    def entropy_runner(case):
        ev = handworked.evaluate
        got = [oracle_token_entropy(list(ev(r["logits"])), ev(r.get("temperature", "1"))) for r in case.rows]
        return handworked.Outcome({}, vector=np.array(got)), {"column": "entropy"}

    def size_runner(case):
        ev = handworked.evaluate
        got = [oracle_high_group_size(int(ev(r["length"])), ev(r["top_fraction"])) for r in case.rows]
        return handworked.Outcome({}, vector=np.array(got, dtype=float)), {"column": "n_high"}

    def adv_runner(case):
        ev = handworked.evaluate
        got = oracle_grpo_advantages(
            [ev(r["reward"]) for r in case.rows],
            [int(ev(r["prompt"])) for r in case.rows],
            [bool(ev(r.get("valid", "1"))) for r in case.rows],
            **case.config,
        )
        return handworked.Outcome({}, vector=np.array(got)), {"column": "adv"}

    return {
        "espo_loss": handworked.run_token_loss(_oracle_loss_fn, ESPOConfig, with_entropy=True),
        "entropy_groups": groups_runner,
        "token_entropy": entropy_runner,
        "high_group_size": size_runner,
        "grpo_advantages": adv_runner,
    }


ORACLE_CASES = [
    c
    for c in handworked.load_cases()
    if c.source.startswith("ESPO.md") and not any(e[1] == "~" for e in c.expects)
]


@pytest.mark.parametrize("case", ORACLE_CASES, ids=[c.case_id for c in ORACLE_CASES])
def test_oracle_matches_handworked_cases(case):
    """The oracle itself reproduces every hand-worked case of the spec (no error cases)."""
    failures = handworked.check_case(case, _oracle_runners()[case.function], VALUE)
    assert not failures, f"oracle fails {case.case_id} ({case.clauses}): " + "; ".join(failures)


# ------------------------------------------------------------------ [ESPO-ENT]


@given(data=st.data())
def test_token_entropy_matches_oracle__ESPO_ENT(data):
    V = data.draw(st.integers(2, 20), label="V")
    n = data.draw(st.integers(1, 5), label="rows")
    elem = st.one_of(
        st.floats(-50, 50), st.just(-math.inf), st.sampled_from([0.0, 1000.0, -1000.0, 1.0])
    )
    logits = [data.draw(st.lists(elem, min_size=V, max_size=V), label=f"logits[{i}]") for i in range(n)]
    logits = [row if any(x != -math.inf for x in row) else [0.0] + row[1:] for row in logits]
    temperature = data.draw(st.one_of(st.sampled_from([1.0, 0.6, 2.0]), st.floats(0.05, 10.0)), label="temperature")
    arr = np.array(logits, dtype=np.float64)
    got = espo_ref.token_entropy(arr, temperature=temperature)
    want = oracle_token_entropy(logits, temperature)
    assert_close(got, want, VALUE, "ESPO-ENT", "token_entropy", repro(logits=arr, temperature=temperature))
    assert np.all(got >= 0), f"[ESPO-ENT] token_entropy is clamped below at 0, got {got.min()!r}"


# ------------------------------------------------------------------ [ESPO-GROUP-*]


@given(data=st.data())
def test_high_group_size_matches_oracle__ESPO_GROUP_TOPFRAC(data):
    lengths = data.draw(st.lists(st.integers(0, 100_000), min_size=1, max_size=8), label="lengths")
    rho = data.draw(
        st.one_of(
            st.sampled_from(TOP_FRACTIONS + (0.07, 0.14, 0.29, 0.57, 0.3, 0.7, 0.9)),
            st.floats(1e-6, 1.0),
            st.integers(1, 999).map(lambda k: k / 1000),
        ),
        label="top_fraction",
    )
    got = espo_ref.high_group_size(np.array(lengths), rho)
    want = [oracle_high_group_size(n, rho) for n in lengths]
    assert_equal(got, want, "ESPO-GROUP-TOPFRAC", "high_group_size", repro(lengths=lengths, rho=rho))


@pytest.mark.parametrize("grouping", [g for g, _ in GROUPINGS], ids=[c for _, c in GROUPINGS])
@given(data=st.data())
def test_entropy_groups_matches_oracle(grouping, data):
    """[ESPO-GROUP] and the variant named by the test id."""
    config = draw_config(data, grouping)
    B = data.draw(st.integers(1, 6), label="B")
    T = data.draw(st.integers(1, 12), label="T")
    mask = draw_mask(data, B, T)
    entropy = draw_entropy(data, B, T, config, negatives=True)
    (entropy,) = fill_padding(data, [entropy], mask)
    got = espo_ref.entropy_groups(entropy, mask, config)
    want = oracle_entropy_groups(entropy, mask, config)
    clause = dict(GROUPINGS)[grouping].replace("_", "-")
    assert got.dtype == np.int64, f"[ESPO-GROUP] groups must be int64, got {got.dtype}"
    assert_equal(got, want, clause, "entropy_groups", repro(entropy=entropy, mask=np.asarray(mask), config=config))


# ------------------------------------------------------------------ [ESPO-CLIP*]


@pytest.mark.parametrize(
    "reading,clause", [("group_mean", "ESPO-CLIP"), ("token_over_groups", "ESPO-CLIP-TOKEN")],
    ids=["ESPO_CLIP", "ESPO_CLIP_TOKEN"],
)
@given(data=st.data())
def test_group_clip_eps_matches_oracle(reading, clause, data):
    config = draw_config(data, eps_reading=reading)
    B = data.draw(st.integers(1, 6), label="B")
    T = data.draw(st.integers(1, 12), label="T")
    mask = draw_mask(data, B, T)
    entropy = draw_entropy(data, B, T, config, negatives=True)
    (entropy,) = fill_padding(data, [entropy], mask)
    groups = np.array(oracle_entropy_groups(entropy, mask, config), dtype=np.int64).reshape(B, T)
    got = espo_ref.group_clip_eps(entropy, groups, config)
    want = oracle_group_clip_eps(entropy, groups.tolist(), config)
    assert_close(got, want, VALUE, clause, "group_clip_eps", repro(entropy=entropy, groups=groups, config=config))


@given(data=st.data())
def test_clip_bounds_matches_oracle__ESPO_CLIP_FIXED(data):
    config = draw_config(data)
    B = data.draw(st.integers(1, 6), label="B")
    T = data.draw(st.integers(1, 12), label="T")
    mask = draw_mask(data, B, T)
    entropy = draw_entropy(data, B, T, config)
    (entropy,) = fill_padding(data, [entropy], mask)
    groups = np.array(oracle_entropy_groups(entropy, mask, config), dtype=np.int64).reshape(B, T)
    got_low, got_high = espo_ref.clip_bounds(entropy, groups, config)
    want_low, want_high = oracle_clip_bounds(entropy, groups.tolist(), config)
    ctx = repro(entropy=entropy, groups=groups, config=config)
    assert_close(got_low, want_low, VALUE, "ESPO-CLIP-FIXED", "clip_bounds eps_low", ctx)
    assert_close(got_high, want_high, VALUE, "ESPO-CLIP-FIXED", "clip_bounds eps_high", ctx)


# ------------------------------------------------------------------ [ESPO-RATIO]


@given(data=st.data())
def test_group_log_ratio_matches_oracle__ESPO_RATIO(data):
    batch = draw_batch(data, min_tokens=0)
    config, mask = batch["config"], batch["mask"]
    groups = np.array(oracle_entropy_groups(batch["entropy"], mask, config), dtype=np.int64).reshape(mask.shape)
    got = espo_ref.group_log_ratio(batch["logp"], batch["old_logp"], groups)
    want = oracle_group_log_ratio(batch["logp"], batch["old_logp"], groups.tolist())
    assert_close(got, want, VALUE, "ESPO-RATIO", "group_log_ratio",
                 repro(logp=batch["logp"], old_logp=batch["old_logp"], groups=groups))


# ------------------------------------------------------------------ [ESPO-ADV]


@given(data=st.data())
def test_grpo_advantages_matches_oracle__ESPO_ADV(data):
    B = data.draw(st.integers(1, 16), label="B")
    exact = st.sampled_from([0.0, 1.0, 0.5, -1.0, 2.0, 0.25])
    rewards = data.draw(
        st.lists(st.one_of(exact, st.floats(-10, 10)), min_size=B, max_size=B), label="rewards"
    )
    prompt_kind = data.draw(st.sampled_from(["int", "str"]), label="prompt_kind")
    prompts = data.draw(st.lists(st.integers(0, 4), min_size=B, max_size=B), label="prompt_ids")
    if prompt_kind == "str":
        prompts = [f"p{k}" for k in prompts]
    valid = data.draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=B, max_size=B)), label="valid")
    ddof = data.draw(st.sampled_from([1, 0]), label="ddof")
    eps = data.draw(st.sampled_from([1e-6, 1e-4, 0.0]), label="eps")
    # Conditioning: reject near-ties of unequal rewards relative to their size (equal
    # rewards must give exactly 0 whatever their value: no assume for them).
    vmask = [True] * B if valid is None else valid
    for p in set(prompts):
        G = [rewards[i] for i in range(B) if prompts[i] == p and vmask[i]]
        if len(G) < 2:
            continue
        if len(set(G)) == 1:
            continue
        mu = math.fsum(G) / len(G)
        sigma = math.sqrt(math.fsum((r - mu) ** 2 for r in G) / (len(G) - ddof))
        assume(max(abs(r) for r in G) <= 100 * (sigma + eps))
    got = espo_ref.grpo_advantages(
        np.array(rewards, dtype=np.float64), np.array(prompts),
        None if valid is None else np.array(valid), ddof=ddof, eps=eps,
    )
    want = oracle_grpo_advantages(rewards, prompts, valid, ddof=ddof, eps=eps)
    assert_close(got, want, VALUE, "ESPO-ADV", "grpo_advantages",
                 repro(rewards=rewards, prompt_ids=prompts, valid=valid, ddof=ddof, eps=eps))


def test_grpo_advantages_equal_rewards_give_zero__ESPO_ADV():
    """Equal non-dyadic rewards: the float mean of [0.1] * 3 is not 0.1, yet A must be 0."""
    rewards = np.array([0.1, 0.1, 0.1])
    for eps in (0.0, 1e-6):
        got = espo_ref.grpo_advantages(rewards, np.array([0, 0, 0]), eps=eps)
        assert np.all(got == 0.0), (
            f"[ESPO-ADV] all valid rewards equal: advantage must be 0, got {got.tolist()} "
            f"(eps={eps}){repro(rewards=rewards, prompt_ids=[0, 0, 0], eps=eps)}"
        )


# ------------------------------------------------------------------ [ESPO-OBJ] and friends

TOKEN_FIELDS = (
    ("groups", "ESPO-GROUP", None),
    ("trained", "ESPO-GROUP-DROPLOW", None),
    ("clipped_high", "ESPO-CLIPMASK", None),
    ("clipped_low", "ESPO-CLIPMASK", None),
    ("eps_low", "ESPO-CLIP-FIXED", VALUE),
    ("eps_high", "ESPO-CLIP-FIXED", VALUE),
    ("eps", "ESPO-CLIP", VALUE),
    ("log_ratio", "ESPO-RATIO", VALUE),
    ("ratio", "ESPO-RATIO-CLAMP", VALUE),
    ("weight", "ESPO-AGG", VALUE),
    ("grad", "ESPO-OBJ", GRAD),
)


@pytest.mark.parametrize("grouping", [g for g, _ in GROUPINGS], ids=[c for _, c in GROUPINGS])
@given(data=st.data())
def test_espo_loss_matches_oracle__ESPO_OBJ(grouping, data):
    """Every per-token output and the loss: [ESPO-OBJ], [ESPO-AGG], [ESPO-CLIPMASK],
    [ESPO-RATIO-TOKEN]/[ESPO-RATIO-LITERAL], [ESPO-RATIO-CLAMP], under every option."""
    batch = draw_batch(data, grouping)
    got, want = run_both(batch)
    assume(well_conditioned(want))
    o = want["oracle"]
    mask = np.asarray(batch["mask"], dtype=bool)
    event(f"clamped token: {np.any(o['clamped'])}")
    event(f"clipped token: {np.any(o['clipped_high']) or np.any(o['clipped_low'])}")
    event(f"empty row: {(~mask.any(axis=1)).any()}")
    event(f"L=1 row: {(mask.sum(axis=1) == 1).any()}")
    ctx = repro(**{k: (np.asarray(v) if k != "config" else v) for k, v in batch.items()})
    for name, clause, tol in TOKEN_FIELDS:
        if tol is None:
            assert_equal(getattr(got, name), np.array(o[name]).reshape(batch["mask"].shape), clause, name, ctx)
        else:
            assert_close(getattr(got, name), o[name], tol, clause, name, ctx)
    assert_close(got.loss, o["loss"], VALUE, "ESPO-OBJ", "loss", ctx)


@pytest.mark.parametrize("grouping", [g for g, _ in GROUPINGS], ids=[c for _, c in GROUPINGS])
@given(data=st.data())
def test_espo_loss_metrics_match_oracle__ESPO_METRICS(grouping, data):
    batch = draw_batch(data, grouping)
    got, want = run_both(batch)
    assume(well_conditioned(want))
    o = want["oracle"]
    ctx = repro(**{k: (np.asarray(v) if k != "config" else v) for k, v in batch.items()})
    missing = sorted(set(o["metrics"]) - set(got.metrics))
    assert not missing, f"[ESPO-METRICS] metrics missing from the core: {missing}"
    for key, want_value in o["metrics"].items():
        assert isinstance(got.metrics[key], float), f"[ESPO-METRICS] {key} must be a Python float"
        assert_close(got.metrics[key], want_value, VALUE, "ESPO-METRICS", f"metrics[{key!r}]", ctx)


@given(data=st.data())
def test_espo_loss_many_prompts_each_response_counts_once__ESPO_AGG(data):
    """Eq. 11 advantages over several prompts, fed to Eq. 5: no per-prompt averaging."""
    batch = draw_batch(data)
    B = batch["mask"].shape[0]
    prompts = data.draw(st.lists(st.integers(0, 2), min_size=B, max_size=B), label="prompt_ids")
    rewards = data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=B, max_size=B), label="rewards")
    batch["advantages"] = espo_ref.grpo_advantages(np.array(rewards), np.array(prompts))
    want_adv = oracle_grpo_advantages(rewards, prompts)
    assert_close(batch["advantages"], want_adv, VALUE, "ESPO-ADV", "grpo_advantages")
    got, want = run_both(batch)
    assume(well_conditioned(want))
    ctx = repro(**{k: (np.asarray(v) if k != "config" else v) for k, v in batch.items()})
    assert_close(got.loss, want["oracle"]["loss"], VALUE, "ESPO-AGG", "loss", ctx)
    assert_close(got.grad, want["oracle"]["grad"], GRAD, "ESPO-AGG", "grad", ctx)
