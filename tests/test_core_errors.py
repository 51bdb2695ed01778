"""Bad input [ESPO-INPUT] and bad configuration [ESPO-CONFIG]: one row per bad input.

Each row: an id, the clause, a call that must raise ``ESPOInputError`` (a ValueError), and
the word its message must contain (the argument it names). Then: padding may hold NaN or
inf and never leaks (outputs identical to zero padding).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import espo_ref
from espo_ref import ESPOConfig, ESPOInputError

from helpers.core_batches import draw_batch, repro

V = 16
LOG_V = math.log(V)
CFG = ESPOConfig(vocab_size=V)


def good(**changes):
    """A valid espo_loss input [2, 3]; ``changes`` replace arguments."""
    args = dict(
        logp=np.full((2, 3), -1.0),
        old_logp=np.full((2, 3), -1.2),
        entropy=np.full((2, 3), 0.5 * LOG_V),
        mask=np.ones((2, 3), dtype=bool),
        advantages=np.array([1.0, -1.0]),
        config=CFG,
    )
    args.update(changes)
    return args


def at(name, index, value, dtype=np.float64):
    arr = good()[name].astype(dtype).copy()
    arr[index] = value
    return arr


def loss(**changes):
    a = good(**changes)
    return lambda: espo_ref.espo_loss(a["logp"], a["old_logp"], a["entropy"], a["mask"], a["advantages"], a["config"])


def config(**fields):
    return lambda: ESPOConfig(**{"vocab_size": V, **fields})


R = np.array([0.0, 1.0, 1.0])
P = np.array([0, 0, 0])

# (id, clause, call, word the message must contain)
BAD_INPUTS = [
    # ---- shapes and ndim [ESPO-INPUT]
    ("logp_shape_mismatch", "ESPO-INPUT", loss(logp=np.zeros((2, 4))), "logp"),
    ("old_logp_shape_mismatch", "ESPO-INPUT", loss(old_logp=np.zeros((3, 3))), "old_logp"),
    ("mask_shape_mismatch", "ESPO-INPUT", loss(mask=np.ones((2, 2), dtype=bool)), "mask"),
    ("advantages_B_wrong_length", "ESPO-INPUT", loss(advantages=np.zeros(3)), "advantages"),
    ("advantages_BT_wrong_shape", "ESPO-INPUT", loss(advantages=np.zeros((2, 4))), "advantages"),
    ("advantages_3d", "ESPO-INPUT", loss(advantages=np.zeros((2, 3, 1))), "advantages"),
    ("logp_1d", "ESPO-INPUT", loss(logp=np.zeros(3)), "logp"),
    ("logp_3d", "ESPO-INPUT", loss(logp=np.zeros((2, 3, 1))), "logp"),
    # ---- dtypes
    ("logp_bool", "ESPO-INPUT", loss(logp=np.zeros((2, 3), dtype=bool)), "logp"),
    ("logp_complex", "ESPO-INPUT", loss(logp=np.zeros((2, 3), dtype=complex)), "logp"),
    ("logp_object", "ESPO-INPUT", loss(logp=np.zeros((2, 3), dtype=object)), "logp"),
    ("old_logp_complex", "ESPO-INPUT", loss(old_logp=np.zeros((2, 3), dtype=complex)), "old_logp"),
    ("entropy_bool", "ESPO-INPUT", loss(entropy=np.zeros((2, 3), dtype=bool)), "entropy"),
    ("advantages_bool", "ESPO-INPUT", loss(advantages=np.zeros(2, dtype=bool)), "advantages"),
    ("advantages_complex", "ESPO-INPUT", loss(advantages=np.zeros(2, dtype=complex)), "advantages"),
    # ---- mask values
    ("mask_value_2", "ESPO-INPUT", loss(mask=at("mask", (1, 2), 2, np.int64)), "mask"),
    ("mask_value_half", "ESPO-INPUT", loss(mask=np.full((2, 3), 0.5)), "mask"),
    ("mask_complex", "ESPO-INPUT", loss(mask=np.ones((2, 3), dtype=complex)), "mask"),
    # ---- non-finite values at a response position
    *[
        (f"{name}_{label}_at_response", "ESPO-INPUT", loss(**{name: at(name, (1, 1), value)}), name)
        for name in ("logp", "old_logp", "entropy")
        for label, value in (("nan", np.nan), ("inf", np.inf), ("neg_inf", -np.inf))
    ],
    ("advantages_B_nan", "ESPO-INPUT", loss(advantages=np.array([1.0, np.nan])), "advantages"),
    ("advantages_B_inf", "ESPO-INPUT", loss(advantages=np.array([np.inf, 1.0])), "advantages"),
    ("advantages_BT_nan", "ESPO-INPUT", loss(advantages=at("logp", (0, 2), np.nan)), "advantages"),
    ("advantages_BT_neg_inf", "ESPO-INPUT", loss(advantages=at("logp", (1, 0), -np.inf)), "advantages"),
    # ---- entropy range [ESPO-ENT-DOMAIN]
    ("entropy_above_log_V", "ESPO-ENT-DOMAIN", loss(entropy=at("entropy", (0, 1), LOG_V + 2e-4)), "entropy"),
    ("entropy_below_0", "ESPO-ENT-DOMAIN", loss(entropy=at("entropy", (0, 1), -2e-4)), "entropy"),
    ("entropy_twice_log_V", "ESPO-ENT-DOMAIN", loss(entropy=at("entropy", (1, 2), 2 * LOG_V)), "entropy"),
    ("entropy_groups_above_log_V", "ESPO-ENT-DOMAIN",
     lambda: espo_ref.entropy_groups(at("entropy", (0, 0), 3 * LOG_V), np.ones((2, 3), bool), CFG), "entropy"),
    # ---- batch-level
    ("no_response_token", "ESPO-AGG", loss(mask=np.zeros((2, 3), dtype=bool)), "mask"),
    ("overflow_without_clamp", "ESPO-RATIO-CLAMP",
     loss(logp=at("logp", (0, slice(None)), 800.0), config=ESPOConfig(vocab_size=V, log_ratio_clamp=None)), "logp"),
    ("overflow_without_clamp_literal", "ESPO-RATIO-CLAMP",
     loss(logp=at("logp", (1, 0), 720.0),
          config=ESPOConfig(vocab_size=V, log_ratio_clamp=None, ratio_form="literal", grouping="token")), "logp"),
    ("config_not_ESPOConfig", "ESPO-INPUT", loss(config={"vocab_size": V}), "config"),
    # ---- configuration [ESPO-CONFIG]
    ("vocab_size_1", "ESPO-CONFIG", config(vocab_size=1), "vocab_size"),
    ("vocab_size_bool", "ESPO-CONFIG", config(vocab_size=True), "vocab_size"),
    ("vocab_size_float", "ESPO-CONFIG", config(vocab_size=16.0), "vocab_size"),
    ("vocab_size_str", "ESPO-CONFIG", config(vocab_size="16"), "vocab_size"),
    ("alpha_negative", "ESPO-CONFIG", config(alpha=-0.1), "alpha"),
    ("alpha_nan", "ESPO-CONFIG", config(alpha=math.nan), "alpha"),
    ("top_fraction_0", "ESPO-CONFIG", config(top_fraction=0), "top_fraction"),
    ("top_fraction_1.5", "ESPO-CONFIG", config(top_fraction=1.5), "top_fraction"),
    ("top_fraction_negative", "ESPO-CONFIG", config(top_fraction=-0.2), "top_fraction"),
    ("grouping_unknown", "ESPO-CONFIG", config(grouping="quantile"), "grouping"),
    ("clip_unknown", "ESPO-CONFIG", config(clip="dynamic"), "clip"),
    ("eps_reading_unknown", "ESPO-CONFIG", config(eps_reading="token"), "eps_reading"),
    ("ratio_form_unknown", "ESPO-CONFIG", config(ratio_form="gspo"), "ratio_form"),
    ("entropy_ranges_without_edges", "ESPO-GROUP-RANGES", config(grouping="entropy_ranges"), "entropy_edges"),
    ("entropy_edges_unsorted", "ESPO-GROUP-RANGES",
     config(grouping="entropy_ranges", entropy_edges=(0.5, 0.25)), "entropy_edges"),
    ("entropy_edges_repeated", "ESPO-GROUP-RANGES",
     config(grouping="entropy_ranges", entropy_edges=(0.5, 0.5)), "entropy_edges"),
    ("entropy_edges_0", "ESPO-GROUP-RANGES", config(grouping="entropy_ranges", entropy_edges=(0.0, 0.5)), "entropy_edges"),
    ("entropy_edges_1", "ESPO-GROUP-RANGES", config(grouping="entropy_ranges", entropy_edges=(0.5, 1.0)), "entropy_edges"),
    ("drop_low_group_with_none", "ESPO-GROUP-DROPLOW", config(grouping="none", drop_low_group=True), "drop_low_group"),
    ("drop_low_group_with_token", "ESPO-GROUP-DROPLOW", config(grouping="token", drop_low_group=True), "drop_low_group"),
    ("drop_low_group_not_bool", "ESPO-CONFIG", config(drop_low_group=1), "drop_low_group"),
    ("log_ratio_clamp_0", "ESPO-RATIO-CLAMP", config(log_ratio_clamp=0.0), "log_ratio_clamp"),
    ("log_ratio_clamp_negative", "ESPO-RATIO-CLAMP", config(log_ratio_clamp=-1.0), "log_ratio_clamp"),
    ("log_ratio_clamp_inf", "ESPO-RATIO-CLAMP", config(log_ratio_clamp=math.inf), "log_ratio_clamp"),
    ("eps_low_negative", "ESPO-CLIP-FIXED", config(clip="fixed", eps_low=-0.1), "eps_low"),
    ("eps_high_nan", "ESPO-CLIP-FIXED", config(clip="fixed", eps_high=math.nan), "eps_high"),
    ("entropy_tolerance_negative", "ESPO-ENT-DOMAIN", config(entropy_tolerance=-1.0), "entropy_tolerance"),
    # issue 12: a raw TypeError / Fraction error before; booleans are not numbers
    ("entropy_edges_None", "ESPO-CONFIG", config(entropy_edges=None), "entropy_edges"),
    ("entropy_edges_scalar", "ESPO-CONFIG", config(grouping="entropy_ranges", entropy_edges=0.5), "entropy_edges"),
    ("entropy_edges_string", "ESPO-CONFIG", config(grouping="entropy_ranges", entropy_edges="0.5"), "entropy_edges"),
    ("vocab_size_numpy_bool", "ESPO-CONFIG", config(vocab_size=np.True_), "vocab_size"),
    ("alpha_numpy_bool", "ESPO-CONFIG", config(alpha=np.False_), "alpha"),
    ("high_group_size_nan", "ESPO-GROUP-TOPFRAC", lambda: espo_ref.high_group_size(np.array([3]), math.nan), "top_fraction"),
    ("high_group_size_inf", "ESPO-GROUP-TOPFRAC", lambda: espo_ref.high_group_size(np.array([3]), math.inf), "top_fraction"),
    ("high_group_size_str", "ESPO-GROUP-TOPFRAC", lambda: espo_ref.high_group_size(np.array([3]), "0.2"), "top_fraction"),
    ("high_group_size_None", "ESPO-GROUP-TOPFRAC", lambda: espo_ref.high_group_size(np.array([3]), None), "top_fraction"),
    # ---- grpo_advantages [ESPO-ADV]
    ("prompt_ids_wrong_length", "ESPO-ADV", lambda: espo_ref.grpo_advantages(R, np.array([0, 0])), "prompt_ids"),
    ("valid_wrong_length", "ESPO-ADV", lambda: espo_ref.grpo_advantages(R, P, np.array([True, False])), "valid"),
    ("valid_value_2", "ESPO-ADV", lambda: espo_ref.grpo_advantages(R, P, np.array([1, 2, 1])), "valid"),
    ("rewards_2d", "ESPO-ADV", lambda: espo_ref.grpo_advantages(R[None], P), "rewards"),
    ("rewards_nan_valid", "ESPO-ADV", lambda: espo_ref.grpo_advantages(np.array([0.0, np.nan, 1.0]), P), "rewards"),
    ("ddof_2", "ESPO-ADV", lambda: espo_ref.grpo_advantages(R, P, ddof=2), "ddof"),
    ("eps_negative", "ESPO-ADV", lambda: espo_ref.grpo_advantages(R, P, eps=-1e-6), "eps"),
    # ---- token_entropy [ESPO-ENT]
    ("logits_nan", "ESPO-ENT", lambda: espo_ref.token_entropy(np.array([[0.0, np.nan]])), "logits"),
    ("logits_pos_inf", "ESPO-ENT", lambda: espo_ref.token_entropy(np.array([[0.0, np.inf]])), "logits"),
    ("logits_all_neg_inf", "ESPO-ENT", lambda: espo_ref.token_entropy(np.array([[0.0, 1.0], [-np.inf, -np.inf]])), "logits"),
    ("logits_complex", "ESPO-ENT", lambda: espo_ref.token_entropy(np.array([[0.0, 1.0]], dtype=complex)), "logits"),
    ("temperature_0", "ESPO-ENT", lambda: espo_ref.token_entropy(np.array([[0.0, 1.0]]), temperature=0), "temperature"),
    ("temperature_negative", "ESPO-ENT", lambda: espo_ref.token_entropy(np.array([[0.0, 1.0]]), temperature=-1.0), "temperature"),
    ("temperature_nan", "ESPO-ENT", lambda: espo_ref.token_entropy(np.array([[0.0, 1.0]]), temperature=math.nan), "temperature"),
    # ---- the single-clause functions check their own inputs
    ("entropy_groups_mask_value_2", "ESPO-INPUT",
     lambda: espo_ref.entropy_groups(np.zeros((2, 2)), np.full((2, 2), 2), CFG), "mask"),
    ("group_log_ratio_shape_mismatch", "ESPO-INPUT",
     lambda: espo_ref.group_log_ratio(np.zeros((2, 2)), np.zeros((2, 3)), np.zeros((2, 2), dtype=np.int64)), "old_logp"),
    ("group_clip_eps_config_not_ESPOConfig", "ESPO-INPUT",
     lambda: espo_ref.group_clip_eps(np.zeros((2, 2)), np.zeros((2, 2), dtype=np.int64), {"vocab_size": V}), "config"),
]


@pytest.mark.parametrize("case_id,clause,call,word", BAD_INPUTS, ids=[f"{c[0]}[{c[1]}]" for c in BAD_INPUTS])
def test_bad_input_raises_ESPOInputError_naming_the_argument(case_id, clause, call, word):
    with pytest.raises(ESPOInputError) as info:
        call()
    assert isinstance(info.value, ValueError), f"[{clause}] ESPOInputError must be a ValueError"
    assert word in str(info.value), f"[{clause}] {case_id}: message {str(info.value)!r} does not name {word!r}"


def test_ESPO_CONFIG_numpy_scalars_are_accepted_as_python_numbers():
    """[ESPO-CONFIG] [BASE-CONFIG] numpy integers are ints and numpy floats reals wherever a
    Python number is accepted (issue 12: ``np.int64(16)`` as vocab_size was rejected); the
    config stores, compares and serialises as the one built from Python values."""
    cfg = ESPOConfig(vocab_size=np.int64(16), alpha=np.float32(0.5), top_fraction=np.float64(0.25),
                     log_ratio_clamp=np.int32(5), entropy_tolerance=np.float16(0.0),
                     grouping="entropy_ranges", entropy_edges=np.array([0.25, 0.5]), drop_low_group=np.True_)
    assert cfg == ESPOConfig(vocab_size=16, alpha=float(np.float32(0.5)), top_fraction=0.25, log_ratio_clamp=5,
                             entropy_tolerance=0.0, grouping="entropy_ranges", entropy_edges=(0.25, 0.5),
                             drop_low_group=True)
    assert type(cfg.vocab_size) is int and type(cfg.alpha) is float and type(cfg.drop_low_group) is bool
    assert all(type(c) is float for c in cfg.entropy_edges)
    assert ESPOConfig.from_dict(cfg.to_dict()) == cfg
    assert espo_ref.GRPOConfig(loss_agg_mode="seq-mean-token-sum-norm", max_len=np.int64(4),
                               eps_high=np.float32(0.25), dual_clip=np.int64(3)).max_len == 4
    x = np.array([[0.0, 1.0, 2.0]])
    assert espo_ref.token_entropy(x, np.float32(0.5)) == espo_ref.token_entropy(x, 0.5)
    assert np.array_equal(espo_ref.high_group_size(np.array([5, 25]), np.float64(0.28)), [2, 7])
    r, ids = np.array([1.0, 0.0, 2.0]), np.array([0, 0, 0])
    assert np.array_equal(espo_ref.grpo_advantages(r, ids, ddof=np.int64(0), eps=np.float32(0.0)),
                          espo_ref.grpo_advantages(r, ids, ddof=0, eps=0.0))


def test_ESPO_INPUT_entropy_shape_mismatch_names_entropy():
    with pytest.raises(ESPOInputError) as info:
        loss(entropy=np.zeros((2, 2)))()
    assert "entropy" in str(info.value), f"[ESPO-INPUT] message {str(info.value)!r} does not name 'entropy'"


def test_ESPO_INPUT_empty_response_may_have_a_nan_advantage():
    """A [B] advantage of a response without response tokens is at no response position."""
    mask = np.array([[True, True, False], [False, False, False]])
    got = loss(mask=mask, advantages=np.array([1.0, np.nan]))()
    assert np.isfinite(got.loss) and np.all(np.isfinite(got.grad)), "[ESPO-INPUT] NaN leaked from an empty row"


def _fields(result):
    out = {k: np.asarray(getattr(result, k)) for k in (
        "loss", "grad", "ratio", "clipped_high", "clipped_low", "groups", "eps", "eps_low",
        "eps_high", "log_ratio", "weight", "trained")}
    out.update({f"metrics[{k}]": np.asarray(v) for k, v in result.metrics.items()})
    return out


@given(data=st.data())
def test_ESPO_INPUT_padding_never_leaks(data):
    """NaN, +-inf or garbage at padding gives outputs identical to zero padding."""
    batch = draw_batch(data)
    mask = np.asarray(batch["mask"], dtype=bool)
    fill = data.draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e308, -7.0]), label="padding_value")
    zero, dirty = {}, {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray) and v.shape == mask.shape and k != "mask":
            zero[k], dirty[k] = np.where(mask, v, 0.0), np.where(mask, v, fill)
        else:
            zero[k] = dirty[k] = v
    args = ("logp", "old_logp", "entropy", "mask", "advantages", "config")
    clean = espo_ref.espo_loss(*(zero[k] for k in args))
    noisy = espo_ref.espo_loss(*(dirty[k] for k in args))
    for name, want in _fields(clean).items():
        got = _fields(noisy)[name]
        assert np.array_equal(got, want), (
            f"[ESPO-INPUT] padding value {fill!r} leaked into {name}: {got!r} != {want!r}"
            + repro(**{k: (np.asarray(v) if k != "config" else v) for k, v in dirty.items()})
        )
    for name, arr in _fields(noisy).items():
        assert not np.any(np.isnan(arr.astype(np.float64))), f"[ESPO-INPUT] NaN in output {name}"
