"""The baselines of specs/baselines.md against loop oracles, finite differences and ESPO.

Each test names the clause it checks; a failure message names the clause and the values.
Expected values come from ``helpers/baselines_oracle.py`` (plain Python loops written from the
spec), from central finite differences, or from ``espo_loss`` through an identity of
[BASE-IDENTITIES] — never from the function under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from espo_ref import (
    CISPOConfig,
    DAPOConfig,
    ESPOConfig,
    ESPOInputError,
    GMPOConfig,
    GRPOConfig,
    GSPOConfig,
    LOSS_AGG_MODES,
    agg_loss,
    agg_weights,
    cispo_loss,
    dapo_loss,
    espo_loss,
    gmpo_loss,
    grpo_loss,
    gspo_loss,
)
from espo_ref.tolerances import FINITE_DIFFERENCE, tolerance

from helpers import baselines_oracle as oracle
from helpers.asserts import assert_close
from helpers.baseline_inputs import BAD_INPUTS, GOOD, bad_arguments

VALUE = tolerance("numpy", "float64", "value")
GRAD = tolerance("numpy", "float64", "grad")

LOSSES = {
    "grpo": (grpo_loss, GRPOConfig, oracle.ppo_clip),
    "dapo": (dapo_loss, DAPOConfig, oracle.ppo_clip),
    "gspo": (gspo_loss, GSPOConfig, oracle.gspo),
    "gmpo": (gmpo_loss, GMPOConfig, oracle.gmpo),
    "cispo": (cispo_loss, CISPOConfig, oracle.cispo),
}


# --- helpers -----------------------------------------------------------------------------


def assert_same_flags(got, want, mask, clause, what):
    got = np.asarray(got)
    want = np.asarray(want, dtype=bool) & mask
    bad = np.argwhere(got != want)
    assert bad.size == 0, f"[{clause}] {what} differs at {bad[:5].tolist()}: got {got[tuple(bad[0])]}"


def well_conditioned(result, scale=1e3):
    """The loss is a sum of terms; reject batches where they cancel (float64 cannot pin
    the sum to 1e-12 then). Rejected with ``assume``, never by loosening a tolerance."""
    terms = np.abs(np.asarray(result.weight) * np.asarray(result.extras["per_token_loss"]))
    return float(terms.sum()) <= scale * max(1.0, abs(result.loss))


@st.composite
def batches(draw, max_b=4, max_t=6, extremes=(), min_len=0, per_token_adv=None, allow_empty=True):
    """A padded batch: (logp, old_logp, mask, advantages) with NaN in the padding."""
    B = draw(st.integers(1, max_b), label="B")
    T = draw(st.integers(max(1, min_len), max_t), label="T")
    rows = []
    for b in range(B):
        row = draw(st.lists(st.booleans(), min_size=T, max_size=T), label=f"mask[{b}]")
        if min_len and sum(row) < min_len and not (allow_empty and not any(row)):
            row = [True] * min_len + row[min_len:]
        if not allow_empty and not any(row):
            row[0] = True
        rows.append(row)
    mask = np.array(rows, dtype=bool)
    assume(mask.any())
    log_ratio = st.floats(-2.5, 2.5, allow_nan=False)
    if extremes:
        log_ratio = st.one_of(log_ratio, st.sampled_from(list(extremes)))
    lr = np.array(draw(st.lists(log_ratio, min_size=B * T, max_size=B * T), label="log_ratio")).reshape(B, T)
    old = np.array(draw(st.lists(st.floats(-6, 0), min_size=B * T, max_size=B * T), label="old_logp")).reshape(B, T)
    logp = np.where(mask, old + lr, np.nan)
    old = np.where(mask, old, np.nan)
    adv_value = st.one_of(st.floats(-2, 2, allow_nan=False), st.sampled_from([-1.0, 0.0, 1.0]))
    if per_token_adv is None:
        per_token_adv = draw(st.booleans(), label="per_token_adv")
    if per_token_adv:
        adv = np.array(draw(st.lists(adv_value, min_size=B * T, max_size=B * T), label="adv")).reshape(B, T)
        adv = np.where(mask, adv, np.nan)
    else:
        adv = np.array(draw(st.lists(adv_value, min_size=B, max_size=B), label="adv"))
    return logp, old, mask, adv


def adv_2d(adv, mask):
    adv = np.asarray(adv, dtype=float)
    return np.broadcast_to(adv[:, None], mask.shape) if adv.ndim == 1 else adv


def draw_agg(data, T):
    mode = data.draw(st.sampled_from(LOSS_AGG_MODES), label="loss_agg_mode")
    max_len = None
    if mode == "seq-mean-token-sum-norm":
        max_len = data.draw(st.one_of(st.none(), st.integers(T, T + 5)), label="max_len")
    return mode, max_len


def draw_config(data, method, T):
    mode, max_len = draw_agg(data, T)
    kw = {"loss_agg_mode": mode, "max_len": max_len}
    if method in ("grpo", "dapo"):
        kw["eps_low"] = data.draw(st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]), label="eps_low")
        kw["eps_high"] = data.draw(st.sampled_from([0.0, 0.2, 0.28, 1.0]), label="eps_high")
        kw["log_ratio_clamp"] = data.draw(st.sampled_from([None, 20.0, 1.5]), label="log_ratio_clamp")
        kw["dual_clip"] = data.draw(st.sampled_from([None, 1.5, 3.0]), label="dual_clip")
    elif method == "gspo":
        kw["eps_low"] = data.draw(st.sampled_from([3e-4, 0.2, 1.0]), label="eps_low")
        kw["eps_high"] = data.draw(st.sampled_from([4e-4, 0.28]), label="eps_high")
        kw["log_ratio_clamp"] = data.draw(st.sampled_from([None, 10.0, 0.5]), label="log_ratio_clamp")
        kw["level"] = data.draw(st.sampled_from(["token", "sequence"]), label="level")
    elif method == "gmpo":
        kw["eps_low"] = data.draw(st.sampled_from([0.0, 0.4, 1.0]), label="eps_low")
        kw["eps_high"] = data.draw(st.sampled_from([0.0, 0.4, 2.0]), label="eps_high")
    else:
        kw["eps_low"] = data.draw(st.sampled_from([0.2, 1.0, 1.5]), label="eps_low")
        kw["eps_high"] = data.draw(st.sampled_from([0.28, 4.0]), label="eps_high")
        kw["log_ratio_clamp"] = data.draw(st.sampled_from([None, 20.0, 1.5]), label="log_ratio_clamp")
    return LOSSES[method][1](**kw)


def repro(logp, old, mask, adv, config):
    return (f"\n  reproduce: {config!r}\n  logp={logp.tolist()}\n  old_logp={old.tolist()}"
            f"\n  mask={mask.tolist()}\n  advantages={np.asarray(adv).tolist()}")


def check_against_oracle(method, clause, logp, old, mask, adv, config):
    fn, _, oracle_fn = LOSSES[method]
    got = fn(logp, old, mask, adv, config)
    assume(well_conditioned(got))
    want = oracle_fn(logp.tolist(), old.tolist(), mask.tolist(), adv_2d(adv, mask).tolist(), config)
    r = repro(logp, old, mask, adv, config)
    assert_close(got.loss, want["loss"], VALUE, clause, "loss", r)
    assert_close(got.grad, want["grad"], GRAD, clause, "grad", r)
    assert_close(got.ratio, want["ratio"], VALUE, clause, "ratio", r)
    assert_same_flags(got.clipped_high, want["high"], mask, clause, "clipped_high")
    assert_same_flags(got.clipped_low, want["low"], mask, clause, "clipped_low")
    for key in ("clipfrac_high", "clipfrac_low", "clipfrac", "clamped_frac", "clipfrac_dual", "capped_frac"):
        if key in want:
            assert_close(got.metrics[key], want[key], VALUE, "BASE-METRICS", key, r)
    assert not np.isnan(got.grad).any() and not np.isnan(got.ratio).any(), f"[BASE-INPUT] padding leaked{r}"
    return got


# --- oracle comparisons ------------------------------------------------------------------

EXTREMES = (0.0, 21.0, -21.0, 25.0, -30.0, 12.0, -12.0, 1e-5)


ORACLE_ROWS = [  # (method, the clause a failure names, log-ratios drawn besides -2.5..2.5)
    ("grpo", "BASE-GRPO", EXTREMES),  # [BASE-GRPO-DUALCLIP] [BASE-RATIO-CLAMP] [BASE-AGG]: every option
    ("dapo", "BASE-DAPO", EXTREMES),  # clip-higher and token-mean (and the other modes)
    ("gspo", "BASE-GSPO", EXTREMES),  # [BASE-GSPO-SEQ] both levels, clamp above
    ("gmpo", "BASE-GMPO", (0.0, 0.4, -0.4, 5.0, -5.0)),  # sign-aware log-space clip, A = 0 tokens
    ("cispo", "BASE-CISPO", EXTREMES),  # capped stop-gradient weight times A times logp
]


@pytest.mark.parametrize("method, clause, extremes", ORACLE_ROWS, ids=[row[1] for row in ORACLE_ROWS])
@given(data=st.data())
def test_BASE_GRPO_and_BASE_GRPO_DUALCLIP_and_BASE_DAPO_and_BASE_GSPO_and_BASE_GSPO_SEQ_and_BASE_GMPO_and_BASE_CISPO_match_the_oracle(  # noqa: E501
        data, method, clause, extremes):
    """Each baseline on a drawn batch and config (every option, every aggregation mode) vs the
    loop oracle; the test id is the clause."""
    logp, old, mask, adv = data.draw(batches(extremes=extremes), label="batch")
    config = draw_config(data, method, mask.shape[1])
    check_against_oracle(method, clause, logp, old, mask, adv, config)


@given(data=st.data())
def test_BASE_AGG_matches_oracle(data):
    """[BASE-AGG] [BASE-AGG-EMPTY] agg_loss and agg_weights vs the loop oracle."""
    logp, _, mask, _ = data.draw(batches(), label="batch")
    mode, max_len = draw_agg(data, mask.shape[1])
    values = np.where(mask, np.nan_to_num(logp), np.nan)
    want_w = oracle.weights(mask.tolist(), mode, max_len)
    want = oracle.agg(np.nan_to_num(values).tolist(), mask.tolist(), mode, max_len)
    assert_close(agg_weights(mask, mode, max_len), want_w, VALUE, "BASE-AGG", "weights")
    assert_close(agg_loss(values, mask, mode, max_len), want, VALUE, "BASE-AGG", "value")


def test_BASE_AGG_EMPTY_rows_do_not_count():
    """[BASE-AGG-EMPTY] adding an empty row changes no mode's value."""
    values = np.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = np.array([[1, 1, 1], [1, 0, 0]], dtype=bool)
    more_values = np.vstack([values, [np.nan] * 3])
    more_mask = np.vstack([mask, [False] * 3])
    for mode in LOSS_AGG_MODES:
        assert agg_loss(values, mask, mode) == agg_loss(more_values, more_mask, mode), mode


