"""The runner's smaller promises, each with the input that broke it once (specs/conformance.md):
[CONF-CALL] scalars, lists, backends and calling conventions; [CONF-EXIT] the verdict of a run in
which nothing passed, --property's checks, the report on every path; [CONF-MISREADINGS] the
float64 twin of a lower-precision case.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import espo_ref
from espo_ref.cli import main as cli_main
from espo_ref.conformance.runner import format_report, run_conformance

pytest.importorskip("torch")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FEW = ["handworked/HW-004", "handworked/HW-006"]


def test_CONF_CALL_a_loss_of_shape_one_is_not_a_scalar():
    report = run_conformance("helpers.bad_impls:loss_of_shape_one", function="espo_loss", include=FEW,
                             isolate=True)
    assert {r.status for r in report.results} == {"fail"}
    assert all("the loss has shape (1,), not ()" in r.message for r in report.results)


def test_CONF_CALL_a_list_returned_is_the_implementations_fault_not_the_harness():
    report = run_conformance("helpers.bad_impls:returns_a_list", function="espo_loss", adapter="torch-loss",
                             include=FEW, isolate=True)
    assert {r.status for r in report.results} == {"fail"}
    assert all(r.message.startswith("unusable result: the loss is not a number: list") for r in report.results)


def test_CONF_CALL_torch_imported_inside_the_function_selects_the_torch_backend():
    report = run_conformance("helpers.bad_impls:imports_torch_inside", function="espo_loss", include=FEW,
                             isolate=True)
    assert report.backend == "torch" and report.conformant, format_report(report)
    assert "[native/torch/cpu" in format_report(report)


@pytest.mark.parametrize("impl,function,convention", [
    ("in_verl_order", "espo_loss", "verl's order"),
    ("logp_old_logp_swapped", "espo_loss", "old_logp first"),
    ("grpo_in_verl_order", "grpo_loss", "verl's order"),
])
def test_CONF_CALL_a_wrong_argument_order_is_named_when_nearly_every_case_fails(impl, function, convention):
    report = run_conformance(f"helpers.bad_impls:{impl}", function=function, profile="core", isolate=True)
    assert not report.conformant
    assert report.calling_convention is not None and convention in report.calling_convention["advice"]
    assert "calling convention: " in format_report(report)


@pytest.mark.parametrize("impl", ["espo_ref:espo_loss", "examples.later_ties:espo_loss",
                                  "helpers.bad_impls:raises_unrelated"])
def test_CONF_CALL_no_convention_is_named_for_a_right_order(impl):
    report = run_conformance(impl, function="espo_loss", profile="core", isolate=True)
    assert report.calling_convention is None
    assert "calling convention" not in format_report(report)


def test_CONF_EXIT_a_run_where_every_case_is_expected_to_fail_is_not_conformant(tmp_path, capsys):
    xfail = tmp_path / "all.txt"
    xfail.write_text("handworked/*  # everything\n")
    code = cli_main(["conform", "--impl", "helpers.bad_impls:raises_unrelated", "--function", "espo_loss",
                     "--include", "handworked/HW-00*", "--xfail-file", str(xfail)])
    out = capsys.readouterr().out
    assert code == 1 and "NOT CONFORMANT (no case passed" in out


def test_CONF_EXIT_fail_lines_list_the_cases_clauses_and_then_the_suspects(capsys):
    code = cli_main(["conform", "--impl", "examples.later_ties:espo_loss", "--function", "espo_loss",
                     "--profile", "core"])
    out = capsys.readouterr().out
    assert code == 1
    line = next(line for line in out.splitlines() if line.startswith("FAIL") and "suspects" in line)
    case_id = line.split()[1]
    case = next(c for c in espo_ref.conformance.golden.load() if c.case_id == case_id)
    assert line.split("  clauses ", 1)[1].split("  ")[0] == ",".join(case.clauses)
    assert "ESPO-GROUP-TOPFRAC" in line.split("  suspects ", 1)[1]


@pytest.mark.parametrize("argv,words", [
    (["--property", "-5"], "--property must be >= 0, got -5"),
])
def test_CONF_EXIT_bad_property_counts_are_usage_errors(argv, words, tmp_path, capsys):
    report = tmp_path / "r.json"
    code = cli_main(["conform", "--impl", "espo_ref:espo_loss", *argv, "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert json.loads(report.read_text())["conformant"] is False


def test_CONF_EXIT_property_without_hypothesis_is_one_line_and_the_files_are_written(tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "hypothesis" else find_spec(name, *a))
    report, junit = tmp_path / "r.json", tmp_path / "j.xml"
    code = cli_main(["conform", "--impl", "espo_ref:espo_loss", "--property", "5", "--report", str(report),
                     "--junit", str(junit)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--property needs the hypothesis package: pip install 'espo-ref[test]'" in err
    assert "hypothesis" in json.loads(report.read_text())["error"] and "hypothesis" in junit.read_text()


def test_CONF_ISOLATION_explain_imports_the_implementation_from_the_current_folder(tmp_path):
    (tmp_path / "my_espo.py").write_text("from espo_ref import espo_loss\n")
    subprocess.run([sys.executable, "-m", "espo_ref.cli", "conform", "--dump", "handworked/HW-004", "--to",
                    str(tmp_path)], check=True, capture_output=True, cwd=REPO)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "espo_ref.cli", "explain", "handworked__HW-004.json", "--impl",
                           "my_espo:espo_loss"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "agrees with the reference" in proc.stdout


def test_CONF_MISREADINGS_a_precision_bug_is_told_apart_on_the_float64_twin():
    report = run_conformance("helpers.bad_impls:loss_in_float16_below_float64", function="espo_loss",
                             include=["espo_loss/*/float32/*"], isolate=True)
    failed = [r for r in report.results if r.status == "fail"]
    assert failed, "rounding the loss to float16 must fail float32 cases"
    assert all("float32 precision: on the float64 twin of this case your outputs agree" in r.message for r in failed)
    assert not any(r.diagnoses for r in failed)


def test_CONF_MISREADINGS_a_misreading_on_a_float32_case_is_named_from_its_float64_twin():
    report = run_conformance("examples.later_ties:espo_loss", function="espo_loss",
                             include=["espo_loss/*/float32/*", "espo_loss/*/bfloat16/*"], isolate=True)
    named = [r for r in report.results if r.status == "fail" and r.diagnoses]
    assert named and all("on the float64 twin" in r.message for r in named)
    # topk-ties coincides with later-ties on some cases: both reproduce the outputs, both are named
    assert all("later-ties" in [d["name"] for d in r.diagnoses] for r in named)
    unnamed = [r for r in report.results if r.status == "fail" and not r.diagnoses]
    # the example also renumbers the one-group-per-token groups (grouping="token"): outside the catalogue
    assert all("no catalogued reading fits (on the float64 twin); first wrong output groups" in r.message
               for r in unnamed)


def _conformance_imports() -> dict[str, set[str]]:
    """module -> the modules of espo_ref.conformance it imports (at the top or inside a function)."""
    import ast

    package = Path(espo_ref.__file__).resolve().parent / "conformance"
    graph: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        name = ".".join(("espo_ref", "conformance") + tuple(p for p in parts if p != "__init__"))
        here = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = here
                for _ in range(max(node.level - 1, 0)):
                    base = base.rsplit(".", 1)[0]
                target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            edges.update(n for n in names if n.startswith("espo_ref.conformance"))
    return {m: {e for e in edges if e in graph and e != m} for m, edges in graph.items()}


def test_CONF_ADAPTERS_the_conformance_package_has_no_import_circle():
    graph = _conformance_imports()
    assert "espo_ref.conformance.engines.verl" in graph and graph["espo_ref.conformance.runner"]

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                # a module importing its own package (a registry's plugin) is not a circle of peers
                if nxt == start and not start.startswith(node + "."):
                    return path + [nxt]
                if nxt not in seen and not node.startswith(nxt + "."):
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    circles = [c for c in map(cycle_from, graph) if c]
    assert not circles, " ; ".join(" -> ".join(c) for c in circles)


def test_CONF_EXIT_the_summary_says_how_many_golden_cases_ran_of_all(capsys):
    """A torch run printed "123 pass" where the README says 545 cases: the rest are other functions'."""
    from espo_ref.conformance.golden import load

    code = cli_main(["conform", "--impl", "espo_ref.torch:espo_loss", "--profile", "core"])
    out = capsys.readouterr().out
    cases = load()
    core = [c for c in cases if c.function == "espo_loss" and not c.requires]
    assert code == 0
    assert f"golden cases run: {len(core)} of the {len(cases)}, those of espo_loss" in out


@pytest.mark.parametrize("argv", [["conf"], []], ids=["typo", "none"])
def test_CONF_EXIT_a_mistyped_or_missing_sub_command_is_one_line(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        cli_main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("espo-ref: error:") and "(see espo-ref --help)" in err
