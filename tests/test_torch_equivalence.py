"""Value and gradient equivalence of espo_ref.torch with the numpy core (issue 4).

The numpy core is the reference (``want``); the torch backend gets the same values in the
dtype under test (float64, float32, bfloat16: the numpy side receives those values upcast
to float64) and must match within ``espo_ref.tolerances`` row ("torch", dtype, kind).
Examples whose clip or clamp decisions sit within rounding of a boundary, or whose loss
is a cancelling sum, are ill-conditioned for a lower precision and are rejected with
``assume``, not hidden behind looser tolerances. Devices: cpu, and cuda when present.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import assume, given, note  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import espo_ref as core  # noqa: E402
import espo_ref.torch as et  # noqa: E402
from espo_ref.tolerances import tolerance  # noqa: E402

from helpers.asserts import assert_close, assert_equal  # noqa: E402
from helpers.torch_batches import (  # noqa: E402
    DEVICES,
    DTYPES,
    GROUPINGS,
    batches,
    host,
    run_numpy,
    run_torch,
    to_torch,
)

# Decision margins: how far (relative) a ratio must sit from a clip boundary, and a log
# value from the clamp, for the example to be well conditioned in the dtype.
MARGIN = {"float64": 1e-9, "float32": 1e-4, "bfloat16": 1e-4}


def well_conditioned(batch, want) -> bool:
    """Decisions (clip, clamp) away from their boundaries by the dtype's margin, and a loss
    that is not a cancelling sum."""
    margin = MARGIN[batch["dtype"]]
    log_r = np.where(batch["mask"], batch["logp"] - batch["old_logp"], 0.0)
    if batch["dtype"] != "float64" and np.abs(log_r).max() > 80:
        return False  # approx_kl's expm1 overflows float32 beyond ~88: a range limit of the dtype
    t = want.trained
    r = want.ratio
    near_hi = np.abs(r - (1 + want.eps_high)) <= margin * np.maximum(r, 1)
    near_lo = np.abs(r - (1 - want.eps_low)) <= margin * np.maximum(r, 1)
    if (t & (near_hi | near_lo)).any():
        return False
    clamp = batch["config"].log_ratio_clamp
    if clamp is not None:
        log_value = want.log_ratio + (np.where(batch["mask"], batch["logp"] - batch["old_logp"], 0.0)
                                      if batch["config"].ratio_form == "literal" else 0.0)
        if (batch["mask"] & (np.abs(log_value - clamp) <= 1e3 * margin)).any():
            return False
    terms = np.abs(want.weight * np.where(want.trained, r, 0.0)
                   * np.broadcast_to(np.asarray(batch["advantages"]).reshape(len(r), -1), r.shape))
    return abs(want.loss) * 100 >= terms.sum() or terms.sum() < 1e-3


def check_torch_matches_numpy(batch, device, conditioned):
    """torch espo_loss on ``batch`` against the core's result: the groups and masks exactly,
    values, both gradients and the metrics within the dtype's rows; with ``conditioned``,
    an ill-conditioned example is rejected first."""
    want = run_numpy(batch)
    if conditioned:
        assume(well_conditioned(batch, want))
    note(f"config={batch['config']}")
    got, grad = run_torch(batch, device)
    dtype = batch["dtype"]
    value = tolerance("torch", dtype, "value")
    gtol = tolerance("torch", dtype, "grad")
    assert_equal(host(got.groups), want.groups, "ESPO-GROUP", "groups")
    assert_equal(host(got.trained), want.trained, "ESPO-GROUP-DROPLOW", "trained")
    assert_equal(host(got.clipped_high), want.clipped_high, "ESPO-CLIPMASK", "clipped_high")
    assert_equal(host(got.clipped_low), want.clipped_low, "ESPO-CLIPMASK", "clipped_low")
    assert_equal(host(got.extras["clamped"]), want.extras["clamped"], "ESPO-RATIO-CLAMP", "clamped")
    assert_close(host(got.loss), want.loss, value, "ESPO-OBJ", "loss")
    config = batch["config"]
    ratio_clause = "ESPO-RATIO-LITERAL" if config.ratio_form == "literal" else "ESPO-RATIO-TOKEN"
    if np.any(want.extras["clamped"]):
        ratio_clause = "ESPO-RATIO-CLAMP"
    eps_clause = {("fixed", "group_mean"): "ESPO-CLIP-FIXED", ("fixed", "token_over_groups"): "ESPO-CLIP-FIXED",
                  ("adaptive", "token_over_groups"): "ESPO-CLIP-TOKEN"}.get((config.clip, config.eps_reading),
                                                                          "ESPO-CLIP")
    for name, clause in (("ratio", ratio_clause), ("eps_low", eps_clause), ("eps_high", eps_clause),
                         ("log_ratio", "ESPO-RATIO"), ("weight", "ESPO-AGG")):
        assert_close(host(getattr(got, name)), getattr(want, name), value, clause, name)
    assert_close(host(got.grad), want.grad, gtol, "ESPO-OBJ", "grad (analytic field)")
    assert_close(host(grad), want.grad, gtol, "ESPO-OBJ", "grad (autograd)")
    assert list(got.metrics) == list(want.metrics)
    for key, w in want.metrics.items():
        assert isinstance(got.metrics[key], float), key
        assert_close(got.metrics[key], w, value, "ESPO-METRICS", key)


# ------------------------------------------------------------------ espo_loss


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@given(data=st.data())
def test_ESPO_OBJ_torch_espo_loss_matches_numpy(data, dtype, device):
    """[ESPO-OBJ] [ESPO-AGG] [ESPO-CLIPMASK] value, per-token fields, metrics and the
    autograd gradient of torch espo_loss equal the numpy core's, every option drawn."""
    check_torch_matches_numpy(data.draw(batches(dtype), label="batch"), device, conditioned=dtype != "float64")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grouping", GROUPINGS)
