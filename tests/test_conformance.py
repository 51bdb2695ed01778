"""The golden vectors and the conformance runner: reproducible data, passing references,
failing mutants that name their clause, and the command line."""

import json
import math

import numpy as np
import pytest

import espo_ref
from espo_ref.cli import main as cli_main
from espo_ref.conformance.arrays import canonical_json, decode, encode, round_to_bfloat16
from espo_ref.conformance.functions import FUNCTIONS
from espo_ref.conformance.golden import DATA_DIR, MANIFEST, build_cases, load
from espo_ref.conformance.runner import read_xfail_file, run_conformance
from helpers.mutants import MUTANTS
from helpers.spec_clauses import CLAUSES

CASES = load()


def test_golden_files_match_regeneration():
    """Regenerating the golden vectors from their fixed seeds gives the committed files."""
    fresh = {c.case_id: canonical_json(c.to_json()) for c in build_cases()}
    committed = {c.case_id: canonical_json(c.to_json()) for c in CASES}
    assert fresh.keys() == committed.keys(), (
        f"case ids differ: new {sorted(fresh.keys() - committed.keys())[:5]}, "
        f"gone {sorted(committed.keys() - fresh.keys())[:5]}; run python -m espo_ref.conformance.golden")
    changed = [k for k in fresh if fresh[k] != committed[k]]
    assert not changed, f"{len(changed)} golden cases differ from regeneration, e.g. {changed[:5]}"


def test_manifest_describes_every_case():
    manifest = json.loads((DATA_DIR / MANIFEST).read_text())
    assert manifest["spec_version"] == espo_ref.SPEC_VERSION
    assert len(manifest["cases"]) == len(CASES) >= 200
    for entry in manifest["cases"]:
        assert {"id", "clauses", "spec_version", "config", "dtype", "shapes", "tolerance", "sha256"} <= set(entry)
    assert {t["dtype"] for t in manifest["tolerances"]} >= {"float64", "float32", "bfloat16"}


def test_golden_coverage():
    """Every clause of the spec, every dtype and every ESPO option appear in the golden cases."""
    cited = {c for case in CASES for c in case.clauses}
    missing = [c for c, body in CLAUSES.items() if c not in cited and "No golden case:" not in body]
    assert not missing, f"clauses without a golden case: {missing}"
    assert {c.dtype for c in CASES} == {"float64", "float32", "bfloat16"}
    handworked = [c for c in CASES if c.source.startswith("handworked")]
    assert len(handworked) >= 20
    espo_configs = [c.config for c in CASES if c.function == "espo_loss" and c.config]
    for field, values in {"grouping": {"batch_top_fraction", "entropy_ranges", "none", "token"},
                          "eps_reading": {"token_over_groups"}, "ratio_form": {"literal"},
                          "clip": {"fixed"}, "drop_low_group": {True}}.items():
        assert values <= {cfg.get(field) for cfg in espo_configs}, field
    assert all(f in {c.function for c in CASES} for f in FUNCTIONS)


def test_checksum_detects_tampering(tmp_path):
    for path in DATA_DIR.iterdir():
        (tmp_path / path.name).write_text(path.read_text())
    objs = json.loads((tmp_path / "espo_loss.json").read_text())
    objs[0]["expected"]["loss"] = 123.0
    (tmp_path / "espo_loss.json").write_text(json.dumps(objs))
    with pytest.raises(ValueError, match="checksum"):
        load(tmp_path)


def test_arrays_round_trip_exactly():
    x = np.array([[0.1, -np.inf, np.nan], [1e-300, 2.0 ** -1074, np.pi]])
    back = decode(json.loads(json.dumps(encode(x))))
    assert np.array_equal(back, x, equal_nan=True)
    assert round_to_bfloat16(np.array([1.00390625, 1.01171875]))[0] == 1.0  # ties to even


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_numpy_reference_passes(function):
    report = run_conformance(getattr(espo_ref, function), function=function, cases=CASES)
    assert report.results and not report.unexpected, [r.message for r in report.unexpected][:3]


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_fails_and_names_its_clause(name):
    function, mutant, clause = MUTANTS[name]
    report = run_conformance(mutant, function=function, cases=CASES)
    failing = report.failing_clauses()
    assert report.unexpected, f"mutant {name} passed the conformance suite"
    assert clause in failing, f"mutant {name}: failures name {failing}, not {clause}"


def test_failure_report_names_clause_errors_and_reproduction():
    _, mutant, _ = MUTANTS["eps-per-token"]
    report = run_conformance(mutant, function="espo_loss", cases=CASES, include=["espo_loss/default/*"])
    failed = [r for r in report.results if r.status == "fail"]
    assert failed
    r = failed[0]
    assert "ESPO-CLIP" in r.suspects and "eps:" in r.message and "max abs" in r.message
    assert "--include espo_loss/default/" in r.reproduce and "--impl helpers.mutants:" in r.reproduce
    assert r.fields["eps"]["bad"] >= 1


