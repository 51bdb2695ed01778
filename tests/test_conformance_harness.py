"""The conformance runner judged by inputs that must fail it (specs/conformance.md).

[CONF-ERRORS] no false pass, [CONF-ISOLATION] exits and hangs, [CONF-EXIT] exit codes and
reports, [CONF-LEVELS] the core profile, [CONF-COMPARE] required fields, [CONF-CALL] raw
configs, [CONF-MISREADINGS] every reading caught and named, [CONF-CASES] the dump.
"""

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import espo_ref
from espo_ref.cli import main as cli_main
from espo_ref.conformance import runner as runner_module
from espo_ref.conformance.execution import Outcome
from espo_ref.conformance.functions import OPTION_DEFAULTS, required_options
from espo_ref.conformance.golden import DATA_DIR, load
from espo_ref.conformance.misreadings import MISREADINGS, espo_reading
from espo_ref.conformance.runner import run_case, run_conformance, select
from helpers.mutants import CORE_MUTANTS, MUTANTS
from helpers.spec_clauses import CLAUSES

CASES = load()
HERE = Path(__file__).resolve().parent


def conform(*args, capsys=None):
    code = cli_main(["conform", *args])
    out = capsys.readouterr() if capsys is not None else None
    return code, out


# --- [CONF-ERRORS] / [CONF-ISOLATION]: implementations that must fail -------------------------

