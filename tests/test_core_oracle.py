"""The vectorised numpy core against the loop oracle of tests/helpers/oracle.py, on random batches.

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

from helpers import handworked
from helpers.asserts import assert_close, assert_equal
from helpers.core_batches import (
    GRAD,
    GROUPINGS,
    TOP_FRACTIONS,
    VALUE,
    draw_batch,
    draw_config,
    draw_entropy,
    draw_mask,
    fill_padding,
    repro,
    run_both,
    well_conditioned,
)
from helpers.oracle import (
    oracle_clip_bounds,
    oracle_entropy_groups,
    oracle_espo_loss,
    oracle_group_clip_eps,
    oracle_group_log_ratio,
    oracle_grpo_advantages,
    oracle_high_group_size,
    oracle_token_entropy,
)


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
def test_ESPO_ENT_token_entropy_matches_the_oracle(data):
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
    assert_close(got, want, VALUE, "ESPO-ENT", "token_entropy", repro(logits=arr, temperature=temperature),
                 undefined_nan=True)
    assert np.all(got >= 0), f"[ESPO-ENT] token_entropy is clamped below at 0, got {got.min()!r}"


# ------------------------------------------------------------------ [ESPO-GROUP-*]


@given(data=st.data())
def test_ESPO_GROUP_TOPFRAC_high_group_size_matches_the_oracle(data):
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


def check_entropy_groups_match_the_oracle(grouping, data):
    """entropy_groups under ``grouping`` against the oracle; a failure names the grouping's clause."""
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


@pytest.mark.parametrize("grouping", [g for g, _ in GROUPINGS], ids=[c.replace("_", "-") for _, c in GROUPINGS])
@given(data=st.data())
def test_ESPO_GROUP_TOPFRAC_and_ESPO_GROUP_BATCH_and_ESPO_GROUP_RANGES_and_ESPO_GROUP_NONE_and_ESPO_GROUP_TOKEN_entropy_groups_match_the_oracle(  # noqa: E501
        grouping, data):
    """Each grouping (the test id is its clause) against the oracle."""
    check_entropy_groups_match_the_oracle(grouping, data)


# ------------------------------------------------------------------ [ESPO-CLIP*]


def check_group_clip_eps_matches_the_oracle(reading, clause, data):
    config = draw_config(data, eps_reading=reading)
    B = data.draw(st.integers(1, 6), label="B")
    T = data.draw(st.integers(1, 12), label="T")
    mask = draw_mask(data, B, T)
    entropy = draw_entropy(data, B, T, config, negatives=True)
    (entropy,) = fill_padding(data, [entropy], mask)
    groups = np.array(oracle_entropy_groups(entropy, mask, config), dtype=np.int64).reshape(B, T)
    got = espo_ref.group_clip_eps(entropy, groups, config)
    want = oracle_group_clip_eps(entropy, groups.tolist(), config)
    assert_close(got, want, VALUE, clause, "group_clip_eps", repro(entropy=entropy, groups=groups, config=config),
                 undefined_nan=True)


@pytest.mark.parametrize("reading, clause", [
    ("group_mean", "ESPO-CLIP"),  # the pinned reading
    ("token_over_groups", "ESPO-CLIP-TOKEN"),  # eps_t = alpha e_t / (log V K_i)
], ids=["ESPO-CLIP", "ESPO-CLIP-TOKEN"])
@given(data=st.data())
def test_ESPO_CLIP_and_ESPO_CLIP_TOKEN_group_clip_eps_matches_the_oracle(reading, clause, data):
    """Both eps readings (the test id is the clause) against the oracle."""
    check_group_clip_eps_matches_the_oracle(reading, clause, data)


@given(data=st.data())
def test_ESPO_CLIP_FIXED_clip_bounds_match_the_oracle(data):
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
    assert_close(got_low, want_low, VALUE, "ESPO-CLIP-FIXED", "clip_bounds eps_low", ctx, undefined_nan=True)
    assert_close(got_high, want_high, VALUE, "ESPO-CLIP-FIXED", "clip_bounds eps_high", ctx, undefined_nan=True)


