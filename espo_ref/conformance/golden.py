"""[CONF-CASES] Golden vectors: the generated and hand-worked cases, their files and their manifest.

Generated cases come from fixed seeds; their expected outputs are the numpy reference's,
and the test suite checks every one of them against an independent loop-based oracle.
Hand-worked cases are read from the spec's tables (exact values worked by hand).

    python -m espo_ref.conformance.golden          # regenerate espo_ref/conformance/data/
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .. import SPEC_VERSION
from ..tolerances import TOLERANCES
from .arrays import checksum, decode, encode, round_to_dtype
from .functions import FUNCTIONS, reference_outputs, required_options

DATA_DIR = Path(__file__).resolve().parent / "data"
MANIFEST = "manifest.json"

VOCABS = (16, 1000, 151_936)


@dataclass
class GoldenCase:
    """One case: a function, its inputs and config, the expected outputs and the tolerance."""

    case_id: str
    function: str
    clauses: list[str]
    dtype: str
    inputs: dict[str, np.ndarray]
    config: dict | None
    kwargs: dict
    expected: dict[str, Any]
    source: str

    @property
    def requires(self) -> list[str]:
        """The options beyond the defaults this case needs (empty: in the core profile)."""
        return required_options(self.function, self.config, self.kwargs)

    def tolerance(self) -> dict:
        backend = "numpy" if self.dtype == "float64" else "torch"
        out = {}
        for kind in ("value", "grad"):
            tol = TOLERANCES[(backend, self.dtype, kind)]
            out[kind] = {"rtol": tol.rtol, "atol": tol.atol}
        return out

    def to_json(self) -> dict:
        expected: dict[str, Any] = {}
        for key, value in self.expected.items():
            if isinstance(value, np.ndarray):
                expected[key] = encode(value)
            elif isinstance(value, dict):
                expected[key] = {k: _float(v) for k, v in value.items()}
            elif isinstance(value, str):
                expected[key] = value
            else:
                expected[key] = _float(value)
        return {
            "id": self.case_id,
            "function": self.function,
            "clauses": self.clauses,
            "spec_version": SPEC_VERSION,
            "dtype": self.dtype,
            "config": self.config,
            "kwargs": {k: _float(v) if isinstance(v, float) else v for k, v in self.kwargs.items()},
            "inputs": {k: encode(v, self.dtype if v.dtype.kind == "f" else None) for k, v in self.inputs.items()},
            "expected": expected,
            "requires": self.requires,
            "tolerance": self.tolerance(),
            "source": self.source,
        }

    @classmethod
    def from_json(cls, obj: dict) -> "GoldenCase":
        expected: dict[str, Any] = {}
        for key, value in obj["expected"].items():
            if isinstance(value, dict) and "dtype" in value:
                expected[key] = decode(value)
            elif isinstance(value, dict):
                expected[key] = {k: _unfloat(v) for k, v in value.items()}
            elif key == "error":
                expected[key] = value
            else:
                expected[key] = _unfloat(value)
        return cls(
            case_id=obj["id"], function=obj["function"], clauses=list(obj["clauses"]),
            dtype=obj["dtype"], inputs={k: decode(v) for k, v in obj["inputs"].items()},
            config=obj["config"], kwargs=dict(obj["kwargs"]), expected=expected, source=obj["source"],
        )


def _float(v):
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


def _unfloat(v):
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(v, v) if isinstance(v, str) else v


# --- random inputs ------------------------------------------------------------------------


def _mask(rng: np.random.Generator, B: int, T: int) -> np.ndarray:
    """Right-padded rows of random length, with an empty row, L = 1 rows and holes."""
    lengths = rng.integers(0, T + 1, size=B)
    lengths[rng.integers(B)] = max(T, 1)
    if B > 2:
        lengths[rng.integers(B)] = 1
    if B > 3 and rng.random() < 0.5:
        lengths[rng.integers(B)] = 0
    mask = np.arange(T)[None, :] < lengths[:, None]
    if rng.random() < 0.3:  # a non-contiguous response
        row = int(np.argmax(lengths))
        if lengths[row] > 2:
            mask[row, rng.integers(1, lengths[row] - 1)] = False
    if not mask.any():
        mask[0, 0] = True
    return mask


def _entropy(rng: np.random.Generator, shape, vocab: int, ties: bool) -> np.ndarray:
    log_v = math.log(vocab)
    if ties:  # a few values only, with the bounds among them
        levels = np.array([0.0, 0.25, 0.5, 0.5, 0.75, 1.0]) * log_v
        return rng.choice(levels, size=shape)
    return rng.uniform(0.0, log_v, size=shape)


def _prompt_ids(rng: np.random.Generator, B: int) -> np.ndarray:
    group = int(rng.integers(1, 5))
    return np.arange(B) // group


def _advantages(rng: np.random.Generator, B: int, T: int, kind: str) -> np.ndarray:
    if kind == "token":  # per-token advantages: the stop-gradient matters
        return rng.normal(size=(B, T))
    if kind == "zero":
        return np.zeros(B)
    rewards = rng.integers(0, 2, size=B).astype(np.float64) + rng.normal(0, 0.1, size=B)
    from .. import grpo_advantages

    adv = grpo_advantages(rewards, _prompt_ids(rng, B))
    if not np.any(adv):
        adv = rng.normal(size=B)
    return adv


def _log_probs(rng: np.random.Generator, B: int, T: int, scale: float, clamp_rows: bool):
    old = -rng.exponential(1.0, size=(B, T))
    new = old + rng.normal(0.0, scale, size=(B, T))
    if clamp_rows:  # drive one response far above the clamp of the log-ratio
        new[rng.integers(B)] += 12.0
    return new, old


def _largest_at_most(x: float, dtype: str) -> float:
    """The largest value representable in dtype that is <= x (keeps entropies <= log V)."""
    r = float(round_to_dtype(np.array(x), dtype))
    while r > x:
        r = float(round_to_dtype(np.array(r - abs(r) * 2.0 ** -9), dtype)) if dtype == "bfloat16" else float(
            np.nextafter(np.float32(r), np.float32(0)))
    return r


def _nan_padding(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask, x, np.nan)


# --- the case matrix ----------------------------------------------------------------------

ESPO_VARIANTS: list[tuple[str, dict, list[str]]] = [
    ("default", {}, ["ESPO-GROUP-TOPFRAC", "ESPO-CLIP", "ESPO-RATIO-TOKEN"]),
    ("top30", {"top_fraction": 0.3}, ["ESPO-GROUP-TOPFRAC", "ESPO-CLIP", "ESPO-RATIO-TOKEN"]),
    ("top28", {"top_fraction": 0.28}, ["ESPO-GROUP-TOPFRAC", "ESPO-CLIP", "ESPO-RATIO-TOKEN"]),
    # L = 25 and 50 with rho = 0.28: the float product rho * L lands just above an integer
    ("top28-long", {"top_fraction": 0.28}, ["ESPO-GROUP-TOPFRAC", "ESPO-CLIP", "ESPO-RATIO-TOKEN"]),
    ("alpha10", {"alpha": 0.1, "top_fraction": 0.5}, ["ESPO-GROUP-TOPFRAC", "ESPO-CLIP", "ESPO-RATIO-TOKEN"]),
    ("token-eps", {"eps_reading": "token_over_groups", "alpha": 0.05}, ["ESPO-GROUP-TOPFRAC", "ESPO-CLIP-TOKEN", "ESPO-RATIO-TOKEN"]),
    ("literal", {"ratio_form": "literal"}, ["ESPO-GROUP-TOPFRAC", "ESPO-CLIP", "ESPO-RATIO-LITERAL"]),
    ("batch", {"grouping": "batch_top_fraction"}, ["ESPO-GROUP-BATCH", "ESPO-CLIP", "ESPO-RATIO-TOKEN"]),
    ("ranges", {"grouping": "entropy_ranges", "entropy_edges": [0.3, 0.6, 0.9]}, ["ESPO-GROUP-RANGES", "ESPO-CLIP", "ESPO-RATIO-TOKEN"]),
    ("none", {"grouping": "none"}, ["ESPO-GROUP-NONE", "ESPO-CLIP", "ESPO-RATIO-TOKEN"]),
    ("token", {"grouping": "token"}, ["ESPO-GROUP-TOKEN", "ESPO-CLIP", "ESPO-RATIO-TOKEN"]),
    ("drop-low", {"drop_low_group": True}, ["ESPO-GROUP-TOPFRAC", "ESPO-GROUP-DROPLOW", "ESPO-CLIP", "ESPO-RATIO-TOKEN"]),
    ("fixed-seq", {"clip": "fixed", "eps_low": 3e-4, "eps_high": 4e-4}, ["ESPO-GROUP-TOPFRAC", "ESPO-CLIP-FIXED", "ESPO-RATIO-TOKEN"]),
    ("fixed-token", {"clip": "fixed", "eps_low": 0.2, "eps_high": 0.28}, ["ESPO-GROUP-TOPFRAC", "ESPO-CLIP-FIXED", "ESPO-RATIO-TOKEN"]),
    ("token-fixed", {"grouping": "token", "clip": "fixed", "eps_low": 0.2, "eps_high": 0.2}, ["ESPO-GROUP-TOKEN", "ESPO-CLIP-FIXED", "ESPO-RATIO-TOKEN"]),
    ("no-clamp", {"log_ratio_clamp": None}, ["ESPO-GROUP-TOPFRAC", "ESPO-CLIP", "ESPO-RATIO-TOKEN", "ESPO-RATIO-CLAMP"]),
    # L = 50 with rho = 0.3: float64 0.3 * 50 is 15 but float32 0.3 * 50 is above 15 (a torch ceil gives 16)
    ("top30-long", {"top_fraction": 0.3}, ["ESPO-GROUP-TOPFRAC", "ESPO-CLIP", "ESPO-RATIO-TOKEN"]),
]
COMMON_ESPO_CLAUSES = ["ESPO-RATIO", "ESPO-OBJ", "ESPO-AGG", "ESPO-CLIPMASK", "ESPO-METRICS"]

# Log-ratio noise scales: tiny (inside eps), moderate (clips on both sides), large.
SCALES = (3e-3, 0.05, 0.5)


def _clip_margin(expected: dict, inputs: dict, config: dict, dtype: str) -> bool:
    """True when no decision of the case sits within float32 reach of a boundary."""
    if dtype == "float64":
        return True
    margin = 1e-3  # bfloat16 inputs are exact and computed in float32 (torch backend contract)
    ratio, eps = expected["ratio"], expected["eps"]
    mask = inputs["mask"]
    adv = inputs["advantages"]
    adv = np.broadcast_to(adv[:, None], mask.shape) if adv.ndim == 1 else adv
    live = mask & (adv != 0)
    eps_low = np.full(mask.shape, config.get("eps_low", 3e-4)) if config.get("clip") == "fixed" else eps
    near = live & ((np.abs(ratio - (1 + eps)) < margin * (1 + eps)) | (np.abs(ratio - (1 - eps_low)) < margin))
    clamp = config.get("log_ratio_clamp", 10.0)
    if clamp is not None:
        near |= mask & (np.abs(expected["log_ratio"] - clamp) < 1e-2)
    return not near.any()


def _espo_cases() -> Iterator[GoldenCase]:
    dtypes = [("float64", 4), ("float32", 1), ("bfloat16", 1)]
    for v_index, (name, overrides, clauses) in enumerate(ESPO_VARIANTS):
        for dtype, seeds in dtypes:
            if name.endswith("-long") and dtype != "float64":
                continue  # 50-token rows rarely keep every decision clear of a low-precision boundary
            for seed in range(seeds):
                for attempt in range(200):
                    rng = np.random.default_rng([1, v_index, seed, attempt, len(dtype)])
                    B, T = int(rng.integers(1, 7)), int(rng.integers(1, 17))
                    vocab = VOCABS[seed % len(VOCABS)]
                    mask = _mask(rng, B, T)
                    if name.endswith("-long"):
                        B, T = 3, 50
                        mask = np.arange(T)[None, :] < np.array([25, 50, 25])[:, None]
                    ties = seed % 2 == 0
                    adv_kind = ("response", "token", "response", "zero")[seed % 4] if dtype == "float64" else "response"
                    # one response far above the clamp (seed 1, float64), except without a clamp
                    big_row = dtype == "float64" and seed == 1 and name != "no-clamp"
                    logp, old = _log_probs(rng, B, T, SCALES[(seed + v_index) % 3], big_row)
                    entropy = _entropy(rng, (B, T), vocab, ties)
                    adv = _advantages(rng, B, T, adv_kind)
                    logp, old, entropy, adv = (round_to_dtype(x, dtype) for x in (logp, old, entropy, adv))
                    entropy = np.minimum(entropy, _largest_at_most(math.log(vocab), dtype))
                    if seed == 3:  # padding holds garbage: it must not leak
                        logp, old, entropy = (_nan_padding(x, mask) for x in (logp, old, entropy))
                    config = {"vocab_size": vocab, **overrides}
                    inputs = {"logp": logp, "old_logp": old, "entropy": entropy, "mask": mask, "advantages": adv}
                    expected = reference_outputs(FUNCTIONS["espo_loss"], inputs, config, {})
                    if _clip_margin(expected, inputs, config, dtype):
                        break
                else:
                    raise RuntimeError(f"no well-conditioned draw for espo_loss/{name}/{dtype}/{seed}")
                case_clauses = list(clauses) + COMMON_ESPO_CLAUSES + ["ESPO-INPUT"] * (seed == 3)
                if np.any(inputs["logp"][mask] - inputs["old_logp"][mask] > 5) and "ESPO-RATIO-CLAMP" not in case_clauses:
                    case_clauses.append("ESPO-RATIO-CLAMP")
                yield GoldenCase(f"espo_loss/{name}/{dtype}/{seed}", "espo_loss", case_clauses, dtype,
                                 inputs, config, {}, expected, f"generated: seed [1, {v_index}, {seed}, {attempt}]")


def _component_cases() -> Iterator[GoldenCase]:
    # token_entropy [ESPO-ENT]
    for seed in range(8):
        rng = np.random.default_rng([2, seed])
        V = int(rng.choice([2, 7, 50, 1000]))
        scale = (0.1, 1.0, 10.0, 100.0)[seed % 4]
        logits = rng.normal(0, scale, size=(int(rng.integers(1, 5)), int(rng.integers(1, 6)), V))
        if seed % 3 == 0:
            logits[..., 0] = -np.inf
        temperature = (1.0, 0.7, 1.3, 2.0)[seed % 4]
        inputs = {"logits": logits}
        yield _component("token_entropy", f"token_entropy/{seed}", ["ESPO-ENT"], inputs, None, {"temperature": temperature})
    # high_group_size [ESPO-GROUP-TOPFRAC]: decimal-exact ceil, clamping, L = 0
    for i, rho in enumerate((0.2, 0.28, 0.07, 0.14, 0.56, 0.01, 1.0, 0.3)):
        lengths = np.array([0, 1, 2, 3, 5, 7, 10, 25, 50, 75, 100, 150, 16384], dtype=np.int64)
        yield _component("high_group_size", f"high_group_size/{i}", ["ESPO-GROUP-TOPFRAC"], {"lengths": lengths},
                         None, {"top_fraction": rho})
    # entropy_groups, group_clip_eps, group_log_ratio
    grouping_clauses = {"top_fraction": "ESPO-GROUP-TOPFRAC", "batch_top_fraction": "ESPO-GROUP-BATCH",
                        "entropy_ranges": "ESPO-GROUP-RANGES", "none": "ESPO-GROUP-NONE", "token": "ESPO-GROUP-TOKEN"}
    for g_index, (grouping, clause) in enumerate(grouping_clauses.items()):
        for seed in range(4):
            rng = np.random.default_rng([3, g_index, seed])
            B, T = int(rng.integers(1, 7)), int(rng.integers(1, 30))
            vocab = VOCABS[seed % 3]
            mask = _mask(rng, B, T)
            entropy = _entropy(rng, (B, T), vocab, ties=seed % 2 == 0)
            config = {"vocab_size": vocab, "grouping": grouping, "top_fraction": (0.2, 0.28, 0.5, 0.07)[seed]}
            if grouping == "entropy_ranges":
                config["entropy_edges"] = [0.25, 0.5, 0.75]
            yield _component("entropy_groups", f"entropy_groups/{grouping}/{seed}", ["ESPO-GROUP", clause],
                             {"entropy": entropy, "mask": mask}, config, {})
            groups = FUNCTIONS["entropy_groups"].reference()(entropy, mask, FUNCTIONS["entropy_groups"].make_config(config))
            for reading, eps_clause in (("group_mean", "ESPO-CLIP"), ("token_over_groups", "ESPO-CLIP-TOKEN")):
                cfg = {**config, "eps_reading": reading, "alpha": 0.02}
                yield _component("group_clip_eps", f"group_clip_eps/{grouping}/{reading}/{seed}", [eps_clause],
                                 {"entropy": entropy, "groups": groups}, cfg, {})
            logp, old = _log_probs(rng, B, T, SCALES[seed % 3], False)
            yield _component("group_log_ratio", f"group_log_ratio/{grouping}/{seed}", ["ESPO-RATIO"],
                             {"logp": logp, "old_logp": old, "groups": groups}, None, {})
    # grpo_advantages [ESPO-ADV]
    for seed in range(12):
        rng = np.random.default_rng([4, seed])
        B = int(rng.integers(1, 17))
        rewards = rng.integers(0, 3, size=B).astype(np.float64) * (0.5 if seed % 2 else 1.0)
        prompt_ids = np.sort(rng.integers(0, max(1, B // 3), size=B))
        valid = rng.random(B) > (0.0 if seed < 4 else 0.25)
        kwargs = {"ddof": (1, 0)[seed % 2 if seed >= 6 else 0], "eps": (1e-6, 1e-4, 0.0)[seed % 3]}
        yield _component("grpo_advantages", f"grpo_advantages/{seed}", ["ESPO-ADV"],
                         {"rewards": rewards, "prompt_ids": prompt_ids, "valid": valid}, None, kwargs)


def _component(function, case_id, clauses, inputs, config, kwargs) -> GoldenCase:
    expected = reference_outputs(FUNCTIONS[function], inputs, config, kwargs)
    return GoldenCase(case_id, function, clauses, "float64", inputs, config, kwargs, expected, "generated")


BASELINE_VARIANTS: list[tuple[str, str, dict, list[str]]] = [
    ("grpo_loss", "default", {}, ["BASE-GRPO"]),
    ("grpo_loss", "dual-clip", {"dual_clip": 3.0}, ["BASE-GRPO", "BASE-GRPO-DUALCLIP"]),
    ("grpo_loss", "token-mean", {"loss_agg_mode": "token-mean"}, ["BASE-GRPO", "BASE-AGG"]),
    ("grpo_loss", "token-sum", {"loss_agg_mode": "seq-mean-token-sum"}, ["BASE-GRPO", "BASE-AGG"]),
    ("grpo_loss", "token-sum-norm", {"loss_agg_mode": "seq-mean-token-sum-norm", "max_len": 32}, ["BASE-GRPO", "BASE-AGG"]),
    ("dapo_loss", "default", {}, ["BASE-DAPO"]),
    ("gspo_loss", "default", {}, ["BASE-GSPO"]),
    ("gspo_loss", "wide", {"eps_low": 0.05, "eps_high": 0.05}, ["BASE-GSPO"]),
    ("gspo_loss", "sequence", {"level": "sequence", "eps_low": 0.05, "eps_high": 0.05}, ["BASE-GSPO", "BASE-GSPO-SEQ"]),
    ("gmpo_loss", "default", {}, ["BASE-GMPO"]),
    ("cispo_loss", "default", {}, ["BASE-CISPO"]),
    ("cispo_loss", "tight", {"eps_low": 0.2, "eps_high": 0.28}, ["BASE-CISPO"]),
]


def _baseline_cases() -> Iterator[GoldenCase]:
    for v_index, (function, name, config, clauses) in enumerate(BASELINE_VARIANTS):
        for dtype, seeds in (("float64", 3), ("float32", 1), ("bfloat16", 1)):
            for seed in range(seeds):
                rng = np.random.default_rng([5, v_index, seed, len(dtype)])
                B, T = int(rng.integers(1, 7)), int(rng.integers(1, 17))
                mask = _mask(rng, B, T)
                logp, old = _log_probs(rng, B, T, (0.05, 0.3, 1.0)[seed], False)
                adv = _advantages(rng, B, T, ("response", "token", "response")[seed] if dtype == "float64" else "response")
                logp, old, adv = (round_to_dtype(x, dtype) for x in (logp, old, adv))
                inputs = {"logp": logp, "old_logp": old, "mask": mask, "advantages": adv}
                expected = reference_outputs(FUNCTIONS[function], inputs, config, {})
                yield GoldenCase(f"{function}/{name}/{dtype}/{seed}", function, clauses + ["BASE-METRICS"], dtype,
                                 inputs, dict(config), {}, expected, f"generated: seed [5, {v_index}, {seed}]")


# --- the baselines where the engines read them differently ([BASE-PEERS]) -------------------
#
# Each variant below aims at a clause an engine may compute differently: an empty response
# under every aggregation mode, non-finite padding (engines multiply by the mask after the
# arithmetic), ratios exactly on and just off each clip and dual-clip bound, log-ratios on and
# beyond each clamp, the dual clip on and off. Float64 unless said; bound cases are float64 only.

AGG_MODES = (("token-mean", None), ("seq-mean-token-mean", None), ("seq-mean-token-sum", None),
             ("seq-mean-token-sum-norm", None), ("seq-mean-token-sum-norm", 24))
METHOD_CLAUSES = {"grpo_loss": ["BASE-GRPO"], "dapo_loss": ["BASE-DAPO"], "gspo_loss": ["BASE-GSPO"],
                  "gmpo_loss": ["BASE-GMPO"], "cispo_loss": ["BASE-CISPO"]}
# The log-ratio noise of a random batch: each method's clip is crossed by some tokens, not all.
EDGE_SCALES = {"grpo_loss": 0.3, "dapo_loss": 0.3, "gspo_loss": 5e-4, "gmpo_loss": 0.4, "cispo_loss": 1.0}


def _agg_name(mode: str, max_len: int | None) -> str:
    return "agg-" + mode + ("" if max_len is None else f"-max{max_len}")


def _edge_variants() -> list[tuple[str, str, dict, list[str], str]]:
    """(function, name, config, clauses, kind); kind picks the inputs: "agg" and "padding" random
    batches, "wide" ratios far outside the clip, "bounds" ratios on and next to each bound,
    "clamp" log-ratios on and beyond each clamp (see _edge_cases)."""
    out: list[tuple[str, str, dict, list[str], str]] = []
    for function in ("grpo_loss", "dapo_loss", "gspo_loss", "gmpo_loss", "cispo_loss"):
        levels = [("", {})] + ([("sequence-", {"level": "sequence"})] if function == "gspo_loss" else [])
        for prefix, level in levels:
            extra = ["BASE-GSPO-SEQ"] if level else []
            for mode, max_len in AGG_MODES:
                config = {**level, "loss_agg_mode": mode, **({} if max_len is None else {"max_len": max_len})}
                out.append((function, prefix + _agg_name(mode, max_len), config,
                            extra + ["BASE-AGG", "BASE-AGG-EMPTY"], "agg"))
            out.append((function, prefix + "nonfinite-padding", dict(level), extra + ["BASE-INPUT"], "padding"))
    bounds = ["BASE-METRICS"]
    clamp = ["BASE-RATIO-CLAMP"]
    dual = ["BASE-GRPO-DUALCLIP"]
    for function in ("grpo_loss", "dapo_loss"):
        out += [
            (function, "clip-boundary", {}, bounds, "bounds"),
            (function, "dual-clip-boundary", {"dual_clip": 3.0}, dual + bounds, "bounds"),
            (function, "dual-clip-beyond", {"dual_clip": 3.0}, dual, "wide"),
            (function, "dual-clip-below-clip", {"dual_clip": 1.1}, dual, "wide"),
            (function, "dual-clip-off", {}, dual, "wide"),
            (function, "clamp-boundary", {}, clamp, "clamp"),
            (function, "clamp-boundary-dual-clip", {"dual_clip": 3.0}, clamp + dual, "clamp"),
            (function, "clamp-5", {"log_ratio_clamp": 5.0}, clamp, "clamp"),
            (function, "no-clamp", {"log_ratio_clamp": None}, clamp, "clamp"),
        ]
    out += [
        ("gspo_loss", "clip-boundary", {}, bounds, "bounds"),
        ("gspo_loss", "sequence-clip-boundary", {"level": "sequence"}, ["BASE-GSPO-SEQ"] + bounds, "bounds"),
        ("gspo_loss", "clamp-boundary", {}, clamp, "clamp"),
        ("gspo_loss", "sequence-clamp-boundary", {"level": "sequence"}, ["BASE-GSPO-SEQ"] + clamp, "clamp"),
        ("gspo_loss", "clamp-5", {"log_ratio_clamp": 5.0}, clamp, "clamp"),
        ("gspo_loss", "sequence-no-clamp", {"level": "sequence", "log_ratio_clamp": None},
         ["BASE-GSPO-SEQ"] + clamp, "clamp"),
        ("gmpo_loss", "clip-boundary", {}, bounds, "bounds"),
        ("gmpo_loss", "clip-boundary-narrow", {"eps_low": 0.1, "eps_high": 0.2}, bounds, "bounds"),
        ("gmpo_loss", "beyond-token-clamp", {}, clamp, "clamp"),
        ("gmpo_loss", "wide-ratios", {}, [], "wide"),
        ("cispo_loss", "cap-boundary", {}, bounds, "bounds"),
        ("cispo_loss", "bounds-boundary", {"eps_low": 0.2, "eps_high": 0.28}, bounds, "bounds"),
        ("cispo_loss", "lower-bound", {"eps_low": 0.5}, bounds, "wide"),
        ("cispo_loss", "no-lower-bound", {"eps_low": 2.0}, bounds, "wide"),
        ("cispo_loss", "cap-2", {"eps_high": 1.0}, bounds, "wide"),
        ("cispo_loss", "clamp-boundary", {}, clamp, "clamp"),
        ("cispo_loss", "clamp-5", {"log_ratio_clamp": 5.0}, clamp, "clamp"),
        ("cispo_loss", "clamp-uncapped", {"eps_high": 1e12}, clamp, "clamp"),
        ("cispo_loss", "no-clamp-uncapped", {"eps_high": 1e12, "log_ratio_clamp": None}, clamp, "clamp"),
        # per-token advantages of both signs inside responses whose s is clipped (an engine that
        # replaces A_t by the response's mean advantage differs only there); the sequence form, so
        # that the token form's gradient is not a second difference
        ("gspo_loss", "sequence-mixed-sign-advantages", {"level": "sequence", "loss_agg_mode": "token-mean"},
         ["BASE-GSPO-SEQ", "BASE-AGG"], "mixed"),
        ("gspo_loss", "sequence-mixed-sign-advantages-seq-mean", {"level": "sequence"}, ["BASE-GSPO-SEQ"], "mixed"),
    ]
    return out


def _edge_mask(rng: np.random.Generator, B: int, T: int) -> np.ndarray:
    """Rows of random response patterns (B >= 4, T >= 3), among them an empty row, a full row,
    a non-contiguous row (first and last tokens with a hole between) and a one-token row."""
    mask = rng.random((B, T)) < 0.6
    empty, full, holed, single = (int(i) for i in rng.permutation(B)[:4])
    mask[empty] = False
    mask[full] = True
    mask[holed] = True
    mask[holed, 1 + rng.permutation(T - 2)[: int(rng.integers(1, T - 1))]] = False
    mask[single] = False
    mask[single, rng.integers(T)] = True
    return mask


def _garbage_padding(x: np.ndarray, mask: np.ndarray, shift: int) -> np.ndarray:
    """x with NaN, +inf and -inf in turn at its padding positions (row-major, ``shift`` turns the
    cycle so that logp, old_logp and the advantages hold different values at one position)."""
    out = np.array(x, dtype=np.float64)
    cycle = (np.nan, np.inf, -np.inf)
    for k, index in enumerate(np.argwhere(~mask)):
        out[tuple(index)] = cycle[(k + shift) % 3]
    return out


def _edge_advantages(rng: np.random.Generator, B: int, T: int, per_token: bool) -> np.ndarray:
    """Random advantages of both signs, a few exactly 0 (GMPO gives A = 0 tokens no log-ratio)."""
    adv = rng.normal(size=(B, T) if per_token else B)
    adv[rng.random(adv.shape) < 0.1] = 0.0
    return adv


def _random_batch(rng, function, dtype, per_token, wide=False):
    B, T = int(rng.integers(4, 8)), int(rng.integers(3, 17))
    mask = _edge_mask(rng, B, T)
    scale = 1.5 if wide else EDGE_SCALES[function] * (1.0, 0.3)[int(rng.integers(2))]
    logp, old = _log_probs(rng, B, T, scale, False)
    adv = _edge_advantages(rng, B, T, per_token)
    logp, old, adv = (round_to_dtype(x, dtype) for x in (logp, old, adv))
    return {"logp": logp, "old_logp": old, "mask": mask, "advantages": adv}


def _with_garbage(inputs: dict) -> dict:
    """Non-finite values in every padding position of logp, old_logp and [B, T] advantages; a
    per-response advantage of an empty response (it applies to no response token) is NaN."""
    mask = inputs["mask"]
    out = dict(inputs, logp=_garbage_padding(inputs["logp"], mask, 0),
               old_logp=_garbage_padding(inputs["old_logp"], mask, 1))
    adv = inputs["advantages"]
    if adv.ndim == 2:
        out["advantages"] = _garbage_padding(adv, mask, 2)
    else:
        out["advantages"] = np.where(mask.any(axis=1), adv, np.nan)
    return out


# --- inputs on a bound, exactly or a few ulps off ----------------------------------------------

_ULP_CLOSE = 0.02  # the true exp of a bound's log-ratio lies within 2% of an ulp of the bound


def _exp_exact_near(d: float) -> Decimal:
    """exp(d) to 50 significant digits (d is exact as a Decimal)."""
    with localcontext() as ctx:
        ctx.prec = 50
        return Decimal(d).exp()


def _ratio_bound_near(value: float) -> tuple[float, float]:
    """(r, d): a float r near ``value`` and a float64 log-ratio d whose true exp lies within 2% of
    an ulp of r, so that any exp within 0.48 ulp returns r exactly. Near some values (0.8, 3, 5)
    the exps of neighbouring floats d fall on a few fixed fractions of an ulp, none close to a
    float: the search then moves by 1e-7 relative steps until one is (the bound is set onto r)."""
    for m in range(200):
        base = value * (1.0 + ((m + 1) // 2) * (-1) ** m * 1e-7)
        d0 = math.log(base)
        for k in range(400):
            d = float(d0 + ((k + 1) // 2) * (-1) ** k * np.spacing(d0))
            true = _exp_exact_near(d)
            r = float(true)
            if abs(true - Decimal(r)) < Decimal(float(np.spacing(r))) * Decimal(_ULP_CLOSE):
                return r, d
    raise RuntimeError(f"no exactly reachable ratio near {value!r}")


def _log_ratio_off(r: float, side: int) -> float:
    """A float64 log-ratio whose true exp lies 4 to 16 ulps of r above (side +1) or below (side -1)
    r: just off the bound, on a side no exp can flip."""
    ulp = Decimal(float(np.spacing(r)))
    d0 = math.log(r + side * 8 * float(np.spacing(r)))
    for k in range(4000):
        d = float(d0 + ((k + 1) // 2) * (-1) ** k * np.spacing(d0))
        if 4 <= side * (_exp_exact_near(d) - Decimal(r)) / ulp <= 16:
            return d
    raise RuntimeError(f"no log-ratio just off {r!r} (side {side})")


def _pair_with_difference(rng: np.random.Generator, d: float) -> tuple[float, float]:
    """(logp, old_logp), both < 0, with logp - old_logp == d exactly in float64: the one of larger
    magnitude is -(|d| + x) rounded, the other that plus d, exact because it is a multiple of
    ulp(d) smaller than |d| (and the difference of the two is then d exactly)."""
    x = abs(d) * float(rng.uniform(0.05, 0.5))
    if d > 0:
        old = -(d + x)
        logp = old + d
    else:
        logp = -(-d + x)
        old = logp - d
    assert logp - old == d and logp < 0 and old < 0, (d, logp, old)
    return logp, old


def _bound_targets(function: str, config: dict) -> list[tuple[str, float, bool]]:
    """(what, value, in_log_space) of every bound of the method's clip that an input can sit on."""
    cfg = FUNCTIONS[function].make_config(config or {})
    if function == "gmpo_loss":
        return [("high", cfg.eps_high, True), ("low", -cfg.eps_low, True)]
    out = [("high", 1.0 + cfg.eps_high, False)]
    if 1.0 - cfg.eps_low > 0:
        out.append(("low", 1.0 - cfg.eps_low, False))
    if getattr(cfg, "dual_clip", None) is not None:
        out.append(("dual", float(cfg.dual_clip), False))
    return out