@given(data=st.data())
def test_ESPO_GROUP_torch_espo_loss_matches_numpy_under_every_grouping(data, grouping, device):
    """[ESPO-GROUP-TOPFRAC] [ESPO-GROUP-BATCH] [ESPO-GROUP-RANGES] [ESPO-GROUP-NONE]
    [ESPO-GROUP-TOKEN]: each grouping, float64, equal to the core."""
    check_torch_matches_numpy(data.draw(batches("float64", grouping=grouping), label="batch"), device,
                              conditioned=False)


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_ESPO_INPUT_torch_validate_false_is_the_same(data, device):
    """[ESPO-INPUT] validate=False skips the checks and changes nothing on valid input."""
    batch = data.draw(batches("float64"), label="batch")
    a, ga = run_torch(batch, device, validate=True)
    b, gb = run_torch(batch, device, validate=False)
    assert torch.equal(a.loss, b.loss) and torch.equal(ga, gb) and a.metrics == b.metrics


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_ESPO_OBJ_torch_float32_agrees_with_float64(data, device):
    """[ESPO-OBJ] the float32 and float64 torch paths agree within the float32 row."""
    batch = data.draw(batches("float32"), label="batch")
    assume(well_conditioned(batch, run_numpy(batch)))
    lo, glo = run_torch(batch, device)
    hi, ghi = run_torch(dict(batch, dtype="float64"), device)
    assert lo.loss.dtype == torch.float32 and hi.loss.dtype == torch.float64
    assert_close(host(lo.loss), host(hi.loss), tolerance("torch", "float32", "value"), "ESPO-OBJ", "loss")
    assert_close(host(glo), host(ghi), tolerance("torch", "float32", "grad"), "ESPO-OBJ", "grad")


# ------------------------------------------------------------------ components