# --- finite differences ------------------------------------------------------------------


def directional_fd(f, x, v, mask, h=1e-6):
    return (f(np.where(mask, x + h * v, x)) - f(np.where(mask, x - h * v, x))) / (2 * h)


def fd_check(clause, f, grad, logp, mask, data):
    v = np.array(data.draw(st.lists(st.floats(-1, 1), min_size=mask.size, max_size=mask.size),
                           label="direction")).reshape(mask.shape)
    v = np.where(mask, v, 0.0)
    fd = directional_fd(f, np.nan_to_num(logp), v, mask)
    analytic = float(np.sum(np.where(mask, grad * v, 0.0)))
    assert_close(analytic, fd, FINITE_DIFFERENCE, clause, "directional derivative vs central differences")


def away_from(x, edges, margin=1e-4):
    return all(abs(x - e) > margin for e in edges)


@given(data=st.data())
def test_BASE_GRPO_finite_differences(data):
    """[BASE-GRPO] [BASE-DAPO] [BASE-GRPO-DUALCLIP]: GRPO has no stop-gradient; its gradient
    is the derivative of its value wherever no ratio sits on a kink."""
    logp, old, mask, adv = data.draw(batches(), label="batch")
    config = draw_config(data, "grpo", mask.shape[1])
    lr = (logp - old)[mask]
    kinks = [math.log(1 + config.eps_high)] + ([math.log(1 - config.eps_low)] if config.eps_low < 1 else [])
    kinks += [config.dual_clip and math.log(config.dual_clip) or 99.0]
    kinks += [] if config.log_ratio_clamp is None else [config.log_ratio_clamp, -config.log_ratio_clamp]
    assume(all(away_from(x, kinks) for x in lr))
    result = grpo_loss(logp, old, mask, adv, config)
    fd_check("BASE-GRPO", lambda x: grpo_loss(x, old, mask, adv, config).loss, result.grad, logp, mask, data)


