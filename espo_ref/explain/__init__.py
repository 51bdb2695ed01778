"""``espo-ref explain``: what ESPO does to each token of one batch, and where another
implementation parts from the reference on it.

A batch file holds the inputs of ``espo_loss`` in the layout ``espo-ref conform --dump`` writes
(``.npz`` with ``inputs.logp``, ``inputs.old_logp``, ``inputs.entropy``, ``inputs.mask``,
``inputs.advantages`` and ``config_json``, or the dump's ``.json``), and optionally the token
strings (``tokens``, [B, T]) and what a trainer logged for it (``logged_json``: its loss).
Plain keys (``logp``, ...) are accepted too. Files are read without pickles.

:func:`token_view` runs the reference [ESPO-OBJ] and keeps, per token, the entropy, its group
[ESPO-GROUP], the clip range [ESPO-CLIP], the ratio [ESPO-RATIO-TOKEN], which side clipped it
[ESPO-CLIPMASK], its weight [ESPO-AGG] and its gradient. :func:`compare` runs an implementation
through a conformance adapter on the same batch and lists the tokens where it differs, with
the clause the first differing output points at and the misreadings that reproduce it
[CONF-MISREADINGS].
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._files import (BATCH_ELEMENTS, BATCH_JSON_BYTES, FileError, json_type, parse_json, read_json_object,
                      read_npz)
from .._io import write_atomic_bytes
from ..config import ESPOConfig
from ..errors import ESPOInputError
from ..objective import espo_loss

INPUTS = ("logp", "old_logp", "entropy", "mask", "advantages")
#: per-token outputs compared with an implementation's, in the order a failure is blamed
TOKEN_FIELDS = ("groups", "eps", "log_ratio", "ratio", "clipped_high", "clipped_low", "weight", "grad")


class BatchError(FileError):
    """[CONF-FILES] A batch file that cannot be read or lacks what explain needs (one line naming the
    file and the key)."""


@dataclass
class Batch:
    """The inputs of ``espo_loss`` for one batch, with what came with them."""

    inputs: dict[str, np.ndarray]
    config: dict[str, Any] = field(default_factory=dict)
    tokens: list[list[str]] | None = None
    logged: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(np.shape(self.inputs["mask"]))

    def token(self, b: int, t: int) -> str:
        if self.tokens is not None and b < len(self.tokens) and t < len(self.tokens[b]):
            return self.tokens[b][t]
        return f"#{t}"


def _tokens_from(value, shape, source: str) -> list[list[str]]:
    """One row of token strings per response, padded with "" to the batch's T positions."""
    rows = value.tolist() if isinstance(value, np.ndarray) else value
    if not isinstance(rows, list) or len(rows) != shape[0] or not all(isinstance(r, list) for r in rows):
        raise BatchError(source, f"tokens must be {shape[0]} rows of token strings (one row per response)")
    return [[str(x) for x in row] + [""] * max(0, shape[1] - len(row)) for row in rows]


#: dtype kinds an input array may have: bool, int, uint, float
NUMERIC_KINDS = "biuf"


def _numeric(value, key: str, source: str) -> np.ndarray:
    """An input array as read: numbers or booleans (an .npz's array, or a JSON array's values)."""
    if isinstance(value, np.generic):  # a 0-d array of the .npz, as a scalar
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        value = _json_array(value, key, source)
    if value.dtype.kind not in NUMERIC_KINDS:
        raise BatchError(source, f"an array of {value.dtype} values; a batch's inputs are numbers or booleans", key)
    return value


def _json_array(value, key: str, source: str) -> np.ndarray:
    """A JSON number or (nested) array of numbers and booleans, rectangular, as numpy."""
    shape, level = [], value
    while isinstance(level, list):
        shape.append(len(level))
        if len(shape) > 8:
            raise BatchError(source, "an array nested more than 8 levels", key)
        level = level[0] if level else None
    items = [value]
    for depth, n in enumerate(shape):
        nxt = []
        for item in items:
            if not isinstance(item, list) or len(item) != n:
                got = f"{len(item)} elements" if isinstance(item, list) else json_type(item)
                raise BatchError(source, f"a ragged array: level {depth + 1} holds {got} where the first row "
                                         f"has {n}", key)
            nxt.extend(item)
        items = nxt
    if not all(type(v) in (int, float, bool) for v in items):
        bad = next(v for v in items if type(v) not in (int, float, bool))
        raise BatchError(source, f"an array holding {json_type(bad)}; a batch's inputs are numbers or booleans "
                                 f"(or an encoded array: dtype, shape and data)", key)
    try:
        return np.array(value, dtype=bool if items and all(type(v) is bool for v in items) else None)
    except (OverflowError, ValueError) as e:
        raise BatchError(source, f"not an array of numbers ({e})", key) from None


