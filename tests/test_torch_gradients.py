"""Gradient properties of the torch espo_loss, each its own test (issue 4).

Gradients are autograd's d loss / d logp through Eq. 9's stop-gradients; the expected
values come from the spec's algebra (computed here with plain loops), not from the thing
tested.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import assume, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import espo_ref as core  # noqa: E402
import espo_ref.torch as et  # noqa: E402
from espo_ref.tolerances import tolerance  # noqa: E402

from helpers.asserts import assert_close  # noqa: E402
from helpers.torch_batches import DEVICES, batches, host, run_numpy, run_torch, to_torch  # noqa: E402

GRAD = tolerance("torch", "float64", "grad")
VALUE = tolerance("torch", "float64", "value")


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_ESPO_CLIPMASK_torch_clipped_clamped_and_padding_tokens_get_zero_gradient(data, device):
    """[ESPO-CLIPMASK] [ESPO-RATIO-CLAMP] [ESPO-INPUT] clipped, clamped, untrained and
    padding tokens (which hold NaN) get exactly 0 gradient, never NaN."""
    batch = data.draw(batches("float64"), label="batch")
    got, grad = run_torch(batch, device)
    g = host(grad)
    assert np.isfinite(g).all(), "[ESPO-INPUT] NaN padding leaked into the gradient"
    stopped = (host(got.clipped_high) | host(got.clipped_low) | host(got.extras["clamped"])
               | ~host(got.trained))
    assert (g[stopped] == 0.0).all(), "[ESPO-CLIPMASK] a stopped token has a gradient"
    assert (g[~batch["mask"]] == 0.0).all(), "[ESPO-INPUT] padding has a gradient"
    assert np.isfinite(host(got.loss)) and all(np.isfinite(host(getattr(got, f))).all()
                                               for f in ("ratio", "eps", "weight", "log_ratio", "grad"))


def _weights_by_loops(groups, trained, mask):
    """1 / (N K_i |tau|) per trained token, by plain loops over responses and groups."""
    B, T = groups.shape
    n = sum(1 for b in range(B) if mask[b].any())
    out = np.zeros((B, T))
    for b in range(B):
        ids = sorted({int(groups[b, t]) for t in range(T) if trained[b, t]})
        for t in range(T):
            if trained[b, t]:
                size = sum(1 for u in range(T) if trained[b, u] and groups[b, u] == groups[b, t])
                out[b, t] = 1.0 / (n * len(ids) * size)
    return out


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_ESPO_AGG_torch_gradient_at_the_old_policy_is_the_policy_gradient_weight(data, device):
    """[ESPO-AGG] [ESPO-OBJ] at logp == old_logp every ratio is 1 (inside every clip range),
    so d loss / d logp_t = -A_t / (N K_i |tau|) on trained tokens and 0 elsewhere."""
    batch = data.draw(batches("float64"), label="batch")
    batch["old_logp"] = batch["logp"].copy()
    got, grad = run_torch(batch, device)
    # An entropy inside the tolerance band below 0 gives eps < 0 ([ESPO-ENT-DOMAIN] uses it
    # as given), an inverted clip interval that clips even s = 1: outside this property.
    assume((host(got.eps_low) >= 0).all() and (host(got.eps_high) >= 0).all())
    groups, trained, m = host(got.groups), host(got.trained), batch["mask"]
    adv = np.broadcast_to(np.asarray(batch["advantages"]).reshape(m.shape[0], -1), m.shape)
    want = np.where(trained, -adv * _weights_by_loops(groups, trained, m), 0.0)
    assert_close(host(grad), want, GRAD, "ESPO-AGG", "grad at the old policy")


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_ESPO_RATIO_TOKEN_torch_token_form_equals_the_group_sequence_form(data, device):
    """[ESPO-RATIO-TOKEN] with one advantage per response, the GSPO-token form (Eq. 9) and the
    group-sequence form (mean over groups of min(s_tau A, clip(s_tau) A), s_tau with its
    real gradient) give the same gradient. The clip range must be one per group too:
    eps_reading="group_mean" ([ESPO-CLIP]) or a fixed range."""
    batch = data.draw(batches("float64", per_token_adv=False, ratio_form="gspo_token", eps_reading="group_mean"),
                      label="batch")
    want_np = run_numpy(batch)
    margin = 1e-9  # the sequence form's min/clip tie-breaking is not the point here
    r = want_np.ratio
    assume(not (want_np.trained & ((np.abs(r - 1 - want_np.eps_high) < margin)
                                   | (np.abs(r - 1 + want_np.eps_low) < margin))).any())
    _, grad = run_torch(batch, device)

    args = to_torch(batch, device)
    cfg = batch["config"]
    groups = et.entropy_groups(args["entropy"], args["mask"], cfg)
    log_s = et.group_log_ratio(args["logp"], args["old_logp"], groups)  # no stop-gradient
    if cfg.log_ratio_clamp is not None:
        log_s = torch.clamp(log_s, max=cfg.log_ratio_clamp)
    s = torch.exp(log_s)
    lo, hi = et.clip_bounds(args["entropy"], groups, cfg)
    adv = args["advantages"][:, None]
    per_group_value = torch.minimum(s * adv, torch.clamp(s, 1 - lo, 1 + hi) * adv)
    weight = torch.tensor(_weights_by_loops(host(groups), host(et.trained_tokens(groups, cfg)), batch["mask"]),
                          device=device)
    # sum over the |tau| tokens of w = 1/(N K |tau|) gives each group's value 1/(N K)
    (-(weight * per_group_value).sum()).backward()
    assert_close(host(grad), host(args["logp"].grad), GRAD, "ESPO-RATIO-TOKEN", "token vs sequence form")


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_ESPO_OBJ_torch_loss_scales_with_advantages(data, device):
    """[ESPO-OBJ] scaling the advantages by c > 0 scales the loss and the gradient by c
    (clip decisions depend on the sign of A only)."""
    batch = data.draw(batches("float64"), label="batch")
    c = data.draw(st.sampled_from((0.5, 2.0, 3.7, 1e3)), label="c")
    a, ga = run_torch(batch, device)
    b, gb = run_torch(dict(batch, advantages=c * np.asarray(batch["advantages"])), device)
    assert_close(host(b.loss), c * host(a.loss), VALUE, "ESPO-OBJ", "loss")
    assert_close(host(gb), c * host(ga), GRAD, "ESPO-OBJ", "grad")


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_ESPO_AGG_torch_permuting_responses_permutes_outputs(data, device):
    """[ESPO-AGG] [ESPO-GROUP-TOPFRAC] a permutation of the responses permutes every per-token
    output and leaves the loss unchanged. batch_top_fraction is left out: its ties are broken
    by the flat position, which a permutation of the rows changes ([ESPO-GROUP-BATCH])."""
    grouping = data.draw(st.sampled_from(("top_fraction", "entropy_ranges", "none", "token")), label="grouping")
    batch = data.draw(batches("float64", grouping=grouping), label="batch")
    B = batch["mask"].shape[0]
    perm = np.array(data.draw(st.permutations(range(B)), label="perm"))
    permuted = dict(batch, **{k: np.asarray(batch[k])[perm] for k in
                              ("logp", "old_logp", "entropy", "mask", "advantages")})
    a, ga = run_torch(batch, device)
    b, gb = run_torch(permuted, device)
    assert_close(host(b.loss), host(a.loss), VALUE, "ESPO-AGG", "loss")
    assert_close(host(gb), host(ga)[perm], GRAD, "ESPO-AGG", "grad")
    assert (host(b.groups) == host(a.groups)[perm]).all()
    for name in ("ratio", "eps", "weight"):
        assert_close(host(getattr(b, name)), host(getattr(a, name))[perm], VALUE, "ESPO-AGG", name)


@given(data=st.data())
def test_torch_espo_loss_is_bit_identical_on_repeat_cpu(data):
    """[ESPO-OBJ] deterministic on CPU: the same inputs give bit-identical loss, gradient,
    per-token fields and metrics."""
    dtype = data.draw(st.sampled_from(("float64", "float32")), label="dtype")
    batch = data.draw(batches(dtype), label="batch")
    a, ga = run_torch(batch, "cpu")
    b, gb = run_torch(batch, "cpu")
    assert torch.equal(a.loss, b.loss) and torch.equal(ga, gb)
    for name in ("grad", "ratio", "eps", "weight", "log_ratio", "groups", "clipped_high", "clipped_low"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.metrics == b.metrics or all(
        x == y or (np.isnan(x) and np.isnan(y)) for x, y in zip(a.metrics.values(), b.metrics.values()))


def test_CONF_CALL_torch_espo_loss_computes_bfloat16_in_float32_and_returns_a_bfloat16_gradient():
    """[ESPO-OBJ] bfloat16 logp is computed in float32 inside; autograd returns a bfloat16
    gradient, the fields are float32."""
    cfg = core.ESPOConfig(vocab_size=16)
    logp = torch.full((2, 3), -1.0, dtype=torch.bfloat16, requires_grad=True)
    r = et.espo_loss(logp, logp.detach() - 0.01, torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool),
                     torch.tensor([1.0, -1.0]), cfg)
    r.loss.backward()
    assert r.loss.dtype == torch.float32 and r.grad.dtype == torch.float32
    assert logp.grad.dtype == torch.bfloat16 and torch.isfinite(logp.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_ESPO_METRICS_torch_validate_false_syncs_only_for_metrics_cuda():
    """[ESPO-METRICS] [ESPO-OBJ] on CUDA with validate=False, forward and backward make at most
    one host sync: the single transfer of the metrics."""
    import warnings

    rng = np.random.default_rng(0)
    logp = torch.tensor(rng.uniform(-3, 0, (8, 64)), dtype=torch.float32, device="cuda", requires_grad=True)
    old = (logp.detach() - 0.01).contiguous()
    ent = torch.rand(8, 64, device="cuda")
    mask = torch.rand(8, 64, device="cuda") < 0.9
    adv = torch.randn(8, device="cuda")
    cfg = core.ESPOConfig(vocab_size=151936)
    et.espo_loss(logp, old, ent, mask, adv, cfg, validate=False).loss.backward()  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            et.espo_loss(logp, old, ent, mask, adv, cfg, validate=False).loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) <= 1, syncs


# ------------------------------------------------------------------ constants [ESPO-OBJ] (issue 12)

_CONSTANT_CASES = {  # loss name -> (torch loss, numpy loss, whether it takes an entropy)
    "espo": (et.espo_loss, core.espo_loss, True),
    "grpo": (et.grpo_loss, core.grpo_loss, False),
    "dapo": (et.dapo_loss, core.dapo_loss, False),
    "gspo": (et.gspo_loss, core.gspo_loss, False),
    "gmpo": (et.gmpo_loss, core.gmpo_loss, False),
    "cispo": (et.cispo_loss, core.cispo_loss, False),
}
_CFG16 = core.ESPOConfig(vocab_size=16)


def _call(fn, takes_entropy, logp, old_logp, entropy, mask, adv):
    if takes_entropy:
        return fn(logp, old_logp, entropy, mask, adv, _CFG16)
    return fn(logp, old_logp, mask, adv)


def _constant_inputs():
    logp = np.array([[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0]])
    mask = np.array([[True, True, True], [True, True, False]])
    entropy = np.array([[0.3, 1.2, 2.0], [0.9, 0.1, 0.0]])
    adv = np.array([1.0, -0.5])
    return logp, mask, entropy, adv


@pytest.mark.parametrize("loss", sorted(_CONSTANT_CASES))
def test_ESPO_OBJ_old_logp_is_a_constant_when_it_is_logp(loss):
    """[ESPO-OBJ] [BASE-INPUT] old_logp is a constant: passing the very tensor logp as old_logp
    (the first update, old = current) gives autograd the ``grad`` field's gradient, -w A at
    ratio 1 (issue 12: it was 0 for espo, grpo, dapo, gspo, gmpo and wrong for cispo)."""
    fn_t, fn_np, takes_entropy = _CONSTANT_CASES[loss]
    logp, mask, entropy, adv = _constant_inputs()
    t = torch.tensor(logp, requires_grad=True)
    got = _call(fn_t, takes_entropy, t, t, torch.tensor(entropy), torch.tensor(mask), torch.tensor(adv))
    got.loss.backward()
    want = _call(fn_np, takes_entropy, logp, logp, entropy, mask, adv)
    assert np.abs(want.grad[mask]).min() > 0  # the gradient that must flow
    assert_close(host(t.grad), want.grad, GRAD, "ESPO-OBJ", f"{loss}: autograd with old_logp = logp")
    assert_close(host(got.grad), want.grad, GRAD, "ESPO-OBJ", f"{loss}: grad field")


@pytest.mark.parametrize("loss", sorted(_CONSTANT_CASES))
def test_ESPO_OBJ_old_logp_advantages_and_entropy_get_no_gradient(loss):
    """[ESPO-OBJ] [BASE-INPUT] old_logp derived from logp in the graph, and advantages and
    entropy that require grad: no gradient reaches any of them, and logp's equals the
    ``grad`` field (the core's)."""
    fn_t, fn_np, takes_entropy = _CONSTANT_CASES[loss]
    logp, mask, entropy, adv = _constant_inputs()
    t = torch.tensor(logp, requires_grad=True)
    shift = torch.tensor([[0.05, -0.1, 0.2], [0.0, 0.15, -0.05]], dtype=torch.float64)
    old = t * 1.0 - shift  # in logp's graph, not detached by the caller
    a = torch.tensor(adv, requires_grad=True)
    e = torch.tensor(entropy, requires_grad=True)
    got = _call(fn_t, takes_entropy, t, old, e, torch.tensor(mask), a)
    got.loss.backward()
    want = _call(fn_np, takes_entropy, logp, logp - shift.numpy(), entropy, mask, adv)
    assert a.grad is None, f"[ESPO-OBJ] {loss}: a gradient reached the advantages"
    assert e.grad is None, f"[ESPO-OBJ] {loss}: a gradient reached the entropy"
    assert_close(host(t.grad), want.grad, GRAD, "ESPO-OBJ", f"{loss}: autograd through old_logp")


@pytest.mark.parametrize("device", DEVICES)
@given(data=st.data())
def test_ESPO_OBJ_analytic_backward_equals_autograd_through_the_stop_gradients(data, device):
    """[ESPO-OBJ] [ESPO-RATIO-TOKEN] espo_loss's backward applies the analytic gradient of Eq. 9;
    autograd through Eq. 9's stop-gradients, token by token (the paper's formulation, a second
    derivation), gives the same gradient and the same loss, every config and dtype drawn."""
    from espo_ref.torch._autograd_objective import espo_loss_autograd

    dtype = data.draw(st.sampled_from(["float64", "float32"]), label="dtype")
    batch = data.draw(batches(dtype), label="batch")
    got, grad = run_torch(batch, device)
    args = to_torch(batch, device)
    want = espo_loss_autograd(args["logp"], args["old_logp"], args["entropy"], args["mask"], args["advantages"],
                              batch["config"])
    want.loss.backward()
    value, gradient = tolerance("torch", dtype, "value"), tolerance("torch", dtype, "grad")
    assert_close(host(got.loss), host(want.loss), value, "ESPO-OBJ", "analytic vs autograd loss")
    assert_close(host(grad), host(args["logp"].grad), gradient, "ESPO-OBJ", "analytic backward vs autograd")
    assert_close(host(got.grad), host(args["logp"].grad), gradient, "ESPO-OBJ", "grad field vs autograd")
    for key, value_got in got.metrics.items():
        assert_close(value_got, want.metrics[key], value, "ESPO-METRICS", key)