def _exact_bounds(function: str, config: dict) -> tuple[dict, list[list[float]]]:
    """The config with each ratio bound moved onto a float that exp reaches exactly (a few ulps
    from the given one), and per bound the log-ratios exactly on it, just above and just below.
    GMPO's bounds are on the log-ratio itself: a difference lands on them exactly."""
    config = dict(config)
    diffs = []
    for what, value, in_log in _bound_targets(function, config):
        if in_log:
            diffs.append([value] + [float(value + side * 8 * np.spacing(value)) for side in (1, -1)])
            continue
        r, d = _ratio_bound_near(value)
        if what == "dual":
            config["dual_clip"] = r
        else:  # the shortest decimal offset that puts the bound on r (the given one where it does)
            sign = 1.0 if what == "high" else -1.0
            key = "eps_high" if what == "high" else "eps_low"
            given = getattr(FUNCTIONS[function].make_config(config), key)
            offsets = [given] + [round(sign * (r - 1.0), n) for n in range(1, 18)] + [sign * (r - 1.0)]
            offset = next(e for e in offsets if 1.0 + sign * e == r)
            if offset != given or key in config:
                config[key] = offset
        diffs.append([d] + [_log_ratio_off(r, side) for side in (1, -1)])
    return config, diffs


def _bounds_batch(rng, function, diffs, per_token):
    """Tokens (GSPO: responses) whose ratio sits exactly on each clip bound, and just off it, for
    advantages of both signs; holes in the rows and an empty row as elsewhere."""
    flat = [d for ds in diffs for d in ds]
    flat = [flat[i] for i in rng.permutation(len(flat))]
    # per-token advantages: a token's sign flipped in both copies, so each log-ratio still meets both signs
    flips = per_token & (rng.random(len(flat)) < 0.5)
    pairs = rng.random(len(flat)) < 0.5
    rows: list[list[tuple[float, float]]] = []  # per row: (log-ratio, advantage) of its tokens
    for sign in (1.0, -1.0):
        if function == "gspo_loss":  # one bound per response: one token, or two equal log-ratios
            for d, flip, pair in zip(flat, flips, pairs):
                a = sign * float(rng.uniform(0.5, 2.0))
                rows.append([(d, a), (d, -a if flip else a)] if pair else [(d, a)])
        else:
            row = []
            for d, flip in zip(flat, flips):
                a = sign * float(rng.uniform(0.5, 2.0))
                row.append((d, -a if flip else a))
            rows.append(row)
    rows.append([])
    return _assemble(rng, rows, per_token)