def _from_mapping(get, keys, source: str) -> Batch:
    """A Batch from a key -> value lookup over ``keys`` (the npz's or the JSON's)."""
    inputs = {}
    for name in INPUTS:
        for key in (f"inputs.{name}", name):
            if key in keys:
                inputs[name] = _numeric(get(key), key, source)
                break
        else:
            raise BatchError(source, f"no '{name}' (looked for inputs.{name} and {name}); a batch holds "
                                     f"{', '.join(INPUTS)}, as espo-ref conform --dump writes them")
    shape = np.shape(inputs["mask"])
    if len(shape) != 2:
        raise BatchError(source, f"mask must be 2-D [B, T], got shape {shape}")
    config = _json_value(get, keys, "config", source)
    logged = _json_value(get, keys, "logged", source)
    loss = logged.get("loss")
    if loss is not None and not _is_float(loss):
        raise BatchError(source, f"must be a number, got {json_type(loss)} {loss!r}"[:200], "logged.loss")
    tokens = None
    for key in ("tokens", "inputs.tokens"):
        if key in keys:
            tokens = _tokens_from(get(key), shape, source)
    return Batch(inputs, config or {}, tokens, logged or {}, source)


def _is_float(value) -> bool:
    """A JSON number that is a float64 (an int too large for one is not)."""
    if type(value) not in (int, float):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _json_value(get, keys, name: str, source: str) -> dict:
    if f"{name}_json" in keys:
        text = get(f"{name}_json")
        if not isinstance(text, (str, np.str_)) or isinstance(text, np.ndarray):
            raise BatchError(source, f"must be a JSON text, got {getattr(text, 'dtype', type(text).__name__)}",
                             f"{name}_json")
        value = parse_json(str(text), source, f"{name}_json")
    elif name in keys:
        value = get(name)
    else:
        return {}
    if value is not None and not isinstance(value, dict):
        raise BatchError(source, f"must be a JSON object, got {json_type(value)}", name)
    return value or {}


