"""Strategies and properties of the fuzz suite (issue 12), shared by tests/test_fuzz.py (a
CI-sized run) and bench/fuzz.py (many more examples, counted into a report).

Each ``check_*`` draws nothing itself: it takes a case drawn by the matching strategy, runs
the numpy core and the torch backend, and asserts, naming the clause:

* robustness [ESPO-INPUT]: no exception other than ESPOInputError, and no non-finite output
  (loss, gradient, every float field, every metric, torch autograd) without an error;
* agreement: numpy and torch take the same decisions (error or not, the same message; groups,
  clip and clamp masks) and give values within ``espo_ref.tolerances``;
* gradients [ESPO-OBJ]: torch autograd, with old_logp, advantages and entropy attached to
  logp's graph (not detached by the caller), equals the ``grad`` field.

Draws whose comparison is ill-conditioned in the backend's dtype (a decision within rounding
of its boundary, a cancelling sum, a float32 range limit) are rejected with ``assume`` after
the robustness checks have run, never compared with a looser tolerance. Each check fills a
``Record`` as it goes, so a caller can count outcomes whether the draw was compared or not.
"""

from __future__ import annotations

import decimal
import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from hypothesis import assume, note
from hypothesis import strategies as st

import espo_ref as core
import espo_ref.torch as et
from espo_ref.errors import ESPOInputError
from espo_ref.tolerances import compare, tolerance
from .asserts import assert_close, assert_equal
from .masks import random_mask

F64_MAX = float(np.finfo(np.float64).max)
F32_MAX = float(np.finfo(np.float32).max)
UNIT = {"float64": 2.0 ** -53, "float32": 2.0 ** -24}  # unit roundoff of the torch compute dtype
TORCH_DTYPE = {"float64": torch.float64, "float32": torch.float32}
SLACK = 16.0  # constant in front of the rounding-error bounds (generous: more rejections, never false failures)

LOSSES = ("espo_loss", "grpo_loss", "dapo_loss", "gspo_loss", "gmpo_loss", "cispo_loss")
FUNCTIONS = LOSSES + ("grpo_advantages", "token_entropy", "entropy_groups", "group_clip_eps")
CONFIG_CLASSES = {"grpo_loss": core.GRPOConfig, "dapo_loss": core.DAPOConfig, "gspo_loss": core.GSPOConfig,
                  "gmpo_loss": core.GMPOConfig, "cispo_loss": core.CISPOConfig}
CLAUSE = {"espo_loss": "ESPO-OBJ", "grpo_loss": "BASE-GRPO", "dapo_loss": "BASE-DAPO", "gspo_loss": "BASE-GSPO",
          "gmpo_loss": "BASE-GMPO", "cispo_loss": "BASE-CISPO", "grpo_advantages": "ESPO-ADV",
          "token_entropy": "ESPO-ENT", "entropy_groups": "ESPO-GROUP", "group_clip_eps": "ESPO-CLIP"}

# Magnitudes of one draw: tiny, ordinary, the exp and float32 limits, huge.
MAGNITUDES = (0.0, 5e-324, 1e-300, 1e-30, 1e-8, 1e-3, 0.3, 1.0, 10.0, 88.0, 700.0, 710.0, 1e5, 1e30,
              3e38, 1e200, 1e307, 1.5e308, F64_MAX)
SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e-300, 0.5, 10.0,
                    20.0, 709.0, 710.0, -745.0, 88.7, 1e30, 3.4e38, 1e300, F64_MAX, -F64_MAX])


# ------------------------------------------------------------------ records


@dataclass
class Record:
    """What one example did, for the bench's counts."""

    function: str
    dtype: str
    outcome: dict = field(default_factory=dict)  # backend -> "ok" or "error: <message prefix>"
    nonfinite: list = field(default_factory=list)  # outputs that were not finite without an error
    compared: bool = False
    rejected: str = ""  # why the comparison was ill-conditioned
    failure: str = ""  # a property violation (bench/fuzz.py records it instead of raising)


_NUMBER = re.compile(r"np\.\w+\([^)]*\)|\[[-+\d., e]*\]|'[^']*'|(?<![\w.])[-+]?(\d+\.?\d*(e[-+]?\d+)?|inf|nan)(?![\w.])")


def message_prefix(message: str) -> str:
    """The kind of an error message: values replaced by #, parenthesised sizes and the remedy
    after a semicolon dropped."""
    text = re.sub(r" \([^)]*\)", "", _NUMBER.sub("#", message.split(";")[0]))
    return text[:100]


def reject(record: Record, reason: str) -> None:
    record.rejected = reason
    note(f"ill-conditioned, not compared: {reason}")
    assume(False)


# ------------------------------------------------------------------ value strategies


def _finite(x: np.ndarray, dtype: str) -> np.ndarray:
    """Clip to the finite range of dtype and round to it (kept as float64 values)."""
    top = F32_MAX if dtype == "float32" else F64_MAX
    x = np.clip(np.nan_to_num(x, nan=0.0, posinf=top, neginf=-top), -top, top)
    return x.astype(np.float32).astype(np.float64) if dtype == "float32" else x


