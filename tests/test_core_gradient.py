"""The gradient of espo_loss: finite differences, the stop-gradient algebra, and invariances.

(a) central differences of the un-stop-gradient group-sequence objective (s_tau a function
    of every logp of its group, Eq. 10) match ``grad`` when A and eps are constant per group
    [ESPO-RATIO-TOKEN];
(b) the same, analytically, for every token;
(c) exact zeros at clipped, clamped, dropped and padding tokens [ESPO-OBJ];
(d) at logp == old_logp, grad = -A / (N K |tau|) [ESPO-AGG];
(e) scaling the advantages by c > 0 scales loss and grad by c;
(f) permuting responses permutes every output;
(g) central differences of each ratio form's own stop-gradient semantics
    ([ESPO-RATIO-TOKEN], [ESPO-RATIO-LITERAL]): sg[.] factors frozen at the base point.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import espo_ref
from espo_ref.tolerances import FINITE_DIFFERENCE, compare, tolerance

from helpers.asserts import assert_close, assert_equal
from helpers.core_batches import draw_batch, repro, run_both, well_conditioned
from helpers.oracle import oracle_espo_loss, oracle_members

VALUE = tolerance("numpy", "float64", "value")
GRAD = tolerance("numpy", "float64", "grad")
ULP = np.finfo(np.float64).eps
H = 1e-6  # the step FINITE_DIFFERENCE is sized for


def _ctx(batch, **extra):
    items = {k: (np.asarray(v) if k != "config" else v) for k, v in batch.items()}
    items.update(extra)
    return repro(**items)


def _per_response_advantages(data, B):
    elem = st.one_of(st.sampled_from([-2.0, -1.0, 0.0, 0.5, 1.0]), st.floats(-3, 3))
    return np.array(data.draw(st.lists(elem, min_size=B, max_size=B), label="advantages[B]"))


def _direction(data, mask):
    B, T = mask.shape
    rows = [data.draw(st.lists(st.floats(-1, 1), min_size=T, max_size=T), label=f"direction[{b}]") for b in range(B)]
    return np.where(mask, np.array(rows).reshape(B, T), 0.0)


def _clip(v, lo, hi):
    return min(max(v, lo), hi)


def _smooth(v, lo, hi, log_v, clamp, gap=1e-4):
    """v is at least ``gap`` (relative) away from both clip bounds and the clamp."""
    if abs(v - hi) <= gap * max(1.0, hi) or abs(v - lo) <= gap * max(1.0, abs(lo)):
        return False
    return clamp is None or abs(log_v - clamp) > gap


# ------------------------------------------------------------------ (a) group-sequence FD


@given(data=st.data())
def test_ESPO_RATIO_TOKEN_grad_matches_finite_differences_of_the_group_sequence_form(data):
    eps_fixed = data.draw(st.sampled_from(["adaptive", "fixed"]), label="clip")
    batch = draw_batch(data, ratio_form="gspo_token", eps_reading="group_mean", clip=eps_fixed)
    mask = np.asarray(batch["mask"], dtype=bool)
    B, T = mask.shape
    batch["advantages"] = adv = _per_response_advantages(data, B)
    cfg = batch["config"]
    o = oracle_espo_loss(batch["logp"], batch["old_logp"], batch["entropy"], mask, adv, cfg)
    N = int(mask.any(axis=1).sum())
    x0 = np.where(mask, batch["logp"], 0.0)
    old = np.where(mask, batch["old_logp"], 0.0)

    # The trained groups: (b, positions, 1/(N K_b), eps_low, eps_high); A, eps constant per group.
    groups = []
    for b in range(B):
        for g, pos in oracle_members(o["groups"], b).items():
            if not o["trained"][b][pos[0]]:
                continue
            groups.append((b, pos, 1.0 / (N * o["K"][b]), o["eps_low"][b][pos[0]], o["eps_high"][b][pos[0]]))

    def term(x, b, pos, scale, lo_eps, hi_eps):
        """-(1/(N K)) min(s A, clip(s) A) with s = exp(mean(x - old)) clamped: no stop-gradient."""
        log_s = math.fsum(x[b, t] - old[b, t] for t in pos) / len(pos)
        if cfg.log_ratio_clamp is not None:
            log_s = min(log_s, cfg.log_ratio_clamp)
        s = math.exp(log_s)
        A = adv[b]
        return -scale * min(s * A, _clip(s, 1 - lo_eps, 1 + hi_eps) * A)

    for b, pos, scale, lo_eps, hi_eps in groups:
        log_s = math.fsum(x0[b, t] - old[b, t] for t in pos) / len(pos)
        s = math.exp(log_s)
        if adv[b] != 0:
            assume(_smooth(s, 1 - lo_eps, 1 + hi_eps, log_s, cfg.log_ratio_clamp))

    got = espo_ref.espo_loss(batch["logp"], batch["old_logp"], batch["entropy"], batch["mask"], adv, cfg)
    for k in range(2):
        d = _direction(data, mask)
        fd_parts, err = [], 0.0
        for b, pos, scale, lo_eps, hi_eps in groups:
            plus = term(x0 + H * d, b, pos, scale, lo_eps, hi_eps)
            minus = term(x0 - H * d, b, pos, scale, lo_eps, hi_eps)
            fd_parts.append((plus - minus) / (2 * H))
            md = abs(sum(d[b, t] for t in pos) / len(pos))
            size = max(abs(plus), abs(minus))
            err += 4 * ULP * size / H + H * H * size * md**3
        want = math.fsum(fd_parts)
        assume(err <= 0.5 * (FINITE_DIFFERENCE.atol + FINITE_DIFFERENCE.rtol * abs(want)))
        directional = math.fsum((got.grad * d)[mask].tolist())
        report = compare(directional, want, FINITE_DIFFERENCE)
        assert report["ok"], (
            f"[ESPO-RATIO-TOKEN] grad . d = {directional!r} but the central difference of the "
            f"group-sequence objective is {want!r} ({report}){_ctx(batch, direction=d)}"
        )


# ------------------------------------------------------------------ (g) own stop-gradient FD


def check_grad_matches_finite_differences_of_its_stop_gradient_semantics(ratio_form, data):
    """v_t(x) = exp(min(log v_t(x0) + (x_t - x0_t), C)): sg[s_tau] (and sg[pi]) frozen at x0."""
    batch = draw_batch(data, ratio_form=ratio_form)
    mask = np.asarray(batch["mask"], dtype=bool)
    cfg = batch["config"]
    got, want = run_both(batch)
    assume(well_conditioned(want))
    o = want["oracle"]
    adv = np.asarray(batch["advantages"], dtype=np.float64)
    x0 = np.where(mask, batch["logp"], 0.0)
    old = np.where(mask, batch["old_logp"], 0.0)
    tokens = []
    for b, t in zip(*np.nonzero(mask)):
        if not o["trained"][b][t]:
            continue
        A = adv[b] if adv.ndim == 1 else adv[b, t]
        log_v0 = o["log_ratio"][b][t] + (0.0 if ratio_form == "gspo_token" else x0[b, t] - old[b, t])
        lo, hi = 1 - o["eps_low"][b][t], 1 + o["eps_high"][b][t]
        if A != 0:
            assume(_smooth(math.exp(min(log_v0, cfg.log_ratio_clamp or math.inf)), lo, hi, log_v0, cfg.log_ratio_clamp))
        tokens.append((b, t, A, log_v0, lo, hi, o["weight"][b][t]))

    def term(x, b, t, A, log_v0, lo, hi, w):
        log_v = log_v0 + (x[b, t] - x0[b, t])
        if cfg.log_ratio_clamp is not None:
            log_v = min(log_v, cfg.log_ratio_clamp)
        v = math.exp(log_v)
        return -w * min(v * A, _clip(v, lo, hi) * A)

    d = _direction(data, mask)
    parts, err = [], 0.0
    for tok in tokens:
        plus, minus = term(x0 + H * d, *tok), term(x0 - H * d, *tok)
        parts.append((plus - minus) / (2 * H))
        size = max(abs(plus), abs(minus))
        err += 4 * ULP * size / H + H * H * size * abs(d[tok[0], tok[1]]) ** 3
    fd = math.fsum(parts)
    assume(err <= 0.5 * (FINITE_DIFFERENCE.atol + FINITE_DIFFERENCE.rtol * abs(fd)))
    directional = math.fsum((got.grad * d)[mask].tolist())
    clause = "ESPO-RATIO-TOKEN" if ratio_form == "gspo_token" else "ESPO-RATIO-LITERAL"
    report = compare(directional, fd, FINITE_DIFFERENCE)
    assert report["ok"], (
        f"[{clause}] grad . d = {directional!r} but the central difference of the stop-gradient "
        f"surrogate is {fd!r} ({report}){_ctx(batch, direction=d)}"
    )


@pytest.mark.parametrize("ratio_form", [
    "gspo_token",  # sg[s_tau] pi(y_t) / sg[pi(y_t)]
    "literal",  # sg[s_tau] pi(y_t) / sg[pi_old(y_t)], value and derivative s_tau r_t
], ids=["ESPO-RATIO-TOKEN", "ESPO-RATIO-LITERAL"])
@given(data=st.data())
def test_ESPO_RATIO_TOKEN_and_ESPO_RATIO_LITERAL_grad_matches_finite_differences_of_its_stop_gradient_semantics(
        ratio_form, data):
    """Each ratio form (the test id is its clause) against central differences of its own
    stop-gradient surrogate."""
    check_grad_matches_finite_differences_of_its_stop_gradient_semantics(ratio_form, data)


# ------------------------------------------------------------------ (b) analytic group form


@given(data=st.data())
def test_ESPO_RATIO_TOKEN_grad_equals_the_group_sequence_gradient(data):
    """With A constant per response and eps per group, grad_t = -A s_tau / (N K |tau|) on
    unclipped, unclamped trained groups, else 0: the group-sequence gradient."""
    clip = data.draw(st.sampled_from(["adaptive", "fixed"]), label="clip")
    batch = draw_batch(data, ratio_form="gspo_token", eps_reading="group_mean", clip=clip)
    mask = np.asarray(batch["mask"], dtype=bool)
    B, T = mask.shape
    batch["advantages"] = adv = _per_response_advantages(data, B)
    got, want = run_both(batch)
    assume(well_conditioned(want))
    cfg, o = batch["config"], want["oracle"]
    N = int(mask.any(axis=1).sum())
    expected = np.zeros((B, T))
    old = np.where(mask, batch["old_logp"], 0.0)
    x = np.where(mask, batch["logp"], 0.0)
    for b in range(B):
        trained_groups = {g: p for g, p in oracle_members(o["groups"], b).items() if o["trained"][b][p[0]]}
        K = len(trained_groups)
        for g, pos in trained_groups.items():
            log_s = math.fsum(x[b, t] - old[b, t] for t in pos) / len(pos)
            if cfg.log_ratio_clamp is not None and log_s > cfg.log_ratio_clamp:
                continue  # flat: zero gradient
            s = math.exp(log_s)
            lo, hi = 1 - o["eps_low"][b][pos[0]], 1 + o["eps_high"][b][pos[0]]
            if (adv[b] > 0 and s > hi) or (adv[b] < 0 and s < lo):
                continue  # the clipped branch of min(sA, clip(s)A) is constant in s
            for t in pos:
                expected[b, t] = -adv[b] * s / (N * K * len(pos))
    assert_close(got.grad, expected, GRAD, "ESPO-RATIO-TOKEN", "grad vs group-sequence gradient", _ctx(batch),
                 undefined_nan=True)


# ------------------------------------------------------------------ (c) exact zeros


@given(data=st.data())
def test_ESPO_CLIPMASK_and_ESPO_RATIO_CLAMP_grad_is_exactly_zero_where_no_gradient_flows(data):
    batch = draw_batch(data)
    mask = np.asarray(batch["mask"], dtype=bool)
    got, want = run_both(batch)
    assume(well_conditioned(want))
    o = want["oracle"]
    clamped = np.array(o["clamped"], dtype=bool).reshape(mask.shape)
    ctx = _ctx(batch)
    for name, where, clause in (
        ("clipped-high", np.asarray(got.clipped_high), "ESPO-CLIPMASK"),
        ("clipped-low", np.asarray(got.clipped_low), "ESPO-CLIPMASK"),
        ("clamped", clamped, "ESPO-RATIO-CLAMP"),
        ("untrained (dropped)", mask & ~np.asarray(got.trained), "ESPO-GROUP-DROPLOW"),
        ("padding", ~mask, "ESPO-INPUT"),
    ):
        nz = np.argwhere(where & (got.grad != 0.0))
        assert nz.size == 0, (
            f"[{clause}] grad must be exactly 0 at {name} tokens; at {tuple(nz[0])} it is "
            f"{got.grad[tuple(nz[0])]!r}{ctx}"
        )
    for name in ("ratio", "weight", "eps", "log_ratio"):
        arr = np.asarray(getattr(got, name))
        assert np.all(arr[~mask] == 0.0), f"[ESPO-OBJ] {name} must be 0 on padding{ctx}"
    assert np.all(np.asarray(got.groups)[~mask] == -1), f"[ESPO-GROUP] groups must be -1 on padding{ctx}"
    assert np.all(np.asarray(got.weight)[mask & ~np.asarray(got.trained)] == 0.0), (
        f"[ESPO-AGG] untrained tokens have weight 0{ctx}"
    )


# ------------------------------------------------------------------ (d) at the old policy


@given(data=st.data())
def test_ESPO_AGG_grad_at_the_old_policy_is_minus_A_over_N_K_tau(data):
    batch = draw_batch(data)
    batch["logp"] = batch["old_logp"].copy()
    mask = np.asarray(batch["mask"], dtype=bool)
    B, T = mask.shape
    cfg = batch["config"]
    got = espo_ref.espo_loss(batch["logp"], batch["old_logp"], batch["entropy"], batch["mask"], batch["advantages"], cfg)
    ctx = _ctx(batch)
    assert np.all(got.ratio[mask] == 1.0), f"[ESPO-RATIO] at logp == old_logp every ratio is 1{ctx}"
    assert not np.any(got.clipped_high) and not np.any(got.clipped_low), (
        f"[ESPO-CLIPMASK] ratio 1 lies inside [1 - eps, 1 + eps]: nothing is clipped{ctx}"
    )
    groups = np.asarray(got.groups)
    trained = np.asarray(got.trained)
    adv = np.asarray(batch["advantages"], dtype=np.float64)
    adv2 = np.broadcast_to(adv[:, None], (B, T)) if adv.ndim == 1 else adv
    N = int(mask.any(axis=1).sum())
    expected = np.zeros((B, T))
    expected_loss = []
    for b in range(B):
        tr = [t for t in range(T) if trained[b, t]]
        K = len({groups[b, t] for t in tr})
        for t in tr:
            size = sum(1 for u in tr if groups[b, u] == groups[b, t])
            expected[b, t] = -adv2[b, t] / (N * K * size)
            expected_loss.append(expected[b, t])
    assert_close(got.grad, expected, GRAD, "ESPO-AGG", "grad at logp == old_logp", ctx, undefined_nan=True)
    want_loss = math.fsum(expected_loss)
    assume(8 * (len(expected_loss) + 16) * ULP * math.fsum(map(abs, expected_loss)) <= 0.5 * (VALUE.atol + VALUE.rtol * abs(want_loss)))
    assert_close(got.loss, want_loss, VALUE, "ESPO-AGG", "loss at logp == old_logp (= sum of grad)", ctx,
                 undefined_nan=True)


# ------------------------------------------------------------------ (e) advantage scaling


@given(data=st.data())
def test_ESPO_OBJ_scaling_advantages_scales_loss_and_grad(data):
    batch = draw_batch(data)
    c = data.draw(st.one_of(st.sampled_from([2.0, 0.5, 3.0, 1e3, 1e-3]), st.floats(1e-3, 1e3)), label="c")
    got, want = run_both(batch)
    assume(well_conditioned(want))
    scaled = dict(batch, advantages=c * np.asarray(batch["advantages"]))
    # c A must keep A's sign: a subnormal A (5e-324) times c < 1 underflows to 0, which is never clipped
    mask = np.asarray(batch["mask"], dtype=bool)
    adv, adv_c = (np.broadcast_to(np.reshape(a, (len(mask), -1)), mask.shape)[mask]
                  for a in (batch["advantages"], scaled["advantages"]))
    assume(np.array_equal(np.sign(adv), np.sign(adv_c)))
    got_c, want_c = run_both(scaled)
    assume(well_conditioned(want_c))
    ctx = _ctx(batch, c=c)
    assert_equal(got_c.clipped_high, got.clipped_high, "ESPO-CLIPMASK", "clipped_high under A -> cA", ctx)
    assert_equal(got_c.clipped_low, got.clipped_low, "ESPO-CLIPMASK", "clipped_low under A -> cA", ctx)
    assert_close(got_c.grad, c * got.grad, GRAD, "ESPO-OBJ", "grad(cA) vs c grad(A)", ctx, undefined_nan=True)
    assert_close(got_c.loss, c * got.loss, VALUE, "ESPO-OBJ", "loss(cA) vs c loss(A)", ctx, undefined_nan=True)


# ------------------------------------------------------------------ (f) response permutation


@given(data=st.data())
def test_ESPO_AGG_permuting_responses_permutes_outputs(data):
    grouping = data.draw(
        st.sampled_from(["top_fraction", "batch_top_fraction", "entropy_ranges", "none", "token"]), label="grouping"
    )
    batch = draw_batch(data, grouping, continuous_entropy=grouping == "batch_top_fraction")
    mask = np.asarray(batch["mask"], dtype=bool)
    if grouping == "batch_top_fraction":  # row-major tie-break: ties across rows are order-dependent
        e = batch["entropy"][mask]
        assume(len(np.unique(e)) == e.size)
    perm = np.array(data.draw(st.permutations(range(mask.shape[0])), label="perm"))
    got, want = run_both(batch)
    assume(well_conditioned(want))
    permuted = {k: (v[perm] if isinstance(v, np.ndarray) else v) for k, v in batch.items()}
    got_p, want_p = run_both(permuted)
    assume(well_conditioned(want_p))
    ctx = _ctx(batch, perm=perm)
    for name in ("groups", "trained", "clipped_high", "clipped_low"):
        assert_equal(getattr(got_p, name), np.asarray(getattr(got, name))[perm], "ESPO-AGG", f"{name} under permutation", ctx)
    for name, tol in (("grad", GRAD), ("ratio", VALUE), ("eps", VALUE), ("log_ratio", VALUE), ("weight", VALUE)):
        assert_close(getattr(got_p, name), np.asarray(getattr(got, name))[perm], tol, "ESPO-AGG",
                     f"{name} under permutation", ctx, undefined_nan=True)
    assert_close(got_p.loss, got.loss, VALUE, "ESPO-AGG", "loss under permutation", ctx, undefined_nan=True)
    for key, value in got.metrics.items():
        assert_close(got_p.metrics[key], value, VALUE, "ESPO-METRICS", f"metrics[{key!r}] under permutation", ctx,
                     undefined_nan=True)
