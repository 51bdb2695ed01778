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
from espo_ref.tolerances import compare, tolerance  # noqa: E402
from masks import random_mask  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]
DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
GROUPINGS = ("top_fraction", "batch_top_fraction", "entropy_ranges", "none", "token")
SPLIT_GROUPINGS = ("top_fraction", "batch_top_fraction", "entropy_ranges")
TOP_FRACTIONS = (0.2, 0.1, 0.28, 0.5, 1.0, 1 / 3, 0.30000000000000004, 0.01)
EDGE_SETS = ((0.5,), (0.25, 0.75), (0.1, 0.5, 0.9), (0.3, 0.31))
VOCABS = (2, 16, 151936)
FIXED_EPS = ((3e-4, 4e-4), (0.2, 0.28), (0.0, 0.0))
# Decision margins: how far (relative) a ratio must sit from a clip boundary, and a log
# value from the clamp, for the example to be well conditioned in the dtype.
MARGIN = {"float64": 1e-9, "float32": 1e-4, "bfloat16": 1e-4}


# ------------------------------------------------------------------ strategies


@st.composite
def configs(draw, grouping=None, **fixed):
    """An ESPOConfig over every option of [ESPO-CONFIG]."""
    grouping = grouping or draw(st.sampled_from(GROUPINGS), label="grouping")
    kw = dict(vocab_size=draw(st.sampled_from(VOCABS), label="vocab_size"), grouping=grouping,
              alpha=draw(st.sampled_from((0.02, 0.1, 0.0, 1.0)), label="alpha"),
              top_fraction=draw(st.sampled_from(TOP_FRACTIONS), label="top_fraction"),
              ratio_form=draw(st.sampled_from(("gspo_token", "literal")), label="ratio_form"),
              eps_reading=draw(st.sampled_from(("group_mean", "token_over_groups")), label="eps_reading"),
              clip=draw(st.sampled_from(("adaptive", "fixed")), label="clip"),
              log_ratio_clamp=draw(st.sampled_from((10.0, 1.0, None)), label="log_ratio_clamp"))
    if kw["clip"] == "fixed":
        kw["eps_low"], kw["eps_high"] = draw(st.sampled_from(FIXED_EPS), label="fixed_eps")
    if grouping == "entropy_ranges":
        kw["entropy_edges"] = draw(st.sampled_from(EDGE_SETS), label="entropy_edges")
    if grouping in SPLIT_GROUPINGS:
        kw["drop_low_group"] = draw(st.booleans(), label="drop_low_group")
    kw.update(fixed)
    return core.ESPOConfig(**kw)


@st.composite
def batches(draw, dtype="float64", grouping=None, per_token_adv=None, **fixed):
    """A padded batch: shapes with empty and length-1 rows, entropy ties (0.0 and -0.0 among
    them), edge values, large and small log-ratios, clamped groups, NaN padding."""
    config = draw(configs(grouping, **fixed), label="config")
    B = draw(st.integers(1, 6), label="B")
    T = draw(st.integers(1, 14), label="T")
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    mask = random_mask(draw, rng, B, T)
    log_v = config.log_vocab
    entropy_kind = draw(st.sampled_from(("ties", "continuous", "edges")), label="entropy_kind")
    if entropy_kind == "ties":
        pool = np.array([0.0, -0.0, 0.5 * log_v, 0.25 * log_v, log_v, -5e-5, log_v + 5e-5])
        entropy = rng.choice(pool, (B, T))
    elif entropy_kind == "edges":
        cuts = np.array(list(config.entropy_edges) + [0.5, 0.2]) * log_v
        entropy = rng.choice(np.concatenate([cuts, np.nextafter(cuts, 0), np.nextafter(cuts, 99)]), (B, T))
    else:
        entropy = rng.uniform(0.0, log_v, (B, T))
    scale = draw(st.sampled_from((1e-4, 1e-2, 0.3, 3.0, 30.0)), label="log_ratio_scale")
    if config.log_ratio_clamp is None and dtype != "float64":
        scale = min(scale, 3.0)  # keep exp() of float32 finite without a clamp
    logp = rng.uniform(-8.0, 0.0, (B, T))
    old_logp = logp - rng.normal(0.0, scale, (B, T)) - rng.normal(0.0, scale, (B, 1))
    if per_token_adv is None:
        per_token_adv = draw(st.booleans(), label="per_token_adv")
    shape = (B, T) if per_token_adv else (B,)
    adv = rng.choice(np.array([-1.5, -0.3, 0.0, 0.7, 2.0, rng.normal()]), shape)
    torch_dtype = DTYPES[dtype]
    # the values the torch side will see, given to both sides
    logp = torch.tensor(logp).to(torch_dtype).double().numpy()
    old_logp = torch.tensor(old_logp).to(torch_dtype).double().numpy()
    if dtype == "bfloat16":  # entropy stays float32 (a bfloat16 entropy could leave its range)
        entropy = entropy.astype(np.float32).astype(np.float64)
    elif dtype == "float32":
        entropy = entropy.astype(np.float32).astype(np.float64)
    for arr in (logp, old_logp, entropy):
        arr[~mask] = np.nan
    return dict(logp=logp, old_logp=old_logp, entropy=entropy, mask=mask, advantages=adv,
                config=config, dtype=dtype)