def values(draw, rng: np.random.Generator, shape, label: str, dtype: str, signed: bool = True) -> np.ndarray:
    """Finite values of one of four kinds: ordinary, one magnitude, magnitudes spread over the
    whole float range, or special values (0, -0, subnormals, the exp and float limits)."""
    kind = draw(st.sampled_from(("ordinary", "magnitude", "spread", "special")), label=f"{label}_kind")
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0) if signed else np.ones(shape)
    if kind == "ordinary":
        x = rng.normal(0.0, draw(st.sampled_from((1e-3, 0.3, 3.0, 30.0)), label=f"{label}_scale"), shape)
    elif kind == "magnitude":
        scale = draw(st.sampled_from(MAGNITUDES), label=f"{label}_magnitude")
        if draw(st.booleans(), label=f"{label}_same_sign") and sign.size:
            sign = np.full(shape, sign.reshape(-1)[0])
        x = scale * rng.uniform(0.5, 1.0, shape) * sign
    elif kind == "spread":
        x = sign * 10.0 ** rng.uniform(-320, 308.25, shape)
    else:
        x = rng.choice(SPECIAL, shape) * (sign if signed else 1.0)
    x = np.asarray(x, dtype=np.float64).reshape(shape)
    return _finite(x if signed else np.abs(x), dtype)


def _mask(draw, rng, B, T):
    if draw(st.integers(0, 19), label="empty_batch") == 0:
        return np.zeros((B, T), dtype=bool)  # no response token: an error
    return random_mask(draw, rng, B, T)


@st.composite
def espo_configs(draw):
    """An ESPOConfig over every option of [ESPO-CONFIG], extreme numeric values included."""
    grouping = draw(st.sampled_from(("top_fraction", "batch_top_fraction", "entropy_ranges", "none", "token")),
                    label="grouping")
    kw = dict(
        vocab_size=draw(st.sampled_from((2, 16, 151936, 2 ** 62)), label="vocab_size"),
        grouping=grouping,
        alpha=draw(st.sampled_from((0.0, 0.02, 0.1, 1.0, 1e30, 1e300, F64_MAX)), label="alpha"),
        top_fraction=draw(st.sampled_from((0.2, 0.28, 1 / 3, 0.5, 1.0, 1e-300, 5e-324, 0.9999999999999999)),
                          label="top_fraction"),
        clip=draw(st.sampled_from(("adaptive", "fixed")), label="clip"),
        eps_reading=draw(st.sampled_from(("group_mean", "token_over_groups")), label="eps_reading"),
        ratio_form=draw(st.sampled_from(("gspo_token", "literal")), label="ratio_form"),
        log_ratio_clamp=draw(st.sampled_from((10.0, None, 1e-3, 1.0, 700.0, 1e308)), label="log_ratio_clamp"),
        entropy_tolerance=draw(st.sampled_from((1e-4, 0.0, 1.0, 1e308)), label="entropy_tolerance"),
    )
    if kw["clip"] == "fixed":
        kw["eps_low"] = draw(st.sampled_from((3e-4, 0.2, 0.0, 1.0, 1e308)), label="eps_low")
        kw["eps_high"] = draw(st.sampled_from((4e-4, 0.28, 0.0, 1e308)), label="eps_high")
    if grouping == "entropy_ranges":
        kw["entropy_edges"] = draw(st.sampled_from(((0.5,), (0.25, 0.75), (1e-300, 0.5, 0.9999999999999999))),
                                   label="entropy_edges")
    if grouping in ("top_fraction", "batch_top_fraction", "entropy_ranges"):
        kw["drop_low_group"] = draw(st.booleans(), label="drop_low_group")
    return core.ESPOConfig(**kw)


@st.composite
def baseline_configs(draw, function: str, T: int):
    """A baseline config over every field of [BASE-CONFIG], extreme values included; max_len
    sometimes shorter than the longest response (an error)."""
    cls = CONFIG_CLASSES[function]
    mode = draw(st.sampled_from(core.LOSS_AGG_MODES), label="loss_agg_mode")
    kw = dict(loss_agg_mode=mode,
              eps_low=draw(st.sampled_from((None, 0.0, 3e-4, 0.2, 1.0, 1e308)), label="eps_low"),
              eps_high=draw(st.sampled_from((None, 0.0, 4e-4, 0.28, 4.0, 1e308)), label="eps_high"))
    if mode == "seq-mean-token-sum-norm":
        kw["max_len"] = draw(st.sampled_from((None, T, T + 3, max(T - 1, 1))), label="max_len")
    if cls in (core.GRPOConfig, core.DAPOConfig, core.GSPOConfig, core.CISPOConfig):
        kw["log_ratio_clamp"] = draw(st.sampled_from((None, 1e-3, 1.0, 10.0, 20.0, 700.0, 1e308)),
                                     label="log_ratio_clamp")
    if cls in (core.GRPOConfig, core.DAPOConfig):
        kw["dual_clip"] = draw(st.sampled_from((None, 1.5, 3.0, 1e308)), label="dual_clip")
    if cls is core.GSPOConfig:
        kw["level"] = draw(st.sampled_from(("token", "sequence")), label="level")
    return cls(**{k: v for k, v in kw.items() if v is not None or k in ("max_len", "log_ratio_clamp", "dual_clip")})