def load_batch(path) -> Batch:
    """[CONF-CASES] [CONF-FILES] A batch from a ``.npz`` (its arrays' sizes and dtypes checked before any
    is decompressed; no pickles) or a ``.json`` file (size and nesting checked before parsing).
    Every problem is a BatchError naming the file and the key."""
    path = Path(path)
    source = str(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*") if p.suffix in (".npz", ".json") and p.is_file())[:3]
        hint = f" (it holds {', '.join(found)}{', ...' if len(found) == 3 else ''})" if found else ""
        raise BatchError(source, f"is a folder; give one batch file (.npz or .json){hint}")
    if not path.is_file():
        raise BatchError(source, "no such file")
    try:
        if path.suffix == ".npz":
            arrays = read_npz(path)
            return _from_mapping(lambda k: arrays[k][()] if arrays[k].shape == () else arrays[k], arrays.keys(),
                                 source)
        if path.suffix == ".json":
            obj = read_json_object(path, max_bytes=BATCH_JSON_BYTES, what="a batch file")
            return _from_mapping(*_json_lookup(obj, source), source)
    except BatchError:
        raise
    except FileError as e:
        raise BatchError(e.path, e.reason, e.where) from None
    raise BatchError(source, "expected a .npz or .json batch file")


def _json_lookup(obj: dict, source: str):
    """The key -> value lookup of a JSON batch: ``inputs.NAME`` for each of ``inputs`` (an encoded
    array, decoded with its sizes checked, or a plain JSON array), the top-level keys as they are."""
    from ..conformance.arrays import decode

    flat = dict(obj)
    inputs = obj.get("inputs")
    if inputs is not None and not isinstance(inputs, dict):
        raise BatchError(source, f"must be a JSON object of arrays (name -> array), got {json_type(inputs)}",
                         "inputs")
    for name, value in (inputs or {}).items():
        if isinstance(value, dict):
            try:
                value = decode(value, max_elements=BATCH_ELEMENTS)
            except ValueError as e:
                raise BatchError(source, str(e), f"inputs.{name}") from None
        flat[f"inputs.{name}"] = value
    return (lambda k: flat[k]), flat.keys()


def save_batch(path, inputs: dict[str, np.ndarray], config: dict, *, tokens=None, logged: dict | None = None) -> None:
    """[CONF-CASES] Write a batch as ``.npz`` (atomically) in the layout :func:`load_batch` reads (that
    of ``espo-ref conform --dump``)."""
    arrays = {f"inputs.{k}": np.asarray(v) for k, v in inputs.items()}
    arrays["config_json"] = np.str_(json.dumps(config))
    if logged:
        arrays["logged_json"] = np.str_(json.dumps(logged))
    if tokens is not None:
        width = max((len(r) for r in tokens), default=0)
        arrays["tokens"] = np.array([list(r) + [""] * (width - len(r)) for r in tokens], dtype=str).reshape(
            len(tokens), width)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic_bytes(path, buffer.getvalue())


def espo_config_of(batch: Batch, overrides: dict[str, Any] | None = None) -> ESPOConfig:
    """[ESPO-CONFIG] The batch's config with ``overrides`` (the options the command line gave) on top."""
    values = {**batch.config, **(overrides or {})}
    if "vocab_size" not in values:
        raise BatchError(batch.source, "no vocab_size in the batch's config; pass --vocab-size")
    if isinstance(values.get("entropy_edges"), list):
        values["entropy_edges"] = tuple(values["entropy_edges"])
    try:
        return ESPOConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        field = re.match(r"[a-z_]*", str(exc)).group(0)
        if isinstance(exc, ValueError) and field in (overrides or {}):
            raise  # the command line's option: the message names it
        raise BatchError(batch.source, str(exc), "config") from None


@dataclass
class TokenView:
    """The reference on one batch, per token ([B, T] arrays, 0 / False / -1 on padding)."""

    batch: Batch
    config: ESPOConfig
    loss: float
    metrics: dict[str, float]
    arrays: dict[str, np.ndarray]

    def responses(self) -> list[list[dict[str, Any]]]:
        """Each response's token rows (``rows``), in order."""
        return [self.rows(b) for b in range(self.batch.shape[0])]

    def rows(self, b: int) -> list[dict[str, Any]]:
        """The response tokens of response ``b``, one dict each; ``key`` ("b-t") names the token
        on the page."""
        a = self.arrays
        out = []
        for t in np.flatnonzero(a["mask"][b]):
            side = "high" if a["clipped_high"][b, t] else "low" if a["clipped_low"][b, t] else ""
            out.append({
                "key": f"{b}-{int(t)}", "response": b, "position": int(t), "token": self.batch.token(b, int(t)),
                "entropy": float(a["entropy"][b, t]), "group": int(a["groups"][b, t]),
                "eps_low": float(a["eps_low"][b, t]), "eps_high": float(a["eps_high"][b, t]),
                "ratio": float(a["ratio"][b, t]), "advantage": float(a["advantages"][b, t]),
                "weight": float(a["weight"][b, t]), "grad": float(a["grad"][b, t]),
                "clipped": side, "trained": bool(a["trained"][b, t]), "clamped": bool(a["clamped"][b, t]),
            })
        return out


def token_view(batch: Batch, config: ESPOConfig) -> TokenView:
    """[ESPO-OBJ] The reference's loss on the batch and its per-token quantities."""
    x = batch.inputs
    try:
        result = espo_loss(x["logp"], x["old_logp"], x["entropy"], x["mask"], x["advantages"], config)
    except ESPOInputError as exc:  # the batch's arrays: the message names the argument
        raise BatchError(batch.source, str(exc)) from None
    mask = np.asarray(x["mask"], dtype=bool)
    adv = np.asarray(x["advantages"], dtype=np.float64)
    adv = np.broadcast_to(adv[:, None], mask.shape) if adv.ndim == 1 else adv
    arrays = {
        "mask": mask, "entropy": np.where(mask, np.asarray(x["entropy"], dtype=np.float64), 0.0),
        "advantages": np.where(mask, adv, 0.0), "groups": result.groups, "eps_low": result.eps_low,
        "eps_high": result.eps_high, "eps": result.eps, "ratio": result.ratio, "log_ratio": result.log_ratio,
        "weight": result.weight, "grad": result.grad, "trained": result.trained,
        "clipped_high": result.clipped_high, "clipped_low": result.clipped_low,
        "clamped": result.extras["clamped"],
    }
    return TokenView(batch, config, float(result.loss), dict(result.metrics), arrays)


# --- comparison with an implementation --------------------------------------------------------


def clauses_of(config: ESPOConfig) -> list[str]:
    """[CONF-MISREADINGS] The clauses a loss on this config exercises (what a failure may blame)."""
    from ..conformance.golden import COMMON_ESPO_CLAUSES

    clauses = ["ESPO-ENT-DOMAIN", "ESPO-GROUP", "ESPO-CLIP", "ESPO-RATIO-TOKEN", "ESPO-RATIO-CLAMP"]
    clauses.append({"top_fraction": "ESPO-GROUP-TOPFRAC", "batch_top_fraction": "ESPO-GROUP-BATCH",
                    "entropy_ranges": "ESPO-GROUP-RANGES", "none": "ESPO-GROUP-NONE",
                    "token": "ESPO-GROUP-TOKEN"}[config.grouping])
    options = [(config.drop_low_group, "ESPO-GROUP-DROPLOW"), (config.clip == "fixed", "ESPO-CLIP-FIXED"),
               (config.eps_reading == "token_over_groups", "ESPO-CLIP-TOKEN"),
               (config.ratio_form == "literal", "ESPO-RATIO-LITERAL")]
    clauses += [clause for on, clause in options if on]
    return list(dict.fromkeys(clauses + COMMON_ESPO_CLAUSES))


@dataclass
class Difference:
    """One token where an output of the implementation parts from the reference."""

    field: str
    response: int
    position: int
    token: str
    reference: float
    yours: float

    @property
    def size(self) -> float:
        if not (np.isfinite(self.yours) and np.isfinite(self.reference)):
            return float("inf")
        return abs(self.yours - self.reference)


@dataclass
class Comparison:
    """An implementation against the reference on one batch."""

    impl: str
    status: str                       # pass, fail or error (the runner's verdict)
    message: str
    loss: float | None
    suspects: list[str]
    diagnoses: list[dict]
    differences: list[Difference]
    outputs: dict[str, Any]
    protected: bool = True            # False: run in the comparing process (--no-isolation)

    def first(self, n: int) -> list[Difference]:
        """The first differing tokens by position (response, then position), one per token."""
        seen, out = set(), []
        for d in sorted(self.differences, key=lambda d: (d.response, d.position, TOKEN_FIELDS.index(d.field))):
            if (d.response, d.position) not in seen:
                seen.add((d.response, d.position))
                out.append(d)
        return out[:n]

    def largest(self, n: int) -> list[Difference]:
        return sorted(self.differences, key=lambda d: -d.size)[:n]


def _differences(view: TokenView, outputs: dict, tolerance) -> list[Difference]:
    mask = view.arrays["mask"]
    out = []
    for name in TOKEN_FIELDS:
        if name not in outputs:
            continue
        want = np.asarray(view.arrays[name], dtype=np.float64)
        got = np.asarray(outputs[name])
        if got.shape != want.shape:
            continue  # reported by the runner's verdict (shape)
        got = got.astype(np.float64)
        kind = "grad" if name == "grad" else "value"
        tol = tolerance[kind]
        with np.errstate(invalid="ignore", over="ignore"):
            bad = mask & ~(np.abs(got - want) <= tol["atol"] + tol["rtol"] * np.abs(want))
        for b, t in zip(*np.nonzero(bad)):
            out.append(Difference(name, int(b), int(t), view.batch.token(int(b), int(t)), float(want[b, t]),
                                  float(got[b, t])))
    return out


def compare(view: TokenView, impl: str, *, adapter: str = "native", backend: str = "auto",
            device: str = "cpu", timeout: float = 60.0, isolate: bool = True) -> Comparison:
    """[CONF-MISREADINGS] [CONF-ISOLATION] Run ``impl`` (package.module:callable) on the batch through a
    conformance adapter, in a worker process as ``espo-ref conform`` does (``isolate=False``: in this
    process, for debugging; its verdict is then not protected), and compare it with the reference
    token by token."""
    from ..conformance.execution import InProcessExecutor, Target, WorkerExecutor
    from ..conformance.functions import FUNCTIONS, reference_outputs
    from ..conformance.golden import GoldenCase
    from ..conformance.judge import run_case

    batch = view.batch
    inputs = {k: np.asarray(v) for k, v in batch.inputs.items()}
    dtype = "float64" if np.asarray(inputs["logp"]).dtype == np.float64 else "float32"
    config = view.config.to_dict()
    expected = reference_outputs(FUNCTIONS["espo_loss"], inputs, config, {})
    case = GoldenCase(f"explain/{Path(batch.source).name}", "espo_loss", clauses_of(view.config), dtype, inputs,
                      config, {}, expected, f"batch {batch.source}")
    target = Target(impl, "espo_loss", adapter, backend, device)
    executor = WorkerExecutor(target, timeout) if isolate else InProcessExecutor(target)
    recording = _Recording(executor)
    try:
        verdict = run_case(recording, case, "", None, executor.info.get("provides"))
    finally:
        executor.close()
    outcome = recording.outcomes[0]
    outputs = outcome.outputs if outcome.kind == "outputs" else {}
    loss = outputs.get("loss")
    return Comparison(impl, verdict.status, verdict.message, None if loss is None else float(loss),
                      list(verdict.suspects), list(verdict.diagnoses),
                      _differences(view, outputs, case.tolerance()), outputs, isolate)


class _Recording:
    """An executor that keeps what each call gave (the first is the batch's own call)."""

    def __init__(self, executor):
        self.executor = executor
        self.info = executor.info
        self.outcomes: list = []

    def run(self, case):
        outcome = self.executor.run(case)
        self.outcomes.append(outcome)
        return outcome


def summary_pairs(view: TokenView, comparison: Comparison | None = None) -> list[tuple[str, str]]:
    """[ESPO-METRICS] The lines at the top of the page and of the terminal output."""
    m, a = view.metrics, view.arrays
    B, T = view.batch.shape
    defaults = ESPOConfig(vocab_size=2).to_dict()
    changed = {k: v for k, v in view.config.to_dict().items() if v != defaults[k] or k == "vocab_size"}
    pairs = [
        ("batch", f"{B} responses x {T} positions, {int(m['tokens'])} response tokens"),
        ("config", ", ".join(f"{k}={v}" for k, v in changed.items()) + " (other options: the defaults)"),
        ("reference loss", f"{view.loss:.8g}"),
    ]
    logged = view.batch.logged.get("loss")
    if logged is not None:
        same = abs(view.loss - float(logged)) <= 1e-5 * max(1.0, abs(float(logged)))
        where = ", ".join(f"{k} {v}" for k, v in view.batch.logged.items() if k != "loss")
        pairs.append(("logged loss", f"{float(logged):.8g} ({where}): "
                                     f"{'reproduced' if same else 'NOT reproduced'} by the reference"))
    if comparison is not None and comparison.loss is not None:
        pairs.append(("your loss", f"{comparison.loss:.8g}"))
    pairs += [
        ("high-entropy group", f"{int(m['high_group_tokens'])} tokens, mean entropy "
                               f"{m['entropy_mean_high_group']:.4g} nats, mean eps {m['eps_mean_high_group']:.4g}"),
        ("other groups", f"{int(m['low_group_tokens'])} tokens, mean entropy {m['entropy_mean_low_group']:.4g} nats, "
                         f"mean eps {m['eps_mean_low_group']:.4g}"),
        ("clipped", f"{int(a['clipped_high'].sum())} above 1 + eps (A > 0), {int(a['clipped_low'].sum())} below "
                    f"1 - eps (A < 0), {int(a['clamped'].sum())} clamped; clip fraction {m['clipfrac']:.4g}"),
    ]
    return pairs
