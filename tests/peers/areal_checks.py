"""Checks of the ``--adapter areal`` mapping against the real AReaL 1.0.4 (run inside .venv-areal).

Run by tests/test_engine_areal.py: ``python tests/peers/areal_checks.py`` prints one JSON line
{"passed": [...], "failed": {name: message}, "measured": {name: numbers}} and exits 1 when a check
failed. Every check calls AReaL's real ``ppo_actor_loss_fn`` through the adapter
(espo_ref/conformance/engines/areal.py) and compares with the reference (float64, 1e-12): each
mapped option agrees on a batch where AReaL and the reference agree, and the same batch with the
mapping deliberately wrong (a table of the adapter patched) disagrees. The last checks measure the
rows of specs/baselines.md [BASE-PEERS] "AReaL 1.0.4" on small batches.
"""

from __future__ import annotations

import contextlib
import json
import sys
import traceback

import numpy as np

from espo_ref.conformance.engines import areal as ae
from espo_ref.conformance.execution import load_object
from espo_ref.conformance.functions import FUNCTIONS, reference_outputs
from espo_ref.conformance.golden import GoldenCase

LOSS = load_object(ae.PPO_ACTOR_LOSS)
MEASURED: dict[str, object] = {}


def batch(seed: int = 0, B: int = 5, T: int = 7, per_token: bool = False, one_sign: bool = False):
    """Ragged rows, none empty, log-ratios inside and outside every clip range (none beyond a clamp)."""
    rng = np.random.default_rng(seed)
    mask = np.arange(T)[None, :] < rng.integers(2, T + 1, size=B)[:, None]
    old = rng.uniform(-3.0, -0.1, size=(B, T))
    logp = old + rng.normal(0.0, 0.4, size=(B, T))
    adv = np.array([1.0, -0.5, 2.0, -1.5, 0.7][:B])
    if per_token:
        scale = rng.uniform(0.2, 2.0, size=(B, T))
        adv = adv[:, None] * scale if one_sign else rng.normal(0.0, 1.0, size=(B, T))
    return {"logp": logp, "old_logp": old, "mask": mask, "advantages": adv}


def case(function: str, config: dict, inputs: dict | None = None) -> GoldenCase:
    inputs = batch() if inputs is None else inputs
    return GoldenCase(f"areal-check/{function}", function, [], "float64", inputs, config, {},
                      reference_outputs(FUNCTIONS[function], inputs, config, {}), "test")


def run(c: GoldenCase) -> dict:
    return ae.ArealAdapter(LOSS, c.function, "torch", "cpu").run(c)


def agrees(c: GoldenCase) -> bool:
    got, want = run(c), c.expected
    return bool(np.isclose(got["loss"], want["loss"], rtol=1e-12, atol=1e-12)
                and np.allclose(got["grad"], want["grad"], rtol=1e-12, atol=1e-12))


@contextlib.contextmanager
def patched(name: str, value):
    """The adapter's mapping table ``name`` replaced by a wrong one for the duration."""
    real = getattr(ae, name)
    setattr(ae, name, value)
    try:
        yield
    finally:
        setattr(ae, name, real)


NO_CLAMP = {"log_ratio_clamp": None}  # AReaL has no clamp (row token-clamp); the batches stay inside it anyway
MAPPED = {
    "grpo_token_mean_asymmetric_eps": ("grpo_loss", {"loss_agg_mode": "token-mean", "eps_low": 0.1, "eps_high": 0.3}),
    "dapo_defaults": ("dapo_loss", {}),
    "grpo_dual_clip": ("grpo_loss", {"loss_agg_mode": "token-mean", "dual_clip": 1.3}),
    "gspo_sequence": ("gspo_loss", {"loss_agg_mode": "token-mean", "level": "sequence", "eps_low": 0.05,
                                    "eps_high": 0.05}),
    "gspo_token_per_response_advantage": ("gspo_loss", {"loss_agg_mode": "token-mean", "eps_low": 0.05,
                                                        "eps_high": 0.05}),
}


def check_each_mapped_option_agrees():
    for name, (function, config) in MAPPED.items():
        assert agrees(case(function, {**NO_CLAMP, **config})), name
    # one sign per response: AReaL's mean advantage and the sequence form's clip sides coincide with ours
    c = case("gspo_loss", {**NO_CLAMP, **MAPPED["gspo_sequence"][1]}, batch(3, per_token=True, one_sign=True))
    assert agrees(c), "gspo sequence, per-token advantages of one sign per response"


def check_the_batches_discriminate():
    """Each mapped option changes the answer on its batch (else agreeing would prove nothing)."""
    ref = lambda f, cfg: case(f, {**NO_CLAMP, **cfg}).expected  # noqa: E731
    f, cfg = MAPPED["grpo_token_mean_asymmetric_eps"]
    assert ref(f, cfg)["loss"] != ref(f, {**cfg, "eps_low": 0.3, "eps_high": 0.1})["loss"]
    f, cfg = MAPPED["grpo_dual_clip"]
    assert ref(f, cfg)["metrics"]["clipfrac_dual"] > 0
    f, cfg = MAPPED["gspo_sequence"]
    assert 0 < ref(f, cfg)["metrics"]["clipfrac"] < 1