@given(data=st.data())
def test_BASE_GSPO_SEQ_finite_differences(data):
    """[BASE-GSPO-SEQ] the sequence form is the derivative of the GSPO value; with a
    per-response advantage so is the token form [BASE-GSPO]."""
    logp, old, mask, adv = data.draw(batches(), label="batch")
    config = draw_config(data, "gspo", mask.shape[1])
    log_s = [float(np.mean((logp - old)[b][mask[b]])) for b in range(mask.shape[0]) if mask[b].any()]
    kinks = [math.log(1 + config.eps_high)] + ([math.log(1 - config.eps_low)] if config.eps_low < 1 else [])
    kinks += [] if config.log_ratio_clamp is None else [config.log_ratio_clamp]
    assume(all(away_from(x, kinks, 1e-5) for x in log_s))
    seq = config.replace(level="sequence")
    result = gspo_loss(logp, old, mask, adv, seq)
    f = lambda x: gspo_loss(x, old, mask, adv, seq).loss  # noqa: E731
    fd_check("BASE-GSPO-SEQ", f, result.grad, logp, mask, data)
    if np.asarray(adv).ndim == 1:
        token = gspo_loss(logp, old, mask, adv, config.replace(level="token"))
        fd_check("BASE-GSPO", f, token.grad, logp, mask, data)


