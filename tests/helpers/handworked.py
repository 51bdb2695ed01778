"""Runner of the hand-worked cases of specs/*.md against the numpy reference.

Parsing lives in espo_ref.conformance.handworked (the golden-vector generator uses it too);
this module maps each case's ``function`` to a runner and checks the outcome.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from espo_ref.conformance.handworked import (  # noqa: F401
    TOKEN_INPUTS,
    TOKEN_OUTPUTS,
    Case,
    evaluate,
    load_cases,
    token_arrays,
)

from .asserts import is_close

# --- running a case --------------------------------------------------------------------

def expected_tokens(case: Case, keys) -> dict[str, list[tuple[tuple[int, int], Any]]]:
    out: dict[str, list] = {}
    for n in TOKEN_OUTPUTS:
        if n in case.header:
            out[n] = [(k, row[n] if n == "clipped" else evaluate(row[n])) for k, row in zip(keys, case.rows)]
    return out


class Outcome:
    """What a function returned for a case, in a form the checks read."""

    def __init__(self, scalars: dict[str, float], tokens: dict[str, np.ndarray] | None = None,
                 vector: np.ndarray | None = None):
        self.scalars = scalars
        self.tokens = tokens or {}
        self.vector = vector


def run_token_loss(fn: Callable, config_factory: Callable, with_entropy: bool):
    def runner(case: Case) -> tuple[Outcome, dict]:
        arrays, mask, keys = token_arrays(case, TOKEN_INPUTS)
        config = config_factory(**case.config)
        args = [arrays["logp"], arrays["old_logp"]]
        if with_entropy:
            args.append(arrays["entropy"])
        result = fn(*args, mask, arrays["adv"], config)
        scalars = {"loss": result.loss, **{f"metrics.{k}": v for k, v in result.metrics.items()}}
        clipped = np.full(mask.shape, "-", dtype=object)
        clipped[np.asarray(result.clipped_high)] = "H"
        clipped[np.asarray(result.clipped_low)] = "L"
        tokens = {"grad": result.grad, "ratio": result.ratio, "clipped": clipped}
        for name, attr in (("groups", "groups"), ("eps", "eps"), ("log_ratio", "log_ratio"), ("weight", "weight")):
            if getattr(result, attr, None) is not None:
                tokens[name] = getattr(result, attr)
        return Outcome(scalars, tokens), {"keys": keys}
    return runner


def _run_entropy_groups(case: Case):
    import espo_ref

    arrays, mask, keys = token_arrays(case, ("entropy",))
    groups = espo_ref.entropy_groups(arrays["entropy"], mask, espo_ref.ESPOConfig(**case.config))
    return Outcome({}, {"groups": groups}), {"keys": keys}


def _run_token_entropy(case: Case):
    import espo_ref

    got = [float(espo_ref.token_entropy(np.array(evaluate(r["logits"]), dtype=float),
                                        temperature=evaluate(r.get("temperature", "1"))))
           for r in case.rows]
    return Outcome({}, vector=np.array(got)), {"column": "entropy"}


def _run_high_group_size(case: Case):
    import espo_ref

    got = [int(espo_ref.high_group_size(np.array([int(evaluate(r["length"]))]), evaluate(r["top_fraction"]))[0])
           for r in case.rows]
    return Outcome({}, vector=np.array(got, dtype=float)), {"column": "n_high"}


def _run_grpo_advantages(case: Case):
    import espo_ref

    rewards = np.array([evaluate(r["reward"]) for r in case.rows], dtype=float)
    prompts = np.array([int(evaluate(r["prompt"])) for r in case.rows])
    valid = np.array([bool(evaluate(r.get("valid", "1"))) for r in case.rows])
    adv = espo_ref.grpo_advantages(rewards, prompts, valid, **case.config)
    return Outcome({}, vector=adv), {"column": "adv"}


def _espo_runner(case):
    import espo_ref

    return run_token_loss(espo_ref.espo_loss, espo_ref.ESPOConfig, with_entropy=True)(case)


RUNNERS: dict[str, Callable] = {
    "espo_loss": _espo_runner,
    "entropy_groups": _run_entropy_groups,
    "token_entropy": _run_token_entropy,
    "high_group_size": _run_high_group_size,
    "grpo_advantages": _run_grpo_advantages,
}


def check_case(case: Case, runner: Callable, tol) -> list[str]:
    """Run a case; return a list of failure messages (empty when it passes)."""
    from espo_ref.errors import ESPOInputError

    errors = [e for e in case.expects if e[1] == "~"]
    if errors:
        word = errors[0][2]
        try:
            runner(case)
        except ESPOInputError as exc:
            return [] if word in str(exc) else [f"error message {str(exc)!r} does not name {word!r}"]
        return [f"expected ESPOInputError naming {word!r}, nothing was raised"]
    outcome, info = runner(case)
    failures = []

    def close(got, want) -> bool:  # NaN only against NaN, an infinity only against itself
        return is_close(got, want, tol)

    for name, _, expr in case.expects:
        want = evaluate(expr)
        if name not in outcome.scalars:
            failures.append(f"{name}: not produced")
        elif not close(float(outcome.scalars[name]), float(want)):
            failures.append(f"{name}: got {outcome.scalars[name]!r}, want {expr} = {want!r}")
    if outcome.vector is not None:
        column = info["column"]
        for i, row in enumerate(case.rows):
            want = float(evaluate(row[column]))
            if not close(float(outcome.vector[i]), want):
                failures.append(f"row {i} {column}: got {outcome.vector[i]!r}, want {row[column]} = {want!r}")
    for name, items in expected_tokens(case, info.get("keys", [])).items():
        got_arr = outcome.tokens.get(name)
        if got_arr is None:
            failures.append(f"{name}: not produced")
            continue
        for (b, t), want in items:
            got = got_arr[b, t]
            ok = got == want if name == "clipped" else close(float(got), float(want))
            if not ok:
                failures.append(f"[{b},{t}] {name}: got {got!r}, want {want!r}")
    return failures


# --- baselines (specs/baselines.md) ----------------------------------------------------


def _baseline_runner(name: str, config_name: str):
    def runner(case):
        import espo_ref

        fn, factory = getattr(espo_ref, name), getattr(espo_ref, config_name)
        return run_token_loss(fn, factory, with_entropy=False)(case)
    return runner


def _run_agg_loss(case: Case):
    import espo_ref

    arrays, mask, keys = token_arrays(case, ("per_token",))
    mode, max_len = case.config["mode"], case.config.get("max_len")
    value = espo_ref.agg_loss(arrays["per_token"], mask, mode, max_len)
    weight = espo_ref.agg_weights(mask, mode, max_len)
    return Outcome({"value": value}, {"weight": weight}), {"keys": keys}


RUNNERS.update({
    "grpo_loss": _baseline_runner("grpo_loss", "GRPOConfig"),
    "dapo_loss": _baseline_runner("dapo_loss", "DAPOConfig"),
    "gspo_loss": _baseline_runner("gspo_loss", "GSPOConfig"),
    "gmpo_loss": _baseline_runner("gmpo_loss", "GMPOConfig"),
    "cispo_loss": _baseline_runner("cispo_loss", "CISPOConfig"),
    "agg_loss": _run_agg_loss,
})
# --- end baselines ---
