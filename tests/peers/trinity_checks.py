"""Checks of the Trinity-RFT adapter's mapping against the real trinity-rft 0.6.0 (run inside .venv-trinity).

Run by tests/test_engine_trinity.py: ``python tests/peers/trinity_checks.py`` prints one JSON line
{"passed": [...], "failed": {name: message}} and exits 1 when a check failed. Each check calls Trinity's
own loss classes through ``espo_ref.conformance.engines.trinity`` on a batch where Trinity and the
reference agree (no empty response, no log-ratio beyond a clamp, finite padding, no ratio on a bound),
and again with one piece of the mapping deliberately wrong, which must then disagree.
"""

from __future__ import annotations

import contextlib
import json
import sys
import traceback

import numpy as np

import espo_ref.conformance.engines as engines
from espo_ref.conformance.adapters import ImplementationRaised
from espo_ref.conformance.engines import trinity as tr
from espo_ref.conformance.errors import SetupError
from espo_ref.conformance.execution import load_object
from espo_ref.conformance.functions import FUNCTIONS, reference_outputs
from espo_ref.conformance.golden import GoldenCase

MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
NO_CLAMP = {"gspo_loss": {"log_ratio_clamp": None}, "cispo_loss": {"log_ratio_clamp": None}}  # Trinity has none


def batch(seed: int = 0, per_token: bool = False) -> dict[str, np.ndarray]:
    """Six ragged responses (none empty), ratios inside and outside every clip range, two planted ratios
    beyond 2 and 3 on negative advantages (a dual clip of 2, and Trinity's default 3, bind there)."""
    rng = np.random.default_rng(seed)
    B, T = 6, 8
    lengths = rng.integers(2, T + 1, size=B)
    lengths[0] = T
    mask = np.arange(T)[None, :] < lengths[:, None]
    old = rng.uniform(-3.0, -0.1, size=(B, T))
    logp = old + rng.normal(0.0, 0.5, size=(B, T))
    logp[1, 0], logp[3, 1] = old[1, 0] + 1.5, old[3, 1] + 0.9
    adv = np.array([1.0, -0.5, 2.0, -1.5, 0.7, -1.2])
    if per_token:
        adv = adv[:, None] + rng.normal(0.0, 0.3, size=(B, T))
    return {"logp": logp, "old_logp": old, "mask": mask, "advantages": adv}


def outputs(function: str, config: dict, inputs: dict | None = None, expected: dict | None = None) -> tuple[dict, dict]:
    """(Trinity's loss and gradient through the adapter, the reference's) for one batch."""
    inputs = batch() if inputs is None else inputs
    expected = reference_outputs(FUNCTIONS[function], inputs, config, {}) if expected is None else expected
    case = GoldenCase(f"trinity-check/{function}", function, [], "float64", inputs, config, {}, expected, "test")
    adapter = tr.TrinityAdapter(load_object(tr.LOSS_CLASSES[function]), function, "torch", "cpu")
    return adapter.run(case), case.expected


def agrees(got: dict, want: dict, scale: float = 1.0) -> bool:
    return bool(np.isclose(got["loss"], scale * want["loss"], rtol=1e-12, atol=1e-12)
                and np.allclose(got["grad"], scale * np.asarray(want["grad"]), rtol=1e-12, atol=1e-12))