def _mixed_sign_batch(rng, function, config):
    """GSPO responses (no empty one) of 2 to 6 tokens whose mean log-ratio lies outside the clip
    range on either side (a few inside it), each clipped one with per-token advantages of both
    signs and a mean advantage clear of 0; finite padding."""
    cfg = FUNCTIONS[function].make_config(config or {})
    high, low = math.log1p(cfg.eps_high), math.log1p(-cfg.eps_low)
    rows = []
    for kind in rng.permutation(["high", "high", "low", "low", "inside", "high", "low"]):
        n = int(rng.integers(2, 7))
        if kind == "inside":
            m = float(rng.uniform(0.2 * low, 0.2 * high))
        else:
            bound = high if kind == "high" else low
            m = bound * float(rng.uniform(3.0, 60.0))
        noise = rng.normal(0.0, 0.01, size=n)
        diffs = m + noise - noise.mean()
        while True:
            adv = rng.uniform(0.5, 2.0, size=n) * np.where(rng.random(n) < 0.5, 1.0, -1.0)
            if kind == "inside" or ((adv > 0).any() and (adv < 0).any() and abs(adv.mean()) > 0.1):
                break
        rows.append([(float(d), float(a)) for d, a in zip(diffs, adv)])
    return _assemble(rng, rows, True)


