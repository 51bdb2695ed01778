"""The torch baselines (espo_ref.torch: grpo_loss, dapo_loss, gspo_loss, gmpo_loss, cispo_loss,
agg_loss, agg_weights) against the numpy reference, clause by clause (specs/baselines.md).

The numpy core is ``want``; the torch backend gets the same values in the dtype under test
(float64, float32, bfloat16: the numpy side receives those values upcast to float64) and
must match within ``espo_ref.tolerances`` row ("torch", dtype, kind). Examples whose clip or
clamp decision sits within rounding of its bound, or whose loss is a cancelling sum, are
ill-conditioned for a lower precision and are rejected with ``assume``, never hidden
behind a looser tolerance. Gradients are autograd's d loss / d logp; they must equal the
core's closed-form ``grad`` (and so must the torch ``grad`` field). Devices: cpu, and cuda
when present.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import assume, given, note  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import espo_ref as core  # noqa: E402
import espo_ref.torch as et  # noqa: E402
from espo_ref import (  # noqa: E402
    LOSS_AGG_MODES,
    CISPOConfig,
    DAPOConfig,
    ESPOInputError,
    GMPOConfig,
    GRPOConfig,
    GSPOConfig,
)
from espo_ref.tolerances import tolerance  # noqa: E402

from helpers.asserts import assert_close, assert_equal, error_messages  # noqa: E402
from helpers.baseline_inputs import BAD_INPUTS, bad_arguments  # noqa: E402
from helpers.masks import random_mask  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]
DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
METHODS = ("grpo", "dapo", "gspo", "gmpo", "cispo")
CONFIGS = {"grpo": GRPOConfig, "dapo": DAPOConfig, "gspo": GSPOConfig, "gmpo": GMPOConfig, "cispo": CISPOConfig}
CLAUSE = {"grpo": "BASE-GRPO", "dapo": "BASE-DAPO", "gspo": "BASE-GSPO", "gmpo": "BASE-GMPO",
          "cispo": "BASE-CISPO"}
# Token log-ratios that hit the clamps of [BASE-RATIO-CLAMP] (20, 10, 1.5, 0.5) and the clips.
EXTREMES = (21.0, -21.0, 25.0, -30.0, 12.0, -12.0, 10.5, 2.0, -2.0, 0.0)
# Bounds exactly representable in float32, put exactly on the bound ("not clamped").
ON_BOUND = (20.0, -20.0, 10.0, 1.5, -1.5, 0.5)
# Relative distance from a decision bound below which an example is ill-conditioned.
MARGIN = {"float64": 1e-9, "float32": 1e-4, "bfloat16": 1e-4}


def numpy_fn(method):
    return getattr(core, f"{method}_loss")


def torch_fn(method):
    return getattr(et, f"{method}_loss")


# ------------------------------------------------------------------ strategies


@st.composite
def agg_options(draw, T):
    """[BASE-AGG] a mode and, for seq-mean-token-sum-norm, None or a max_len >= T."""
    mode = draw(st.sampled_from(LOSS_AGG_MODES), label="loss_agg_mode")
    max_len = None
    if mode == "seq-mean-token-sum-norm":
        max_len = draw(st.one_of(st.none(), st.integers(T, T + 5)), label="max_len")
    return mode, max_len


@st.composite
def configs(draw, method, T, level=None):
    """[BASE-CONFIG] the method's config over every option it has."""
    mode, max_len = draw(agg_options(T), label="agg")
    kw = {"loss_agg_mode": mode, "max_len": max_len}
    if method in ("grpo", "dapo"):
        kw["eps_low"] = draw(st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]), label="eps_low")
        kw["eps_high"] = draw(st.sampled_from([0.0, 0.2, 0.28, 1.0]), label="eps_high")
        kw["log_ratio_clamp"] = draw(st.sampled_from([None, 20.0, 1.5]), label="log_ratio_clamp")
        kw["dual_clip"] = draw(st.sampled_from([None, 1.5, 3.0]), label="dual_clip")
    elif method == "gspo":
        kw["eps_low"] = draw(st.sampled_from([3e-4, 0.2, 1.0]), label="eps_low")
        kw["eps_high"] = draw(st.sampled_from([4e-4, 0.28]), label="eps_high")
        kw["log_ratio_clamp"] = draw(st.sampled_from([None, 10.0, 0.5]), label="log_ratio_clamp")
        kw["level"] = level or draw(st.sampled_from(["token", "sequence"]), label="level")
    elif method == "gmpo":
        kw["eps_low"] = draw(st.sampled_from([0.0, 0.4, 1.0]), label="eps_low")
        kw["eps_high"] = draw(st.sampled_from([0.0, 0.4, 2.0]), label="eps_high")
    else:
        kw["eps_low"] = draw(st.sampled_from([0.2, 1.0, 1.5]), label="eps_low")
        kw["eps_high"] = draw(st.sampled_from([0.28, 4.0]), label="eps_high")
        kw["log_ratio_clamp"] = draw(st.sampled_from([None, 20.0, 1.5]), label="log_ratio_clamp")
    return CONFIGS[method](**kw)