@given(data=st.data())
def test_BASE_GMPO_finite_differences(data):
    """[BASE-GMPO] no stop-gradient: the gradient is the derivative of the value."""
    logp, old, mask, adv = data.draw(batches(), label="batch")
    config = draw_config(data, "gmpo", mask.shape[1])
    assume(all(away_from(x, [config.eps_high, -config.eps_low]) for x in (logp - old)[mask]))
    result = gmpo_loss(logp, old, mask, adv, config)
    fd_check("BASE-GMPO", lambda x: gmpo_loss(x, old, mask, adv, config).loss, result.grad, logp, mask, data)


@given(data=st.data())
def test_BASE_CISPO_finite_differences_with_ratio_frozen(data):
    """[BASE-CISPO] moving logp and old_logp together keeps r (so sg(clip(r))) fixed: the
    derivative along that path is the stop-gradient gradient."""
    logp, old, mask, adv = data.draw(batches(), label="batch")
    config = draw_config(data, "cispo", mask.shape[1])
    result = cispo_loss(logp, old, mask, adv, config)

    def f(x):
        return cispo_loss(x, np.where(mask, old + (x - np.nan_to_num(logp)), old), mask, adv, config).loss

    fd_check("BASE-CISPO", f, result.grad, logp, mask, data)


# --- identities [BASE-IDENTITIES] --------------------------------------------------------

V = 32


def entropies(data, mask, constant=False):
    if constant:
        e = data.draw(st.floats(0.0, math.log(V)), label="entropy")
        return np.where(mask, e, np.nan)
    values = data.draw(st.lists(st.floats(0.0, math.log(V)), min_size=mask.size, max_size=mask.size), label="entropy")
    return np.where(mask, np.array(values).reshape(mask.shape), np.nan)


def assert_same_loss(got, want, mask, clause, what):
    assert_close(got.loss, want.loss, VALUE, clause, f"{what}: loss")
    assert_close(got.grad, want.grad, GRAD, clause, f"{what}: grad")
    assert_close(got.ratio, want.ratio, VALUE, clause, f"{what}: ratio")
    assert_same_flags(got.clipped_high, np.asarray(want.clipped_high), mask, clause, f"{what}: clipped_high")
    assert_same_flags(got.clipped_low, np.asarray(want.clipped_low), mask, clause, f"{what}: clipped_low")


@given(data=st.data())
def test_BASE_IDENTITIES_gspo_token_equals_sequence_with_per_response_advantage(data):
    """[BASE-IDENTITIES] item 5 / [BASE-GSPO-SEQ]: equal value, flags and gradient."""
    logp, old, mask, adv = data.draw(batches(extremes=EXTREMES, per_token_adv=False), label="batch")
    config = draw_config(data, "gspo", mask.shape[1])
    token = gspo_loss(logp, old, mask, adv, config.replace(level="token"))
    seq = gspo_loss(logp, old, mask, adv, config.replace(level="sequence"))
    assert_same_loss(seq, token, mask, "BASE-IDENTITIES", "GSPO sequence vs token form")