def _clamp_differences(function: str, config: dict) -> list[list[float]]:
    """Rows of log-ratios on, just inside, just beyond and far beyond the method's clamp."""
    cfg = FUNCTIONS[function].make_config(config or {})
    c = getattr(cfg, "log_ratio_clamp", None)
    if c is None:
        c = 20.0 if function != "gspo_loss" else 10.0  # what an engine with a clamp would cut
    off = 16 * float(np.spacing(c))
    if function == "gspo_loss":  # the response mean, clamped above only
        return [[c], [c - 0.5, c + 0.5], [c + off], [c - off], [c + 1, c + 2, c + 3], [-c - 5.0, -c - 5.0],
                [c + 15.0], [0.5 * c, -0.25 * c]]
    if function == "gmpo_loss":  # no clamp: far beyond any token clamp, both signs
        return [[25.0, -0.125], [-25.0, 0.25], [30.0], [-30.0, 0.0625], [c, -c, c + 5]]
    return [[c, -c, c + off, -c - off, c - off, -c + off], [c + 5.0, -c - 5.0, 0.25, -0.5],
            [c + 5.0, -c - 5.0, c, -c]]


def _clamp_batch(rng, function, config, per_token):
    rows = []
    for diffs in _clamp_differences(function, config):
        sign = 1.0 if rng.random() < 0.5 else -1.0
        for s in (sign, -sign):  # each row of log-ratios once with each sign of the advantage
            row = []
            for d in diffs:
                a = s * float(rng.uniform(0.5, 2.0))
                row.append((d, -a if per_token and rng.random() < 0.5 else a))
            rows.append(row)
    rows.append([])
    return _assemble(rng, rows, per_token)