@st.composite
def batches(draw, method, dtype="float64", level=None, per_token_adv=None):
    """A padded batch: empty and length-1 rows, NaN padding, log-ratios from tiny to beyond
    every clamp (some exactly on a float32-exact bound), per-token or per-response
    advantages with zeros among them."""
    B = draw(st.integers(1, 6), label="B")
    T = draw(st.integers(1, 10), label="T")
    config = draw(configs(method, T, level), label="config")
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    mask = random_mask(draw, rng, B, T)
    scale = draw(st.sampled_from((1e-4, 1e-2, 0.3, 1.0, 3.0)), label="log_ratio_scale")
    old = rng.uniform(-8.0, 0.0, (B, T))
    log_r = rng.normal(0.0, scale, (B, T)) + rng.normal(0.0, scale, (B, 1))
    if draw(st.booleans(), label="extremes"):
        log_r = np.where(rng.random((B, T)) < 0.3, rng.choice(EXTREMES, (B, T)), log_r)
    logp = old + log_r
    if draw(st.booleans(), label="on_bound"):  # a token or a whole row exactly on a bound
        bound = rng.choice(ON_BOUND)
        b = rng.integers(0, B)
        cols = slice(None) if method == "gspo" else rng.integers(0, T)
        old[b, cols], logp[b, cols] = 0.0, bound
    if per_token_adv is None:
        per_token_adv = draw(st.booleans(), label="per_token_adv")
    adv = rng.choice(np.array([-1.5, -0.3, 0.0, 0.7, 2.0, rng.normal()]), (B, T) if per_token_adv else (B,))
    torch_dtype = DTYPES[dtype]
    rounded = lambda x: torch.tensor(x).to(torch_dtype).double().numpy()  # noqa: E731
    logp, old, adv = rounded(logp), rounded(old), rounded(adv)
    logp[~mask], old[~mask] = np.nan, np.nan
    if per_token_adv:
        adv[~mask] = np.nan
    return dict(method=method, logp=logp, old_logp=old, mask=mask, advantages=adv, config=config, dtype=dtype)


# ------------------------------------------------------------------ running both sides


def to_torch(batch, device, requires_grad=True):
    dtype = DTYPES[batch["dtype"]]
    return dict(logp=torch.tensor(batch["logp"], dtype=dtype, device=device, requires_grad=requires_grad),
                old_logp=torch.tensor(batch["old_logp"], dtype=dtype, device=device),
                mask=torch.tensor(batch["mask"], device=device),
                advantages=torch.tensor(batch["advantages"], dtype=dtype, device=device))


def run_numpy(batch, config=None):
    return numpy_fn(batch["method"])(batch["logp"], batch["old_logp"], batch["mask"], batch["advantages"],
                                     config or batch["config"])


def run_torch(batch, device, validate=True):
    args = to_torch(batch, device)
    result = torch_fn(batch["method"])(args["logp"], args["old_logp"], args["mask"], args["advantages"],
                                       batch["config"], validate=validate)
    result.loss.backward()
    return result, args["logp"].grad


def host(x):
    x = x.detach().cpu()
    return x.to(torch.float64).numpy() if x.dtype.is_floating_point else x.numpy()


def repro(batch) -> str:
    return (f"\n  reproduce: espo_ref.torch.{batch['method']}_loss(logp, old_logp, mask, advantages, "
            f"{batch['config']!r}) in {batch['dtype']}\n  logp={batch['logp'].tolist()}"
            f"\n  old_logp={batch['old_logp'].tolist()}\n  mask={batch['mask'].tolist()}"
            f"\n  advantages={np.asarray(batch['advantages']).tolist()}")


# ------------------------------------------------------------------ conditioning


def _f32_exact(b: float) -> bool:
    return float(np.float32(b)) == b


def _near(x, bound, margin, where):
    """x within ``margin`` (relative) of ``bound`` at ``where``, exact float32-representable
    ties excepted (both sides compute those exactly and decide alike)."""
    close = np.abs(x - bound) <= margin * np.maximum(np.abs(x), 1.0)
    exact = (x == bound) & _f32_exact(bound)
    return bool((where & close & ~exact).any())