@given(data=st.data())
def test_BASE_IDENTITIES_espo_none_fixed_equals_gspo(data):
    """[BASE-IDENTITIES] item 1, Table 2 "fixed (3e-4, 4e-4)" without grouping: ESPO with
    grouping="none", clip="fixed" equals gspo_loss (defaults) in value and gradient,
    empty responses and clamped responses included."""
    logp, old, mask, adv = data.draw(batches(extremes=EXTREMES), label="batch")
    entropy = entropies(data, mask)
    espo = espo_loss(logp, old, entropy, mask, adv,
                     ESPOConfig(vocab_size=V, grouping="none", clip="fixed", eps_low=3e-4, eps_high=4e-4))
    gspo = gspo_loss(logp, old, mask, adv, GSPOConfig())
    assert_same_loss(espo, gspo, mask, "BASE-IDENTITIES", "ESPO(none, fixed 3e-4/4e-4) vs GSPO")


@given(data=st.data())
def test_BASE_IDENTITIES_espo_token_fixed_equals_grpo(data):
    """[BASE-IDENTITIES] item 2: ESPO with grouping="token", clip="fixed" (0.2, 0.2) equals
    GRPO with seq-mean-token-mean (log-ratios inside both clamps)."""
    logp, old, mask, adv = data.draw(batches(), label="batch")
    entropy = entropies(data, mask)
    espo = espo_loss(logp, old, entropy, mask, adv,
                     ESPOConfig(vocab_size=V, grouping="token", clip="fixed", eps_low=0.2, eps_high=0.2))
    grpo = grpo_loss(logp, old, mask, adv, GRPOConfig(loss_agg_mode="seq-mean-token-mean"))
    assert_same_loss(espo, grpo, mask, "BASE-IDENTITIES", "ESPO(token, fixed 0.2/0.2) vs GRPO")


def split_batch(groups, logp, old, mask, adv):
    """Each response -> two responses: its group-0 tokens and its group-1 tokens."""
    B, T = mask.shape
    rows = np.repeat(np.arange(B), 2)
    which = np.tile([0, 1], B)
    split_mask = mask[rows] & (groups[rows] == which[:, None])
    adv = np.asarray(adv)
    return logp[rows], old[rows], split_mask, adv[rows], rows, which


def merge_grad(split_grad, groups, mask):
    B, T = mask.shape
    g = np.asarray(split_grad).reshape(B, 2, T)
    return np.where(mask, np.where(groups == 0, g[:, 0], g[:, 1]), 0.0)


def check_fixed_range_ablation(data, eps_low, eps_high):
    logp, old, mask, adv = data.draw(batches(extremes=EXTREMES, min_len=2), label="batch")
    assume(all(mask[b].sum() >= 2 or not mask[b].any() for b in range(mask.shape[0])))
    entropy = entropies(data, mask)
    config = ESPOConfig(vocab_size=V, clip="fixed", eps_low=eps_low, eps_high=eps_high)
    espo = espo_loss(logp, old, entropy, mask, adv, config)
    groups = np.asarray(espo.groups)
    s_logp, s_old, s_mask, s_adv, _, _ = split_batch(groups, logp, old, mask, adv)
    gspo = gspo_loss(s_logp, s_old, s_mask, s_adv, GSPOConfig(eps_low=eps_low, eps_high=eps_high))
    clause = "BASE-IDENTITIES"
    assert_close(espo.loss, gspo.loss, VALUE, clause, "ESPO(top_fraction, fixed) vs GSPO on the split batch: loss")
    assert_close(espo.grad, merge_grad(gspo.grad, groups, mask), GRAD, clause, "split-batch gradient")
    assert_close(espo.ratio, merge_grad(gspo.ratio, groups, mask), VALUE, clause, "split-batch ratio")


@given(data=st.data())
def test_BASE_IDENTITIES_table2_fixed_sequence_range(data):
    """[BASE-IDENTITIES] item 4, Table 2 "w/o adaptive clipping, fixed (3e-4, 4e-4)":
    ESPO with entropy grouping and a fixed range is GSPO on the split batch."""
    check_fixed_range_ablation(data, 3e-4, 4e-4)