def _assemble(rng, rows, per_token):
    """Lay rows of (log-ratio, advantage) tokens into a [B, T] batch with holes and random
    (finite) padding; a per-response advantage is the row's first token's."""
    T = max(2 * max(len(r) for r in rows), 3)
    B = len(rows)
    mask = np.zeros((B, T), dtype=bool)
    logp, old = _log_probs(rng, B, T, 0.1, False)
    adv = _edge_advantages(rng, B, T, per_token)
    for b, row in enumerate(rows):
        slots = np.sort(rng.permutation(T)[: len(row)])
        for t, (d, a) in zip(slots, row):
            mask[b, t] = True
            logp[b, t], old[b, t] = _pair_with_difference(rng, d)
            if per_token:
                adv[b, t] = a
        if row and not per_token:
            adv[b] = row[0][1]
    return {"logp": logp, "old_logp": old, "mask": mask, "advantages": adv}


def _edge_margin(function: str, inputs: dict, config: dict, dtype: str) -> bool:
    """True when no clip, dual-clip or clamp decision of a low-precision case sits within reach of
    float32 rounding (always True in float64): the decision values (GSPO: the response means of
    the log-ratio; the others: the token log-ratios) keep 1e-5 from each bound in log space and
    1e-3 from each clamp."""
    if dtype == "float64":
        return True
    cfg = FUNCTIONS[function].make_config(config or {})
    mask = inputs["mask"]
    x = np.where(mask, inputs["logp"], 0.0) - np.where(mask, inputs["old_logp"], 0.0)
    if function == "gspo_loss":
        x = np.where(mask, x.sum(axis=1, keepdims=True) / np.maximum(mask.sum(axis=1, keepdims=True), 1), 0.0)
    bounds = [v if function == "gmpo_loss" else math.log(v) for _, v, _ in _bound_targets(function, config)]
    c = getattr(cfg, "log_ratio_clamp", None)
    near = np.zeros_like(mask)
    for b in bounds:
        near |= np.abs(x - b) < 1e-5 * max(1.0, abs(b))
    for b in [] if c is None else [c, -c]:
        near |= np.abs(x - b) < 1e-3
    return not (mask & near).any()


