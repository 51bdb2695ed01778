"""Checks of the SkyRL adapters' mapping against the real SkyRL, both releases (run inside .venv-skyrl).

Run by tests/test_engine_skyrl.py: ``python tests/peers/skyrl_checks.py`` prints one JSON line
{"passed": [...], "failed": {name: message}} (names ``check_x/0.3.1``, ``check_x/0.4.0``) and exits 1
when a check failed. Each check takes one option the adapters map (espo_ref/conformance/engines/skyrl.py):
with the adapter's mapping the real SkyRL loss equals the reference on batches where SkyRL agrees with
it, and with that option mapped wrongly (the mapping table or function patched) it does not. "Equal"
is the float64 row (1e-12) for GSPO and 1e-6 relative for the losses whose ratio SkyRL computes in
float32 ([BASE-PEERS] float32-ratio: measured <= 2.4e-7); every wrong mapping moves the loss or the
gradient by far more. The batches have no empty response ([BASE-PEERS] agg-empty) and finite
padding ([BASE-PEERS] padding-nonfinite); check_rows measures those rows themselves.
"""

from __future__ import annotations

import json
import sys
import traceback
from contextlib import contextmanager

import numpy as np

from espo_ref.conformance.engines import skyrl as engine

engine._typed_dict_for_pydantic()  # skyrl 0.4.0 on Python < 3.12: before anything imports it

from espo_ref.conformance.errors import SetupError  # noqa: E402
from espo_ref.conformance.execution import load_object  # noqa: E402
from espo_ref.conformance.functions import FUNCTIONS, reference_outputs  # noqa: E402
from espo_ref.conformance.golden import GoldenCase  # noqa: E402

RELEASES = {"0.3.1": (engine.SkyRLTrainAdapter, engine.TRAIN_PPO),
            "0.4.0": (engine.SkyRLBackendAdapter, engine.SKYRL_PPO)}
FLOAT32_RATIO = {"grpo_loss", "dapo_loss", "cispo_loss"}  # SkyRL's safe_exp_delta exponentiates in float32