@given(data=st.data())
def test_BASE_IDENTITIES_table2_fixed_token_range(data):
    """[BASE-IDENTITIES] items 4 and 2, Table 2 "w/o adaptive clipping, fixed (0.2, 0.28)":
    the split-batch identity at (0.2, 0.28), and with grouping="token" the DAPO surrogate
    under seq-mean-token-mean."""
    check_fixed_range_ablation(data, 0.2, 0.28)
    logp, old, mask, adv = data.draw(batches(), label="token batch")
    entropy = entropies(data, mask)
    espo = espo_loss(logp, old, entropy, mask, adv,
                     ESPOConfig(vocab_size=V, grouping="token", clip="fixed", eps_low=0.2, eps_high=0.28))
    grpo = grpo_loss(logp, old, mask, adv, GRPOConfig(eps_low=0.2, eps_high=0.28))
    assert_same_loss(espo, grpo, mask, "BASE-IDENTITIES", "ESPO(token, fixed 0.2/0.28) vs GRPO(0.2, 0.28)")


@given(data=st.data())
def test_BASE_IDENTITIES_table2_without_entropy_grouping(data):
    """[BASE-IDENTITIES] item 3, Table 2 "w/o entropy grouping" (grouping="token", adaptive
    clip): with one entropy e everywhere it is GRPO with eps = alpha e / log V."""
    logp, old, mask, adv = data.draw(batches(), label="batch")
    entropy = entropies(data, mask, constant=True)
    alpha = data.draw(st.sampled_from([0.02, 1.0, 5.0]), label="alpha")
    espo = espo_loss(logp, old, entropy, mask, adv, ESPOConfig(vocab_size=V, alpha=alpha, grouping="token"))
    e = float(entropy[mask][0])
    eps = alpha * e / math.log(V)
    eps_tokens = np.asarray(espo.eps)[mask]
    assume(np.all(eps_tokens == eps_tokens[0]))  # alpha * mean(e) / log V of one token: exact
    eps = float(eps_tokens[0])
    assert abs(eps - alpha * e / math.log(V)) <= 1e-15 * max(1.0, eps)
    grpo = grpo_loss(logp, old, mask, adv, GRPOConfig(eps_low=eps, eps_high=eps))
    assert_same_loss(espo, grpo, mask, "BASE-IDENTITIES", "ESPO(token, adaptive) vs GRPO(eps)")


# --- peers [BASE-PEERS] ------------------------------------------------------------------


def test_BASE_PEERS_trl_cispo_cap_is_eps_high_plus_one():
    """[BASE-PEERS] TRL's CISPO cap 5.0 with no lower bound = our eps_high 4.0 with any
    eps_low >= 1 (lower bound <= 0 < r)."""
    logp = np.log(np.array([[6.0, 0.5, 1e-3, 3.0]]))
    old = np.zeros((1, 4))
    mask = np.ones((1, 4), dtype=bool)
    adv = np.array([[1.0, -1.0, 2.0, -0.5]])
    ref = cispo_loss(logp, old, mask, adv, CISPOConfig(eps_low=1.0, eps_high=4.0))
    for eps_low in (1.0, 1.5, 100.0):
        got = cispo_loss(logp, old, mask, adv, CISPOConfig(eps_low=eps_low, eps_high=4.0))
        assert got.loss == ref.loss and np.array_equal(got.grad, ref.grad)
    cap = np.minimum(np.exp(logp - old), 5.0)
    assert np.array_equal(np.asarray(ref.extras["is_weight"]), cap)


def test_BASE_PEERS_defaults_are_the_pinned_ones():
    """[BASE-PEERS] [BASE-CONFIG] the defaults the spec's config table lists."""
    assert (GRPOConfig().eps_low, GRPOConfig().eps_high, GRPOConfig().loss_agg_mode) == (0.2, 0.2, "seq-mean-token-mean")
    assert GRPOConfig().log_ratio_clamp == 20.0 and GRPOConfig().dual_clip is None
    assert (DAPOConfig().eps_low, DAPOConfig().eps_high, DAPOConfig().loss_agg_mode) == (0.2, 0.28, "token-mean")
    g = GSPOConfig()
    assert (g.eps_low, g.eps_high, g.log_ratio_clamp, g.level, g.loss_agg_mode) == (
        3e-4, 4e-4, 10.0, "token", "seq-mean-token-mean")
    assert (GMPOConfig().eps_low, GMPOConfig().eps_high) == (0.4, 0.4)
    c = CISPOConfig()
    assert (c.eps_low, c.eps_high, c.loss_agg_mode, c.log_ratio_clamp) == (1.0, 4.0, "token-mean", 20.0)