def check_swapped_eps_disagrees():
    function, config = MAPPED["grpo_token_mean_asymmetric_eps"]
    with patched("OPTIONS", {"eps_low": "eps_clip_higher", "eps_high": "eps_clip", "dual_clip": "c_clip"}):
        assert not agrees(case(function, {**NO_CLAMP, **config}))
    # eps_high not passed: AReaL's eps_clip_higher=None means eps_clip (symmetric)
    with patched("OPTIONS", {"eps_low": "eps_clip", "dual_clip": "c_clip"}):
        assert not agrees(case(function, {**NO_CLAMP, **config}))
        assert not agrees(case("dapo_loss", dict(NO_CLAMP)))


def check_dropped_dual_clip_disagrees():
    function, config = MAPPED["grpo_dual_clip"]
    with patched("OPTIONS", {"eps_low": "eps_clip", "eps_high": "eps_clip_higher"}):
        assert not agrees(case(function, {**NO_CLAMP, **config}))


def check_wrong_importance_sampling_level_disagrees():
    with patched("IMPORTANCE_SAMPLING_LEVELS", {"grpo_loss": "sequence", "dapo_loss": "sequence",
                                                "gspo_loss": "sequence"}):
        assert not agrees(case("grpo_loss", {**NO_CLAMP, **MAPPED["grpo_token_mean_asymmetric_eps"][1]}))
        assert not agrees(case("dapo_loss", dict(NO_CLAMP)))
    both = ("gspo_sequence", "gspo_token_per_response_advantage")
    # {}: our level name passed through, "token" (PPO's per-token ratio in AReaL)
    for wrong, names in (({"token": "token", "sequence": "token"}, both), ({}, both[1:])):
        with patched("LEVELS", wrong):
            for name in names:
                function, config = MAPPED[name]
                assert not agrees(case(function, {**NO_CLAMP, **config})), (wrong, name)


def check_unknown_level_is_refused_by_areal():
    """An unknown GSPO level goes through as importance_sampling_level: AReaL's own check names it."""
    from espo_ref.conformance.adapters import ImplementationRaised

    try:
        run(GoldenCase("areal-check/level", "gspo_loss", [], "float64", batch(), {"loss_agg_mode": "token-mean",
                                                                                  "level": "tokens"}, {},
                       {"error": "level"}, "test"))
    except ImplementationRaised as exc:
        assert isinstance(exc.original, ValueError) and "importance_sampling_level: tokens" in str(exc), exc
    else:
        raise AssertionError("AReaL accepted level='tokens'")


