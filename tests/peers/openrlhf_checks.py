"""Checks of the OpenRLHF adapter's mapping against the real OpenRLHF 0.11.2 (run inside .venv-openrlhf).

Run by tests/test_engine_openrlhf.py: ``python tests/peers/openrlhf_checks.py`` prints one JSON line
{"passed": [...], "failed": {name: message}} and exits 1 when a check failed. Each check takes one
option the adapter maps (espo_ref/conformance/engines/openrlhf.py): with the adapter's mapping the
real PolicyLoss equals the reference on a batch where OpenRLHF agrees with it (float64, rtol 1e-12),
and with that option mapped wrongly (the mapping table or function patched) it does not.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from contextlib import contextmanager

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before openrlhf imports deepspeed: no accelerator warning

import numpy as np

from espo_ref.conformance.engines import openrlhf as engine
from espo_ref.conformance.errors import SetupError
from espo_ref.conformance.execution import load_object
from espo_ref.conformance.functions import FUNCTIONS, reference_outputs
from espo_ref.conformance.golden import GoldenCase

POLICY_LOSS = load_object(engine.POLICY_LOSS)


def batch(seed: int, B: int = 6, T: int = 7, empty: bool = False, per_token: bool = False, spread: float = 0.5):
    """Ragged responses (one empty with ``empty``), log-ratios inside and beyond every clip range
    and above a dual clip of 1.5, advantages of both signs; padding finite (OpenRLHF multiplies by
    the mask: [BASE-PEERS] padding-loss-nan)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, T + 1, size=B)
    if empty:
        lengths[1] = 0
    mask = np.arange(T)[None, :] < lengths[:, None]
    old = rng.uniform(-3.0, -0.1, size=(B, T))
    logp = old + rng.normal(0.0, spread, size=(B, T))
    adv = rng.normal(0.0, 1.0, size=(B, T)) if per_token else np.array([1.0, -0.5, 2.0, -1.5, 0.7, -1.2][:B])
    if not empty:
        assert mask.any(axis=1).all()
    return {"logp": logp, "old_logp": old, "mask": mask, "advantages": adv}


def outputs(function: str, config: dict, inputs: dict) -> tuple[dict, dict]:
    """(the real PolicyLoss through the adapter, the reference) on one float64 case."""
    expected = reference_outputs(FUNCTIONS[function], inputs, config, {})
    case = GoldenCase(f"openrlhf-check/{function}", function, [], "float64", inputs, config, {}, expected, "test")
    adapter = engine.OpenRLHFAdapter(POLICY_LOSS, function, "torch", "cpu")
    return adapter.run(case), expected


def agrees(got: dict, want: dict) -> bool:
    return bool(np.isclose(got["loss"], want["loss"], rtol=1e-12, atol=1e-12)
                and np.allclose(got["grad"], want["grad"], rtol=1e-12, atol=1e-12))


@contextmanager
def patched(name: str, value, owner=engine):
    """``owner.name`` set to ``value`` inside the block (the adapter's module by default)."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def right_and_wrong(function: str, config: dict, inputs_list: list[dict], wrong) -> None:
    """Agrees on every batch with the adapter's mapping; with ``wrong`` (a context manager) disagrees on one at least."""
    for i, inputs in enumerate(inputs_list):
        got, want = outputs(function, config, inputs)
        assert agrees(got, want), (f"{function} {config} batch {i}: loss {got['loss']} != {want['loss']} or grad "
                                   f"(max diff {np.nanmax(np.abs(got['grad'] - want['grad']))})")
    with wrong():
        outcomes = [agrees(*outputs(function, config, inputs)) for inputs in inputs_list]
    assert not all(outcomes), f"{function} {config}: the wrong mapping still agrees on every batch"


def wrong_options(change):
    """A wrong ``policy_loss_options``: the adapter's, with ``change(options) -> options`` applied."""
    real = engine.policy_loss_options
    return lambda: patched("policy_loss_options", lambda function, config: change(real(function, config)))


BATCHES = [batch(s) for s in range(3)]
WITH_EMPTY = [batch(s, empty=True) for s in range(3)]


def check_token_mean():
    """token-mean -> token_level_loss=True; mapped to the per-sample mean it differs."""
    wrong = {"token-mean": False, "seq-mean-token-mean": False}
    right_and_wrong("grpo_loss", {"loss_agg_mode": "token-mean"}, BATCHES + WITH_EMPTY,
                    lambda: patched("TOKEN_LEVEL_LOSS", wrong))
    right_and_wrong("dapo_loss", {}, BATCHES, lambda: patched("TOKEN_LEVEL_LOSS", wrong))


def check_seq_mean_token_mean():
    """seq-mean-token-mean -> token_level_loss=False (empty responses excluded, as ours); mapped to the token mean it differs."""
    wrong = {"token-mean": True, "seq-mean-token-mean": True}
    right_and_wrong("grpo_loss", {}, BATCHES + WITH_EMPTY, lambda: patched("TOKEN_LEVEL_LOSS", wrong))
    right_and_wrong("dapo_loss", {"loss_agg_mode": "seq-mean-token-mean"}, BATCHES,
                    lambda: patched("TOKEN_LEVEL_LOSS", wrong))