def test_BASE_PEERS_verl_vanilla_dual_clip_fraction_is_clipfrac_dual():
    """[BASE-PEERS] verl's pg_clipfrac_lower counts A < 0 tokens whose loss the dual clip
    lowers: our clipfrac_dual, not clipfrac_low."""
    logp = np.log(np.array([[4.0, 0.5, 2.0, 4.0]]))
    old = np.zeros((1, 4))
    mask = np.ones((1, 4), dtype=bool)
    adv = np.array([[-1.0, -1.0, -1.0, 1.0]])
    r = grpo_loss(logp, old, mask, adv, GRPOConfig(dual_clip=3.0, loss_agg_mode="token-mean"))
    assert r.metrics["clipfrac_dual"] == 0.25 and r.metrics["clipfrac_low"] == 0.25
    assert r.metrics["clipfrac_high"] == 0.25


# --- metrics [BASE-METRICS] --------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(LOSSES))
def test_BASE_METRICS_common_keys(method):
    """[BASE-METRICS] every loss reports the common metrics, token-weighted."""
    logp = np.array([[-1.0, -2.0, np.nan], [-0.5, np.nan, np.nan]])
    old = np.array([[-1.2, -1.5, 0.0], [-0.5, 0.0, 0.0]])
    mask = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)
    r = LOSSES[method][0](logp, old, mask, np.array([1.0, -1.0]))
    for key in ("tokens", "responses", "clipfrac", "clipfrac_high", "clipfrac_low", "clamped_frac",
                "ratio_mean", "approx_kl", "ppo_kl"):
        assert key in r.metrics and math.isfinite(r.metrics[key]), (method, key)
    assert r.metrics["tokens"] == 3 and r.metrics["responses"] == 2
    lr = np.array([0.2, -0.5, 0.0])
    assert abs(r.metrics["ppo_kl"] - float(np.mean(-lr))) < 1e-15
    assert abs(r.metrics["approx_kl"] - float(np.mean(np.expm1(lr) - lr))) < 1e-15


# --- errors [BASE-INPUT] [BASE-CONFIG] ---------------------------------------------------


@pytest.mark.parametrize("method", sorted(LOSSES))
@pytest.mark.parametrize("bad, word, what", BAD_INPUTS, ids=[row[2] for row in BAD_INPUTS])
def test_BASE_INPUT_errors(method, bad, word, what):
    """[BASE-INPUT] each bad input raises ESPOInputError naming the argument."""
    args = bad_arguments(bad)
    with pytest.raises(ESPOInputError, match=word):
        LOSSES[method][0](args["logp"], args["old_logp"], args["mask"], args["advantages"])


@pytest.mark.parametrize("method", sorted(LOSSES))
def test_BASE_INPUT_padding_never_leaks(method):
    """[BASE-INPUT] NaN and inf in padding change nothing."""
    logp, old, mask, adv = GOOD
    padded = [np.hstack([x, [[v]]]) for x, v in ((logp, np.nan), (old, np.inf))]
    m = np.hstack([mask, [[False]]])
    a = np.hstack([np.array([[1.0, 1.0]]), [[np.nan]]])
    fn = LOSSES[method][0]
    ref = fn(logp, old, mask, adv)
    got = fn(padded[0], padded[1], m, a)
    assert got.loss == ref.loss and np.array_equal(got.grad[:, :2], ref.grad) and got.grad[0, 2] == 0


def test_BASE_INPUT_overflow_without_clamp():
    """[BASE-INPUT] [BASE-RATIO-CLAMP] a ratio that overflows is an error saying to clamp."""
    logp, old, mask = np.array([[800.0]]), np.array([[0.0]]), np.array([[True]])
    with pytest.raises(ESPOInputError, match="log_ratio_clamp"):
        grpo_loss(logp, old, mask, np.array([1.0]), GRPOConfig(log_ratio_clamp=None))
    with pytest.raises(ESPOInputError, match="overflows"):
        gspo_loss(logp, old, mask, np.array([1.0]), GSPOConfig(log_ratio_clamp=None))
    with pytest.raises(ESPOInputError, match="overflows"):
        gmpo_loss(logp, old, mask, np.array([-1.0]))
    assert math.isfinite(grpo_loss(logp, old, mask, np.array([-1.0])).loss)