@contextlib.contextmanager
def patched(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def args_changed(change):
    """trinity_args with ``change(function, args)`` applied: a deliberately wrong mapping."""
    real = tr.trinity_args

    def wrong(function, fields):
        args = real(function, fields)
        change(function, args)
        return args

    with patched(tr, "trinity_args", wrong):
        yield


def check_aggregation_modes_agree():
    """token-mean, seq-mean-token-mean, seq-mean-token-sum: each class, both advantage shapes."""
    for function in ("grpo_loss", "dapo_loss", "gspo_loss", "cispo_loss"):
        for mode in MODES[:3]:
            for per_token in (False, True):
                config = {"loss_agg_mode": mode, **NO_CLAMP.get(function, {})}
                got, want = outputs(function, config, batch(per_token=per_token))
                assert agrees(got, want), (function, mode, per_token, got["loss"], want["loss"])


def check_aggregation_mapped_wrong_disagrees():
    """Each mode mapped onto any other Trinity mode gives another loss."""
    for mode in MODES[:3]:
        for other in MODES:
            if other == mode:
                continue
            with patched(tr, "LOSS_AGG_MODES", {**tr.LOSS_AGG_MODES, mode: other}):
                got, want = outputs("grpo_loss", {"loss_agg_mode": mode})
            assert not agrees(got, want), (mode, other)


def check_sum_norm_is_n_times_ours():
    """[BASE-PEERS] sum-norm-responses: Trinity's seq-mean-token-sum-norm is N T / (T + 1e-8) times ours;
    with the mode mapped onto another Trinity mode that no longer holds."""
    inputs = batch()
    m = inputs["mask"]
    scale = m.any(axis=1).sum() * m.shape[1] / (m.shape[1] + 1e-8)
    for function in ("grpo_loss", "gspo_loss", "cispo_loss"):
        config = {"loss_agg_mode": "seq-mean-token-sum-norm", **NO_CLAMP.get(function, {})}
        got, want = outputs(function, config, inputs)
        assert agrees(got, want, scale) and not agrees(got, want), (function, got["loss"], want["loss"])
        for other in MODES[:3]:
            with patched(tr, "LOSS_AGG_MODES", {**tr.LOSS_AGG_MODES, "seq-mean-token-sum-norm": other}):
                got, want = outputs(function, config, inputs)
            assert not agrees(got, want, scale), (function, other)


def _swap_eps(function, args):
    args["clip_range_low"], args["clip_range_high"] = args["clip_range_high"], args["clip_range_low"]


def check_eps_mapping():
    """eps_low/eps_high -> clip_range_low/clip_range_high (offsets); swapped, they disagree."""
    for function, config in (("grpo_loss", {"eps_low": 0.1, "eps_high": 0.3}), ("dapo_loss", {}),
                             ("gspo_loss", {"eps_low": 0.1, "eps_high": 0.02, "log_ratio_clamp": None}),
                             ("cispo_loss", {"eps_low": 0.2, "eps_high": 0.28, "log_ratio_clamp": None})):
        got, want = outputs(function, config)
        assert agrees(got, want), (function, got["loss"], want["loss"])
        with args_changed(_swap_eps):
            got, want = outputs(function, config)
        assert not agrees(got, want), function


def check_cispo_cap_is_an_offset():
    """Trinity's cispo bounds are offsets, as ours: taken as an absolute cap (TRL's reading), they disagree."""
    config = {"eps_low": 0.2, "eps_high": 0.28, "log_ratio_clamp": None}

    def absolute(function, args):
        args["clip_range_high"] = 1.0 + args["clip_range_high"]

    with args_changed(absolute):
        got, want = outputs("cispo_loss", config)
    assert not agrees(got, want)


def check_dual_clip_mapping():
    """dual_clip=c -> clip_ratio_c=c; None -> 1e9 (Trinity's ppo always applies one). Dropping the c, or
    leaving Trinity's default 3 on, disagrees."""
    for function in ("grpo_loss", "dapo_loss"):
        got, want = outputs(function, {"dual_clip": 2.0})
        assert agrees(got, want), (function, got["loss"], want["loss"])
        got, want = outputs(function, {})
        assert agrees(got, want), (function, got["loss"], want["loss"])

        def dropped(function, args):
            args["clip_ratio_c"] = tr.DUAL_CLIP_OFF

        with args_changed(dropped):
            got, want = outputs(function, {"dual_clip": 2.0})
        assert not agrees(got, want), function
        with patched(tr, "DUAL_CLIP_OFF", 3.0):
            got, want = outputs(function, {})
        assert not agrees(got, want), function


def check_bool_mask_as_the_trainer_passes_it():
    """A float mask (not what Trinity's trainer passes) adds 1e-8 to every count: off by ~1e-8 / L."""
    got, want = outputs("grpo_loss", {})
    assert agrees(got, want)
    with patched(tr, "MASK_DTYPE", "float64"):
        got, want = outputs("grpo_loss", {})
    assert not agrees(got, want) and np.isclose(got["loss"], want["loss"], rtol=1e-7)


def check_trinity_checks_its_own_options():
    """[BASE-PEERS] config-errors: a dual clip of 1 reaches Trinity, whose assert names clip_ratio_c."""
    try:
        outputs("dapo_loss", {"dual_clip": 1.0}, expected={"error": "dual_clip"})
    except ImplementationRaised as exc:
        assert "clip_ratio_c" in str(exc), exc
    else:
        raise AssertionError("a dual clip of 1 was accepted")


def check_no_gmpo_and_an_unmeasured_version_is_refused():
    try:
        tr.TrinityAdapter(load_object(tr.LOSS_CLASSES["grpo_loss"]), "gmpo_loss", "torch", "cpu")
    except SetupError as exc:
        assert "Trinity has no GMPO" in str(exc), exc
    else:
        raise AssertionError("gmpo_loss was accepted")
    with patched(engines, "installed_version", lambda name: "0.0.1"):
        try:
            tr.TrinityAdapter(load_object(tr.LOSS_CLASSES["grpo_loss"]), "grpo_loss", "torch", "cpu")
        except SetupError as exc:
            assert "trinity-rft 0.0.1 is installed, but the adapter was measured on 0.6.0" in str(exc), exc
        else:
            raise AssertionError("an unmeasured version was accepted")


CHECKS = [name for name in list(globals()) if name.startswith("check_")]


def main() -> int:
    passed, failed = [], {}
    for name in CHECKS:
        try:
            globals()[name]()
        except Exception:  # noqa: BLE001 - every failure is reported by name
            failed[name] = traceback.format_exc(limit=3)[-2000:]
        else:
            passed.append(name)
    print(json.dumps({"passed": passed, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