@st.composite
def loss_cases(draw, function: str):
    """Inputs of one loss: a padded batch with empty rows, NaN padding, extreme but finite
    log-probabilities, log-ratios and advantages, float64 or float32."""
    dtype = draw(st.sampled_from(("float64", "float32")), label="dtype")
    B = draw(st.integers(1, 5), label="B")
    T = draw(st.integers(1, 12), label="T")
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    mask = _mask(draw, rng, B, T)
    logp = values(draw, rng, (B, T), "logp", dtype)
    if draw(st.booleans(), label="old_near_logp"):
        delta = values(draw, rng, (B, T), "log_ratio", dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            old = _finite(logp - delta, dtype)
    else:
        old = values(draw, rng, (B, T), "old_logp", dtype)
    adv_shape = (B, T) if draw(st.booleans(), label="per_token_adv") else (B,)
    adv = values(draw, rng, adv_shape, "advantages", dtype)
    if draw(st.integers(0, 3), label="adv_pool") == 0:
        adv = rng.choice(np.array([-1.5, -0.3, 0.0, 0.7, 2.0]), adv_shape)
    case = dict(function=function, dtype=dtype, logp=logp, old_logp=old, mask=mask, advantages=adv)
    if function == "espo_loss":
        config = draw(espo_configs(), label="config")
        case["entropy"] = _entropies(draw, rng, (B, T), config, dtype)
    else:
        config = draw(baseline_configs(function, T), label="config")
    case["config"] = config
    for key in ("logp", "old_logp", "entropy"):
        if key in case:
            case[key] = np.where(mask, case[key], np.nan)  # padding holds NaN: it must never leak
    return case


def _entropies(draw, rng, shape, config, dtype):
    """Entropies inside [0, log V] (ties, -0.0, the band below 0 and above log V), or anywhere
    the tolerance allows when it is huge."""
    log_v, tol = config.log_vocab, config.entropy_tolerance
    kind = draw(st.sampled_from(("uniform", "ties", "band", "huge")), label="entropy_kind")
    if kind == "uniform":
        e = rng.uniform(0.0, log_v, shape)
    elif kind == "ties":
        e = rng.choice(np.array([0.0, -0.0, 0.25 * log_v, 0.5 * log_v, log_v, 5e-324]), shape)
    elif kind == "band":
        e = rng.choice(np.array([-tol, -0.5 * tol, log_v + 0.5 * tol, log_v + tol, 0.0, log_v]), shape)
    else:
        e = np.minimum(values(draw, rng, shape, "entropy", "float64", signed=False), log_v + tol)
    e = _finite(e, dtype)
    if dtype == "float32":  # keep the float32 value inside the band the core checks in float64
        e = np.where(e > log_v + tol, np.nextafter(np.float32(e), np.float32(0)).astype(np.float64), e)
        e = np.where(e < -tol, np.nextafter(np.float32(e), np.float32(1)).astype(np.float64), e)
    return e


@st.composite
def advantage_cases(draw):
    dtype = draw(st.sampled_from(("float64", "float32")), label="dtype")
    B = draw(st.integers(1, 12), label="B")
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    rewards = values(draw, rng, (B,), "rewards", dtype)
    if draw(st.booleans(), label="offset_rewards"):
        with np.errstate(over="ignore"):
            rewards = _finite(rewards + values(draw, rng, (1,), "reward_offset", dtype), dtype)
    ids = rng.integers(0, draw(st.integers(1, 4), label="prompts"), B)
    valid = rng.random(B) < draw(st.sampled_from((1.0, 0.7, 0.3)), label="valid_rate")
    return dict(function="grpo_advantages", dtype=dtype, rewards=rewards,
                prompt_ids=ids.astype(str) if draw(st.booleans(), label="string_ids") else ids,
                valid=valid, ddof=draw(st.sampled_from((0, 1)), label="ddof"),
                eps=draw(st.sampled_from((1e-6, 0.0, 1e-4, 1.0, 1e300)), label="eps"))


@st.composite
def entropy_cases(draw):
    dtype = draw(st.sampled_from(("float64", "float32")), label="dtype")
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=2), label="batch_shape"))
    V = draw(st.integers(1, 8), label="V")
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    logits = values(draw, rng, shape + (V,), "logits", dtype)
    if draw(st.booleans(), label="masked_vocab"):
        dead = rng.random(shape + (V,)) < 0.3
        if draw(st.integers(0, 9), label="keep_one_alive"):
            dead[..., 0] = False
        logits = np.where(dead, -np.inf, logits)
    temperature = draw(st.sampled_from((1.0, 0.7, 2.0, 1e-300, 1e-30, 1e30, 1e300, 5e-324, F64_MAX)),
                       label="temperature")
    return dict(function="token_entropy", dtype=dtype, logits=logits, temperature=temperature)


@st.composite
def group_cases(draw, function: str):
    dtype = draw(st.sampled_from(("float64", "float32")), label="dtype")
    B = draw(st.integers(1, 5), label="B")
    T = draw(st.integers(1, 12), label="T")
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    config = draw(espo_configs(), label="config")
    mask = _mask(draw, rng, B, T)
    entropy = np.where(mask, _entropies(draw, rng, (B, T), config, dtype), np.nan)
    return dict(function=function, dtype=dtype, entropy=entropy, mask=mask, config=config)


def cases(function: str):
    """The strategy of ``function``'s inputs."""
    if function in LOSSES:
        return loss_cases(function)
    return {"grpo_advantages": advantage_cases(), "token_entropy": entropy_cases(),
            "entropy_groups": group_cases("entropy_groups"), "group_clip_eps": group_cases("group_clip_eps")}[function]


# ------------------------------------------------------------------ running both backends


def _t(x, dtype):
    return torch.tensor(np.asarray(x), dtype=dtype)


def _outcome(fn):
    """(result, None) or (None, ESPOInputError); any other exception propagates (a failure)."""
    try:
        return fn(), None
    except ESPOInputError as err:
        return None, err