def _np_groups(batch):
    return core.entropy_groups(batch["entropy"], batch["mask"], batch["config"])


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_ESPO_GROUP_and_ESPO_GROUP_TOPFRAC_torch_entropy_groups_match_numpy_ties_included(data, device):
    """[ESPO-GROUP] [ESPO-GROUP-TOPFRAC] group ids equal the core's exactly, ties included
    (equal entropies rank the earlier position first; -0.0 ties 0.0), in float32 and float64."""
    dtype = data.draw(st.sampled_from(("float64", "float32")), label="dtype")
    batch = data.draw(batches(dtype), label="batch")
    args = to_torch(batch, device)
    got = et.entropy_groups(args["entropy"], args["mask"], batch["config"])
    assert got.dtype == torch.int64 and got.device.type == device
    assert_equal(host(got), _np_groups(batch), "ESPO-GROUP", "groups")
    trained = et.trained_tokens(got, batch["config"])
    assert_equal(host(trained), core.trained_tokens(_np_groups(batch), batch["config"]),
                 "ESPO-GROUP-DROPLOW", "trained_tokens")


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_ESPO_CLIP_torch_group_clip_eps_and_clip_bounds_match_numpy(data, device):
    """[ESPO-CLIP] [ESPO-CLIP-TOKEN] [ESPO-CLIP-FIXED] per-token epsilons equal the core's."""
    batch = data.draw(batches("float64"), label="batch")
    groups = _np_groups(batch)
    ent = torch.tensor(batch["entropy"], device=device)
    g = torch.tensor(groups, device=device)
    tol = tolerance("torch", "float64", "value")
    assert_close(host(et.group_clip_eps(ent, g, batch["config"])),
                 core.group_clip_eps(batch["entropy"], groups, batch["config"]), tol, "ESPO-CLIP", "eps")
    for got, want in zip(et.clip_bounds(ent, g, batch["config"]),
                         core.clip_bounds(batch["entropy"], groups, batch["config"])):
        assert_close(host(got), want, tol, "ESPO-CLIP-FIXED", "clip_bounds")


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_ESPO_RATIO_torch_group_log_ratio_matches_numpy(data, device):
    """[ESPO-RATIO] Eq. 10: log s_tau per token equals the core's; differentiable (its
    gradient is 1/|tau| on each token of the group, no stop-gradient here)."""
    batch = data.draw(batches("float64"), label="batch")
    groups = _np_groups(batch)
    lp = torch.tensor(batch["logp"], device=device, requires_grad=True)
    got = et.group_log_ratio(lp, torch.tensor(batch["old_logp"], device=device), torch.tensor(groups, device=device))
    want = core.group_log_ratio(batch["logp"], batch["old_logp"], groups)
    assert_close(host(got), want, tolerance("torch", "float64", "value"), "ESPO-RATIO", "log_s")
    got.sum().backward()
    ones = np.ones_like(want)  # d sum_t log_s_t / d logp_t = sum over the group of 1/|tau| = 1
    assert_close(host(lp.grad), np.where(groups >= 0, ones, 0.0), tolerance("torch", "float64", "grad"),
                 "ESPO-RATIO", "grad")


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_ESPO_RATIO_TOKEN_and_ESPO_RATIO_LITERAL_torch_token_ratio_surrogate_and_weights_match_numpy(data, device):
    """[ESPO-RATIO-TOKEN] [ESPO-RATIO-LITERAL] [ESPO-RATIO-CLAMP] [ESPO-CLIPMASK] [ESPO-AGG]
    the remaining building blocks, fed the same intermediate values as the core."""
    batch = data.draw(batches("float64", per_token_adv=True), label="batch")
    cfg, m = batch["config"], batch["mask"]
    groups = _np_groups(batch)
    lp = np.where(m, batch["logp"], 0.0)
    olp = np.where(m, batch["old_logp"], 0.0)
    log_s = core.group_log_ratio(lp, olp, groups)
    tol = tolerance("torch", "float64", "value")
    dev = lambda x: torch.tensor(x, device=device)  # noqa: E731
    r_want, c_want = core.token_ratio(log_s, lp - olp, m, cfg)
    r_got, c_got = et.token_ratio(dev(log_s), dev(lp - olp), dev(m), cfg)
    assert_close(host(r_got), r_want, tol, "ESPO-RATIO-TOKEN", "ratio")
    assert_equal(host(c_got), c_want, "ESPO-RATIO-CLAMP", "clamped")
    trained = core.trained_tokens(groups, cfg)
    lo, hi = core.clip_bounds(batch["entropy"], groups, cfg)
    adv = np.where(m, batch["advantages"], 0.0)
    want = core.clipped_surrogate(r_want, adv, lo, hi, trained)
    got = et.clipped_surrogate(dev(r_want), dev(adv), dev(lo), dev(hi), dev(trained))
    assert_close(host(got[0]), want[0], tol, "ESPO-CLIPMASK", "surrogate")
    assert_equal(host(got[1]), want[1], "ESPO-CLIPMASK", "clipped_high")
    assert_equal(host(got[2]), want[2], "ESPO-CLIPMASK", "clipped_low")
    assert_close(host(et.aggregation_weights(dev(groups), dev(trained), dev(m))),
                 core.aggregation_weights(groups, trained, m), tol, "ESPO-AGG", "weights")


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_ESPO_ENT_torch_token_entropy_matches_numpy(data, device):
    """[ESPO-ENT] Eq. 6 over the last axis, -inf entries and temperatures included."""
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    shape = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=3), label="shape")
    temperature = data.draw(st.sampled_from((1.0, 0.7, 2.0)), label="temperature")
    dtype = data.draw(st.sampled_from(("float64", "float32")), label="dtype")
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, data.draw(st.sampled_from((0.1, 3.0, 50.0)), label="scale"), shape)
    logits[rng.random(shape) < 0.2] = -np.inf
    logits[..., 0] = rng.normal(size=shape[:-1])  # every distribution keeps one live entry
    logits = torch.tensor(logits).to(DTYPES[dtype]).double().numpy()
    got = et.token_entropy(torch.tensor(logits, dtype=DTYPES[dtype], device=device), temperature)
    want = core.token_entropy(logits, temperature)
    tol = tolerance("torch", dtype, "value")
    assert_close(host(got), want, tol, "ESPO-ENT", "entropy")


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_ESPO_ADV_torch_grpo_advantages_match_numpy(data, device):
    """[ESPO-ADV] Eq. 11 per prompt: valid subsets, singletons, ddof, eps = 0, string ids."""
    B = data.draw(st.integers(1, 12), label="B")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    rewards = rng.choice(np.array([0.0, 1.0, 0.5, rng.normal()]), B)
    ids = rng.integers(0, data.draw(st.integers(1, 4), label="prompts"), B)
    valid = rng.random(B) < data.draw(st.sampled_from((1.0, 0.7, 0.3)), label="valid_rate")
    ddof = data.draw(st.sampled_from((0, 1)), label="ddof")
    eps = data.draw(st.sampled_from((1e-6, 0.0)), label="eps")
    strings = data.draw(st.booleans(), label="string_ids")
    want = core.grpo_advantages(rewards, ids.astype(str) if strings else ids, valid, ddof, eps)
    got = et.grpo_advantages(torch.tensor(rewards, device=device),
                             ids.astype(str) if strings else torch.tensor(ids, device=device),
                             torch.tensor(valid, device=device), ddof, eps)
    assert_close(host(got), want, tolerance("torch", "float64", "value"), "ESPO-ADV", "advantages")