def well_conditioned(batch, want) -> bool:
    """Every decision (clip, dual clip, clamp, GMPO's log-space clip) away from its bound by
    the dtype's margin, |log r| within float32's exp range, and a loss (and, where a
    gradient is a row sum, a gradient) that is not a cancelling sum."""
    method, cfg, m = batch["method"], batch["config"], batch["mask"]
    margin = MARGIN[batch["dtype"]]
    log_r = np.where(m, batch["logp"] - batch["old_logp"], 0.0)
    if batch["dtype"] != "float64" and np.abs(log_r).max() > 80:
        return False  # expm1 of approx_kl overflows float32 beyond ~88: a range limit of the dtype
    adv = np.where(m, np.broadcast_to(np.asarray(batch["advantages"]).reshape(len(m), -1), m.shape), 0.0)
    r = np.asarray(want.ratio)
    if method == "gmpo":
        if _near(log_r, cfg.eps_high, margin, m) or _near(log_r, -cfg.eps_low, margin, m):
            return False
        sums, abs_sums = (adv * m).sum(1), np.abs(adv).sum(1)
        if ((abs_sums > 100 * np.abs(sums)) & (abs_sums > 1e-6)).any():
            return False  # the response advantage mean cancels
    else:
        bounds = [1.0 - cfg.eps_low, 1.0 + cfg.eps_high]
        if getattr(cfg, "dual_clip", None) is not None:
            bounds.append(cfg.dual_clip)
        if any(_near(r, b, margin, m & (r != 1.0)) for b in bounds):
            return False
        c = cfg.log_ratio_clamp
        if c is not None:
            value = log_r
            if method == "gspo":  # GSPO clamps the row mean of log r (before the clamp)
                value = np.where(m, (log_r.sum(1) / np.maximum(m.sum(1), 1))[:, None], 0.0)
            if _near(value, c, 10 * margin, m) or _near(value, -c, 10 * margin, m):
                return False
    terms = np.abs(np.asarray(want.weight) * np.asarray(want.extras["per_token_loss"])).sum()
    if terms > 100 * abs(want.loss) and terms > 1e-3:
        return False
    if method == "gspo" and cfg.level == "sequence":  # the gradient is a row mean of token terms
        g = np.asarray(run_numpy(batch, cfg.replace(level="token")).grad)
        rows, abs_rows = g.sum(1), np.abs(g).sum(1)
        if ((abs_rows > 100 * np.abs(rows)) & (abs_rows > 1e-6)).any():
            return False
    return True


# ------------------------------------------------------------------ the comparison


FLAGS = {"grpo": ("clamped", "dual_clipped"), "dapo": ("clamped", "dual_clipped"), "gspo": ("clamped",),
         "gmpo": (), "cispo": ("clamped", "capped")}
EXTRA_VALUES = {"grpo": ("per_token_loss",), "dapo": ("per_token_loss",), "gspo": ("per_token_loss",),
                "gmpo": ("per_token_loss", "clipped_log_ratio", "advantage_seq"),
                "cispo": ("per_token_loss", "is_weight")}


def check_torch_result(batch, device, want):
    """torch's loss on ``batch``: every field of the LossResult, the metrics, and both
    gradients, against the core's result ``want``."""
    got, grad = run_torch(batch, device)
    method, dtype = batch["method"], batch["dtype"]
    clause = CLAUSE[method] + ("-SEQ" if getattr(batch["config"], "level", "") == "sequence" else "")
    value, gtol = tolerance("torch", dtype, "value"), tolerance("torch", dtype, "grad")
    assert got.loss.ndim == 0 and got.loss.requires_grad
    assert got.loss.dtype == (torch.float64 if dtype == "float64" else torch.float32)
    assert_equal(host(got.clipped_high), want.clipped_high, "BASE-METRICS", "clipped_high")
    assert_equal(host(got.clipped_low), want.clipped_low, "BASE-METRICS", "clipped_low")
    assert_equal(host(got.trained), want.trained, "BASE-INPUT", "trained")
    for name in FLAGS[method]:
        assert_equal(host(got.extras[name]), want.extras[name], "BASE-RATIO-CLAMP", name)
    assert_close(host(got.loss), want.loss, value, clause, "loss", repro(batch))
    for name, sub in (("ratio", clause), ("log_ratio", "BASE-RATIO-CLAMP"), ("weight", "BASE-AGG")):
        assert_close(host(getattr(got, name)), getattr(want, name), value, sub, name, repro(batch))
    for name in EXTRA_VALUES[method]:
        assert_close(host(got.extras[name]), want.extras[name], value, clause, name, repro(batch))
    assert_close(host(got.grad), want.grad, gtol, clause, "grad (analytic field)", repro(batch))
    assert_close(host(grad), want.grad, gtol, clause, "grad (autograd)", repro(batch))
    assert list(got.metrics) == list(want.metrics), "[BASE-METRICS] keys or their order differ"
    for key, w in want.metrics.items():
        assert isinstance(got.metrics[key], float), key
        assert_close(got.metrics[key], w, value, "BASE-METRICS", key, repro(batch))