def batch(seed: int, B: int = 6, T: int = 7, empty: bool = False, per_token: bool = False, spread: float = 0.5):
    """Ragged responses (one empty with ``empty``), log-ratios inside and beyond every clip range,
    advantages of both signs, finite padding."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, T + 1, size=B)
    if empty:
        lengths[1] = 0
    mask = np.arange(T)[None, :] < lengths[:, None]
    old = rng.uniform(-3.0, -0.1, size=(B, T))
    logp = old + rng.normal(0.0, spread, size=(B, T))
    adv = rng.normal(0.0, 1.0, size=(B, T)) if per_token else np.array([1.0, -0.5, 2.0, -1.5, 0.7, -1.2][:B])
    return {"logp": logp, "old_logp": old, "mask": mask, "advantages": adv}


BATCHES = [batch(0), batch(1, per_token=True), batch(2, spread=1.5)]


def outputs(release: str, function: str, config: dict, inputs: dict) -> tuple[dict, dict]:
    """(the real SkyRL loss of ``release`` through its adapter, the reference) on one float64 case."""
    adapter_class, module = RELEASES[release]
    expected = reference_outputs(FUNCTIONS[function], inputs, config, {})
    case = GoldenCase(f"skyrl-check/{function}", function, [], "float64", inputs, config, {}, expected, "test")
    adapter = adapter_class(load_object(f"{module}:{engine.CALLABLES[function]}"), function, "torch", "cpu")
    return adapter.run(case), expected


def agrees(function: str, got: dict, want: dict) -> bool:
    rtol = 1e-6 if function in FLOAT32_RATIO else 1e-12
    return bool(np.isclose(got["loss"], want["loss"], rtol=rtol, atol=1e-12)
                and np.allclose(got["grad"], want["grad"], rtol=rtol, atol=1e-12))


@contextmanager
def patched(name: str, value, owner=engine):
    """``owner.name`` set to ``value`` inside the block (the adapters' module by default)."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def options_patched(change):
    """The adapters' ``skyrl_options`` with ``change(options, function, config)`` applied to its result."""
    real = engine.skyrl_options

    def wrong(function, config, T):
        options = real(function, config, T)
        change(options, function, config)
        return options

    return patched("skyrl_options", wrong)


def right_and_wrong(release: str, function: str, configs: list[dict], wrong, batches=BATCHES) -> None:
    """Agrees on every batch and config with the adapter's mapping; with ``wrong`` (a context manager)
    disagrees on one at least."""
    pairs = [(config, inputs) for config in configs for inputs in batches]
    for i, (config, inputs) in enumerate(pairs):
        got, want = outputs(release, function, config, inputs)
        assert agrees(function, got, want), (
            f"{function} {config} batch {i % len(batches)}: loss {got['loss']} != {want['loss']} or grad "
            f"(max diff {np.nanmax(np.abs(got['grad'] - want['grad']))})")
    with wrong():
        outcomes = [agrees(function, *outputs(release, function, config, inputs)) for config, inputs in pairs]
    assert not all(outcomes), f"{function} {configs}: the wrong mapping still agrees on every batch"


def reductions(**changes):
    return patched("LOSS_REDUCTIONS", {**engine.LOSS_REDUCTIONS, **changes})


# --- the checks: each takes the release -------------------------------------------------------


def check_token_mean(release):
    right_and_wrong(release, "grpo_loss", [{"loss_agg_mode": "token-mean"}],
                    lambda: reductions(**{"token-mean": "sequence_mean"}))


def check_sequence_mean(release):
    right_and_wrong(release, "grpo_loss", [{}, {"loss_agg_mode": "seq-mean-token-mean"}],
                    lambda: reductions(**{"seq-mean-token-mean": "token_mean"}))


def check_seq_mean_token_sum(release):
    """seq-mean-token-sum is seq_mean_token_sum_norm with max_seq_len 1: with the width instead, it differs."""
    def width(options, function, config):
        options["max_seq_len"] = 7

    right_and_wrong(release, "grpo_loss", [{"loss_agg_mode": "seq-mean-token-sum"}], lambda: options_patched(width))


def check_seq_mean_token_sum_norm(release):
    """max_len is max_seq_len (default T); taken as T always, a max_len of 11 differs."""
    def width(options, function, config):
        options["max_seq_len"] = 7

    right_and_wrong(release, "grpo_loss", [{"loss_agg_mode": "seq-mean-token-sum-norm"},
                                           {"loss_agg_mode": "seq-mean-token-sum-norm", "max_len": 11}],
                    lambda: options_patched(width))
    right_and_wrong(release, "cispo_loss", [{"loss_agg_mode": "seq-mean-token-sum-norm", "max_len": 11}],
                    lambda: reductions(**{"seq-mean-token-sum-norm": "token_mean"}))


def check_eps_low_high(release):
    def swap(options, function, config):
        options["eps_clip_low"], options["eps_clip_high"] = options["eps_clip_high"], options["eps_clip_low"]

    right_and_wrong(release, "dapo_loss", [{}, {"loss_agg_mode": "seq-mean-token-mean"}], lambda: options_patched(swap))
    right_and_wrong(release, "grpo_loss", [{"eps_low": 0.1, "eps_high": 0.3}], lambda: options_patched(swap))


def check_dual_clip(release):
    """dual_clip=c is policy_loss_type dual_clip with clip_ratio_c c; regular alone ignores it."""
    def regular(options, function, config):
        options["policy_loss_type"] = "regular"

    right_and_wrong(release, "grpo_loss", [{"dual_clip": 1.5, "loss_agg_mode": "token-mean"}, {"dual_clip": 2.0}],
                    lambda: options_patched(regular))
    right_and_wrong(release, "dapo_loss", [{"dual_clip": 1.5}], lambda: options_patched(regular))


def check_regular_has_no_dual_clip(release):
    """No dual_clip is SkyRL's regular loss: its dual_clip type (c = 3) differs where A < 0 and r > 3."""
    wide = [batch(2, spread=1.5), batch(3, spread=2.0)]
    right_and_wrong(release, "grpo_loss", [{}], lambda: patched("POLICY_LOSS_TYPES", {
        **engine.POLICY_LOSS_TYPES, "grpo_loss": "dual_clip"}), batches=wide)


def check_gspo(release):
    """gspo_policy_loss (GSPO-token, per-token advantages kept per token), the epsilons and every mode."""
    def swap(options, function, config):
        options["eps_clip_low"], options["eps_clip_high"] = options["eps_clip_high"], options["eps_clip_low"]

    right_and_wrong(release, "gspo_loss", [{"eps_low": 0.05, "eps_high": 0.1},
                                           {"eps_low": 0.05, "eps_high": 0.1, "loss_agg_mode": "token-mean"}],
                    lambda: options_patched(swap))
    right_and_wrong(release, "gspo_loss", [{"loss_agg_mode": "seq-mean-token-sum-norm", "max_len": 11}],
                    lambda: reductions(**{"seq-mean-token-sum-norm": "sequence_mean"}))


def check_cispo(release):
    """Our CISPO offsets are SkyRL's cispo_eps_clip_low/high; left at SkyRL's defaults (1.0, 4.0) they differ."""
    def defaults(options, function, config):
        options["cispo_eps_clip_low"], options["cispo_eps_clip_high"] = 1.0, 4.0

    right_and_wrong(release, "cispo_loss", [{}, {"eps_low": 0.2, "eps_high": 0.28}], lambda: options_patched(defaults))


def check_advantage_scaling(release):
    """skyrl 0.4.0 sums: the reduction is in the advantages, scaled by SkyRL's own function first."""
    if release != "0.4.0":
        return
    AlgorithmConfig, CISPOConfig, _ = engine._skyrl_modules()

    @contextmanager
    def unscaled():
        real = engine._LOADED["skyrl"]
        engine._LOADED["skyrl"] = (AlgorithmConfig, CISPOConfig, lambda advantages, *args, **kwargs: advantages)
        try:
            yield
        finally:
            engine._LOADED["skyrl"] = real

    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        right_and_wrong(release, "grpo_loss", [{"loss_agg_mode": mode}], unscaled)


def check_rows(release):
    """The rows the expected-failure files cite, measured: float32-ratio (with SkyRL's exp in float64 the
    ratio losses agree to 1e-12), agg-empty (an empty row counts: N/B of ours), padding-nonfinite (NaN loss)."""
    module = load_object(f"{RELEASES[release][1]}:ppo_policy_loss").__module__
    owner = sys.modules[module]
    name = "_safe_exp_delta" if release == "0.3.1" else "safe_exp_delta"
    real_exp = getattr(owner, name)

    def exp64(delta, clip=20.0, out_dtype=None):
        import torch

        return torch.clamp(delta, -clip, clip).exp().to(out_dtype or delta.dtype)

    for function in ("grpo_loss", "cispo_loss"):
        got, want = outputs(release, function, {}, BATCHES[0])
        assert not np.isclose(got["loss"], want["loss"], rtol=1e-12, atol=0), "float32-ratio: agrees at 1e-12"
        with patched(name, exp64, owner=owner):
            got, want = outputs(release, function, {}, BATCHES[0])
        assert np.isclose(got["loss"], want["loss"], rtol=1e-12, atol=1e-12), f"{function}: float32-ratio is not all"
        assert np.allclose(got["grad"], want["grad"], rtol=1e-12, atol=1e-12)
    assert getattr(owner, name) is real_exp
    inputs = batch(4, empty=True)
    got, want = outputs(release, "gspo_loss", {}, inputs)
    B, N = inputs["mask"].shape[0], int(inputs["mask"].any(axis=1).sum())
    assert np.isclose(got["loss"], want["loss"] * N / B, rtol=1e-12), "agg-empty: not N/B of ours"
    nan = dict(BATCHES[0], logp=np.where(BATCHES[0]["mask"], BATCHES[0]["logp"], np.nan))
    got, want = outputs(release, "grpo_loss", {"loss_agg_mode": "token-mean"}, nan)
    assert np.isnan(got["loss"]) and np.isfinite(want["loss"]), "padding-nonfinite: the loss is not NaN"


def check_setup_errors(release):
    adapter_class, module = RELEASES[release]
    other = RELEASES["0.4.0" if release == "0.3.1" else "0.3.1"][1]
    for call, word in [(lambda: adapter_class(load_object(f"{module}:ppo_policy_loss"), "gmpo_loss"), "no GMPO"),
                       (lambda: adapter_class(load_object(f"{other}:ppo_policy_loss"), "grpo_loss"), "other SkyRL"),
                       (lambda: adapter_class(load_object(f"{module}:ppo_policy_loss"), "grpo_loss", "numpy"),
                        "--backend torch")]:
        try:
            call()
        except SetupError as exc:
            assert word in str(exc), exc
        else:
            raise AssertionError(f"no SetupError naming {word!r}")


CHECKS = [check_token_mean, check_sequence_mean, check_seq_mean_token_sum, check_seq_mean_token_sum_norm,
          check_eps_low_high, check_dual_clip, check_regular_has_no_dual_clip, check_gspo, check_cispo,
          check_advantage_scaling, check_rows, check_setup_errors]


def main() -> int:
    from loguru import logger

    logger.remove()  # SkyRL's GSPO warns on every call outside sequence_mean
    passed, failed = [], {}
    for check in CHECKS:
        for release in RELEASES:
            name = f"{check.__name__}/{release}"
            try:
                check(release)
                passed.append(name)
            except Exception as exc:  # noqa: BLE001 - reported by name
                failed[name] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"
    print(json.dumps({"passed": passed, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