def _edge_cases() -> Iterator[GoldenCase]:
    for v_index, (function, name, config, clauses, kind) in enumerate(_edge_variants()):
        if kind == "agg":
            plan = [("float64", seed) for seed in range(4)]
        elif kind == "padding":
            plan = [("float64", 0), ("float64", 1), ("float32", 0), ("bfloat16", 0)]
        else:
            plan = [("float64", 0), ("float64", 1)]
        if kind == "bounds":
            config, diffs = _exact_bounds(function, config)
        for dtype, seed in plan:
            # seeds: per-response advantages on even seeds, per-token on odd ones ("mixed": always per-token)
            per_token = seed % 2 == 1 or kind == "mixed"
            garbage = kind == "padding" or (kind == "agg" and seed >= 2)
            for attempt in range(200):
                rng = np.random.default_rng([6, v_index, seed, attempt, len(dtype)])
                if kind in ("agg", "padding", "wide"):
                    inputs = _random_batch(rng, function, dtype, per_token, wide=kind == "wide")
                elif kind == "bounds":
                    inputs = _bounds_batch(rng, function, diffs, per_token)
                elif kind == "mixed":
                    inputs = _mixed_sign_batch(rng, function, config)
                else:
                    inputs = _clamp_batch(rng, function, config, per_token)
                if _edge_margin(function, inputs, config, dtype):
                    break
            else:
                raise RuntimeError(f"no well-conditioned draw for {function}/{name}/{dtype}/{seed}")
            if garbage:
                inputs = _with_garbage(inputs)
            expected = reference_outputs(FUNCTIONS[function], inputs, config, {})
            case_clauses = METHOD_CLAUSES[function] + list(clauses)
            extra = []
            if garbage:
                extra.append("BASE-INPUT")
            if not inputs["mask"].any(axis=1).all():
                extra.append("BASE-AGG-EMPTY")
            if expected["metrics"].get("clamped_frac", 0.0) > 0 or (
                    function != "gmpo_loss" and config.get("log_ratio_clamp", 0.0) is None):
                extra.append("BASE-RATIO-CLAMP")
            if config.get("dual_clip") is not None:
                extra.append("BASE-GRPO-DUALCLIP")
            if "loss_agg_mode" in config:
                extra.append("BASE-AGG")
            for clause in extra + ["BASE-METRICS"]:
                if clause not in case_clauses:
                    case_clauses.append(clause)
            yield GoldenCase(f"{function}/{name}/{dtype}/{seed}", function, case_clauses, dtype, inputs,
                             dict(config), {}, expected, f"generated: seed [6, {v_index}, {seed}, {attempt}]")


