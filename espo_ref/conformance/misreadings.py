"""[CONF-MISREADINGS] Known misreadings of the spec: named readings of the reference that diagnose a failure.

Each misreading is one plausible wrong reading of a pinned clause (specs/conformance.md,
"Misreadings", lists them). When a case fails, the runner evaluates every misreading that
applies to the case and reports those whose outputs reproduce the implementation's within
the float64 rows of the tolerance table (on the float64 twin of a lower-precision case), and
differ from the reference there: "your outputs match reading later-ties [ESPO-GROUP-TOPFRAC]".
A loss-only adapter thus gets a precise clause, not just [ESPO-OBJ]; a mistake that no reading
reproduces that closely gets no name.

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

from ..tolerances import TOLERANCES, Tolerance, compare
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
    needs_graph: bool = False  # only an implementation that receives autograd tensors can commit it

    def to_json(self) -> dict:
        return {"name": self.name, "clause": self.clause, "summary": self.summary}


# --- ESPO: one switchable form of Eq. 5 ---------------------------------------------------

DEFAULT_READING = dict(n_high="exact", ties="earlier", threshold="rank", entropy_unit="nats",
                       eps_scope="group", ratio_form=None, grad="token", agg="espo", clamp=True, clamp_rule="gt",
                       clamp_on="log", clip_mask="strict", entropy_clamp=True, grouping=None, adv_norm=None,
                       attached=None)

# cleanrl's and most trainers' ``(A - A.mean()) / (A.std() + 1e-8)``
ADV_NORM_EPS = 1e-8


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


def _batch_top_fraction_groups(e: np.ndarray, m: np.ndarray, rho: float, n_rule: str) -> np.ndarray:
    """[ESPO-GROUP-BATCH] ceil(rho N) of the batch's N response tokens by a rule of n_high; ties in
    row-major order."""
    n_high = _n_high(np.array([int(m.sum())]), rho, n_rule)[0]
    key = np.where(m, e, -np.inf).reshape(-1)
    order = np.argsort(-key, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return np.where(m, np.where(rank.reshape(m.shape) < n_high, 0, 1), -1)


def espo_reading(case: GoldenCase, **switches) -> dict | None:
    """[CONF-MISREADINGS] [ESPO-OBJ] Outputs of Eq. 5 on the case under a reading (see DEFAULT_READING
    for the switches; none switched: the reference).

    None when the reading cannot be evaluated on the case (a ratio that overflows, a Bessel std of
    one response) or has no effect there (a constant with no path to the gradient)."""
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

    if r["adv_norm"] is not None:  # advantages re-normalised over the batch's responses inside the loss
        a = np.asarray(inp["advantages"], dtype=np.float64)
        if a.ndim != 1:
            return None
        centred = a - a.mean()
        dof = a.size - r["adv_norm"]
        if dof <= 0:  # torch's Bessel std of one response is NaN: a NaN loss fits no reading
            return None
        a = centred / (math.sqrt(float(np.sum(centred * centred)) / dof) + ADV_NORM_EPS)
        adv = np.where(m, a[:, None], 0.0)

    if r["grouping"] is not None:
        groups = espo_ref.entropy_groups(np.maximum(e, 0.0), m, cfg.replace(grouping=r["grouping"]))
    elif cfg.grouping == "batch_top_fraction" and r["n_high"] != "exact":  # the batch's n_high, misrounded
        groups = _batch_top_fraction_groups(e, m, cfg.top_fraction, r["n_high"])
    elif cfg.grouping == "top_fraction":
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
    unit = {"nats": 1.0, "bits": 1.0 / LN2, "unnormalised": log_v_max, "log2-vocab": LN2}[r["entropy_unit"]]
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
    if form == "token":  # the PPO token ratio r_t where the group ratio belongs
        log_s = log_r
        log_value = np.where(m, log_r, 0.0)
    else:
        log_value = np.where(m, log_s + (log_r if form == "literal" else 0.0), 0.0)
    clamp = cfg.log_ratio_clamp if r["clamp"] else None
    if clamp is None:
        clamped = np.zeros_like(m)
    elif r["clamp_on"] == "ratio":  # min(exp(log value), clamp): the ratio, not its log, clamped
        with np.errstate(over="ignore"):
            raw = np.where(m, np.exp(log_value), 0.0)
        clamped = m & (raw > clamp)
    else:
        clamped = m & ((log_value > clamp) if r["clamp_rule"] == "gt" else (log_value >= clamp))
    if clamp is not None and r["clamp_on"] == "ratio":
        v = np.minimum(raw, clamp)
    else:
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
    if r["attached"] is not None:
        grad = _attached_gradient(r["attached"], grad, inp, cfg, m, weight, adv, np.where(ch | cl, clipped_value, v),
                                  ch, cl, eps_low, eps_high, unit, k_trained, per_group)
        if grad is None:
            return None
    clipped = ch | cl
    tokens = max(int(m.sum()), 1)
    return {
        "loss": float(-np.sum(weight * surrogate)), "grad": grad, "groups": groups.astype(np.int64),
        "eps": eps_high, "log_ratio": np.where(m, log_s, 0.0), "ratio": v,
        "clipped_high": ch, "clipped_low": cl, "weight": weight,
        "metrics": {"clipfrac": clipped.sum() / tokens, "clipfrac_high": ch.sum() / tokens,
                    "clipfrac_low": cl.sum() / tokens, "trained_tokens": float(trained.sum())},
    }


def _attached_gradient(constant, grad, inp, cfg, m, weight, adv, chosen, ch, cl, eps_low, eps_high, unit, k_trained,
                       per_group):
    """[ESPO-OBJ] The gradient of Eq. 5 when ``constant`` is not detached and arrives attached to logp's
    graph as x + (logp - sg[logp]) (the runner's torch adapters pass it so; as old_logp = logp on a
    first update): the torch reference's graph without that detach, differentiated by hand.

    old_logp: the token factor exp(log r_t - sg[log r_t]) has log r_t = logp_t - old_logp_t, whose
    derivative is 1 - 1: no gradient is left.

    entropy: eps_tau = alpha mean_tau(max(e, 0)) / log V (or alpha e_t / (log V K_i)) carries
    d eps / d logp_u = alpha / (log V |tau|) for u in tau (where e_u >= 0, as torch.clamp
    differentiates it) into every clipped token's clip(s) A; a clipped-low token whose eps is 0
    passes none (torch.clamp(s, 1 - eps, 1 + eps) gives its lower bound no gradient when the
    bounds meet).

    advantages: each trained token adds -w_t d surrogate_t / dA = -w_t clip(s)_t (or s_t), at its
    position for per-token advantages, at every position of the row whose logp is finite for
    per-response ones (padding too: the attached zero of a per-response advantage is the row's sum).

    None when the constant has no path to the gradient here (the reading is the reference)."""
    if constant == "old_logp":
        return np.zeros_like(grad)
    if constant == "entropy":
        if cfg.clip != "adaptive":
            return None
        # torch.clamp(s, 1 - eps, 1 + eps) sends no gradient to its lower bound when the bounds meet (eps = 0)
        low = cl & (1.0 - eps_low < 1.0 + eps_high)
        q = -weight * adv * (ch.astype(np.float64) - low.astype(np.float64))  # d loss / d eps_t
        scale = cfg.alpha * unit / cfg.log_vocab
        raw = np.asarray(inp["entropy"], dtype=np.float64)
        passes = m & (np.where(m, raw, -1.0) >= 0.0)
        if cfg.eps_reading == "token_over_groups":
            de = q * scale / np.maximum(k_trained, 1)[:, None]
        else:
            de = scale * per_group(q)
        return grad + np.where(passes, de, 0.0)
    q = np.where(m, -weight * chosen, 0.0)  # d loss / d A_t
    a = np.asarray(inp["advantages"])
    if a.ndim == 2:
        return grad + q
    finite = np.isfinite(np.asarray(inp["logp"], dtype=np.float64))
    return grad + np.where(finite, q.sum(axis=1, keepdims=True), 0.0)


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
        if (case.config or {}).get("grouping", "top_fraction") not in ("top_fraction", "batch_top_fraction"):
            return None
        return _espo(n_high=rule)(case)
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
        if fields.get("loss_agg_mode", "seq-mean-token-sum-norm") != "seq-mean-token-sum-norm":
            fields["max_len"] = None  # only seq-mean-token-sum-norm takes one
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
    Misreading("ppo-token-ratio", "ESPO-RATIO",
               "the PPO token ratio r_t = exp(logp_t - old_logp_t) where Eq. 10's group ratio s_tau belongs",
               _ESPO_FUNCS, _espo(ratio_form="token")),
    Misreading("adv-batch-renorm", "ESPO-ADV",
               "advantages re-normalised over the batch inside the loss: (A - mean A) / (std A + 1e-8), std "
               "without Bessel's correction (numpy's default), over the B responses",
               _ESPO_FUNCS, _espo(adv_norm=0)),
    Misreading("adv-batch-renorm-bessel", "ESPO-ADV",
               "advantages re-normalised over the batch inside the loss: (A - mean A) / (std A + 1e-8), std "
               "with Bessel's correction (torch's default), over the B responses",
               _ESPO_FUNCS, _espo(adv_norm=1)),
    Misreading("batch-top-fraction", "ESPO-GROUP-TOPFRAC",
               "the top fraction taken over the whole batch (ceil(rho N) of all N response tokens ranked "
               "together) instead of per response",
               _GROUP_FUNCS, _espo(needs_top_fraction=True, grouping="batch_top_fraction")),
    Misreading("old-logp-not-detached", "ESPO-OBJ",
               "old_logp not detached: with old_logp on logp's graph (a first update) log r_t = logp_t - "
               "old_logp_t has no derivative and the gradient vanishes",
               _ESPO_FUNCS, _espo(attached="old_logp"), needs_graph=True),
    Misreading("entropy-not-detached", "ESPO-OBJ",
               "entropy not detached: eps_tau = alpha mean_tau(e) / log V carries a gradient into every clipped "
               "token's clip(s) A",
               _ESPO_FUNCS, _espo(needs_adaptive=True, attached="entropy"), needs_graph=True),
    Misreading("advantages-not-detached", "ESPO-OBJ",
               "advantages not detached: each trained token adds -w_t clip(s)_t (d surrogate / dA) to the "
               "gradient of its advantage's positions",
               _ESPO_FUNCS, _espo(attached="advantages"), needs_graph=True),
    Misreading("eps-over-log2-vocab", "ESPO-CLIP",
               "eps normalised by log2(V) while the entropy is in nats: eps = alpha e ln 2 / ln V",
               _ESPO_FUNCS, _espo(needs_adaptive=True, entropy_unit="log2-vocab")),
    Misreading("ratio-clamped", "ESPO-RATIO-CLAMP",
               "the ratio clamped at log_ratio_clamp (min(exp(log s), c)) instead of its log (exp(min(log s, c)))",
               _ESPO_FUNCS, _espo(clamp_on="ratio", skip_if={"log_ratio_clamp": (None, 10.0)})),
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


def float64_tolerance() -> dict[str, Tolerance]:
    """[CONF-MISREADINGS] The tolerance a reading must reproduce an implementation within: the
    float64 rows of the table, whatever the case's dtype."""
    return {kind: TOLERANCES[("numpy", "float64", kind)] for kind in ("value", "grad")}


def agrees(name: str, value, want, tolerance: dict[str, Tolerance]) -> bool:
    """[CONF-MISREADINGS] One output against another within ``tolerance``: integer and boolean
    outputs exactly, metrics on their common keys, arrays elementwise (|got - want| <= atol +
    rtol |want|, same shape; a NaN expected value agrees with nothing)."""
    if name == "metrics":
        keys = [k for k in want if k in value]
        return compare([value[k] for k in keys], [want[k] for k in keys], tolerance["value"])["ok"]
    got, ref = np.asarray(value), np.asarray(want)
    if got.shape != ref.shape:
        return False
    if ref.dtype.kind in "biu" or got.dtype.kind in "biu":
        with np.errstate(invalid="ignore"):
            return bool(np.all(got.astype(np.float64) == ref.astype(np.float64)))
    return compare(got, ref, tolerance["grad" if name == "grad" else "value"])["ok"]


def diagnose(case: GoldenCase, got: dict | None, compared: list[str], raised=None, *,
             tolerance: dict[str, Tolerance] | None = None, backend: str | None = None) -> list[Misreading]:
    """[CONF-MISREADINGS] The misreadings that reproduce the implementation's outputs (or its error) on a case.

    A reading is named only when its outputs agree with ``got`` within ``tolerance`` (None: the
    float64 rows of the table, never the case's own looser rows) on every compared field it
    produces, and differ from the reference (``case.expected``) on at least one of them: a
    reading that equals the reference there explains nothing. Call it with the float64 twin of a
    lower-precision case (the runner's ``float64_twin``) and the implementation's outputs on that twin; a
    float32 or bfloat16 implementation's outputs on the case itself reproduce no float64 reading.
    ``backend="numpy"`` leaves out the readings only a torch implementation can commit (a
    constant not detached). The symptom readings (padding-leak, no-entropy-band) are judged by
    their own test."""
    tol = tolerance or float64_tolerance()
    found = []
    for m in MISREADINGS:
        if case.function not in m.functions or (m.needs_graph and backend == "numpy"):
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
        fields = [f for f in compared if f in out and f in got and
                  (f != "metrics" or any(k in got[f] for k in out[f]))]
        if not fields:
            continue
        if not all(agrees(f, got[f], out[f], tol) for f in fields):
            continue
        reference = [f for f in fields if f in case.expected]
        if reference and all(agrees(f, out[f], case.expected[f], tol) for f in reference):
            continue  # the reading is the reference on what was compared: a coincidence, not a cause
        found.append(m)
    return found
