"""Finite inputs give finite outputs or an ESPOInputError naming the argument [ESPO-INPUT]
(issue 12): one test per clause that pins what happens where a plain computation would
leave the float range. Each case runs the numpy core and the torch backend on the same
values; the expected values come from the algebra, not from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import espo_ref as core
from espo_ref import ESPOInputError

torch = pytest.importorskip("torch")

import espo_ref.torch as et  # noqa: E402
from espo_ref.tolerances import compare, tolerance  # noqa: E402

from helpers.asserts import error_messages  # noqa: E402

F64_MAX = float(np.finfo(np.float64).max)
VALUE = tolerance("numpy", "float64", "value")
CFG = core.ESPOConfig(vocab_size=16)
LOSSES = ("espo", "grpo", "dapo", "gspo", "gmpo", "cispo")


def run(loss, backend, logp, old_logp, mask, adv, config=None, entropy=None, dtype=torch.float64):
    """Call a loss of the numpy core or of torch (tensors of ``dtype``) on the same values."""
    mod = core if backend == "numpy" else et
    fn = getattr(mod, f"{loss}_loss")
    if backend == "torch":
        logp, old_logp, adv = (torch.tensor(np.asarray(x), dtype=dtype) for x in (logp, old_logp, adv))
        mask = torch.tensor(np.asarray(mask))
        entropy = None if entropy is None else torch.tensor(np.asarray(entropy), dtype=dtype)
    if loss == "espo":
        return fn(logp, old_logp, entropy, mask, adv, config or CFG)
    return fn(logp, old_logp, mask, adv, config)


def host(x):
    return x.detach().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def assert_all_finite(result, what):
    """[ESPO-INPUT] the loss, every float array field and every metric are finite."""
    assert np.isfinite(host(result.loss)), f"[ESPO-INPUT] {what}: loss {result.loss}"
    for name in ("grad", "ratio", "eps", "eps_low", "eps_high", "log_ratio", "weight"):
        value = getattr(result, name)
        if value is not None:
            assert np.isfinite(host(value)).all(), f"[ESPO-INPUT] {what}: {name} {value}"
    for key, value in result.metrics.items():
        assert isinstance(value, float) and math.isfinite(value), f"[ESPO-INPUT] {what}: metrics[{key}] = {value}"


# ------------------------------------------------------------------ metrics


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_ESPO_METRICS_approx_kl_is_finite_beyond_the_float_range(loss, backend):
    """[ESPO-METRICS] [BASE-METRICS] a log-ratio above ~709.78 (r - 1 overflows; was inf): the
    k3 mean in log space where it fits float64 (exp(710) / 2), else the largest float64;
    the clamp keeps the loss finite, and no metric is inf."""
    mask = np.ones((1, 2), dtype=bool)
    adv = np.array([-1.0]) if loss == "gmpo" else np.array([1.0])  # GMPO clips A < 0 only below
    entropy = np.full((1, 2), 1.0)
    exact = run(loss, backend, np.array([[710.0, 0.0]]), np.zeros((1, 2)), mask, adv, entropy=entropy)
    assert_all_finite(exact, f"{loss}/{backend} at log r = 710")
    want = math.exp(710.0 - math.log(2.0)) * (1 - 711.0 * math.exp(-710.0))  # (e^x - 1 - x) / 2
    assert compare(exact.metrics["approx_kl"], want, VALUE)["ok"], exact.metrics["approx_kl"]
    if loss == "gmpo":
        return  # GMPO has no clamp: a log-ratio of 800 with A < 0 overflows its ratio (an error)
    huge = run(loss, backend, np.array([[800.0, 0.0]]), np.zeros((1, 2)), mask, adv, entropy=entropy)
    assert_all_finite(huge, f"{loss}/{backend} at log r = 800")
    assert huge.metrics["approx_kl"] == F64_MAX


@pytest.mark.parametrize("loss", ("espo", "grpo", "cispo"))
def test_ESPO_METRICS_float32_approx_kl_is_the_cores(loss):
    """[ESPO-METRICS] the torch float32 path sums the metrics in float64 from the float64 raw
    log-ratio: a log-ratio of 100 (expm1 overflows float32 beyond ~88.7; approx_kl was inf)
    gives the core's value."""
    mask = np.ones((1, 2), dtype=bool)
    args = (np.array([[100.0, -1.0]]), np.array([[0.0, -1.0]]), mask, np.array([1.0]))
    want = run(loss, "numpy", *args, entropy=np.ones((1, 2)))
    got = run(loss, "torch", *args, entropy=np.ones((1, 2)), dtype=torch.float32)
    assert_all_finite(got, f"{loss} float32")
    assert compare(got.metrics["approx_kl"], want.metrics["approx_kl"], tolerance("torch", "float32", "value"))["ok"]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_BASE_METRICS_means_of_huge_values_are_summed_scaled(backend):
    """[BASE-METRICS] [ESPO-METRICS] ppo_kl of log-ratios near the float maximum, whose plain sum
    overflows, is their mean; the entropy mean of entropies allowed by a huge tolerance too."""
    mask = np.ones((1, 3), dtype=bool)
    logp = np.array([[1.5e308, 1.5e308, 1.5e308]])
    got = run("grpo", backend, logp, np.zeros((1, 3)), mask, np.array([1.0]))
    assert_all_finite(got, f"grpo/{backend}")
    assert compare(got.metrics["ppo_kl"], -1.5e308, VALUE)["ok"], got.metrics["ppo_kl"]
    cfg = core.ESPOConfig(vocab_size=16, entropy_tolerance=1.7e308, alpha=1e-300)
    entropy = np.full((1, 3), 1.6e308)
    got = run("espo", backend, np.zeros((1, 3)), np.zeros((1, 3)), mask, np.array([1.0]), cfg, entropy)
    assert_all_finite(got, f"espo/{backend} with huge entropies")
    assert compare(got.metrics["entropy_mean"], 1.6e308, VALUE)["ok"], got.metrics["entropy_mean"]