def _handworked_cases() -> Iterator[GoldenCase]:
    """The spec's hand-worked cases: inputs and expected values from the spec text only."""
    from .handworked import TOKEN_INPUTS, evaluate, load_cases, token_arrays

    for case in load_cases():
        spec = FUNCTIONS.get(case.function)
        if spec is None:
            continue
        expected: dict[str, Any] = {}
        config = dict(case.config) if case.config else None
        kwargs: dict = {}
        errors = [e for e in case.expects if e[1] == "~"]
        if spec.name in ROW_TABLES:
            yield from _row_table_cases(case, spec)
            continue
        arrays, mask, keys = token_arrays(case, TOKEN_INPUTS)
        inputs = {k: arrays[k] for k in ("logp", "old_logp", "entropy") if k in arrays and k in spec.inputs}
        inputs["mask"] = mask
        if "advantages" in spec.inputs:
            inputs["advantages"] = arrays["adv"]
        if errors:
            expected["error"] = errors[0][2]
        else:
            for name, _, expr in case.expects:
                if name == "loss":
                    expected["loss"] = float(evaluate(expr))
                elif name.startswith("metrics."):
                    expected.setdefault("metrics", {})[name.split(".", 1)[1]] = float(evaluate(expr))
            padding = {"groups": -1, "clipped": "-"}
            for column in ("groups", "eps", "log_ratio", "ratio", "weight", "grad", "clipped"):
                if column not in case.header:
                    continue
                fill = padding.get(column, 0.0)
                values = np.full(mask.shape, fill, dtype=object)
                for (b, t), row in zip(keys, case.rows):
                    if mask[b, t]:
                        values[b, t] = row[column] if column == "clipped" else evaluate(row[column])
                if column == "clipped":
                    expected["clipped_high"] = (values == "H").astype(bool)
                    expected["clipped_low"] = (values == "L").astype(bool)
                elif column == "groups":
                    expected["groups"] = values.astype(np.int64)
                else:
                    expected[column] = values.astype(np.float64)
        if spec.is_loss is False and spec.output not in expected and not errors:
            continue
        yield GoldenCase(f"handworked/{case.case_id}", spec.name, case.clauses, "float64", inputs,
                         # the case id, not a line number: editing the spec elsewhere keeps the data
                         config, kwargs, expected, f"handworked: specs/{case.source.split(':')[0]}#{case.case_id}")


