"""The golden vectors and the conformance runner: reproducible data, passing references,
failing mutants that name their clause, and the command line."""

import json

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