# ------------------------------------------------------------------ advantages


@pytest.mark.parametrize("rewards, eps", [
    ([1e308, -1e308], 1e-6),   # the mean overflowed: NaN
    ([1e200, 0.0], 1e-6),      # the variance overflowed: [0, -0]
    ([1e-300, -1e-300], 0.0),  # the variance underflowed to 0: [0, 0]
    ([5e-324, 0.0], 0.0),
])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_ESPO_ADV_huge_and_tiny_rewards_give_finite_advantages(rewards, eps, backend):
    """[ESPO-ADV] Eq. 11 is scale-free: two different rewards give +-1/sqrt(2) (ddof = 1) at any
    magnitude, computed on the power-of-two-scaled rewards."""
    fn = core.grpo_advantages if backend == "numpy" else et.grpo_advantages
    r = np.array(rewards) if backend == "numpy" else torch.tensor(rewards, dtype=torch.float64)
    got = host(fn(r, np.array([0, 0]), eps=eps))
    assert compare(got, np.array([1.0, -1.0]) / math.sqrt(2.0), VALUE)["ok"], got


def test_ESPO_ADV_float32_rewards_of_1e20():
    """[ESPO-ADV] float32 rewards whose square overflows float32 (1e40): finite, as the core."""
    got = host(et.grpo_advantages(torch.tensor([1e20, 0.0], dtype=torch.float32), torch.tensor([0, 0])))
    want = core.grpo_advantages(np.array([1e20, 0.0], dtype=np.float32), np.array([0, 0]))
    assert compare(got, want, tolerance("torch", "float32", "value"))["ok"], (got, want)


# ------------------------------------------------------------------ losses


@pytest.mark.parametrize("loss", LOSSES)
def test_ESPO_INPUT_loss_overflow_is_an_error_naming_advantages(loss):
    """[ESPO-INPUT] [BASE-INPUT] a loss beyond float64 from finite inputs (was inf) is an error
    naming the advantages, the same message from both backends."""
    mask = np.ones((1, 1), dtype=bool)
    logp, old = np.array([[-0.5]]), np.array([[-1.0]])
    adv = np.array([-1.7e308]) if loss != "cispo" else np.array([1e308])
    if loss == "cispo":
        logp, old = np.array([[-10.0]]), np.array([[-10.5]])
    config = {"espo": CFG.replace(log_ratio_clamp=None), "grpo": core.GRPOConfig(log_ratio_clamp=None),
              "dapo": core.DAPOConfig(log_ratio_clamp=None), "gspo": core.GSPOConfig(log_ratio_clamp=None),
              "gmpo": None, "cispo": None}[loss]
    got, want = error_messages(lambda: run(loss, "numpy", logp, old, mask, adv, config, np.ones((1, 1))),
                               lambda: run(loss, "torch", logp, old, mask, adv, config, np.ones((1, 1))))
    assert want == got and "the loss overflows float64" in want and "advantages" in want, (want, got)