# ------------------------------------------------------------------ [ESPO-RATIO]


@given(data=st.data())
def test_ESPO_RATIO_group_log_ratio_matches_the_oracle(data):
    batch = draw_batch(data, min_tokens=0)
    config, mask = batch["config"], batch["mask"]
    groups = np.array(oracle_entropy_groups(batch["entropy"], mask, config), dtype=np.int64).reshape(mask.shape)
    got = espo_ref.group_log_ratio(batch["logp"], batch["old_logp"], groups)
    want = oracle_group_log_ratio(batch["logp"], batch["old_logp"], groups.tolist())
    assert_close(got, want, VALUE, "ESPO-RATIO", "group_log_ratio",
                 repro(logp=batch["logp"], old_logp=batch["old_logp"], groups=groups), undefined_nan=True)


# ------------------------------------------------------------------ [ESPO-ADV]


@given(data=st.data())
def test_ESPO_ADV_grpo_advantages_match_the_oracle(data):
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
                 repro(rewards=rewards, prompt_ids=prompts, valid=valid, ddof=ddof, eps=eps), undefined_nan=True)


def test_ESPO_ADV_equal_rewards_give_a_zero_advantage():
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
def test_ESPO_OBJ_espo_loss_matches_the_oracle_under_every_grouping(grouping, data):
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
            assert_close(getattr(got, name), o[name], tol, clause, name, ctx, undefined_nan=True)
    assert_close(got.loss, o["loss"], VALUE, "ESPO-OBJ", "loss", ctx, undefined_nan=True)


@pytest.mark.parametrize("grouping", [g for g, _ in GROUPINGS], ids=[c for _, c in GROUPINGS])
@given(data=st.data())
def test_ESPO_METRICS_espo_loss_metrics_match_the_oracle(grouping, data):
    batch = draw_batch(data, grouping)
    got, want = run_both(batch)
    assume(well_conditioned(want))
    o = want["oracle"]
    ctx = repro(**{k: (np.asarray(v) if k != "config" else v) for k, v in batch.items()})
    missing = sorted(set(o["metrics"]) - set(got.metrics))
    assert not missing, f"[ESPO-METRICS] metrics missing from the core: {missing}"
    for key, want_value in o["metrics"].items():
        assert isinstance(got.metrics[key], float), f"[ESPO-METRICS] {key} must be a Python float"
        assert_close(got.metrics[key], want_value, VALUE, "ESPO-METRICS", f"metrics[{key!r}]", ctx, undefined_nan=True)


@given(data=st.data())
def test_ESPO_AGG_many_prompts_each_response_counts_once(data):
    """Eq. 11 advantages over several prompts, fed to Eq. 5: no per-prompt averaging."""
    batch = draw_batch(data)
    B = batch["mask"].shape[0]
    prompts = data.draw(st.lists(st.integers(0, 2), min_size=B, max_size=B), label="prompt_ids")
    rewards = data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=B, max_size=B), label="rewards")
    batch["advantages"] = espo_ref.grpo_advantages(np.array(rewards), np.array(prompts))
    want_adv = oracle_grpo_advantages(rewards, prompts)
    assert_close(batch["advantages"], want_adv, VALUE, "ESPO-ADV", "grpo_advantages", undefined_nan=True)
    got, want = run_both(batch)
    assume(well_conditioned(want))
    ctx = repro(**{k: (np.asarray(v) if k != "config" else v) for k, v in batch.items()})
    assert_close(got.loss, want["oracle"]["loss"], VALUE, "ESPO-AGG", "loss", ctx, undefined_nan=True)
    assert_close(got.grad, want["oracle"]["grad"], GRAD, "ESPO-AGG", "grad", ctx, undefined_nan=True)
