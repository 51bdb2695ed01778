"""[CONF-MISREADINGS] Known misreadings of the spec: named readings of the reference that diagnose a failure.

Each misreading is one plausible wrong reading of a pinned clause (specs/conformance.md,
"Misreadings", lists them). When a case fails, the runner evaluates every misreading that
applies to the case and reports those whose outputs reproduce the implementation's within
the case's tolerance: "your outputs match reading later-ties [ESPO-GROUP-TOPFRAC]". A
loss-only adapter thus gets a precise clause, not just [ESPO-OBJ].

The ESPO readings are computed by ``espo_reading``, a compact loop-free numpy form of Eq. 5
with one switch per misreading; with no switch it is the reference (a test checks it on every
golden case), which makes it a second derivation of the objective as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable

import numpy as np

import espo_ref

from .golden import GoldenCase

LN2 = math.log(2.0)


@dataclass(frozen=True)
class Misreading:
    name: str
    clause: str
    summary: str
    functions: tuple[str, ...]
    evaluate: Callable[[GoldenCase], dict | None]  # outputs under the misreading; None: not applicable
    explains_error: Callable[[GoldenCase, Any], bool] | None = None  # (case, raised outcome)
    explains_output: Callable[[GoldenCase, dict], bool] | None = None  # (case, outputs): a symptom

    def to_json(self) -> dict:
        return {"name": self.name, "clause": self.clause, "summary": self.summary}


# --- ESPO: one switchable form of Eq. 5 ---------------------------------------------------

DEFAULT_READING = dict(n_high="exact", ties="earlier", threshold="rank", entropy_unit="nats",
                       eps_scope="group", ratio_form=None, grad="token", agg="espo", clamp=True, clamp_rule="gt",
                       clip_mask="strict", entropy_clamp=True)


def _n_high(lengths: np.ndarray, rho: float, rule: str) -> np.ndarray:
    if rule == "exact":
        return espo_ref.high_group_size(lengths.astype(np.int64), rho)
    exact = Fraction(repr(float(rho)))
    if rule == "float32-ceil":  # torch's default dtype: float32(rho) * L in float32
        product = np.ceil(np.float32(rho) * lengths.astype(np.float32))
    else:
        product = {"floor": np.floor(lengths * float(exact)), "round": np.round(lengths * float(exact)),
                   "float-ceil": np.ceil(lengths * float(rho))}[rule]
    return np.minimum(np.maximum(product.astype(np.int64), 1), lengths)


def _top_fraction_groups(e: np.ndarray, m: np.ndarray, rho: float, n_rule: str, ties: str,
                         threshold: str) -> np.ndarray:
    B, T = m.shape
    lengths = m.sum(axis=1)
    if threshold == "quantile":  # high = entropy >= the (1 - rho) quantile of the response
        groups = np.full((B, T), 1)
        for b in np.flatnonzero(lengths):  # a misreading, not a hot path: a loop over rows is fine
            thr = np.quantile(e[b, m[b]], 1.0 - rho)
            groups[b] = np.where(e[b] >= thr, 0, 1)
        return np.where(m, groups, -1)
    n_high = _n_high(lengths, rho, n_rule)
    if ties == "topk":
        import torch

        groups = np.full((B, T), 1)
        for b in np.flatnonzero(lengths):
            idx = np.flatnonzero(m[b])
            top = torch.topk(torch.from_numpy(e[b, idx].copy()), int(n_high[b])).indices.numpy()
            groups[b, idx[top]] = 0
        return np.where(m, groups, -1)
    position = np.arange(T)[None, :].repeat(B, 0)
    tie_key = position if ties == "earlier" else -position
    key = np.where(m, e, -np.inf)
    order = np.lexsort((tie_key, -key), axis=1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(T)[None, :].repeat(B, 0), axis=1)
    return np.where(m, np.where(rank < n_high[:, None], 0, 1), -1)


def espo_reading(case: GoldenCase, **switches) -> dict | None:
    """Outputs of Eq. 5 on the case under a reading (see DEFAULT_READING for the switches).

    None when the reading cannot be evaluated on the case (a ratio that overflows)."""
    r = {**DEFAULT_READING, **switches}
    cfg = espo_ref.ESPOConfig.from_dict(case.config)
    inp = case.inputs
    m = np.asarray(inp["mask"]).astype(bool)
    B, T = m.shape
    lp = np.where(m, inp["logp"], 0.0)
    olp = np.where(m, inp["old_logp"], 0.0)
    e = np.where(m, inp["entropy"], 0.0)
    if r["entropy_clamp"]:
        e = np.maximum(e, 0.0)
    adv = np.asarray(inp["advantages"], dtype=np.float64)
    adv = np.where(m, adv[:, None] if adv.ndim == 1 else adv, 0.0)
    log_v_max = cfg.log_vocab

    if cfg.grouping == "top_fraction":
        groups = _top_fraction_groups(e, m, cfg.top_fraction, r["n_high"], r["ties"], r["threshold"])
    else:
        groups = espo_ref.entropy_groups(np.maximum(e, 0.0), m, cfg)
    trained = m & (groups == 0) if cfg.drop_low_group else m.copy()

    # per-group sums through a key per (response, group)
    key = np.where(m, np.arange(B)[:, None] * (T + 1) + groups, -1)
    _, inv = np.unique(key[m], return_inverse=True)
    inv = inv.reshape(-1)

    def per_group(values, where=m):
        sums = np.bincount(inv, weights=np.where(where, values, 0.0)[m])
        counts = np.bincount(inv, weights=where[m].astype(np.float64))
        out = np.zeros((B, T))
        out[m] = (sums / np.maximum(counts, 1))[inv]
        return out

    def per_group_count(where):
        counts = np.bincount(inv, weights=where[m].astype(np.float64))
        out = np.zeros((B, T))
        out[m] = counts[inv]
        return out

    log_r = lp - olp
    log_s = per_group(log_r)
    unit = {"nats": 1.0, "bits": 1.0 / LN2, "unnormalised": log_v_max}[r["entropy_unit"]]
    k_trained = _groups_per_row(groups, trained)
    if r["eps_scope"] == "group":
        eps_base = per_group(e)
    elif r["eps_scope"] == "token":
        eps_base = e
    elif r["eps_scope"] == "token_over_groups":
        eps_base = e / np.maximum(k_trained, 1)[:, None]
    else:  # response
        eps_base = np.where(m, (e.sum(axis=1) / np.maximum(m.sum(axis=1), 1))[:, None], 0.0)
    if cfg.clip == "fixed":
        eps_low = np.where(m, cfg.eps_low, 0.0)
        eps_high = np.where(m, cfg.eps_high, 0.0)
    else:
        if cfg.eps_reading == "token_over_groups" and r["eps_scope"] == "group":
            eps_base = e / np.maximum(k_trained, 1)[:, None]
        eps_high = eps_low = np.where(m, cfg.alpha * eps_base * unit / log_v_max, 0.0)

    form = r["ratio_form"] or cfg.ratio_form
    log_value = np.where(m, log_s + (log_r if form == "literal" else 0.0), 0.0)
    clamp = cfg.log_ratio_clamp if r["clamp"] else None
    if clamp is None:
        clamped = np.zeros_like(m)
    else:
        clamped = m & ((log_value > clamp) if r["clamp_rule"] == "gt" else (log_value >= clamp))
    if clamp is not None:
        log_value = np.minimum(log_value, clamp)
    with np.errstate(over="ignore"):
        v = np.where(m, np.exp(log_value), 0.0)
    if not np.all(np.isfinite(v)):
        return None
    if r["clip_mask"] == "strict":
        ch = trained & (adv > 0) & (v > 1.0 + eps_high)
        cl = trained & (adv < 0) & (v < 1.0 - eps_low)
    else:
        ch = trained & (adv > 0) & (v >= 1.0 + eps_high)
        cl = trained & (adv < 0) & (v <= 1.0 - eps_low)
    clipped_value = np.minimum(np.maximum(v, 1.0 - eps_low), 1.0 + eps_high)
    surrogate = np.where(trained, np.where(ch | cl, clipped_value * adv, v * adv), 0.0)

    responses = int(m.any(axis=1).sum()) if r["agg"] != "count-empty" else B
    size = per_group_count(trained)
    if r["agg"] in ("espo", "count-empty", "k2"):
        k = np.full(B, 2.0) if r["agg"] == "k2" else np.maximum(k_trained, 1)
        weight = np.where(trained, 1.0 / (responses * k[:, None] * np.maximum(size, 1)), 0.0)
    elif r["agg"] == "token-mean":
        weight = np.where(trained, 1.0 / max(int(trained.sum()), 1), 0.0)
    else:  # seq-mean-token-mean
        length = trained.sum(axis=1, keepdims=True)
        weight = np.where(trained, 1.0 / (responses * np.maximum(length, 1)), 0.0)

    passes = trained & ~ch & ~cl & (~clamped if r["grad"] != "through-clamp" else True)
    token_grad = np.where(passes, -weight * adv * v, 0.0)
    if r["grad"] == "sequence":  # d s_tau / d logp_t = s_tau / |tau|: spread over the group
        sums = np.bincount(inv, weights=token_grad[m])
        counts = np.bincount(inv)
        grad = np.zeros((B, T))
        grad[m] = (sums / counts)[inv] * (form != "literal") + token_grad[m] * (form == "literal")
    else:
        grad = token_grad
    clipped = ch | cl
    tokens = max(int(m.sum()), 1)
    return {
        "loss": float(-np.sum(weight * surrogate)), "grad": grad, "groups": groups.astype(np.int64),
        "eps": eps_high, "log_ratio": np.where(m, log_s, 0.0), "ratio": v,
        "clipped_high": ch, "clipped_low": cl, "weight": weight,
        "metrics": {"clipfrac": clipped.sum() / tokens, "clipfrac_high": ch.sum() / tokens,
                    "clipfrac_low": cl.sum() / tokens, "trained_tokens": float(trained.sum())},
    }


def _groups_per_row(groups: np.ndarray, trained: np.ndarray) -> np.ndarray:
    B, T = groups.shape
    present = np.zeros((B, T + 1), dtype=bool)
    rows, cols = np.nonzero(trained)
    present[rows, groups[rows, cols]] = True
    return present.sum(axis=1).astype(np.float64)


# --- which readings apply to a case -------------------------------------------------------


def _espo(needs_top_fraction=False, needs_adaptive=False, skip_if=None, **switches):
    def evaluate(case: GoldenCase):
        cfg = case.config or {}
        if needs_top_fraction and cfg.get("grouping", "top_fraction") != "top_fraction":
            return None
        if needs_adaptive and cfg.get("clip", "adaptive") != "adaptive":
            return None
        if skip_if and all(cfg.get(k, d) == v for k, (v, d) in skip_if.items()):
            return None
        if case.function == "espo_loss":
            return espo_reading(case, **switches)
        if case.function == "entropy_groups":
            out = _component_reading(case, **switches)
            return None if out is None else {"groups": out["groups"]}
        return None
    return evaluate


def _component_reading(case: GoldenCase, **switches):
    """entropy_groups through the ESPO reading (logp = old_logp = 0, advantage 0)."""
    inp = dict(case.inputs)
    shape = inp["mask"].shape
    inp.update(logp=np.zeros(shape), old_logp=np.zeros(shape), advantages=np.zeros(shape[0]))
    return espo_reading(GoldenCase(case.case_id, "espo_loss", case.clauses, case.dtype, inp, case.config, {},
                                   {}, case.source), **switches)


def _n_high_reading(rule):
    def evaluate(case: GoldenCase):
        if case.function == "high_group_size":
            return {"n_high": _n_high(case.inputs["lengths"], case.kwargs["top_fraction"], rule)}
        return _espo(needs_top_fraction=True, n_high=rule)(case)
    return evaluate


def _advantage_reading(**overrides):
    def evaluate(case: GoldenCase):
        if case.function != "grpo_advantages":
            return None
        inputs = dict(case.inputs)
        kwargs = dict(case.kwargs)
        if overrides.get("all_valid"):
            inputs["valid"] = np.ones_like(inputs["valid"])
        if "ddof" in overrides:
            if kwargs.get("ddof", 1) == overrides["ddof"]:
                return None
            kwargs["ddof"] = overrides["ddof"]
        adv = espo_ref.grpo_advantages(inputs["rewards"], inputs["prompt_ids"], inputs["valid"], **kwargs)
        if overrides.get("singleton_raw"):  # verl: a lone response keeps (R - R) / (1 + eps)... as its score
            ids, valid = inputs["prompt_ids"], inputs["valid"]
            _, prompt = np.unique(ids, return_inverse=True)
            n = np.bincount(prompt.reshape(-1), weights=valid.astype(np.float64))
            lone = valid & (n[prompt.reshape(-1)] == 1)
            if not lone.any():
                return None
            adv = np.where(lone, inputs["rewards"] / (1.0 + kwargs.get("eps", 1e-6)), adv)
        return {"advantages": adv}
    return evaluate


def _baseline_reading(**changes):
    """A baseline loss with a changed config field (an aggregation or clamp reading)."""
    def evaluate(case: GoldenCase):
        if not case.function.endswith("_loss") or case.function == "espo_loss":
            return None
        from .functions import FUNCTIONS

        spec = FUNCTIONS[case.function]
        cfg = spec.make_config(case.config or {})
        if not all(hasattr(cfg, k) for k in changes if k != "count_empty"):
            return None
        fields = {k: v for k, v in changes.items() if k != "count_empty"}
        if fields and all(getattr(cfg, k) == v for k, v in fields.items()):
            return None
        try:
            cfg = cfg.replace(**fields)
            out = spec.reference()(*[case.inputs[n] for n in spec.inputs], cfg)
        except espo_ref.ESPOInputError:
            return None
        result = {"loss": out.loss, "grad": out.grad, "ratio": out.ratio, "weight": out.weight,
                  "clipped_high": out.clipped_high, "clipped_low": out.clipped_low}
        if changes.get("count_empty"):
            m = np.asarray(case.inputs["mask"]).astype(bool)
            if cfg.loss_agg_mode == "token-mean" or m.any(axis=1).all():
                return None
            scale = m.any(axis=1).sum() / m.shape[0]
            result = {"loss": out.loss * scale, "grad": out.grad * scale, "weight": out.weight * scale,
                      "ratio": out.ratio, "clipped_high": out.clipped_high, "clipped_low": out.clipped_low}
        return result
    return evaluate


def _rejects_entropy_band(case: GoldenCase, outcome) -> bool:
    if case.function not in ("espo_loss", "entropy_groups", "group_clip_eps") or "entropy" not in case.inputs:
        return False
    m = np.asarray(case.inputs["mask"]).astype(bool)
    e = case.inputs["entropy"][m]
    log_v = math.log((case.config or {}).get("vocab_size", 2))
    in_band = ((e < 0) | (e > log_v)).any()
    return bool(in_band) and "entropy" in outcome.message


def _padding_leaked(case: GoldenCase, got: dict) -> bool:
    """Non-finite outputs where the reference is finite, on a case whose padding is not finite."""
    if "mask" not in case.inputs:
        return False
    pad = ~np.asarray(case.inputs["mask"]).astype(bool)
    dirty = any(np.asarray(v).shape == pad.shape and not np.all(np.isfinite(np.asarray(v, dtype=np.float64)[pad]))
                for v in case.inputs.values() if np.asarray(v).dtype.kind == "f")
    if not dirty:
        return False
    for name, value in got.items():
        want = case.expected.get(name)
        if name == "metrics" or want is None or isinstance(want, (str, dict)):
            continue
        v, w = np.asarray(value, dtype=np.float64), np.asarray(want, dtype=np.float64)
        if v.shape == w.shape and np.any(~np.isfinite(v) & np.isfinite(w)):
            return True
    return False


_ESPO_FUNCS = ("espo_loss",)
_GROUP_FUNCS = ("espo_loss", "entropy_groups")
_BASE_LOSSES = ("grpo_loss", "dapo_loss", "gspo_loss", "gmpo_loss", "cispo_loss")

MISREADINGS: tuple[Misreading, ...] = (
    Misreading("n-high-floor", "ESPO-GROUP-TOPFRAC", "n_high = floor(rho L) instead of ceil",
               _GROUP_FUNCS + ("high_group_size",), _n_high_reading("floor")),
    Misreading("n-high-round", "ESPO-GROUP-TOPFRAC", "n_high = round(rho L) instead of ceil",
               _GROUP_FUNCS + ("high_group_size",), _n_high_reading("round")),
    Misreading("n-high-float32-ceil", "ESPO-GROUP-TOPFRAC",
               "n_high = ceil(rho * L) in float32, torch's default (0.3 * 50 gives 16, not 15)",
               _GROUP_FUNCS + ("high_group_size",), _n_high_reading("float32-ceil")),
    Misreading("n-high-float-ceil", "ESPO-GROUP-TOPFRAC",
               "n_high = ceil(rho * L) in floating point (0.28 * 25 = 7.000000000000001 gives 8)",
               _GROUP_FUNCS + ("high_group_size",), _n_high_reading("float-ceil")),
    Misreading("later-ties", "ESPO-GROUP-TOPFRAC", "equal entropies rank the later position first",
               _GROUP_FUNCS, _espo(needs_top_fraction=True, ties="later")),
    Misreading("topk-ties", "ESPO-GROUP-TOPFRAC", "equal entropies resolved the way torch.topk picks them",
               _GROUP_FUNCS, _espo(needs_top_fraction=True, ties="topk")),
    Misreading("quantile-threshold", "ESPO-GROUP-TOPFRAC",
               "high group = entropy >= the (1 - rho) quantile of the response (every tie included)",
               _GROUP_FUNCS, _espo(needs_top_fraction=True, threshold="quantile")),
    Misreading("entropy-bits", "ESPO-ENT-DOMAIN", "entropy in bits (log2) while log V is in nats",
               _ESPO_FUNCS, _espo(needs_adaptive=True, entropy_unit="bits")),
    Misreading("entropy-unnormalised", "ESPO-CLIP", "eps = alpha * mean entropy, not divided by log V",
               _ESPO_FUNCS, _espo(needs_adaptive=True, entropy_unit="unnormalised")),
    Misreading("eps-per-token", "ESPO-CLIP", "eps = alpha e_t / log V per token, not the group mean",
               _ESPO_FUNCS, _espo(needs_adaptive=True, eps_scope="token")),
    Misreading("eps-per-token-over-groups", "ESPO-CLIP-TOKEN",
               "Eq. 8 as printed (alpha e_t / (log V K_i)) where the group mean is pinned",
               _ESPO_FUNCS, _espo(needs_adaptive=True, eps_scope="token_over_groups",
                                  skip_if={"eps_reading": ("token_over_groups", "group_mean")})),
    Misreading("eps-per-response", "ESPO-CLIP", "one eps per response (mean entropy of all its tokens)",
               _ESPO_FUNCS, _espo(needs_adaptive=True, eps_scope="response")),
    Misreading("literal-eq9", "ESPO-RATIO-TOKEN", "Eq. 9 as printed: s_tau * r_t (pi_old in the denominator)",
               _ESPO_FUNCS, _espo(ratio_form="literal", skip_if={"ratio_form": ("literal", "gspo_token")})),
    Misreading("sequence-gradient", "ESPO-RATIO-TOKEN",
               "the group ratio differentiated through Eq. 10 (gradient spread over the group)",
               _ESPO_FUNCS, _espo(grad="sequence")),
    Misreading("token-mean", "ESPO-AGG", "token-mean aggregation over the batch instead of Eq. 5's means",
               _ESPO_FUNCS, _espo(agg="token-mean")),
    Misreading("seq-mean-token-mean", "ESPO-AGG", "mean over responses of the token mean, groups ignored",
               _ESPO_FUNCS, _espo(agg="seq-mean-token-mean")),
    Misreading("k-fixed-2", "ESPO-AGG", "K_i = 2 for every response, even with one non-empty group",
               _ESPO_FUNCS, _espo(agg="k2")),
    Misreading("empty-responses-counted", "ESPO-AGG", "N counts responses without a response token",
               _ESPO_FUNCS, _espo(agg="count-empty")),
    Misreading("no-clamp", "ESPO-RATIO-CLAMP", "no clamp of the log-ratio at log_ratio_clamp",
               _ESPO_FUNCS, _espo(clamp=False)),
    Misreading("clamp-ge", "ESPO-RATIO-CLAMP",
               "a log value exactly at log_ratio_clamp counts as clamped and loses its gradient",
               _ESPO_FUNCS, _espo(clamp_rule="ge")),
    Misreading("gradient-through-clamp", "ESPO-RATIO-CLAMP", "a clamped token keeps its gradient",
               _ESPO_FUNCS, _espo(grad="through-clamp")),
    Misreading("clip-mask-ge", "ESPO-CLIPMASK", "'>=' in the clip mask: tokens on the boundary lose their gradient",
               _ESPO_FUNCS, _espo(clip_mask="ge")),
    Misreading("no-entropy-clamp", "ESPO-ENT-DOMAIN",
               "entropies slightly below 0 used as given (eps can go negative and clip a ratio of 1)",
               _ESPO_FUNCS, _espo(entropy_clamp=False)),
    Misreading("no-entropy-band", "ESPO-ENT-DOMAIN",
               "an entropy inside the tolerance band outside [0, log V] rejected instead of accepted",
               ("espo_loss", "entropy_groups", "group_clip_eps"), lambda case: None, _rejects_entropy_band),
    Misreading("padding-leak", "ESPO-INPUT",
               "NaN or inf where the reference is finite: padding positions (mask 0) reached the arithmetic "
               "(multiply by the mask after a NaN is too late; select with where first)",
               ("espo_loss", "grpo_loss", "dapo_loss", "gspo_loss", "gmpo_loss", "cispo_loss", "entropy_groups",
                "group_clip_eps", "group_log_ratio"), lambda case: None, explains_output=_padding_leaked),
    Misreading("population-std", "ESPO-ADV", "the standard deviation without Bessel's correction (ddof=0)",
               ("grpo_advantages",), _advantage_reading(ddof=0)),
    Misreading("bessel-std", "ESPO-ADV", "Bessel's correction (ddof=1) where the case asks for ddof=0",
               ("grpo_advantages",), _advantage_reading(ddof=1)),
    Misreading("no-valid-mask", "ESPO-ADV", "every response treated as valid (no verifier-failure mask)",
               ("grpo_advantages",), _advantage_reading(all_valid=True)),
    Misreading("singleton-raw-score", "ESPO-ADV", "a prompt's lone response keeps its raw score (verl)",
               ("grpo_advantages",), _advantage_reading(singleton_raw=True)),
    Misreading("agg-token-mean", "BASE-AGG", "token-mean aggregation where the method uses another mode",
               _BASE_LOSSES, _baseline_reading(loss_agg_mode="token-mean")),
    Misreading("agg-seq-mean-token-mean", "BASE-AGG", "seq-mean-token-mean where the method uses another mode",
               _BASE_LOSSES, _baseline_reading(loss_agg_mode="seq-mean-token-mean")),
    Misreading("agg-empty-responses-counted", "BASE-AGG-EMPTY",
               "the sequence means divide by every row, empty responses included",
               _BASE_LOSSES, _baseline_reading(count_empty=True)),
    Misreading("baseline-no-clamp", "BASE-RATIO-CLAMP", "no clamp of the log-ratio",
               _BASE_LOSSES, _baseline_reading(log_ratio_clamp=None)),
    Misreading("gspo-sequence-gradient", "BASE-GSPO", "GSPO's sequence-form gradient where the token form is pinned",
               ("gspo_loss",), _baseline_reading(level="sequence")),
)

BY_NAME = {m.name: m for m in MISREADINGS}


def diagnose(case: GoldenCase, got: dict | None, compared: list[str], raised=None) -> list[Misreading]:
    """The misreadings that reproduce the implementation's outputs (or its error) on a case."""
    from .runner import compare_field

    found = []
    for m in MISREADINGS:
        if case.function not in m.functions:
            continue
        if got is None:
            if raised is not None and m.explains_error is not None and m.explains_error(case, raised):
                found.append(m)
            continue
        if m.explains_output is not None:
            if m.explains_output(case, {k: v for k, v in got.items() if k in compared}):
                found.append(m)
            continue
        try:
            out = m.evaluate(case)
        except Exception:  # noqa: BLE001 - a reading that cannot be evaluated here does not apply
            out = None
        if not out:
            continue
        fields = [f for f in compared if f in out and f in got]
        if not fields:
            continue
        ok = True
        for name in fields:
            value, want = got[name], out[name]
            if name == "metrics":
                keys = [k for k in want if k in value]
                if not keys:
                    continue
                value = {k: value[k] for k in keys}
            if not compare_field(case, name, value, want)["ok"]:
                ok = False
                break
        if ok:
            found.append(m)
    return found