@pytest.mark.parametrize("cls, field, value", [
    (GRPOConfig, "eps_low", -0.1),
    (GRPOConfig, "eps_high", float("nan")),
    (GRPOConfig, "eps_low", True),
    (GRPOConfig, "loss_agg_mode", "mean"),
    (GRPOConfig, "max_len", 4),
    (GRPOConfig, "log_ratio_clamp", 0.0),
    (GRPOConfig, "dual_clip", 1.0),
    (DAPOConfig, "dual_clip", 0.5),
    (GSPOConfig, "level", "seq"),
    (GSPOConfig, "log_ratio_clamp", -1.0),
    (GMPOConfig, "eps_high", -1.0),
    (CISPOConfig, "eps_high", float("inf")),
])
def test_BASE_CONFIG_errors(cls, field, value):
    """[BASE-CONFIG] each bad field raises ESPOInputError naming it."""
    with pytest.raises(ESPOInputError, match=field):
        cls(**{field: value})


def test_BASE_CONFIG_max_len_and_types():
    """[BASE-CONFIG] max_len only with seq-mean-token-sum-norm, an int >= 1; a config of the
    wrong method is refused; replace() and dicts round-trip."""
    GRPOConfig(loss_agg_mode="seq-mean-token-sum-norm", max_len=8)
    for bad in (0, 2.5, True):
        with pytest.raises(ESPOInputError, match="max_len"):
            GRPOConfig(loss_agg_mode="seq-mean-token-sum-norm", max_len=bad)
    with pytest.raises(ESPOInputError, match="DAPOConfig"):
        dapo_loss(*GOOD, GRPOConfig())
    with pytest.raises(ESPOInputError, match="unknown fields"):
        GSPOConfig.from_dict({"level": "token", "clip": 1})
    c = GSPOConfig(level="sequence")
    assert GSPOConfig.from_dict(c.to_dict()) == c and c.replace(level="token").level == "token"
    with pytest.raises(ESPOInputError, match="level"):
        c.replace(level="x")


@pytest.mark.parametrize("kwargs, word", [
    ({"mode": "mean"}, "loss_agg_mode"),
    ({"mode": "token-mean", "max_len": 3}, "max_len"),
    ({"mode": "seq-mean-token-sum-norm", "max_len": 1}, "max_len"),
    ({"mode": "seq-mean-token-sum-norm", "max_len": 0}, "max_len"),
])
def test_BASE_AGG_errors(kwargs, word):
    """[BASE-AGG] unknown mode, misplaced or too small max_len."""
    with pytest.raises(ESPOInputError, match=word):
        agg_loss(np.ones((1, 2)), np.ones((1, 2), dtype=bool), **kwargs)


def test_BASE_AGG_EMPTY_errors():
    """[BASE-AGG-EMPTY] no response token at all is an error; NaN per-token values at
    response tokens are errors naming per_token; 1-D masks are refused."""
    with pytest.raises(ESPOInputError, match="no response token"):
        agg_loss(np.ones((2, 2)), np.zeros((2, 2), dtype=bool), "token-mean")
    with pytest.raises(ESPOInputError, match="per_token"):
        agg_loss(np.array([[np.nan, 1.0]]), np.ones((1, 2), dtype=bool), "token-mean")
    with pytest.raises(ESPOInputError, match="mask"):
        agg_weights(np.ones(3, dtype=bool), "token-mean")


# --- coverage of this spec ---------------------------------------------------------------


def test_every_base_clause_is_cited_by_code_and_here():
    """Every ``### [BASE-...]`` clause of specs/baselines.md is cited by espo_ref code and
    named in this file (the project-wide check is tests/test_spec_coverage.py)."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent
    ids = re.findall(r"^### \[(BASE-[A-Z0-9\-]+)\]", (root / "specs" / "baselines.md").read_text(), re.M)
    code = "".join(p.read_text() for p in (root / "espo_ref").glob("*.py"))
    here = pathlib.Path(__file__).read_text()
    assert ids
    assert not [i for i in ids if f"[{i}]" not in code], "clauses not cited in espo_ref/"
    assert not [i for i in ids if i not in here and i.replace("-", "_") not in here], "clauses not tested here"