# ------------------------------------------------------------------ exact n_high


@given(data=st.data())
def test_ESPO_GROUP_TOPFRAC_torch_high_group_size_matches_numpy_exactly(data):
    """[ESPO-GROUP-TOPFRAC] n_high = clamp(ceil(rho L), 1, L) on rho's decimal value, in
    integer tensor arithmetic: the direct path, the long-division path (L * num would
    overflow int64) and the host fallback (denominator >= 2**58) all equal the core."""
    rho = data.draw(st.one_of(
        st.sampled_from((0.2, 0.1, 1.0, 1 / 3, 0.30000000000000004, 1.2345678901234568e-05,
                         5e-324, 0.9999999999999999, 1e-300)),
        st.floats(min_value=0.0, max_value=1.0, exclude_min=True)), label="rho")
    big = data.draw(st.sampled_from((10, 10**4, 10**7, 2**40)), label="max_length")
    lengths = np.array(data.draw(st.lists(st.integers(0, big), min_size=1, max_size=20), label="lengths"))
    want = core.high_group_size(lengths, rho)
    got = et.high_group_size(torch.tensor(lengths), rho)
    assert got.dtype == torch.int64
    assert_equal(got.numpy(), want, "ESPO-GROUP-TOPFRAC", f"n_high(rho={rho!r})")


@pytest.mark.parametrize("device", DEVICES)
def test_ESPO_GROUP_TOPFRAC_torch_select_top_breaks_ties_by_position(device):
    """[ESPO-GROUP-TOPFRAC] a hand-made tie: 0.0, -0.0 and equal maxima rank by position."""
    cfg = core.ESPOConfig(vocab_size=16, top_fraction=0.5)
    ent = np.array([[0.0, -0.0, 0.0, -0.0, 1.0, 1.0],
                    [-0.0, 0.0, -0.0, 0.0, 0.0, 0.0],
                    [2.0, 1.0, 2.0, 1.0, 2.0, 1.0]])
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=bool)
    got = et.entropy_groups(torch.tensor(ent, device=device), torch.tensor(mask, device=device), cfg)
    want = core.entropy_groups(ent, mask, cfg)
    assert_equal(host(got), want, "ESPO-GROUP-TOPFRAC", "groups")
    assert want.tolist()[0] == [0, 1, 1, 1, 0, 0] and want.tolist()[1] == [0, 0, 0, 1, 1, -1]