def to_torch(batch, device, requires_grad=True):
    dtype = DTYPES[batch["dtype"]]
    ent_dtype = torch.float64 if batch["dtype"] == "float64" else torch.float32
    logp = torch.tensor(batch["logp"], dtype=dtype, device=device, requires_grad=requires_grad)
    return dict(logp=logp,
                old_logp=torch.tensor(batch["old_logp"], dtype=dtype, device=device),
                entropy=torch.tensor(batch["entropy"], dtype=ent_dtype, device=device),
                mask=torch.tensor(batch["mask"], device=device),
                advantages=torch.tensor(batch["advantages"], dtype=dtype, device=device))


def run_numpy(batch):
    return core.espo_loss(batch["logp"], batch["old_logp"], batch["entropy"], batch["mask"],
                          batch["advantages"], batch["config"])


def run_torch(batch, device, validate=True):
    args = to_torch(batch, device)
    result = et.espo_loss(args["logp"], args["old_logp"], args["entropy"], args["mask"],
                          args["advantages"], batch["config"], validate=validate)
    result.loss.backward()
    return result, args["logp"].grad


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


def host(x):
    return x.detach().cpu().to(torch.float64).numpy() if x.dtype.is_floating_point else x.detach().cpu().numpy()


def assert_close(got, want, tol, clause, name):
    report = compare(got, want, tol)
    assert report["ok"], f"[{clause}] {name}: {report}"


def assert_equal(got, want, clause, name):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and (got == want).all(), (
        f"[{clause}] {name}: {int((got != want).sum())} of {want.size} differ, first at "
        f"{np.argwhere(got != want)[0].tolist() if got.shape == want.shape else got.shape}")


def check_result(got, grad, want, dtype):
    value = tolerance("torch", dtype, "value")
    gtol = tolerance("torch", dtype, "grad")
    assert_equal(host(got.groups), want.groups, "ESPO-GROUP", "groups")
    assert_equal(host(got.trained), want.trained, "ESPO-GROUP-DROPLOW", "trained")
    assert_equal(host(got.clipped_high), want.clipped_high, "ESPO-CLIPMASK", "clipped_high")
    assert_equal(host(got.clipped_low), want.clipped_low, "ESPO-CLIPMASK", "clipped_low")
    assert_equal(host(got.extras["clamped"]), want.extras["clamped"], "ESPO-RATIO-CLAMP", "clamped")
    assert_close(host(got.loss), want.loss, value, "ESPO-OBJ", "loss")
    for name, clause in (("ratio", "ESPO-RATIO-TOKEN"), ("eps_low", "ESPO-CLIP"), ("eps_high", "ESPO-CLIP"),
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
def test_espo_loss_matches_numpy_ESPO_OBJ(data, dtype, device):
    """[ESPO-OBJ] [ESPO-AGG] [ESPO-CLIPMASK] value, per-token fields, metrics and the
    autograd gradient of torch espo_loss equal the numpy core's, every option drawn."""
    batch = data.draw(batches(dtype), label="batch")
    want = run_numpy(batch)
    if dtype != "float64":
        assume(well_conditioned(batch, want))
    note(f"config={batch['config']}")
    got, grad = run_torch(batch, device)
    check_result(got, grad, want, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grouping", GROUPINGS)
@given(data=st.data())
def test_espo_loss_every_grouping_ESPO_GROUP(data, grouping, device):
    """[ESPO-GROUP-TOPFRAC] [ESPO-GROUP-BATCH] [ESPO-GROUP-RANGES] [ESPO-GROUP-NONE]
    [ESPO-GROUP-TOKEN]: each grouping, float64, equal to the core."""
    batch = data.draw(batches("float64", grouping=grouping), label="batch")
    want = run_numpy(batch)
    got, grad = run_torch(batch, device)
    check_result(got, grad, want, "float64")


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_espo_loss_validate_false_is_the_same_ESPO_INPUT(data, device):
    """[ESPO-INPUT] validate=False skips the checks and changes nothing on valid input."""
    batch = data.draw(batches("float64"), label="batch")
    a, ga = run_torch(batch, device, validate=True)
    b, gb = run_torch(batch, device, validate=False)
    assert torch.equal(a.loss, b.loss) and torch.equal(ga, gb) and a.metrics == b.metrics


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_espo_loss_float32_agrees_with_float64_ESPO_OBJ(data, device):
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
def test_entropy_groups_matches_numpy_ESPO_GROUP(data, device):
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
def test_group_clip_eps_and_clip_bounds_match_numpy_ESPO_CLIP(data, device):
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
def test_group_log_ratio_matches_numpy_ESPO_RATIO(data, device):
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
def test_token_ratio_clipped_surrogate_aggregation_weights_match_numpy_ESPO_RATIO_TOKEN(data, device):
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
def test_token_entropy_matches_numpy_ESPO_ENT(data, device):
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
def test_grpo_advantages_matches_numpy_ESPO_ADV(data, device):
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
def test_high_group_size_matches_numpy_exactly_ESPO_GROUP_TOPFRAC(data):
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
def test_select_top_breaks_ties_by_position_ESPO_GROUP_TOPFRAC(device):
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