def check_trainer_normalisers():
    """The trainer's get_loss_batch_info counts only responses with a token; a global_batch_size of
    every row (B) would count the empty response."""
    def all_rows():
        real_init = engine.OpenRLHFAdapter.__init__

        def init(self, *args, **kwargs):
            real_init(self, *args, **kwargs)
            info = self.loss_batch_info
            self.loss_batch_info = lambda strategy, mask: {**info(strategy, mask),
                                                           "global_batch_size": float(mask.shape[0])}

        return patched("__init__", init, owner=engine.OpenRLHFAdapter)

    right_and_wrong("grpo_loss", {}, WITH_EMPTY, all_rows)
    right_and_wrong("gspo_loss", {"level": "sequence", "log_ratio_clamp": None}, WITH_EMPTY, all_rows)


def check_eps_low_high():
    """eps_low -> clip_eps_low, eps_high -> clip_eps_high; swapped they differ (DAPO's 0.2 / 0.28,
    GRPO with 0.1 / 0.3)."""
    def swap(options):
        return {**options, "clip_eps_low": options["clip_eps_high"], "clip_eps_high": options["clip_eps_low"]}

    right_and_wrong("dapo_loss", {}, BATCHES, wrong_options(swap))
    right_and_wrong("grpo_loss", {"eps_low": 0.1, "eps_high": 0.3, "loss_agg_mode": "token-mean"}, BATCHES,
                    wrong_options(swap))


def check_dual_clip():
    """dual_clip=c -> PolicyLoss(dual_clip=c) (None: off, as ours); dropped, or always on at 3, it differs."""
    big = [batch(s, spread=1.0) for s in range(3)]
    right_and_wrong("grpo_loss", {"dual_clip": 1.5}, big, wrong_options(lambda o: {**o, "dual_clip": None}))
    right_and_wrong("dapo_loss", {"dual_clip": 2.0}, big, wrong_options(lambda o: {**o, "dual_clip": None}))
    right_and_wrong("grpo_loss", {}, big, wrong_options(lambda o: {**o, "dual_clip": 1.5}))


def check_gspo():
    """gspo_loss -> policy_loss_type="gspo": equal to our sequence form without a clamp, per-response
    and per-token advantages; mapped to "ppo" it differs."""
    per_token = [batch(s, per_token=True, spread=0.05) for s in range(3)]
    small = [batch(s, spread=0.05) for s in range(3)] + [batch(s, spread=0.05, empty=True) for s in range(2)]
    config = {"level": "sequence", "log_ratio_clamp": None, "eps_low": 0.02, "eps_high": 0.03}
    wrong = {**engine.POLICY_LOSS_TYPES, "gspo_loss": "ppo"}
    right_and_wrong("gspo_loss", config, small + per_token, lambda: patched("POLICY_LOSS_TYPES", wrong))
    # our default (token form, clamp at 10) equals it with per-response advantages and log-ratios under 10
    right_and_wrong("gspo_loss", {}, small, lambda: patched("POLICY_LOSS_TYPES", wrong))


def check_grpo_is_ppo():
    """grpo_loss, dapo_loss -> policy_loss_type="ppo"; mapped to "gspo" they differ."""
    wrong = {**engine.POLICY_LOSS_TYPES, "grpo_loss": "gspo", "dapo_loss": "gspo"}
    right_and_wrong("grpo_loss", {}, BATCHES, lambda: patched("POLICY_LOSS_TYPES", wrong))
    right_and_wrong("dapo_loss", {}, BATCHES, lambda: patched("POLICY_LOSS_TYPES", wrong))


def check_bool_mask():
    """The trainer's mask is bool: a float mask would make the per-sample mean divide by L + 1e-8
    (relative error ~1e-9, beyond the float64 tolerance) — the reason the adapter casts."""
    import torch

    inputs = BATCHES[0]
    got, want = outputs("grpo_loss", {}, inputs)
    assert agrees(got, want)
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in inputs.items() if k != "mask"}
    mask = torch.tensor(inputs["mask"])
    adv = t["advantages"][:, None].expand(mask.shape)
    loss_fn = POLICY_LOSS(clip_eps_low=0.2, clip_eps_high=0.2, token_level_loss=False)
    float_loss = loss_fn(t["logp"], t["old_logp"], adv, action_mask=mask.to(torch.float64))[0]
    assert not np.isclose(float(float_loss), want["loss"], rtol=1e-12, atol=1e-12), float(float_loss)
    assert np.isclose(float(float_loss), want["loss"], rtol=1e-7), float(float_loss)


def check_setup_errors():
    """GMPO and CISPO: OpenRLHF has neither (a setup error naming it); the installed version is measured."""
    for function, name in (("gmpo_loss", "GMPO"), ("cispo_loss", "CISPO")):
        try:
            engine.OpenRLHFAdapter(POLICY_LOSS, function, "torch", "cpu")
        except SetupError as exc:
            assert f"OpenRLHF has no {name}" in str(exc), exc
        else:
            raise AssertionError(f"--function {function} was accepted")
    adapter = engine.OpenRLHFAdapter(POLICY_LOSS, "grpo_loss", "torch", "cpu")
    assert adapter.known_differences == "openrlhf-0.11.2", adapter.known_differences


CHECKS = [check_token_mean, check_seq_mean_token_mean, check_trainer_normalisers, check_eps_low_high,
          check_dual_clip, check_gspo, check_grpo_is_ppo, check_bool_mask, check_setup_errors]


def main() -> int:
    passed, failed = [], {}
    for check in CHECKS:
        try:
            check()
            passed.append(check.__name__)
        except Exception:  # noqa: BLE001 - every failure is reported by name
            failed[check.__name__] = traceback.format_exc(limit=-3)
    print(json.dumps({"passed": passed, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