def test_include_exclude_and_xfail(tmp_path):
    _, mutant, _ = MUTANTS["eps-per-token"]
    first = run_conformance(mutant, function="espo_loss", cases=CASES, exclude=["handworked/*"])
    failing = [r.case_id for r in first.results if r.status == "fail"]
    passing = [r.case_id for r in first.results if r.status == "pass"]
    assert failing and passing
    xfail = tmp_path / "xfail.txt"
    xfail.write_text("# known failures\n" + "".join(f"{c}  # per-token epsilon on purpose\n" for c in failing))
    report = run_conformance(mutant, function="espo_loss", cases=CASES, exclude=["handworked/*"],
                             xfail=read_xfail_file(xfail))
    assert not report.unexpected and report.counts()["xfail"] == len(failing)
    xfail.write_text(f"{passing[0]}  # wrongly listed\n")
    strict = run_conformance(mutant, function="espo_loss", cases=CASES, include=[passing[0]],
                             xfail=read_xfail_file(xfail))
    assert [r.status for r in strict.unexpected] == ["xpass"]
    only = run_conformance(espo_ref.espo_loss, cases=CASES, include=["ESPO-GROUP-RANGES"])
    assert only.results and all("ESPO-GROUP-RANGES" in r.clauses for r in only.results)


def test_cli_pass_and_fail_exit_codes(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert cli_main(["conform", "--impl", "espo_ref:espo_loss", "--report", str(out), "--property", "5"]) == 0
    report = json.loads(out.read_text())
    assert report["spec_version"] == espo_ref.SPEC_VERSION and report["impl"] == "espo_ref:espo_loss"
    assert report["counts"]["pass"] == len(report["cases"]) and report["conformant"] is True
    assert report["cases"][-1]["case_id"] == "property/espo_loss" and report["property_examples"] == 5
    assert cli_main(["conform", "--impl", "helpers.mutants:_advantages_without_bessel",
                     "--function", "grpo_advantages"]) == 1
    text = capsys.readouterr().out
    assert "FAIL" in text and "ESPO-ADV" in text
    assert "espo-ref conform --impl helpers.mutants:_advantages_without_bessel" in text
    assert "population-std" in text


class _LossOnlyAdapter:
    """An adapter defined outside the package: compares the loss value only."""

    def __init__(self, impl, function, backend, device):
        from espo_ref.conformance.adapters import NativeAdapter

        self.inner = NativeAdapter(impl, function, backend, device)

    def run(self, case):
        return {"loss": self.inner.run(case)["loss"]}


def test_CONF_ADAPTERS_adapter_named_by_module_path_is_loaded(capsys):
    """[CONF-ADAPTERS] --adapter package.module:Class loads an adapter the package does not know; one that
    returns the loss only fails every value case unless the check is narrowed by --fields."""
    args = ["conform", "--impl", "espo_ref:espo_loss", "--adapter", "test_conformance:_LossOnlyAdapter"]
    assert cli_main(args) == 1
    assert "returned no grad" in capsys.readouterr().out
    assert cli_main(args + ["--fields", "loss"]) == 0
    out = capsys.readouterr().out
    assert "espo_loss [test_conformance:_LossOnlyAdapter/numpy/cpu, profile full]" in out
    assert "not compared: " in out and "grad" in out.split("not compared: ")[1] and "(--fields)" in out


BASE_LOSSES = ("grpo_loss", "dapo_loss", "gspo_loss", "gmpo_loss", "cispo_loss")


def _padding(case, name):
    """The values of an input at padding: [B, T] arrays at mask 0, a per-response [B] array at
    the responses without a token."""
    mask, x = case.inputs["mask"].astype(bool), case.inputs[name]
    return x[~mask] if x.shape == mask.shape else x[~mask.any(axis=1)]


def _nonfinite_kinds(values):
    return {"nan" if np.isnan(v) else "+inf" if v > 0 else "-inf" for v in values if not np.isfinite(v)}


def _token_values(case):
    """(mask, [B, T] advantages, raw log-ratio, reference ratio) of a baseline case."""
    mask = case.inputs["mask"].astype(bool)
    adv = case.inputs["advantages"]
    adv = np.broadcast_to(adv[:, None], mask.shape) if adv.ndim == 1 else adv
    with np.errstate(invalid="ignore"):
        log_r = np.where(mask, case.inputs["logp"] - case.inputs["old_logp"], 0.0)
    return mask, adv, log_r, case.expected["ratio"]


@pytest.mark.parametrize("function", BASE_LOSSES)
def test_baseline_cases_reach_every_place_an_engine_reads_differently(function):
    """[BASE-PEERS] [BASE-INPUT] [BASE-AGG-EMPTY] Each baseline has generated cases where engines part
    from the spec: NaN, +inf and -inf in the padding of logp and old_logp (and of per-token advantages)
    in every dtype; every aggregation mode (sum-norm with and without max_len) with an empty and a
    non-contiguous response and both advantage shapes; ratios exactly on and just off each clip and
    dual-clip bound for both signs of A (exact for any exp: math.exp agrees); log-ratios on and beyond
    each clamp; GRPO/DAPO with the dual clip on and off."""
    spec = FUNCTIONS[function]
    cases = [c for c in CASES if c.function == function and c.source.startswith("generated")]
    garbage = [c for c in cases if all(_nonfinite_kinds(_padding(c, k)) == {"nan", "+inf", "-inf"}
                                       for k in ("logp", "old_logp"))]
    assert {c.dtype for c in garbage} == {"float64", "float32", "bfloat16"}
    assert all("BASE-INPUT" in c.clauses for c in garbage)
    per_token = [c for c in garbage if c.inputs["advantages"].ndim == 2]
    assert per_token and all(_nonfinite_kinds(_padding(c, "advantages")) == {"nan", "+inf", "-inf"} for c in per_token)
    assert any(c.inputs["advantages"].ndim == 1 and np.isnan(_padding(c, "advantages")).any() for c in garbage)

    def holed(case):  # a response whose tokens are not contiguous
        return any(row.any() and np.ptp(np.flatnonzero(row)) + 1 > row.sum() for row in case.inputs["mask"].astype(bool))

    for mode in espo_ref.config.LOSS_AGG_MODES:
        for given_max_len in ((False, True) if mode == "seq-mean-token-sum-norm" else (False,)):
            hits = [c for c in cases if "BASE-AGG-EMPTY" in c.clauses
                    and spec.make_config(c.config or {}).loss_agg_mode == mode
                    and ((c.config or {}).get("max_len") is not None) == given_max_len
                    and not c.inputs["mask"].any(axis=1).all() and holed(c)]
            assert {c.inputs["advantages"].ndim for c in hits} == {1, 2}, (mode, given_max_len)
            assert any(c in garbage for c in hits), (mode, given_max_len)

    on, off = set(), set()
    for case in cases:
        if case.dtype != "float64":
            continue
        cfg = spec.make_config(case.config or {})
        mask, adv, log_r, ratio = _token_values(case)
        if function == "gmpo_loss":
            bounds, value = [cfg.eps_high, -cfg.eps_low], log_r
        else:
            bounds = [1.0 + cfg.eps_high] + [1.0 - cfg.eps_low] * (cfg.eps_low < 1)
            if getattr(cfg, "dual_clip", None) is not None:
                bounds.append(cfg.dual_clip)
            value = ratio
        for i, b in enumerate(bounds):
            kind = ("high", "low", "dual")[i]
            for sign in (1, -1):
                live = mask & (np.sign(adv) == sign)
                exact = live & (value == b)
                if exact.any() and (function == "gmpo_loss" or all(
                        math.exp(x) == b for x in case.expected["log_ratio"][exact])):
                    on.add((kind, sign))
                if (live & (value != b) & (np.abs(value - b) <= 64 * abs(np.spacing(b)))).any():
                    off.add((kind, sign))
    kinds = {"high", "low"} | ({"dual"} if function in ("grpo_loss", "dapo_loss") else set())
    want = {(k, s) for k in kinds for s in (1, -1)}
    assert want <= on and want <= off, (sorted(want - on), sorted(want - off))

    def beyond(case, c):
        mask, _, log_r, _ = _token_values(case)
        if function == "gspo_loss":
            log_r = np.where(mask, log_r.sum(axis=1, keepdims=True) / np.maximum(mask.sum(axis=1, keepdims=True), 1), 0)
        x = log_r[mask]
        return (x == c).any() and (x > c).any() and (function == "gspo_loss" or ((x == -c).any() and (x < -c).any()))

    if function == "gmpo_loss":  # no clamp: log-ratios far beyond any token clamp
        assert any(beyond(c, 20.0) for c in cases if c.dtype == "float64")
    else:
        default = spec.make_config({}).log_ratio_clamp
        assert any(beyond(c, default) for c in cases if (c.config or {}).get("log_ratio_clamp", default) == default)
        assert any(beyond(c, default) for c in cases if (c.config or {}).get("log_ratio_clamp", 0) is None)
        assert any("BASE-RATIO-CLAMP" in c.clauses and (c.config or {}).get("log_ratio_clamp") not in (None, default)
                   for c in cases)
    if function in ("grpo_loss", "dapo_loss"):
        assert any(c.expected["metrics"]["clipfrac_dual"] > 0 for c in cases)

        def dual_would_bind(case):
            mask, adv, _, ratio = _token_values(case)
            return (mask & (adv < 0) & (ratio > 3.0)).any()

        assert any((c.config or {}).get("dual_clip") is None and dual_would_bind(c) for c in cases)