def host(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        return x.to(torch.float64).numpy() if x.dtype.is_floating_point else x.numpy()
    return np.asarray(x)


FLOAT_FIELDS = ("grad", "ratio", "eps", "eps_low", "eps_high", "log_ratio", "weight")


def nonfinite_outputs(result, clause: str) -> list[str]:
    """Names of the non-finite outputs of a LossResult (loss, float fields, extras, metrics)."""
    bad = []
    if not np.isfinite(host(result.loss)).all():
        bad.append(f"[{clause}] loss = {host(result.loss)}")
    for name in FLOAT_FIELDS:
        value = getattr(result, name)
        if value is not None and not np.isfinite(host(value)).all():
            bad.append(f"[{clause}] {name}")
    for name, value in result.extras.items():
        arr = host(value)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad.append(f"[{clause}] extras[{name}]")
    for key, value in result.metrics.items():
        if not (isinstance(value, float) and math.isfinite(value)):
            bad.append(f"[{clause}] metrics[{key}] = {value!r}")
    return bad


def _robust(record: Record, backend: str, result, error, clause: str, extra_bad=()):
    record.outcome[backend] = "ok" if error is None else f"error: {message_prefix(str(error))}"
    if error is None:
        bad = (nonfinite_outputs(result, clause) if hasattr(result, "metrics") else []) + list(extra_bad)
        record.nonfinite += [f"{backend}: {b}" for b in bad]
        assert not bad, f"[ESPO-INPUT] {record.function} ({backend}, {record.dtype}) non-finite without an error: {bad}"


def _finite_array(record: Record, backend: str, value, clause: str, what: str) -> None:
    """A component's array output is finite when the call did not raise (recorded for the bench)."""
    if value is not None and not np.isfinite(host(value)).all():
        record.nonfinite.append(f"{backend}: {what}")
        raise AssertionError(f"[{clause}] {backend} {what} not finite: {value}")


def _same_decision(record, want_err, got_err, clause, near_boundary):
    """Error or not, and the message: equal, unless a float32 range limit (the torch message
    names float32) or, when only one backend raised, an overflow decision within rounding of
    its boundary explains the difference (rejected)."""
    if (want_err is None) == (got_err is None) and (want_err is None or str(want_err) == str(got_err)):
        return
    got_text = "" if got_err is None else str(got_err)
    if record.dtype == "float32" and "float32" in got_text:
        reject(record, f"float32 range limit: {message_prefix(got_text)}")
    if near_boundary():
        reject(record, "an overflow decision within rounding of its boundary")
    raise AssertionError(f"[{clause}] {record.function} ({record.dtype}): numpy says {want_err!s:.200} | "
                         f"torch says {got_err!s:.200}")


# ------------------------------------------------------------------ losses


def _call_loss(function, backend, case, dtype=None, attach=False):
    """Run a loss; for torch, logp requires grad and (``attach``) old_logp, advantages and
    entropy are attached to logp's graph with unchanged values, ``x + (logp - logp.detach())``."""
    fn = getattr(core if backend == "numpy" else et, function)
    if backend == "numpy":
        args = [case["logp"], case["old_logp"]] + ([case["entropy"]] if function == "espo_loss" else []) + \
               [case["mask"], case["advantages"]]
        return fn(*args, case["config"]), None
    logp = _t(np.where(case["mask"], case["logp"], np.nan), dtype).requires_grad_(True)
    zero = torch.where(torch.tensor(case["mask"]), logp - logp.detach(), torch.zeros((), dtype=dtype))
    old = _t(case["old_logp"], dtype)
    adv = _t(case["advantages"], dtype)
    ent = _t(case["entropy"], dtype) if function == "espo_loss" else None
    if attach:
        old = old + zero
        adv = adv + (zero if adv.ndim == 2 else zero.sum(dim=1))
        ent = None if ent is None else ent + zero
    args = [logp, old] + ([ent] if ent is not None else []) + [torch.tensor(case["mask"]), adv]
    return fn(*args, case["config"]), logp


def oracle_approx_kl(log_r: np.ndarray) -> float:
    """[ESPO-METRICS] The token mean of (r - 1) - log r, computed in 60-digit decimal arithmetic
    (a series below |x| = 1e-3, where exp(x) - 1 - x cancels): the exact value rounded to
    float64, or the largest float64 where it is beyond (the pinned saturation)."""
    ctx = decimal.Context(prec=60, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
    total = decimal.Decimal(0)
    for x in log_r.tolist():
        if x > 1e6:  # e^x alone is beyond float64 by far
            return F64_MAX
        d = decimal.Decimal(x)
        if abs(x) < 1e-3:
            k3 = ctx.add(ctx.add(ctx.multiply(d, d) / 2, ctx.power(d, 3) / 6), ctx.power(d, 4) / 24)
        else:
            k3 = ctx.subtract(ctx.subtract(ctx.exp(d), 1), d)
        total = ctx.add(total, k3)
    mean = ctx.divide(total, len(log_r))
    return F64_MAX if mean > decimal.Decimal(F64_MAX) else float(mean)


def check_loss(case: dict, record: Record) -> None:
    """Robustness, agreement and gradient properties of one loss on one drawn case."""
    function, dtype = case["function"], case["dtype"]
    clause = CLAUSE[function]
    tdtype = TORCH_DTYPE[dtype]
    want, want_err = _outcome(lambda: _call_loss(function, "numpy", case)[0])
    _robust(record, "numpy", want, want_err, clause)
    if want is not None:  # the reference against an independent oracle [ESPO-METRICS]
        m = case["mask"]
        log_r = (np.where(m, case["logp"], 0.0) - np.where(m, case["old_logp"], 0.0))[m]
        assert_close(want.metrics["approx_kl"], oracle_approx_kl(log_r), tolerance("numpy", "float64", "value"),
                     "ESPO-METRICS", "numpy approx_kl vs the decimal oracle")

    def torch_run():
        result, logp = _call_loss(function, "torch", case, tdtype, attach=True)
        result.loss.backward()
        return result, logp.grad

    got_pair, got_err = _outcome(torch_run)
    got, autograd = got_pair if got_pair is not None else (None, None)
    extra = [] if autograd is None or np.isfinite(host(autograd)).all() else [f"[{clause}] autograd gradient"]
    _robust(record, "torch", got, got_err, clause, extra)
    gspo_sequence = function == "gspo_loss" and case["config"].level == "sequence"
    if got is not None and (not gspo_sequence or _gspo_sequence_conditioned(got, case, dtype)):
        # [ESPO-OBJ] autograd through old_logp/advantages/entropy attached to the graph = grad field
        assert_close(autograd, got.grad, tolerance("torch", dtype, "grad"), "ESPO-OBJ",
                     f"{function}: autograd with old_logp, advantages, entropy in logp's graph vs grad field")
    def near_boundary():
        with np.errstate(over="ignore", invalid="ignore"):
            return _near_overflow(case, want if want is not None else got)

    _same_decision(record, want_err, got_err, clause, near_boundary)
    if want_err is not None:
        record.compared = True
        return
    with np.errstate(over="ignore", invalid="ignore"):  # the error bounds may overflow: then they reject
        _compare_loss(case, want, got, record)
    record.compared = True


def _log_values(case, want):
    """(log-ratio per token as numpy computes it, the log value the ratio is exp of)."""
    m = case["mask"]
    lp, olp = np.where(m, case["logp"], 0.0), np.where(m, case["old_logp"], 0.0)
    log_r = lp - olp
    if case["function"] == "gspo_loss":  # its log_ratio field is clamped: the row mean before the clamp
        mean = log_r.sum(axis=1) / np.maximum(m.sum(axis=1), 1)
        return log_r, np.where(m, mean[:, None], 0.0)
    return log_r, host(want.log_ratio)


def _group_abs_sum(values, groups, mask):
    """sum over each token's group of |values| (groups: [B, T] ids, -1 padding): the size of
    the rounding error of the group's mean, in units of the unit roundoff."""
    out = np.zeros_like(values)
    for b in range(values.shape[0]):
        for g in np.unique(groups[b][mask[b]]):
            sel = mask[b] & (groups[b] == g)
            out[b, sel] = np.abs(values[b, sel]).sum()
    return out


def log_value_error(case, result):
    """(log r, its error bound, the log value the ratio is exp of, its error bound): absolute
    bounds of how far the torch value may lie from numpy's (0 where both compute it exactly:
    a float64 difference, a group of equal log-ratios)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _log_value_error(case, result)


def _log_value_error(case, result):
    function, dtype, m = case["function"], case["dtype"], case["mask"]
    u = UNIT[dtype]
    log_r, log_value = _log_values(case, result)
    err_lr = (u * np.abs(log_r)) if dtype == "float32" else np.zeros_like(log_r)
    if function in ("espo_loss", "gspo_loss", "gmpo_loss"):
        groups = host(result.groups) if function == "espo_loss" else np.where(m, 0, -1)
        err_lv = SLACK * u * (_group_abs_sum(log_r, groups, m) + np.abs(log_value)) + \
            SLACK * _group_abs_sum(err_lr, groups, m)
        if function == "espo_loss" and case["config"].ratio_form == "literal":
            log_value = log_value + log_r
            err_lv = err_lv + err_lr + SLACK * u * np.abs(log_r)
    else:
        err_lv = err_lr
    return log_r, err_lr, log_value, err_lv


def _near_overflow(case, result) -> bool:
    """Is an exp argument (within its error bound), the loss, a gradient, an epsilon or a sum
    of the backend that did not raise within rounding of the float64 limit (so that the other
    backend may have crossed it)?"""
    log_limit = math.log(F64_MAX)
    m = case["mask"]
    exp_args = result if result is not None else _exp_arguments(case)
    if exp_args is None:
        return False
    _, _, lv, err_lv = log_value_error(case, exp_args)
    if np.any(m & (np.abs(lv - log_limit) <= err_lv + 1e-9 * (np.abs(lv) + 1.0) * m.size)):
        return True
    if result is None:
        return False
    mags = [np.abs(host(result.loss)).max(), np.abs(host(result.grad)).max()]
    mags += [np.abs(host(x)).max() for x in (result.eps_high, result.ratio) if x is not None]
    if "per_token_loss" in result.extras:  # a partial sum in another order may cross the limit
        mags.append(0.5 * np.abs(host(result.weight) * host(result.extras["per_token_loss"])).sum())
    else:
        adv = np.broadcast_to(np.asarray(case["advantages"]).reshape(m.shape[0], -1), m.shape)
        mags.append(0.5 * np.abs(host(result.weight) * np.where(m, adv, 0.0) * host(result.ratio)).sum())
    return any(F64_MAX * 0.999 <= float(x) for x in mags)


class _ExpArguments:
    """The fields log_value_error reads (log_ratio, groups), computed from the inputs alone."""

    def __init__(self, log_ratio, groups=None):
        self.log_ratio, self.groups = log_ratio, groups


def _exp_arguments(case):
    """When both backends raised: numpy's exp arguments from the inputs, or None if they
    cannot be formed (then the messages must agree as they are)."""
    m = case["mask"]
    lp, olp = np.where(m, case["logp"], 0.0), np.where(m, case["old_logp"], 0.0)
    try:
        with np.errstate(all="ignore"):
            if case["function"] == "espo_loss":
                groups = core.entropy_groups(case["entropy"], m, case["config"])
                return _ExpArguments(core.group_log_ratio(lp, olp, groups), groups)
            log_r = lp - olp
            if case["function"] == "gmpo_loss":
                from espo_ref.baselines import gmpo_clipped_log_ratio, row_mean
                adv = np.broadcast_to(np.asarray(case["advantages"]).reshape(m.shape[0], -1), m.shape)
                lc = gmpo_clipped_log_ratio(log_r, adv, m, case["config"].eps_low, case["config"].eps_high)[0]
                return _ExpArguments(np.where(m, row_mean(lc, m)[:, None], 0.0))
            return _ExpArguments(log_r)
    except ESPOInputError:
        return None


def _token_gradient_terms(result, case):
    """|w A ratio| per token: the terms the GSPO sequence gradient sums per row."""
    m = case["mask"]
    adv = np.where(m, np.broadcast_to(np.asarray(case["advantages"]).reshape(m.shape[0], -1), m.shape), 0.0)
    return np.abs(host(result.weight) * adv * host(result.ratio))


def _gspo_sequence_conditioned(result, case, dtype) -> bool:
    """GSPO sequence form: the row mean of the token gradients does not cancel beyond the grad
    row of the dtype (else autograd and the field may differ by its rounding)."""
    tol = tolerance("torch", dtype, "grad")
    m = case["mask"]
    n = max(int(m.sum(axis=1).max()), 1)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing bound is not conditioned
        err = SLACK * n * UNIT[dtype] * _token_gradient_terms(result, case).sum(axis=1, keepdims=True)
        grad = np.abs(host(result.grad))
        return bool(np.all(~m | (err <= tol.atol + tol.rtol * grad)))


def _compare_loss(case, want, got, record):
    """Decisions equal and values within the table, or the draw is rejected as ill-conditioned."""
    function, dtype = case["function"], case["dtype"]
    clause = CLAUSE[function]
    config = case["config"]
    m = case["mask"]
    u = UNIT[dtype]
    vtol, gtol = tolerance("torch", dtype, "value"), tolerance("torch", dtype, "grad")
    n = max(int(m.sum(axis=1).max()), 1)
    f32 = dtype == "float32"
    log_r, err_lr, log_value, err_lv = log_value_error(case, want)
    ratio = host(want.ratio)
    clamped = host(want.extras["clamped"]).astype(bool) if "clamped" in want.extras else np.zeros_like(m)
    trained = host(want.trained).astype(bool)
    bound_err = (lambda b: SLACK * u * (np.abs(b) + 1.0)) if f32 else (lambda b: 0.0)  # float32 rounds 1 + eps
    # clamp decisions: the log value within its error bound of a clamp bound
    clamp = getattr(config, "log_ratio_clamp", None)
    upper_only = function in ("espo_loss", "gspo_loss")
    raw = log_value if upper_only else log_r  # what the clamp compares
    if clamp is not None:
        err_c = err_lv + (SLACK * u * clamp if f32 else 0.0)
        for bound in ((clamp,) if upper_only else (clamp, -clamp)):
            if np.any(m & (np.abs(raw - bound) <= err_c) & (err_c > 0)):
                reject(record, "a log value within rounding of the log-ratio clamp")
    # the log of the ratio value and its error: exact for a clamped token up to exp's rounding
    if clamp is None:
        lv = log_value
    else:
        lv = np.minimum(log_value, clamp) if upper_only else np.clip(log_value, -clamp, clamp)
    err_log = np.where(clamped, 0.0, err_lv) + np.where(lv != 0, SLACK * u, 0.0)
    may_matter = m & (lv + err_log > -700.0)  # a ratio above ~1e-304 in either backend
    delta_r = np.where(may_matter, err_log, 0.0)  # relative error of the ratio
    if function == "gmpo_loss":  # the clip acts on log r against -eps_low, eps_high
        lo_b, hi_b = -config.eps_low, config.eps_high

        def near(b):
            err = err_lr + bound_err(b)
            return (np.abs(log_r - b) <= err) & (err > 0)
    else:
        if function == "espo_loss":
            lo_b, hi_b = 1.0 - host(want.eps_low), 1.0 + host(want.eps_high)
            eps_err = SLACK * n * u * host(want.eps_high)
        else:
            lo_b, hi_b, eps_err = 1.0 - config.eps_low, 1.0 + config.eps_high, 0.0

        def near(b):  # the ratio's interval exp(lv +- err_log) meets the bound's b +- err_b
            b = np.asarray(b, dtype=np.float64)
            err_b = eps_err + bound_err(b)
            with np.errstate(over="ignore", under="ignore"):
                r_lo, r_hi = np.exp(lv - err_log), np.exp(lv + err_log)
            meets = (r_lo <= b + err_b) & (r_hi >= b - err_b)
            return meets & ((err_log > 0) | (np.asarray(err_b) > 0))
    if np.any(trained & (near(lo_b) | near(hi_b))):
        reject(record, "a ratio within rounding of a clip bound")
    dual = getattr(config, "dual_clip", None)
    if dual is not None and np.any(m & near(dual)):
        reject(record, "a ratio within rounding of the dual clip")
    assert_equal(got.clipped_high, want.clipped_high, "ESPO-CLIPMASK", "clipped_high")
    assert_equal(got.clipped_low, want.clipped_low, "ESPO-CLIPMASK", "clipped_low")
    if "clamped" in want.extras:
        assert_equal(got.extras["clamped"], want.extras["clamped"], "ESPO-RATIO-CLAMP", "clamped")
    if function == "espo_loss":
        assert_equal(got.groups, want.groups, "ESPO-GROUP", "groups")
        assert_equal(got.trained, want.trained, "ESPO-GROUP-DROPLOW", "trained")
    # values: a cancelling sum, or a relative ratio error above the row, is ill-conditioned
    adv = np.broadcast_to(np.asarray(case["advantages"]).reshape(m.shape[0], -1), m.shape)
    adv = np.where(m, adv, 0.0)
    if function == "gmpo_loss":
        adv_err = SLACK * u * _group_abs_sum(adv, np.where(m, 0, -1), m)
        abar = host(want.extras["advantage_seq"])
        rel_abar = np.where(m & (abar != 0), adv_err / np.maximum(np.abs(abar), 1e-300), 0.0)
        if np.any(m & (abar == 0) & (adv_err > 0)):
            reject(record, "a GMPO mean advantage that cancels to 0")
        delta_r = delta_r + rel_abar
    if np.any(trained & may_matter & (delta_r > vtol.rtol / 4)):
        reject(record, "a ratio whose rounding error exceeds the value row")
    if "per_token_loss" in want.extras:
        terms = np.abs(host(want.weight) * host(want.extras["per_token_loss"]))
    else:
        terms = np.abs(host(want.weight)) * np.abs(adv) * np.maximum(ratio, 1.0)
    loss_err = float(np.sum(terms * (delta_r + SLACK * m.size * u)))
    if loss_err > vtol.atol + vtol.rtol * abs(float(want.loss)):
        reject(record, "a cancelling loss sum")
    if function == "gspo_loss" and config.level == "sequence" and not _gspo_sequence_conditioned(want, case, dtype):
        reject(record, "a cancelling GSPO sequence gradient")
    assert_close(got.loss, np.float64(want.loss), vtol, clause, "loss")
    assert_close(got.grad, want.grad, gtol, clause, "grad")
    assert_close(got.ratio, want.ratio, vtol, clause, "ratio")
    assert_close(got.weight, want.weight, vtol, clause, "weight")
    lr_want = host(want.log_ratio)
    if not np.all(err_lv[m] <= vtol.atol + vtol.rtol * np.abs(lr_want[m])):
        reject(record, "a cancelling group log-ratio")
    assert_close(got.log_ratio, lr_want, vtol, clause, "log_ratio")
    if function == "espo_loss":
        for name in ("eps_low", "eps_high"):
            assert_close(getattr(got, name), getattr(want, name), vtol, "ESPO-CLIP", name)
    assert list(got.metrics) == list(want.metrics), f"[{clause}] metric keys differ"
    _compare_metrics(got.metrics, want.metrics, log_r, m, dtype, vtol, clause, record)


def _compare_metrics(got, want, log_r, m, dtype, vtol, clause, record):
    n_tok = max(int(m.sum()), 1)
    x = log_r[m]
    for key, w in want.items():
        if key == "ppo_kl":
            err = SLACK * m.size * 2.0 ** -53 * float(np.abs(x).sum()) / n_tok
            if err > vtol.atol + vtol.rtol * abs(w):
                reject(record, "a cancelling ppo_kl")
        assert isinstance(got[key], float), f"[{clause}] metrics[{key}] is {type(got[key])}"
        if max(abs(w), abs(got[key])) >= 0.5 * F64_MAX and not compare(got[key], w, vtol)["ok"]:
            reject(record, f"metrics[{key}] near the float64 maximum (saturation)")
        assert_close(got[key], w, vtol, "ESPO-METRICS", f"metrics[{key}]")


# ------------------------------------------------------------------ components


def _run_component(record: Record, clause: str, what, numpy_call, torch_call, near_boundary=None):
    """Both backends on one component: each raises ESPOInputError or gives finite outputs (with
    ``what``, its array output finite), and both take the same decision (``near_boundary(want)``
    says when a differing overflow decision is within rounding). Returns (want, got, want_err)."""
    want, want_err = _outcome(numpy_call)
    _robust(record, "numpy", want, want_err, clause)
    if what is not None:
        _finite_array(record, "numpy", want, clause, what)
    got, got_err = _outcome(torch_call)
    _robust(record, "torch", got, got_err, clause)
    if what is not None:
        _finite_array(record, "torch", got, clause, what)
    _same_decision(record, want_err, got_err, clause, lambda: near_boundary is not None and near_boundary(want))
    return want, got, want_err


def check_advantages(case: dict, record: Record) -> None:
    """[ESPO-ADV] finite rewards give finite advantages in both backends, the same decisions,
    and equal values where the spread of the rewards is not lost to rounding."""
    dtype, tdtype = case["dtype"], TORCH_DTYPE[case["dtype"]]
    args = (case["prompt_ids"], case["valid"], case["ddof"], case["eps"])
    ids = case["prompt_ids"] if case["prompt_ids"].dtype.kind in "US" else torch.tensor(case["prompt_ids"])
    want, got, want_err = _run_component(
        record, "ESPO-ADV", "advantages", lambda: core.grpo_advantages(case["rewards"], *args),
        lambda: et.grpo_advantages(_t(case["rewards"], tdtype), ids, torch.tensor(case["valid"]), case["ddof"],
                                   case["eps"]))
    if want_err is not None:
        record.compared = True
        return
    tol = tolerance("torch", dtype, "value")
    r, v = case["rewards"], case["valid"]
    _, prompt = np.unique(case["prompt_ids"], return_inverse=True)
    prompt = prompt.reshape(-1)
    for p in np.unique(prompt):
        sel = v & (prompt == p)
        if sel.sum() < 2:
            continue
        vals = r[sel]
        top = float(np.abs(vals).max())
        sigma = float(np.std(vals / top, ddof=case["ddof"])) if top > 0 else 0.0
        if sigma == 0.0:
            continue  # equal rewards: 0 exactly in both (the shift makes R - mu exact)
        eps_scaled = case["eps"] / top
        err = SLACK * (sel.sum() + 2) * UNIT[dtype] / (sigma + eps_scaled)
        a = np.abs(want[sel])
        if np.any(err > tol.atol + tol.rtol * a):
            reject(record, "rewards whose spread is lost to rounding")
    assert_close(got, want, tol, "ESPO-ADV", "advantages")
    record.compared = True


def check_entropy(case: dict, record: Record) -> None:
    """[ESPO-ENT] finite logits give a finite entropy at every temperature, in both backends."""
    dtype, tdtype = case["dtype"], TORCH_DTYPE[case["dtype"]]
    want, got, want_err = _run_component(
        record, "ESPO-ENT", "entropy", lambda: core.token_entropy(case["logits"], case["temperature"]),
        lambda: et.token_entropy(_t(case["logits"], tdtype), case["temperature"]))
    if want_err is not None:
        record.compared = True
        return
    tol = tolerance("torch", dtype, "value")
    if dtype == "float32":
        err = _entropy_rounding(case["logits"], case["temperature"])
        if np.any(err > tol.atol + tol.rtol * want):
            reject(record, "float32 logits / temperature whose rounding exceeds the value row")
    assert_close(got, want, tol, "ESPO-ENT", "entropy")
    record.compared = True


def _entropy_rounding(logits, temperature):
    """Bound on the change of the entropy when z = logits / temperature is rounded to float32:
    |dH| <= max|dz| * sum_v p_v |z_v - E z|, |dz| <= 4 u max|z| (z and its maximum rounded)."""
    u = UNIT["float32"]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        z = logits / temperature
        z = np.where(np.isfinite(logits), z, -np.inf)
        top = z.max(axis=-1, keepdims=True)
        shifted = np.where(np.isfinite(z), z - top, -np.inf)
        shifted = np.where(np.isfinite(shifted), shifted, -np.inf)
        p = np.exp(shifted)
        p = p / p.sum(axis=-1, keepdims=True)
        s0 = np.where(p > 0, shifted, 0.0)
        mean = (p * s0).sum(axis=-1, keepdims=True)
        spread = (p * np.abs(s0 - mean)).sum(axis=-1)
        scale = np.where(np.isfinite(z), np.abs(z), 0.0).max(axis=-1)
        err = SLACK * 4 * u * np.minimum(scale, F64_MAX) * spread + SLACK * u * logits.shape[-1]
    return np.where(np.isfinite(err), err, np.inf)


def check_groups(case: dict, record: Record) -> None:
    """[ESPO-GROUP] the group ids equal the core's exactly (no tolerance, no rejection), and the
    same errors."""
    tdtype = TORCH_DTYPE[case["dtype"]]
    want, got, want_err = _run_component(
        record, "ESPO-GROUP", None, lambda: core.entropy_groups(case["entropy"], case["mask"], case["config"]),
        lambda: et.entropy_groups(_t(case["entropy"], tdtype), torch.tensor(case["mask"]), case["config"]))
    if want_err is None:
        assert_equal(got, want, "ESPO-GROUP", "groups")
    record.compared = True


def check_clip_eps(case: dict, record: Record) -> None:
    """[ESPO-CLIP] eps finite or an error naming alpha, the same in both backends, values within
    the table."""
    dtype, tdtype = case["dtype"], TORCH_DTYPE[case["dtype"]]
    groups, groups_err = _outcome(lambda: core.entropy_groups(case["entropy"], case["mask"], case["config"]))
    if groups_err is not None:
        groups = np.where(case["mask"], 0, -1)
    limit = F64_MAX if dtype == "float64" else F32_MAX
    want, got, want_err = _run_component(
        record, "ESPO-CLIP", "eps", lambda: core.group_clip_eps(case["entropy"], groups, case["config"]),
        lambda: et.group_clip_eps(_t(case["entropy"], tdtype), torch.tensor(groups), case["config"]),
        near_boundary=lambda want: want is not None and bool(np.any(np.abs(want) >= limit * 0.999)))
    if want_err is None:
        assert_close(got, want, tolerance("torch", dtype, "value"), "ESPO-CLIP", "eps")
    record.compared = True


CHECKS = {**{f: check_loss for f in LOSSES}, "grpo_advantages": check_advantages, "token_entropy": check_entropy,
          "entropy_groups": check_groups, "group_clip_eps": check_clip_eps}


def run_case(case: dict) -> Record:
    """Check one drawn case; returns its Record (raises on a property violation, and
    hypothesis' UnsatisfiedAssumption for a rejected comparison)."""
    record = Record(case["function"], case["dtype"])
    CHECKS[case["function"]](case, record)
    return record