BAD = {
    "raises_unrelated": "raised RuntimeError: nope",
    "returns_none": "returned None",
    "loss_only": "returned no grad",
    "returns_nan": "loss: 1 of 1 bad",
    "exits": "called sys.exit(0)",
    "hard_exit": "the worker process ended",
    "wrong_shape": "shape (",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_CONF_ERRORS_bad_implementation_exits_nonzero_with_what_happened(name, tmp_path, capsys):
    report = tmp_path / "r.json"
    code, out = conform("--impl", f"helpers.bad_impls:{name}", "--function", "espo_loss", "--include", "handworked/*",
                        "--report", str(report), capsys=capsys)
    assert code == 1, out.out[-2000:]
    assert BAD[name] in out.out
    data = json.loads(report.read_text())
    assert data["conformant"] is False and data["counts"].get("fail", 0) + data["counts"].get("error", 0) > 0
    # a value case never passes; only expected-error cases may (the reference raises there)
    passed = {c["case_id"] for c in data["cases"] if c["status"] == "pass"}
    errors = {c.case_id for c in CASES if "error" in c.expected}
    assert passed <= errors


def test_CONF_ISOLATION_a_hang_is_an_error_within_the_timeout(capsys):
    code, out = conform("--impl", "helpers.bad_impls:hangs", "--function", "espo_loss",
                        "--include", "handworked/HW-004", "--include", "handworked/HW-006", "--timeout", "1",
                        capsys=capsys)
    assert code == 1
    assert out.out.count("ERROR") == 2 and "no answer within 1 s (--timeout)" in out.out


def test_CONF_ISOLATION_implementation_prints_do_not_break_the_protocol(capfd):
    code, out = conform("--impl", "helpers.bad_impls:prints_to_stdout", "--function", "espo_loss", "--include",
                        "handworked/*", capsys=capfd)
    assert code == 0 and "debug output of the implementation" in out.err


def test_CONF_ISOLATION_sys_exit_in_process_is_still_an_error():
    from helpers import bad_impls

    report = run_conformance(bad_impls.exits, function="espo_loss", include=["handworked/HW-004"])
    assert [r.status for r in report.results] == ["error"] and "sys.exit(0)" in report.results[0].message


def test_CONF_ERRORS_an_error_case_needs_the_implementation_to_raise_naming_the_argument():
    from helpers import bad_impls

    ids = ["handworked/HW-019", "handworked/HW-020", "handworked/HW-021"]
    unnamed = run_conformance(bad_impls.raises_without_argument_name, function="espo_loss", include=ids)
    assert [r.status for r in unnamed.results] == ["fail"] * 3
    assert all("does not name" in r.message for r in unnamed.results)
    # HW-021 reaches the implementation: the runner builds the config without its checks
    lenient = run_conformance(bad_impls.ignores_config_checks, function="espo_loss", include=["handworked/HW-021"])
    assert lenient.results[0].status == "fail" and "returned normally" in lenient.results[0].message
    correct = run_conformance(espo_ref.espo_loss, function="espo_loss", include=ids)
    assert [r.status for r in correct.results] == ["pass"] * 3


def test_CONF_ERRORS_an_adapter_bug_is_a_harness_error_not_a_pass():
    report = run_conformance(espo_ref.espo_loss, function="espo_loss", adapter="helpers.bad_impls:AdapterThatCrashes",
                             include=["handworked/HW-019", "handworked/HW-004"])
    assert [r.status for r in report.results] == ["error", "error"]
    assert all("adapter or runner failed" in r.message for r in report.results)


def test_CONF_COMPARE_every_loss_case_compares_loss_and_grad():
    """The numpy backend result without .grad fails every value case, naming grad."""
    from helpers import bad_impls

    report = run_conformance(bad_impls.loss_only, function="espo_loss")
    value_cases = [r for r in report.results if "error" not in next(c for c in CASES if c.case_id == r.case_id).expected]
    assert value_cases and all(r.status == "fail" and "grad" in r.message for r in value_cases)
    narrowed = run_conformance(bad_impls.loss_only, function="espo_loss", fields=["loss"])
    assert not narrowed.unexpected and "grad" in narrowed.not_compared()
    assert "not compared: " in runner_module.format_report(narrowed)


# --- [CONF-EXIT] exit status 2 and the reports ---------------------------------------------------


def _usage(args, capsys, tmp_path):
    report = tmp_path / "usage.json"
    code, out = conform(*args, "--report", str(report), capsys=capsys)
    assert code == 2, out
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("espo-ref conform: ") and "Traceback" not in out.err
    data = json.loads(report.read_text())
    assert data["error"] and data["conformant"] is False
    return lines[0]


def test_CONF_EXIT_usage_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert "--impl" in _usage(["--impl", "no_such_module:fn"], capsys, tmp_path)
    assert "--impl" in _usage(["--impl", "espo_ref"], capsys, tmp_path)
    assert "--impl" in _usage(["--impl", "espo_ref:no_such_fn"], capsys, tmp_path)
    assert "--adapter" in _usage(["--impl", "espo_ref:espo_loss", "--adapter", "nope"], capsys, tmp_path)
    assert "--function" in _usage(["--impl", "espo_ref:espo_loss", "--function", "nope"], capsys, tmp_path)
    assert "--xfail-file" in _usage(["--impl", "espo_ref:espo_loss", "--xfail-file", str(tmp_path / "missing")],
                                    capsys, tmp_path)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("espo_loss/*  # caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in _usage(["--impl", "espo_ref:espo_loss", "--xfail-file", str(latin)], capsys, tmp_path)
    assert "no case matched" in _usage(["--impl", "espo_ref:espo_loss", "--include", "nothing/*"], capsys, tmp_path)
    assert "--timeout" in _usage(["--impl", "espo_ref:espo_loss", "--timeout", "0"], capsys, tmp_path)
    code, out = conform("--impl", "espo_ref:espo_loss", "--report", str(tmp_path), capsys=capsys)
    assert code == 2 and "is a folder" in out.err


def test_CONF_EXIT_verbose_shows_the_traceback(capsys):
    code, out = conform("--impl", "no_such_module:fn", "-v", capsys=capsys)
    assert code == 2 and "Traceback" in out.err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_CONF_EXIT_device_without_cuda_is_a_usage_error(tmp_path, capsys):
    assert "CUDA is not available" in _usage(["--impl", "espo_ref.torch:espo_loss", "--backend", "torch",
                                              "--device", "cuda"], capsys, tmp_path)


def test_CONF_EXIT_checksum_mismatch_is_a_usage_error(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(DATA_DIR, data)
    objs = json.loads((data / "espo_loss.json").read_text())
    objs[0]["expected"]["loss"] = 123.0
    (data / "espo_loss.json").write_text(json.dumps(objs))
    monkeypatch.setattr(runner_module, "load", lambda: load(data))
    line = _usage(["--impl", "espo_ref:espo_loss"], capsys, tmp_path)
    assert "golden data" in line and "checksum" in line


def test_CONF_EXIT_junit_and_report_count_property_results(tmp_path, capsys):
    report, junit = tmp_path / "r.json", tmp_path / "j.xml"
    code, out = conform("--impl", "helpers.mutants:_advantages_without_bessel", "--function", "grpo_advantages",
                        "--report", str(report), "--junit", str(junit), capsys=capsys)
    assert code == 1
    suite = ET.parse(junit).getroot()
    data = json.loads(report.read_text())
    assert int(suite.get("tests")) == len(data["cases"]) and int(suite.get("failures")) == data["counts"]["fail"]
    assert suite.find("testcase/failure") is not None
    code, _ = conform("--impl", "espo_ref:espo_loss", "--profile", "core", "--property", "5",
                      "--report", str(report), capsys=capsys)
    data = json.loads(report.read_text())
    assert code == 0 and data["counts"]["pass"] == len(data["cases"])
    assert any(c["case_id"] == "property/espo_loss" for c in data["cases"])


# --- [CONF-LEVELS] the core profile -------------------------------------------------------------


def test_CONF_LEVELS_requires_is_declared_and_derived():
    raw = json.loads((DATA_DIR / "espo_loss.json").read_text())
    assert all("requires" in obj for obj in raw)
    for case in CASES:
        assert case.requires == required_options(case.function, case.config, case.kwargs)
    by_id = {c.case_id: c for c in CASES}
    assert by_id["handworked/HW-008"].requires == ["grouping=none"]
    assert by_id["handworked/HW-024"].requires == [] and by_id["espo_loss/no-clamp/float64/0"].requires == [
        "log_ratio_clamp=None"]
    assert set(OPTION_DEFAULTS) <= set(runner_module.FUNCTIONS)


def test_CONF_LEVELS_core_profile_covers_every_default_clause():
    """Core cases cite every ESPO clause except the named options, the boundaries included."""
    option_clauses = {"ESPO-GROUP-BATCH", "ESPO-GROUP-RANGES", "ESPO-GROUP-NONE", "ESPO-GROUP-TOKEN",
                      "ESPO-GROUP-DROPLOW", "ESPO-CLIP-TOKEN", "ESPO-CLIP-FIXED", "ESPO-RATIO-LITERAL"}
    core = [c for c in CASES if not c.requires]
    cited = {cl for c in core for cl in c.clauses}
    espo = {c for c in CLAUSES if c.startswith("ESPO-")}
    assert espo - option_clauses <= cited, sorted(espo - option_clauses - cited)
    core_ids = {c.case_id for c in select(CASES, "espo_loss", profile="core")}
    assert {"handworked/HW-024", "handworked/HW-025", "handworked/HW-026"} <= core_ids
    assert not core_ids & {"handworked/HW-017", "handworked/HW-022", "handworked/HW-023", "handworked/HW-008"}


@pytest.mark.parametrize("mutant", sorted(CORE_MUTANTS))
def test_CONF_LEVELS_wrong_default_variants_fail_core_with_the_misreading_named(mutant):
    report = run_conformance(MUTANTS[mutant][1], function="espo_loss", profile="core")
    failed = [r for r in report.results if r.status == "fail"]
    assert failed, f"{mutant} passed --profile core"
    assert any(d["name"] == CORE_MUTANTS[mutant] for r in failed for d in r.diagnoses), [r.message for r in failed]
    assert CORE_MUTANTS[mutant] in runner_module.format_report(report)


def test_CONF_LEVELS_reference_passes_core_and_property_selection_follows_the_profile(capsys):
    report = run_conformance(espo_ref.espo_loss, function="espo_loss", profile="core", properties=20)
    assert report.conformant
    prop = report.results[-1]
    assert prop.case_id == "property/espo_loss" and "ESPO-GROUP-NONE" not in prop.clauses
    only = run_conformance(espo_ref.espo_loss, function="espo_loss", include=["property/espo_loss/none"],
                           properties=5)
    assert [r.case_id for r in only.results] == ["property/espo_loss"]
    assert only.results[0].clauses and "ESPO-GROUP-NONE" in only.results[0].clauses


def test_CONF_LEVELS_property_failure_carries_its_case_and_can_be_dumped(tmp_path, capsys):
    report = tmp_path / "r.json"
    code, out = conform("--impl", "test_conformance_harness:later_ties_impl", "--function", "espo_loss",
                        "--include", "property/*", "--property", "40", "--report", str(report), capsys=capsys)
    assert code == 1
    assert "config {" in out.out and "inputs {" in out.out
    data = json.loads(report.read_text())
    failing = [c for c in data["cases"] if c["status"] == "fail"]
    assert failing and "case" in failing[0] and failing[0]["case"]["inputs"]
    case_id = failing[0]["case_id"]
    code, _ = conform("--dump", case_id, "--from", str(report), "--to", str(tmp_path / "d"), capsys=capsys)
    assert code == 0
    dumped = json.loads(next((tmp_path / "d").glob("*.json")).read_text())
    assert dumped["inputs"] == failing[0]["case"]["inputs"]


def later_ties_impl(logp, old_logp, entropy, mask, advantages, config):
    """A wrong implementation (ties to the later position), importable by path for the worker."""
    return MUTANTS["ties-later-first"][1](logp, old_logp, entropy, mask, advantages, config)


# --- [CONF-CASES] dump ------------------------------------------------------------------------


def test_CONF_CASES_dump_writes_json_and_npz_and_never_overwrites(tmp_path, capsys):
    code, out = conform("--dump", "handworked/HW-006", "--to", str(tmp_path), capsys=capsys)
    assert code == 0
    obj = json.loads((tmp_path / "handworked__HW-006.json").read_text())
    with np.load(tmp_path / "handworked__HW-006.npz", allow_pickle=False) as z:
        assert np.array_equal(z["inputs.mask"], np.asarray(obj["inputs"]["mask"]["data"]).reshape(z["inputs.mask"].shape))
        assert float(z["expected.loss"]) == pytest.approx(1 / 40)
        assert json.loads(str(z["config_json"]))["vocab_size"] == 16
    code, out = conform("--dump", "handworked/HW-006", "--to", str(tmp_path), capsys=capsys)
    assert code == 2 and "--force" in out.err
    code, _ = conform("--dump", "handworked/HW-006", "--to", str(tmp_path), "--force", capsys=capsys)
    assert code == 0
    code, out = conform("--dump", "no/such/case", "--to", str(tmp_path), capsys=capsys)
    assert code == 2 and "no such case" in out.err


# --- [CONF-MISREADINGS] every reading is caught by the golden cases and named ---------------------


class _Returns:
    isolated = False

    def __init__(self, outputs):
        self.outputs = outputs

    def run(self, case):
        return Outcome("outputs", self.outputs)


def test_CONF_MISREADINGS_the_reading_engine_without_switches_is_the_reference():
    for case in CASES:
        if case.function != "espo_loss" or "error" in case.expected:
            continue
        got = espo_reading(case)
        fields = [k for k in got if k in case.expected and k != "metrics"]
        res = run_case(_Returns({k: got[k] for k in fields}), case, "", fields=fields)
        assert res.status == "pass", (case.case_id, res.message)


@pytest.mark.parametrize("reading", [m for m in MISREADINGS if m.explains_error is None and m.explains_output is None],
                         ids=lambda m: m.name)
def test_CONF_MISREADINGS_every_reading_is_caught_and_named(reading):
    caught = named = 0
    for case in CASES:
        if case.function not in reading.functions or "error" in case.expected:
            continue
        out = reading.evaluate(case)
        if not out:
            continue
        fields = [k for k in out if k in case.expected and k != "metrics"]
        res = run_case(_Returns({k: out[k] for k in fields}), case, "", fields=fields)
        caught += res.status == "fail"
        named += any(d["name"] == reading.name for d in res.diagnoses)
    assert caught >= 1, f"no golden case tells {reading.name} from the reference"
    assert named == caught, f"{reading.name}: caught {caught}, named {named}"



def test_CONF_MISREADINGS_the_spec_table_lists_every_reading():
    text = (HERE.parent / "specs" / "conformance.md").read_text()
    listed = set(__import__("re").findall(r"^\| `([a-z0-9-]+)` \| \[", text, __import__("re").M))
    assert listed == {m.name for m in MISREADINGS}


def test_CONF_LEVELS_outsider_default_implementation_passes_core_and_reports_unsupported_options(capsys):
    """tests/outsider/espo_default.py was written from README.md and specs/ only."""
    import sys

    sys.path.insert(0, str(HERE / "outsider"))
    try:
        code, out = conform("--impl", "espo_default:espo_loss", "--adapter", "torch-loss", "--profile", "core",
                            capsys=capsys)
        assert code == 0, out.out[-3000:]
        code, out = conform("--impl", "espo_default:espo_loss", "--adapter", "torch-loss", capsys=capsys)
        assert code == 1 and "unsupported options (NotImplementedError): " in out.out
        assert "FAIL" not in out.out and "grouping=none" in out.out
    finally:
        sys.path.remove(str(HERE / "outsider"))


def test_CONF_MISREADINGS_padding_leak_is_named():
    import dataclasses

    def leaky(logp, old_logp, entropy, mask, advantages, config):
        out = espo_ref.espo_loss(logp, old_logp, entropy, mask, advantages, config)
        grad = out.grad + 0.0 * np.where(mask, 0.0, np.asarray(logp))  # NaN padding leaks in
        return dataclasses.replace(out, grad=grad)

    report = run_conformance(leaky, function="espo_loss", include=["handworked/HW-018"])
    assert report.results[0].status == "fail"
    assert [d["name"] for d in report.results[0].diagnoses] == ["padding-leak"]


def test_CONF_CALL_constants_arrive_attached_so_a_missing_stop_gradient_fails(capsys):
    """[ESPO-OBJ] old_logp and the advantages are constants: a torch loss must stop their
    gradient itself (old = current on a first update is common)."""
    args = ["--function", "grpo_loss", "--adapter", "torch-loss", "--include", "grpo_loss/default/*"]
    code, out = conform("--impl", "helpers.bad_impls:grpo_with_stop_gradient", *args, capsys=capsys)
    assert code == 0, out.out[-2000:]
    code, out = conform("--impl", "helpers.bad_impls:grpo_without_stop_gradient", *args, capsys=capsys)
    assert code == 1 and "grad:" in out.out
