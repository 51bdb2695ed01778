"""Hand-worked checks of two pinned clauses of specs/ESPO.md, on the numpy core.

Every expected value below is worked by hand from the spec text (the arithmetic is in the
comments), not produced by the code under test. V = 16 throughout, alpha = 0.02 (default).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import espo_ref
from espo_ref import ESPOConfig, ESPOInputError

from helpers.asserts import assert_close, assert_equal

V = 16
LOG_V = math.log(V)
VALUE = ("numpy", "float64", "value")
GRAD = ("numpy", "float64", "grad")


def test_ESPO_GROUP_DROPLOW_only_the_high_group_is_trained_and_an_untrained_response_counts_in_n():
    """batch_top_fraction, rho = 0.2 over N_tok = 5 tokens: ceil(0.2 * 5) = 1 token is high, the
    entropy 0.9 log V at (0, 0). With drop_low_group only it is trained. Response 1 has no
    trained token: it contributes 0 but counts in N = 2, so w(0, 0) = 1 / (N K |tau|) = 1/2.
    Response 1's group has log s = (1 + 0) / 2 = 0.5 with A = 2 > 0, far above 1 + eps: it
    would be clipped-high if trained, but a dropped token is never counted as clipped."""
    config = ESPOConfig(vocab_size=V, grouping="batch_top_fraction", top_fraction=0.2, drop_low_group=True)
    mask = np.array([[True, True, True], [True, True, False]])
    entropy = np.array([[0.9, 0.2, 0.1], [0.5, 0.4, 0.0]]) * LOG_V
    old_logp = np.array([[-1.0, -2.0, -3.0], [-1.5, -0.5, 0.0]])
    logp = old_logp + np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    advantages = np.array([1.0, 2.0])
    got = espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages, config)

    clause = "ESPO-GROUP-DROPLOW"
    # the low group keeps its index (diagnostics); padding is -1
    assert_equal(got.groups, [[0, 1, 1], [1, 1, -1]], clause, "groups")
    assert_equal(got.trained, [[True, False, False], [False, False, False]], clause, "trained")
    assert_close(got.weight, [[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]], VALUE, clause, "weight = 1 / (N K |tau|), N = 2")
    # at (0, 0) the ratio is 1 (inside the clip range): d loss / d logp = -w A = -0.5; 0 elsewhere
    assert_close(got.grad, [[-0.5, 0.0, 0.0], [0.0, 0.0, 0.0]], GRAD, clause, "grad")
    assert_close(got.loss, -0.5, VALUE, clause, "loss = -w A s = -0.5 * 1 * 1")
    assert_equal(got.clipped_high, np.zeros((2, 3), dtype=bool), clause, "clipped_high (dropped: never clipped)")
    assert_equal(got.clipped_low, np.zeros((2, 3), dtype=bool), clause, "clipped_low")
    # the dropped group keeps its epsilon and ratio in the outputs: eps = alpha mean(e) / log V
    assert_close(got.eps, [[0.02 * 0.9, 0.02 * 0.15, 0.02 * 0.15], [0.02 * 0.45, 0.02 * 0.45, 0.0]], VALUE,
                 clause, "eps (dropped groups included)")
    assert_close(got.ratio, [[1.0, 1.0, 1.0], [math.exp(0.5), math.exp(0.5), 0.0]], VALUE, clause,
                 "ratio (dropped groups included)")


def _one_response(entropy, config, logp_shift=(0.0, 0.0)):
    mask = np.ones((1, 2), dtype=bool)
    old_logp = np.array([[-1.0, -2.0]])
    return espo_ref.espo_loss(old_logp + np.array([logp_shift]), old_logp, np.array([entropy]), mask,
                              np.array([1.0]), config)


def test_ESPO_ENT_DOMAIN_entropy_in_the_band_below_zero_is_clamped_to_zero_and_outside_is_an_error():
    """entropy_tolerance = 1e-4 (default). A token at -5e-5 is clamped to 0 before any use:
    grouping="token" gives it eps = alpha * 0 / log V = 0 (not a negative eps, whose inverted
    interval would clip a ratio of exactly 1), so at logp == old_logp its gradient flows:
    -A / (N K |tau|) = -1 / (1 * 2 * 1) = -0.5. A token at log V + 5e-5 is used as given:
    eps = 0.02 (log V + 5e-5) / log V. Outside the band is an error naming entropy."""
    clause = "ESPO-ENT-DOMAIN"
    config = ESPOConfig(vocab_size=V, grouping="token")
    got = _one_response([-5e-5, LOG_V + 5e-5], config)
    assert_close(got.eps, [[0.0, 0.02 * (LOG_V + 5e-5) / LOG_V]], VALUE, clause, "eps of the clamped / unclamped token")
    assert_equal(got.clipped_high | got.clipped_low, [[False, False]], clause, "a ratio of 1 is never clipped")
    assert_close(got.grad, [[-0.5, -0.5]], GRAD, clause, "grad at logp == old_logp")

    # top_fraction 0.5 of L = 2: n_high = 1. Clamped, -5e-5 ties 0.0 and the earlier position
    # ranks first, so position 0 is the high group (unclamped, 0.0 > -5e-5 would pick position 1).
    got = _one_response([-5e-5, 0.0], ESPOConfig(vocab_size=V, top_fraction=0.5))
    assert_equal(got.groups, [[0, 1]], clause, "groups of -5e-5 (clamped to 0) and 0.0: a tie")

    for bad in (-2e-4, LOG_V + 2e-4):
        with pytest.raises(ESPOInputError, match="entropy"):
            _one_response([0.5 * LOG_V, bad], config)
