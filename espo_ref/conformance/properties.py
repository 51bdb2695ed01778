"""Property cases: hypothesis-generated inputs checked against the numpy reference in-process.

Where the golden cases are fixed, these explore: random shapes, masks, ties, log-ratio
scales and every option of the function's config, with shrinking to a minimal failing
input. Needs the ``hypothesis`` package.
"""

from __future__ import annotations

import fnmatch
import math

import numpy as np

from .functions import FUNCTIONS, reference_outputs
from .golden import BASELINE_VARIANTS, COMMON_ESPO_CLAUSES, ESPO_VARIANTS, GoldenCase


PROPERTY_FUNCTIONS = ("espo_loss",) + tuple(sorted({fn for fn, *_ in BASELINE_VARIANTS}))


def _variants(function: str):
    if function == "espo_loss":
        return [(name, cfg, clauses + COMMON_ESPO_CLAUSES) for name, cfg, clauses in ESPO_VARIANTS]
    found = [(name, cfg, clauses) for fn, name, cfg, clauses in BASELINE_VARIANTS if fn == function]
    if not found:
        raise ValueError(f"no property cases for function {function!r}")
    return found


def property_cases_strategy(function: str, variants=None):
    from hypothesis import strategies as st

    variants = _variants(function) if variants is None else variants
    finite = dict(allow_nan=False, allow_infinity=False)

    @st.composite
    def cases(draw):
        name, overrides, clauses = draw(st.sampled_from(variants), label="variant")
        B = draw(st.integers(1, 6), label="B")
        T = draw(st.integers(1, 12), label="T")
        mask = np.array(draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T), label="mask")).reshape(B, T)
        if not mask.any():
            mask[0, 0] = True
        old = np.array(draw(st.lists(st.floats(-8.0, 0.0, **finite), min_size=B * T, max_size=B * T),
                            label="old_logp")).reshape(B, T)
        scale = draw(st.sampled_from([1e-3, 0.05, 0.5, 5.0]), label="scale")
        noise = np.array(draw(st.lists(st.floats(-1.0, 1.0, **finite), min_size=B * T, max_size=B * T),
                              label="noise")).reshape(B, T)
        logp = old + scale * noise
        adv = np.array(draw(st.lists(st.sampled_from([-1.5, -0.5, 0.0, 0.5, 1.0, 2.0]), min_size=B, max_size=B),
                            label="advantages"))
        inputs = {"logp": logp, "old_logp": old, "mask": mask, "advantages": adv}
        config = dict(overrides)
        if function == "espo_loss":
            vocab = draw(st.sampled_from([16, 1000, 151_936]), label="vocab")
            levels = draw(st.lists(st.floats(0.0, 1.0, **finite), min_size=1, max_size=4), label="entropy_levels")
            idx = np.array(draw(st.lists(st.integers(0, len(levels) - 1), min_size=B * T, max_size=B * T),
                                label="entropy_index")).reshape(B, T)
            inputs["entropy"] = np.array(levels)[idx] * math.log(vocab)
            config["vocab_size"] = vocab
        expected = reference_outputs(FUNCTIONS[function], inputs, config, {})
        return GoldenCase(f"property/{function}/{name}", function, list(clauses), "float64", inputs, config, {},
                          expected, "property")

    return cases()


def run_properties(executor, target, examples: int, include=(), exclude=(), profile: str = "full",
                   fields=None, provides=None, xfail=None) -> list:
    """Run ``examples`` property cases drawn from the variants the selection keeps (profile,
    include, exclude; xfail-listed variants are not drawn). Returns one CaseResult: pass, or
    the shrunk failing case with its config and inputs (``case``), which --dump can write."""
    from hypothesis import HealthCheck, given, settings

    from .functions import required_options
    from .judge import CaseResult, reproduce_command, run_case
    from .selection import _matches, in_profile

    function = target.function
    if function not in PROPERTY_FUNCTIONS:
        from .errors import SetupError

        raise SetupError(f"--property supports {', '.join(PROPERTY_FUNCTIONS)}; got --function {function}")
    xfail = xfail or {}
    kept, skipped = [], []
    for name, overrides, clauses in _variants(function):
        case_id = f"property/{function}/{name}"
        if not in_profile(required_options(function, overrides, {}), profile):
            continue
        if include and not _matches(case_id, clauses, include):
            continue
        if exclude and _matches(case_id, clauses, exclude):
            continue
        if any(fnmatch.fnmatchcase(case_id, p) for p in xfail):
            skipped.append(case_id)
            continue
        kept.append((name, overrides, clauses))
    run_id = f"property/{function}"
    if not kept:
        return []
    failures: list = []
    repro = reproduce_command(target, "property/*", profile, fields, executor.isolated) + f" --property {examples}"

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(case=property_cases_strategy(function, kept))
    def check(case):
        result = run_case(executor, case, repro, fields, provides)
        if result.status not in ("pass",):
            result.case = case.to_json()
            failures[:] = [result]
            raise AssertionError(result.message)

    import tempfile

    import hypothesis.configuration as hypothesis_configuration

    # hypothesis caches under ./.hypothesis; a validation run leaves nothing in the user's folder
    previous = getattr(hypothesis_configuration, "__hypothesis_home_directory", None)
    with tempfile.TemporaryDirectory(prefix="espo-ref-hypothesis-") as home:
        hypothesis_configuration.set_hypothesis_home_dir(home)
        try:
            check()
        except AssertionError:
            pass
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - e.g. a flaky failure: an error of the run, not a crash
            if not failures:
                return [CaseResult(run_id, sorted({c for _, _, cl in kept for c in cl}), "error",
                                   message=f"the property run stopped: {type(exc).__name__}: {exc}"[:2000],
                                   reproduce=repro)]
        finally:
            hypothesis_configuration.set_hypothesis_home_dir(previous)
    if failures:
        return failures
    note = f"{examples} hypothesis cases over {len(kept)} variants passed"
    if skipped:
        note += f"; not drawn (xfail-listed): {', '.join(skipped)}"
    return [CaseResult(run_id, sorted({c for _, _, cl in kept for c in cl}), "pass", message=note, reproduce=repro)]