def test_ESPO_INPUT_the_issue_example_is_an_error():
    """[ESPO-INPUT] issue 12's example: an advantage of -1e305 and ``log_ratio_clamp=None`` with
    a ratio of e^10 gave loss inf."""
    args = (np.array([[9.0]]), np.array([[-1.0]]), np.ones((1, 1), dtype=bool), np.array([-1e305]))
    cfg = CFG.replace(log_ratio_clamp=None)
    got, want = error_messages(lambda: run("espo", "numpy", *args, cfg, np.ones((1, 1))),
                               lambda: run("espo", "torch", *args, cfg, np.ones((1, 1))))
    assert want == got and "advantages up to 1e+305" in want


@pytest.mark.parametrize("loss", LOSSES)
def test_ESPO_INPUT_log_ratio_overflow_is_an_error_naming_both(loss):
    """[ESPO-INPUT] [BASE-INPUT] logp - old_logp beyond float64 (1e308 - (-1e308)) is an error
    naming both arguments and the position (its inf became NaN in the group mean)."""
    logp, old = np.array([[-1.0, 1e308]]), np.array([[-1.0, -1e308]])
    mask, adv = np.ones((1, 2), dtype=bool), np.array([1.0])
    got, want = error_messages(lambda: run(loss, "numpy", logp, old, mask, adv, entropy=np.ones((1, 2))),
                               lambda: run(loss, "torch", logp, old, mask, adv, entropy=np.ones((1, 2))))
    assert want == got and want.startswith("logp - old_logp overflows float64 at response position [0, 1]")


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_ESPO_RATIO_group_mean_of_huge_log_ratios_is_finite(backend):
    """[ESPO-RATIO] Eq. 10: the group mean of log-ratios whose sum overflows is their mean
    (was inf); the clamp then binds, and every output is finite."""
    logp, old = np.array([[1.5e308, 1.5e308, -1.0]]), np.array([[0.0, 0.0, -1.0]])
    groups = np.array([[0, 0, 1]])
    fn = core.group_log_ratio if backend == "numpy" else et.group_log_ratio
    conv = (lambda x: x) if backend == "numpy" else torch.tensor
    got = host(fn(conv(logp), conv(old), conv(groups)))
    assert compare(got, np.array([[1.5e308, 1.5e308, 0.0]]), VALUE)["ok"], got
    cfg = CFG.replace(grouping="none")
    result = run("espo", backend, logp, old, np.ones((1, 3), dtype=bool), np.array([-1.0]), cfg, np.ones((1, 3)))
    assert_all_finite(result, f"espo/{backend}")
    assert compare(host(result.log_ratio), np.full((1, 3), 1e308), VALUE)["ok"]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_ESPO_CLIP_huge_alpha_is_finite_or_an_error_naming_alpha(backend):
    """[ESPO-CLIP] eps = alpha e / log V with alpha near the float maximum: alpha / log V alone
    overflows (was inf, and NaN at e = 0), so the product is taken as alpha (e / log V);
    an epsilon that does not fit float64 is an error naming alpha."""
    cfg = core.ESPOConfig(vocab_size=2, alpha=1.7e308, grouping="token")
    log_v = math.log(2.0)
    entropy = np.array([[0.0, 0.1, log_v / 2]])
    groups = np.array([[0, 1, 2]])
    fn = core.group_clip_eps if backend == "numpy" else et.group_clip_eps
    conv = (lambda x: x) if backend == "numpy" else torch.tensor
    got = host(fn(conv(entropy), conv(groups), cfg))
    assert compare(got, 1.7e308 * (entropy / log_v), VALUE)["ok"], got
    with pytest.raises(ESPOInputError, match="alpha"):
        fn(conv(np.array([[2 * log_v]])), conv(np.array([[0]])), cfg.replace(alpha=1e308, entropy_tolerance=1.0))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_BASE_AGG_aggregated_loss_overflow_is_an_error_naming_per_token(backend):
    """[BASE-AGG] a sum beyond float64 (three tokens of 1e308, token sum) is an error naming
    per_token (was inf)."""
    fn = core.agg_loss if backend == "numpy" else et.agg_loss
    conv = (lambda x: x) if backend == "numpy" else torch.tensor
    with pytest.raises(ESPOInputError, match="per_token"):
        fn(conv(np.full((1, 3), 1e308)), conv(np.ones((1, 3), dtype=bool)), "seq-mean-token-sum")