def check_seq_mean_modes_are_not_offered():
    """AReaL's loss is a token mean: a seq-mean-* case run through it disagrees, and the adapter says so."""
    for mode in ("seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        assert ae.ArealAdapter.unsupported("grpo_loss", {"loss_agg_mode": mode}, {}) \
            == f"loss_agg_mode={mode} (AReaL's loss is a token mean only)"
        with patched("LOSS_AGG_MODES", {"token-mean": "token-mean", mode: "token-mean"}):
            assert ae.ArealAdapter.unsupported("grpo_loss", {"loss_agg_mode": mode}, {}) is None
            assert not agrees(case("grpo_loss", {**NO_CLAMP, "loss_agg_mode": mode})), mode
    assert ae.ArealAdapter.unsupported("grpo_loss", {}, {}).startswith("loss_agg_mode=seq-mean-token-mean")
    assert ae.ArealAdapter.unsupported("dapo_loss", {}, {}) is None


def check_the_mask_goes_in_as_bool():
    """AReaL's torch.where refuses the float mask its trainer never passes (it calls .bool())."""
    import torch

    b = batch()
    lp = torch.tensor(b["logp"], requires_grad=True)
    old = torch.tensor(b["old_logp"])
    adv = torch.tensor(b["advantages"])[:, None].expand(lp.shape)
    try:
        LOSS(logprobs=lp, proximal_logprobs=old, old_logprobs=old, advantages=adv, eps_clip=0.2,
             loss_mask=torch.tensor(b["mask"], dtype=torch.float64))
    except RuntimeError as exc:
        assert "bool" in str(exc).lower(), exc
    else:
        raise AssertionError("AReaL accepted a float mask")


def check_row_padding_nonfinite():
    """[BASE-PEERS] padding-nonfinite: a non-finite log-ratio at a padding position; the value and the
    response tokens are exact, the padding gradient is NaN where the log-ratio is NaN or +inf."""
    b = batch(1)
    pad = np.argwhere(~b["mask"])[:3]
    for (i, t), value in zip(pad, (np.nan, np.inf, -np.inf)):
        b["logp"][i, t] = value
    c = case("dapo_loss", dict(NO_CLAMP), b)
    got = run(c)
    m = b["mask"]
    assert np.isclose(got["loss"], c.expected["loss"], rtol=1e-12, atol=1e-12)
    assert np.allclose(got["grad"][m], np.asarray(c.expected["grad"])[m], rtol=1e-12, atol=1e-12)
    at = [got["grad"][i, t] for i, t in pad]
    assert np.isnan(at[0]) and np.isnan(at[1]) and at[2] == 0.0, at
    others = np.ones_like(m)
    others[tuple(pad[:2].T)] = False
    assert np.all(got["grad"][~m & others] == 0.0)
    MEASURED["padding_nonfinite"] = {"nan_at": "NaN and +inf log-ratios", "zero_at": "-inf and finite"}


def check_row_gspo_mean_advantage():
    """[BASE-PEERS] gspo-mean-advantage: AReaL replaces A_t by the response's mean before the clip; with
    advantages of both signs in a response whose s is clipped, the value differs."""
    L = 5
    logp = np.full((2, L), -1.0)
    old = logp.copy()
    logp[0] -= 0.0
    old[0] -= 0.5  # log s = 0.5 in response 0: s = e^0.5 beyond 1.2
    adv = np.array([[2.0, -1.0, 2.0, -1.0, 2.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    inputs = {"logp": logp, "old_logp": old, "mask": np.ones((2, L), bool), "advantages": adv}
    out = {}
    for level in ("sequence", "token"):
        c = case("gspo_loss", {**NO_CLAMP, "loss_agg_mode": "token-mean", "level": level, "eps_low": 0.2,
                               "eps_high": 0.2}, inputs)
        got = run(c)
        out[level] = (got["loss"], float(c.expected["loss"]))
        assert not np.isclose(got["loss"], c.expected["loss"], rtol=1e-6), out
    s, abar = np.exp(0.5), 0.8
    areal = (-L * min(s * abar, 1.2 * abar) - L * 1.0) / (2 * L)  # response 1: s = 1, A = 1
    assert np.isclose(out["sequence"][0], areal, rtol=1e-12), (out, areal)
    MEASURED["gspo_mean_advantage"] = {"areal": out["sequence"][0], "ours": out["sequence"][1]}


def check_row_token_clamp_and_dual_clip_boundary():
    """token-clamp: a log-ratio of 25 gives exp(25); dual-clip-boundary: r = c exactly gets half its gradient."""
    inputs = {"logp": np.array([[25.0, np.log(2.0) - 1.0]]), "old_logp": np.array([[0.0, -1.0]]),
              "mask": np.ones((1, 2), bool), "advantages": np.array([[-1.0, -1.0]])}
    c = case("grpo_loss", {"loss_agg_mode": "token-mean", "dual_clip": 2.0}, inputs)
    got = run(c)
    # token 0: dual-clipped either way (loss 2), token 1: r = c = 2 exactly, loss 2 either way
    assert np.isclose(got["loss"], c.expected["loss"], rtol=1e-12)
    assert got["grad"][0, 1] == 0.5 * c.expected["grad"][0, 1] and c.expected["grad"][0, 1] == 1.0
    c = case("dapo_loss", {}, {**inputs, "advantages": np.array([[1.0, 1.0]]),
                              "logp": np.array([[-25.0, -1.0]])})
    got = run(c)  # token 0: A = 1, r = e^-25 (ours e^-20, clamped: gradient 0), token 1: r = 1
    assert np.isclose(got["loss"], (-np.exp(-25.0) - 1) / 2, rtol=1e-15)
    assert np.isclose(c.expected["loss"], (-np.exp(-20.0) - 1) / 2, rtol=1e-15)
    assert np.isclose(got["grad"][0, 0], -np.exp(-25.0) / 2, rtol=1e-12) and c.expected["grad"][0, 0] == 0.0
    MEASURED["token_clamp_grad"] = float(got["grad"][0, 0])


CHECKS = [check_each_mapped_option_agrees, check_the_batches_discriminate, check_swapped_eps_disagrees,
          check_dropped_dual_clip_disagrees, check_wrong_importance_sampling_level_disagrees,
          check_unknown_level_is_refused_by_areal, check_seq_mean_modes_are_not_offered, check_the_mask_goes_in_as_bool,
          check_row_padding_nonfinite, check_row_gspo_mean_advantage, check_row_token_clamp_and_dual_clip_boundary]


def main() -> int:
    passed, failed = [], {}
    for check in CHECKS:
        try:
            check()
            passed.append(check.__name__)
        except Exception as exc:  # noqa: BLE001 - reported by name
            failed[check.__name__] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}"
    print(json.dumps({"passed": passed, "failed": failed, "measured": MEASURED}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