ROW_TABLES = ("token_entropy", "high_group_size", "grpo_advantages")


def _row_table_cases(case, spec) -> Iterator[GoldenCase]:
    """Hand-worked tables keyed by row: one case per row for token_entropy (each row has its
    own vocabulary and temperature) and high_group_size, one case per table for
    grpo_advantages (its rows are the batch)."""
    from .handworked import evaluate

    source = f"handworked: specs/{case.source.split(':')[0]}#{case.case_id}"
    if spec.name == "grpo_advantages":
        column = {k: [evaluate(r[k]) for r in case.rows] for k in ("reward", "prompt", "valid", "adv")}
        inputs = {"rewards": np.array(column["reward"], dtype=np.float64),
                  "prompt_ids": np.array(column["prompt"], dtype=np.int64),
                  "valid": np.array(column["valid"], dtype=bool)}
        kwargs = {k: v for k, v in case.config.items()}
        yield GoldenCase(f"handworked/{case.case_id}", spec.name, case.clauses, "float64", inputs, None, kwargs,
                         {"advantages": np.array(column["adv"], dtype=np.float64)}, source)
        return
    for row in case.rows:
        r = int(evaluate(row["row"]))
        if spec.name == "token_entropy":
            inputs = {"logits": np.array([evaluate(row["logits"])], dtype=np.float64)}
            kwargs = {"temperature": float(evaluate(row["temperature"]))}
            expected = {"entropy": np.array([evaluate(row["entropy"])], dtype=np.float64)}
        else:
            inputs = {"lengths": np.array([evaluate(row["length"])], dtype=np.int64)}
            kwargs = {"top_fraction": float(evaluate(row["top_fraction"]))}
            expected = {"n_high": np.array([evaluate(row["n_high"])], dtype=np.int64)}
        yield GoldenCase(f"handworked/{case.case_id}/{r}", spec.name, case.clauses, "float64", inputs, None,
                         kwargs, expected, source)


def build_cases() -> list[GoldenCase]:
    return [*_handworked_cases(), *_component_cases(), *_espo_cases(), *_baseline_cases(), *_edge_cases()]


# --- files --------------------------------------------------------------------------------


def write(cases: list[GoldenCase], folder: Path = DATA_DIR) -> None:
    """Write one JSON file per function and the manifest, each atomically."""
    from .._io import write_atomic

    by_function: dict[str, list[dict]] = {}
    entries = []
    for case in cases:
        obj = case.to_json()
        by_function.setdefault(case.function, []).append(obj)
        entries.append({
            "id": case.case_id, "function": case.function, "clauses": case.clauses,
            "spec_version": SPEC_VERSION, "config": case.config, "dtype": case.dtype,
            "shapes": {k: list(v.shape) for k, v in case.inputs.items()}, "requires": case.requires,
            "tolerance": obj["tolerance"], "file": f"{case.function}.json", "sha256": checksum(obj),
            "source": case.source,
        })
    folder.mkdir(parents=True, exist_ok=True)
    for function, objs in sorted(by_function.items()):
        write_atomic(folder / f"{function}.json", json.dumps(objs, indent=0, sort_keys=True, allow_nan=False) + "\n")
    manifest = {
        "spec_version": SPEC_VERSION,
        "format": "espo-ref golden vectors v1: JSON arrays {dtype, shape, data}, row-major; "
                  "non-finite floats as the strings NaN, Infinity, -Infinity",
        "tolerances": [{"backend": b, "dtype": d, "kind": k, "rtol": t.rtol, "atol": t.atol, "reason": t.reason}
                       for (b, d, k), t in TOLERANCES.items()],
        "cases": entries,
    }
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n")


def load(folder: Path = DATA_DIR, verify: bool = True) -> list[GoldenCase]:
    """Read the cases listed in the manifest; with ``verify``, check every checksum."""
    manifest = json.loads((folder / MANIFEST).read_text())
    files: dict[str, dict[str, dict]] = {}
    cases = []
    for entry in manifest["cases"]:
        if entry["file"] not in files:
            objs = json.loads((folder / entry["file"]).read_text())
            files[entry["file"]] = {o["id"]: o for o in objs}
        obj = files[entry["file"]][entry["id"]]
        if verify and checksum(obj) != entry["sha256"]:
            raise ValueError(f"golden case {entry['id']} does not match its manifest checksum")
        cases.append(GoldenCase.from_json(obj))
    return cases


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate the golden vectors.")
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    cases = build_cases()
    write(cases, args.out)
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