# ------------------------------------------------------------------ entropy


@pytest.mark.parametrize("logits, temperature, want", [
    ([[0.0, 1.0, 3e38]], 1e-300, 0.0),          # logits / T overflowed: NaN, then an error
    ([[-1e308, -1e308]], 0.5, math.log(2.0)),   # every logit / T was -inf: "-inf everywhere"
    ([[1e308, -1e308, 1e308]], 0.25, math.log(2.0)),
])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_ESPO_ENT_finite_logits_give_a_finite_entropy_at_any_temperature(logits, temperature, want, backend):
    """[ESPO-ENT] a row whose logits / temperature leaves the float range is shifted by its
    maximum first: the entropy of the limit distribution, not an error or NaN."""
    fn = core.token_entropy if backend == "numpy" else et.token_entropy
    x = np.array(logits) if backend == "numpy" else torch.tensor(logits, dtype=torch.float64)
    got = host(fn(x, temperature))
    assert compare(got, np.array([want]), VALUE)["ok"], got


def test_ESPO_ENT_float32_temperature_outside_float32():
    """[ESPO-ENT] a float32 entropy at a temperature float32 cannot hold (1e-300 rounds to 0:
    0 / 0 was NaN) equals the core's on the same values."""
    x = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, -np.inf]], dtype=np.float32)
    for temperature in (1e-300, 1e300):
        got = host(et.token_entropy(torch.tensor(x), temperature))
        want = core.token_entropy(x, temperature)
        assert compare(got, want, tolerance("torch", "float32", "value"))["ok"], (temperature, got, want)


# ------------------------------------------------------------------ gradients


def test_BASE_GSPO_SEQ_float32_autograd_of_huge_advantages_is_the_grad_field():
    """[BASE-GSPO-SEQ] the sequence ratio's backward takes the row mean of the token gradients:
    their row sum (about -4.2e38 in row 1) leaves float32 where the gradient itself fits, and
    autograd gave inf while the ``grad`` field was finite (the case the fuzz suite found)."""
    logp = torch.tensor([[-0.57055008, 0.28399482, -0.05095406, -0.30126372, -0.04933437, -0.20786561, -0.33839411],
                         [-0.54206967, 0.33100179, 0.23047887, -0.23946764, 0.11561301, 0.13830255, 0.38197136],
                         [-0.22515053, -0.08022735, 0.17149594, -0.08873525, -0.90502948, -0.21023095, -0.41972134]],
                        dtype=torch.float32, requires_grad=True)
    old = torch.zeros((3, 7), dtype=torch.float32)
    adv = torch.tensor([[1.85118343e38, -2.28502945e38, 2.92423202e38, 1.84055931e38, -2.32793628e38,
                         -1.61008177e38, 2.64703132e38],
                        [-2.39128210e38, 1.50136754e38, -1.50544634e38, -2.80515359e38, -2.50617323e38,
                         -2.19628945e38, -2.09327914e38],
                        [-2.63640638e38, 2.18088719e38, -2.23560974e38, -2.47896559e38, 1.78083511e38,
                         1.62223113e38, 2.56771087e38]], dtype=torch.float32)
    config = core.GSPOConfig(eps_low=1.0, eps_high=4.0, loss_agg_mode="seq-mean-token-sum", log_ratio_clamp=None,
                             level="sequence")
    result = et.gspo_loss(logp, old, torch.ones((3, 7), dtype=torch.bool), adv, config)
    result.loss.backward()
    assert np.isfinite(host(logp.grad)).all(), f"[BASE-GSPO-SEQ] autograd {host(logp.grad)}"
    assert compare(host(logp.grad), host(result.grad), tolerance("torch", "float32", "grad"))["ok"]