def check_conditioned_batch(batch, device):
    """The core's result on ``batch`` (the example rejected where it is ill-conditioned for the
    dtype), then torch's against it."""
    note(f"config={batch['config']!r}")
    want = run_numpy(batch)
    assume(well_conditioned(batch, want))
    check_torch_result(batch, device, want)


# ------------------------------------------------------------------ value and gradient


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("method", METHODS)
@given(data=st.data())
def test_torch_baseline_loss_matches_numpy(data, method, dtype, device):
    """[BASE-GRPO] [BASE-GRPO-DUALCLIP] [BASE-DAPO] [BASE-GSPO] [BASE-GSPO-SEQ] [BASE-GMPO]
    [BASE-CISPO] [BASE-RATIO-CLAMP] [BASE-AGG] [BASE-AGG-EMPTY] [BASE-METRICS]: loss, every
    per-token field, the metrics, the analytic ``grad`` and autograd's gradient equal the
    core's, over every config option and every aggregation mode."""
    check_conditioned_batch(data.draw(batches(method, dtype), label="batch"), device)


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_BASE_GSPO_SEQ_torch_sequence_level_matches_numpy(data, device):
    """[BASE-GSPO-SEQ] level="sequence": autograd through the plain s_i gives the response
    mean of the token-form gradient, on every token of the response (float64)."""
    check_conditioned_batch(data.draw(batches("gspo", "float64", level="sequence"), label="batch"), device)


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_BASE_IDENTITIES_torch_gspo_token_and_sequence_agree_with_per_response_advantage(data, device):
    """[BASE-IDENTITIES] [BASE-GSPO-SEQ] with a per-response advantage the two GSPO forms have
    the same value and the same autograd gradient."""
    batch = data.draw(batches("gspo", "float64", level="token", per_token_adv=False), label="batch")
    a, ga = run_torch(batch, device)
    b, gb = run_torch(dict(batch, config=batch["config"].replace(level="sequence")), device)
    assert_close(host(b.loss), host(a.loss), tolerance("torch", "float64", "value"), "BASE-IDENTITIES", "loss")
    assert_close(host(gb), host(ga), tolerance("torch", "float64", "grad"), "BASE-IDENTITIES", "grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
@given(data=st.data())
def test_BASE_RATIO_CLAMP_torch_stopped_tokens_and_padding_get_zero_gradient(data, method, device):
    """[BASE-RATIO-CLAMP] [BASE-GRPO] [BASE-GRPO-DUALCLIP] [BASE-GSPO] [BASE-GMPO] [BASE-CISPO]
    [BASE-INPUT]: autograd gives exactly 0 (never NaN) at padding (which holds NaN), at
    clipped, dual-clipped and clamped tokens (GSPO-token: of a clipped or clamped response;
    GSPO-sequence: of a clamped or wholly clipped response; GMPO: clipped or A = 0),
    while CISPO's cap never zeroes a gradient (only A = 0 does)."""
    batch = data.draw(batches(method, "float64"), label="batch")
    got, grad = run_torch(batch, device)
    g, m = host(grad), batch["mask"]
    assert np.isfinite(g).all() and np.isfinite(host(got.grad)).all(), "[BASE-INPUT] NaN padding leaked"
    assert (g[~m] == 0.0).all(), "[BASE-INPUT] padding has a gradient"
    high, low = host(got.clipped_high), host(got.clipped_low)
    clipped = high | low
    adv = np.where(m, np.broadcast_to(np.asarray(batch["advantages"]).reshape(len(m), -1), m.shape), 0.0)
    if method in ("grpo", "dapo"):
        stopped = clipped | host(got.extras["clamped"]) | host(got.extras["dual_clipped"])
    elif method == "gspo" and batch["config"].level == "token":
        stopped = clipped | host(got.extras["clamped"])
    elif method == "gspo":
        row_stopped = (host(got.extras["clamped"]) | clipped | ~m).all(1, keepdims=True)
        stopped = m & (row_stopped | host(got.extras["clamped"]).any(1, keepdims=True))
    elif method == "gmpo":
        stopped = clipped | (m & (adv == 0))
    else:
        stopped = m & (adv == 0)
        live = m & (adv != 0)
        assert (g[live] != 0.0).all(), "[BASE-CISPO] a capped weight zeroed a gradient"
    assert (g[stopped] == 0.0).all(), f"[{CLAUSE[method]}] a stopped token has a gradient: {g[stopped]}"


LN2 = float(np.log(2.0))  # exp(LN2) == 2.0 exactly, in float64 and float32
TIES = [  # (method, config, log-ratio of the tied token, its advantage)
    ("grpo", GRPOConfig(dual_clip=2.0), LN2, -1.0),                    # r == c: not dual-clipped
    ("dapo", DAPOConfig(eps_low=0.0, eps_high=0.0), 0.0, 1.0),         # r == 1 + eps_high
    ("dapo", DAPOConfig(eps_low=0.0, eps_high=0.0), 0.0, -1.0),        # r == 1 - eps_low
    ("grpo", GRPOConfig(eps_high=1.0), LN2, 1.0),                      # r == 1 + eps_high == 2
    ("grpo", GRPOConfig(log_ratio_clamp=1.5), 1.5, -1.0),              # log r == c: not clamped
    ("cispo", CISPOConfig(log_ratio_clamp=1.5), -1.5, 1.0),
    ("gspo", GSPOConfig(log_ratio_clamp=0.5), 0.5, -1.0),              # row mean == c
    ("gspo", GSPOConfig(log_ratio_clamp=0.5, level="sequence"), 0.5, -1.0),
    ("gmpo", GMPOConfig(eps_high=0.5), 0.5, 1.0),                      # log r == eps_high
    ("gmpo", GMPOConfig(eps_low=0.5), -0.5, -1.0),                     # log r == -eps_low
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("method, config, log_r, a", TIES, ids=[
    "grpo-r_eq_dual_clip", "dapo-r_eq_1+eps_high", "dapo-r_eq_1-eps_low", "grpo-r_eq_2", "grpo-log_r_eq_clamp",
    "cispo-log_r_eq_-clamp", "gspo-log_s_eq_clamp", "gspo_seq-log_s_eq_clamp", "gmpo-log_r_eq_eps_high",
    "gmpo-log_r_eq_-eps_low"])
def test_BASE_GRPO_and_BASE_GRPO_DUALCLIP_torch_token_on_a_bound_takes_the_unclipped_gradient(
        method, config, log_r, a, dtype, device):
    """[BASE-GRPO] [BASE-GRPO-DUALCLIP] [BASE-RATIO-CLAMP] [BASE-GSPO] [BASE-GMPO] a token
    exactly on a clip, dual-clip or clamp bound is not clipped: autograd gives the unclipped
    branch's (non-zero) gradient, as the core does (torch.minimum/clamp would split or
    pass it at the tie)."""
    logp = np.array([[log_r, log_r, -1.0], [np.nan, -0.5, -2.0]])
    old = np.array([[0.0, 0.0, -1.0], [np.nan, -0.5, -2.0]])
    mask = np.array([[True, True, True], [False, True, True]])
    adv = np.array([[a, a, a], [np.nan, 1.0, -1.0]])
    if method in ("gspo", "gmpo"):  # the tie is the whole response
        logp[0, 2], old[0, 2] = log_r, 0.0
    batch = dict(method=method, logp=logp, old_logp=old, mask=mask, advantages=adv, config=config, dtype=dtype)
    want = run_numpy(batch)
    assert not want.clipped_high[0].any() and not want.clipped_low[0].any()
    assert not want.extras.get("clamped", np.zeros_like(mask))[0].any()
    assert not want.extras.get("dual_clipped", np.zeros_like(mask))[0].any()
    assert (want.grad[0] != 0).all()
    check_torch_result(batch, device, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
@given(data=st.data())
def test_BASE_INPUT_torch_validate_false_changes_nothing_on_valid_input(data, method, device):
    """[BASE-INPUT] validate=False skips the checks (no host sync in the loss) and gives the
    same loss, gradients and metrics on valid input."""
    batch = data.draw(batches(method, "float64"), label="batch")
    a, ga = run_torch(batch, device, validate=True)
    b, gb = run_torch(batch, device, validate=False)
    assert torch.equal(a.loss, b.loss) and torch.equal(ga, gb) and torch.equal(a.grad, b.grad)
    assert a.metrics == b.metrics


@pytest.mark.parametrize("method", METHODS)
@given(data=st.data())
def test_torch_baselines_are_bit_identical_on_repeat_cpu(data, method):
    """[BASE-AGG] the same inputs give bit-identical loss, gradient and fields on CPU."""
    dtype = data.draw(st.sampled_from(("float64", "float32")), label="dtype")
    batch = data.draw(batches(method, dtype), label="batch")
    a, ga = run_torch(batch, "cpu")
    b, gb = run_torch(batch, "cpu")
    assert torch.equal(a.loss, b.loss) and torch.equal(ga, gb)
    for name in ("grad", "ratio", "log_ratio", "weight"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_CONF_CALL_torch_baselines_compute_bfloat16_in_float32_and_return_a_bfloat16_gradient():
    """[BASE-INPUT] bfloat16 logp is computed in float32; autograd returns a bfloat16
    gradient; the per-token fields are detached float32 tensors."""
    logp = torch.full((2, 3), -1.0, dtype=torch.bfloat16, requires_grad=True)
    old = logp.detach() - 0.01
    for method in METHODS:
        logp.grad = None
        r = torch_fn(method)(logp, old, torch.ones(2, 3, dtype=torch.bool), torch.tensor([1.0, -1.0]))
        r.loss.backward()
        assert r.loss.dtype == torch.float32 and r.grad.dtype == torch.float32, method
        assert not r.ratio.requires_grad and not r.grad.requires_grad, method
        assert logp.grad.dtype == torch.bfloat16 and torch.isfinite(logp.grad).all(), method


# ------------------------------------------------------------------ aggregation


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@given(data=st.data())
def test_BASE_AGG_torch_agg_loss_and_weights_match_numpy(data, dtype, device):
    """[BASE-AGG] [BASE-AGG-EMPTY] agg_loss (value and d / d per_token = the weights) and
    agg_weights equal the core's in every mode, with empty rows and NaN padding."""
    B = data.draw(st.integers(1, 6), label="B")
    T = data.draw(st.integers(1, 10), label="T")
    mode, max_len = data.draw(agg_options(T), label="agg")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    mask = rng.random((B, T)) < data.draw(st.sampled_from((0.2, 0.6, 1.0)), label="density")
    mask[rng.integers(0, B), rng.integers(0, T)] = True
    per_token = torch.tensor(rng.normal(0, 3, (B, T))).to(DTYPES[dtype]).double().numpy()
    per_token[~mask] = np.nan
    want_w = core.agg_weights(mask, mode, max_len)
    want = core.agg_loss(per_token, mask, mode, max_len)
    terms = np.abs(want_w * np.nan_to_num(per_token)).sum()
    assume(dtype == "float64" or terms <= 100 * abs(want) or terms < 1e-3)
    value = tolerance("torch", dtype, "value")
    x = torch.tensor(per_token, dtype=DTYPES[dtype], device=device, requires_grad=True)
    m = torch.tensor(mask, device=device)
    got = et.agg_loss(x, m, mode, max_len)
    assert got.ndim == 0 and got.dtype == (torch.float64 if dtype == "float64" else torch.float32)
    assert_close(host(got), want, value, "BASE-AGG", f"agg_loss({mode})")
    got.backward()
    assert_close(host(x.grad), want_w, tolerance("torch", dtype, "grad"), "BASE-AGG", "d agg_loss / d per_token")
    for wdtype in (torch.float64, torch.float32):
        w = et.agg_weights(m, mode, max_len, dtype=wdtype)
        assert w.dtype == wdtype and w.device.type == device
        assert_close(host(w), want_w, tolerance("torch", "float64" if wdtype == torch.float64 else "float32"),
                     "BASE-AGG", f"agg_weights({mode})")


def test_BASE_AGG_EMPTY_torch_agg_weights_hand_worked_empty_row():
    """[BASE-AGG-EMPTY] HW-B11..B15: the empty response counts in no mode."""
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    per_token = torch.tensor([[1.0, 2, 3, np.nan], [4, np.nan, 0, 0], [np.nan] * 4], dtype=torch.float64)
    for mode, max_len, value in (("token-mean", None, 5 / 2), ("seq-mean-token-mean", None, 3.0),
                                 ("seq-mean-token-sum", None, 5.0), ("seq-mean-token-sum-norm", None, 5 / 4),
                                 ("seq-mean-token-sum-norm", 8, 5 / 8)):
        got = float(et.agg_loss(per_token, mask, mode, max_len))
        assert abs(got - value) < 1e-15, (mode, max_len, got, value)


# ------------------------------------------------------------------ errors

BAD_TORCH_INPUTS = [(bad, what) for bad, _, what in BAD_INPUTS] + [
    ({"logp": np.array([[1 + 1j, 2]])}, "logp complex"),
    ({"logp": np.array([[True, False]])}, "logp bool"),
    ({"mask": np.array([[0.5, 1.0]])}, "mask float value"),
    ({"logp": np.array([[np.nan, -2.0]]), "mask": np.array([[False, False]])}, "HW-B17 nan padding, empty"),
]


def _as_torch(x, dtype):
    x = np.asarray(x)
    if x.dtype.kind == "f":
        return torch.tensor(x, dtype=dtype)
    if x.dtype.kind in "biuc":
        return torch.from_numpy(x.copy())
    return x  # strings: torch cannot hold them; the backend takes the numpy array


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad, what", BAD_TORCH_INPUTS, ids=[w for _, w in BAD_TORCH_INPUTS])
def test_BASE_INPUT_torch_errors_same_message_as_numpy(bad, what, method, dtype):
    """[BASE-INPUT] [BASE-AGG-EMPTY] each bad input raises ESPOInputError with the core's
    exact message (numpy receives the same values, float32 cast where the case is float32)."""
    args = bad_arguments(bad)
    np_args = {k: (v.astype(np.float32) if dtype == "float32" and v.dtype == np.float64 else v)
               for k, v in args.items()}
    t_args = {k: _as_torch(v, DTYPES[dtype]) for k, v in args.items()}
    got, want = error_messages(lambda: numpy_fn(method)(**np_args), lambda: torch_fn(method)(**t_args))
    assert got == want, f"[BASE-INPUT] {what}: torch {got!r} != numpy {want!r}"


@pytest.mark.parametrize("case", [
    ("grpo", GRPOConfig(log_ratio_clamp=None), 800.0, 1.0),
    ("dapo", DAPOConfig(log_ratio_clamp=None), -800.0, 1.0),  # exp underflows to 0: no error
    ("gspo", GSPOConfig(log_ratio_clamp=None), 800.0, 1.0),
    ("gmpo", GMPOConfig(), 800.0, -1.0),
    ("cispo", CISPOConfig(log_ratio_clamp=None), 800.0, 1.0),
    ("dapo", GRPOConfig(), 0.0, 1.0),  # another method's config
    ("gspo", GMPOConfig(), 0.0, 1.0),
    ("grpo", GRPOConfig(loss_agg_mode="seq-mean-token-sum-norm", max_len=1), 0.0, 1.0),
], ids=lambda c: f"{c[0]}-{type(c[1]).__name__}-{c[2]}")
def test_BASE_INPUT_and_BASE_CONFIG_torch_overflow_config_and_max_len_errors_same_message(case):
    """[BASE-INPUT] [BASE-RATIO-CLAMP] [BASE-CONFIG] [BASE-AGG] overflow without a clamp (says
    to set the clamp), a config of another method and a too short max_len: the core's
    message, in float64."""
    method, config, log_r, a = case
    logp, old, mask, adv = np.array([[log_r, 0.0]]), np.array([[0.0, 0.0]]), np.array([[True, True]]), np.array([a])
    try:
        numpy_fn(method)(logp, old, mask, adv, config)
    except ESPOInputError:
        got, want = error_messages(lambda: numpy_fn(method)(logp, old, mask, adv, config),
                                   lambda: torch_fn(method)(torch.tensor(logp), torch.tensor(old), torch.tensor(mask),
                                                       torch.tensor(adv), config))
        assert got == want, f"[BASE-INPUT] torch {got!r} != numpy {want!r}"
        return
    r = torch_fn(method)(torch.tensor(logp), torch.tensor(old), torch.tensor(mask), torch.tensor(adv), config)
    assert np.isfinite(float(r.loss))


def test_BASE_RATIO_CLAMP_torch_float32_overflow_names_the_dtype():
    """[BASE-INPUT] a ratio that overflows float32 (log-ratio above ~88.7, allowed in float64)
    is the same error, naming float32 and saying to set the clamp."""
    logp = torch.tensor([[100.0]], dtype=torch.float32)
    with pytest.raises(ESPOInputError, match="overflows float32 .*set log_ratio_clamp"):
        et.grpo_loss(logp, torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), torch.ones(1),
                     GRPOConfig(log_ratio_clamp=None))


@pytest.mark.parametrize("kwargs, per_token, mask", [
    ({"mode": "mean"}, np.ones((1, 2)), np.ones((1, 2), dtype=bool)),
    ({"mode": "token-mean", "max_len": 3}, np.ones((1, 2)), np.ones((1, 2), dtype=bool)),
    ({"mode": "seq-mean-token-sum-norm", "max_len": 1}, np.ones((1, 2)), np.ones((1, 2), dtype=bool)),
    ({"mode": "seq-mean-token-sum-norm", "max_len": 0}, np.ones((1, 2)), np.ones((1, 2), dtype=bool)),
    ({"mode": "seq-mean-token-sum-norm", "max_len": 2.0}, np.ones((1, 2)), np.ones((1, 2), dtype=bool)),
    ({"mode": "token-mean"}, np.ones((2, 2)), np.zeros((2, 2), dtype=bool)),
    ({"mode": "token-mean"}, np.array([[np.nan, 1.0]]), np.ones((1, 2), dtype=bool)),
    ({"mode": "token-mean"}, np.ones(2), np.ones(2, dtype=bool)),
    ({"mode": "token-mean"}, np.ones((1, 2)), np.ones((1, 3), dtype=bool)),
    ({"mode": "token-mean"}, np.ones((1, 2)), np.array([[1, 3]])),
    ({"mode": "token-mean"}, np.array([["a", "b"]]), np.ones((1, 2), dtype=bool)),
], ids=["unknown-mode", "max_len-other-mode", "max_len-short", "max_len-0", "max_len-float", "empty",
        "nan", "1-D", "mask-shape", "mask-value", "strings"])
def test_BASE_AGG_torch_agg_errors_same_message_as_numpy(kwargs, per_token, mask):
    """[BASE-AGG] [BASE-AGG-EMPTY] agg_loss refuses what the core refuses, with its message."""
    got, want = error_messages(lambda: core.agg_loss(per_token, mask, **kwargs),
                               lambda: et.agg_loss(_as_torch(per_token, torch.float64), _as_torch(mask, None), **kwargs))
    assert got == want, f"[BASE-AGG] torch {got!r} != numpy {want!r}"


@pytest.mark.parametrize("mask", [np.ones(3, dtype=bool), np.zeros((2, 2), dtype=bool), np.array([[1, 2]])],
                         ids=["1-D", "empty", "value"])
def test_BASE_AGG_torch_agg_weights_errors_same_message_as_numpy(mask):
    """[BASE-AGG] [BASE-AGG-EMPTY] agg_weights: 1-D masks, empty masks, non-0/1 values."""
    got, want = error_messages(lambda: core.agg_weights(mask, "token-mean"),
                               lambda: et.agg_weights(torch.from_numpy(mask), "token-mean"))
    assert got == want, f"[BASE-AGG] torch {got!r} != numpy {want!r}"


# ------------------------------------------------------------------ the mirror


@pytest.mark.parametrize("name", ["grpo_loss", "dapo_loss", "gspo_loss", "gmpo_loss", "cispo_loss", "agg_loss",
                                  "agg_weights", "row_sum", "row_mean", "to_tokens", "clamp_log_ratio",
                                  "token_log_ratio", "baseline_metrics", "ppo_clip_token_loss",
                                  "gmpo_clipped_log_ratio", "exp_ratio"])
def test_BASE_CONFIG_torch_mirrors_numpy_signature(name):
    """[BASE-CONFIG] name for name and argument for argument: the torch function takes the
    core's positional arguments in the core's order (plus keyword-only extras), and the
    same config classes."""
    import espo_ref.aggregation as np_agg
    import espo_ref.baselines as np_base
    import espo_ref.torch.aggregation as t_agg
    import espo_ref.torch.baselines as t_base

    np_mod, t_mod = (np_agg, t_agg) if name.startswith("agg_") else (np_base, t_base)
    want = inspect.signature(getattr(np_mod, name)).parameters
    got = inspect.signature(getattr(t_mod, name)).parameters
    positional = [p for p in got.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert [p.name for p in positional] == list(want), (name, list(got), list(want))
    assert [p.default for p in positional] == [p.default for p in want.values()], name
    for cls in CONFIGS.values():
        assert getattr(et, cls.__name__) is cls


@pytest.mark.parametrize("responses", [2, 4])
@pytest.mark.parametrize("max_len", [2**62, 2**63 - 1, 2**64], ids=["2**62", "2**63-1", "2**64"])
def test_BASE_AGG_a_huge_max_len_does_not_overflow_the_torch_weights(responses, max_len):
    """N * M was an int64 product in torch: 2**62 flipped the loss's sign, 2**64 raised OverflowError."""
    rng = np.random.default_rng(responses)
    mask = np.ones((responses, 3), dtype=bool)
    logp = rng.normal(-1.0, 0.1, mask.shape)
    old = logp + rng.normal(0.0, 0.05, mask.shape)
    adv = rng.normal(size=responses)
    config = GRPOConfig(loss_agg_mode="seq-mean-token-sum-norm", max_len=max_len)
    want = core.grpo_loss(logp, old, mask, adv, config)
    got = et.grpo_loss(torch.tensor(logp, requires_grad=True), torch.tensor(old), torch.tensor(mask),
                       torch.tensor(adv), config)
    assert np.sign(got.loss.item()) == np.sign(want.loss)
    np.testing.assert_allclose(got.loss.item(), want.loss, rtol=1e-12, atol=0)


def test_BASE_AGG_a_max_len_beyond_float64_is_an_error_in_both_backends():
    mask = np.ones((2, 3), dtype=bool)
    logp = np.zeros((2, 3))
    config = GRPOConfig(loss_agg_mode="seq-mean-token-sum-norm", max_len=2**1100)
    for loss in (lambda: core.grpo_loss(logp, logp, mask, np.ones(2), config),
                 lambda: et.grpo_loss(torch.tensor(logp, requires_grad=True), torch.tensor(logp), torch.tensor(mask),
                                      torch.ones(2, dtype=torch.float64), config)):
        with pytest.raises(ESPOInputError, match=r"max_len must be below 2\*\*1024"):
            loss()
