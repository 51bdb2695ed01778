"""[CONF-FILES] Issue 20's file probes, rerun through the command line: each hostile file is one line
on stderr naming the file (and the line or the key), exit 2, no traceback (items 3, 5 and 7:
explain's 15 batch files, train --resume's run files, a task's JSONL line, a decompression bomb
refused before it is decompressed)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from espo_ref.cli import main
from espo_ref.conformance.arrays import encode
from espo_ref.explain import save_batch
from helpers.hostile_files import npz_bomb

LOGP = np.array([[-1.0, -0.5, -0.7, -2.0]])
INPUTS = dict(logp=LOGP, old_logp=LOGP - 0.01, entropy=np.array([[1.0, 2.0, 2.0, 0.5]]), mask=np.ones((1, 4), bool),
              advantages=np.array([1.0]))
GOOD = {"inputs": {k: encode(v) for k, v in INPUTS.items()}, "config": {"vocab_size": 16}}


def run(capsys, *argv) -> tuple[int, str]:
    """(exit status, the one line on stderr) of ``espo-ref ARGV`` in this process."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return code, lines[0]


def batch_json(tmp_path, change) -> Path:
    obj = copy.deepcopy(GOOD)
    change(obj)
    path = tmp_path / "b.json"
    path.write_text(json.dumps(obj))
    return path


def batch_npz(tmp_path, **extra) -> Path:
    path = tmp_path / "b.npz"
    save_batch(path, INPUTS, {"vocab_size": 16}, **extra)
    return path


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(obj):
        node = obj
        for key in keys[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return change


_DELETE = object()

# (probe, how the JSON batch is changed, the key the message names, words it says)
JSON_PROBES = [
    ("shape does not match data", _set("inputs", "logp", "shape", [2, 4]), "inputs.logp",
     "data must be a list of 8 elements for shape [2, 4], got 4"),
    ("no dtype", _set("inputs", "logp", "dtype", _DELETE), "inputs.logp", "the keys dtype, shape and data"),
    ("dtype object", _set("inputs", "logp", "dtype", "object"), "inputs.logp", "unknown encoded dtype 'object'"),
    ("ragged encoded data", _set("inputs", "logp", "data", [[-1.0, -0.5], [-0.7]]), "inputs.logp",
     "data must be a list of 4 elements"),
    ("ragged plain array", _set("inputs", "logp", [[-1.0, -0.5, -0.7, -2.0], [-1.0]]), "inputs.logp",
     "a ragged array: level 2 holds 1 elements where the first row has 4"),
    ("encoded data of dicts", _set("inputs", "logp", "data", [{"a": 1}] * 4), "inputs.logp",
     "float64 data holds a value that is not a number"),
    ("plain array of dicts", _set("inputs", "logp", [[{"a": 1}, {"b": 2}, {}, {}]]), "inputs.logp",
     "an array holding an object"),
    ("inputs a list", _set("inputs", [1, 2]), "inputs", "must be a JSON object of arrays"),
    ("logged loss a string", _set("logged", {"loss": "abc"}), "logged.loss", "must be a number, got a string"),
    ("logged loss a list", _set("logged", {"loss": [1, 2]}), "logged.loss", "must be a number, got an array"),
    ("config a list", _set("config", [16]), "config", "must be a JSON object, got an array"),
]


@pytest.mark.parametrize("name, change, key, words", JSON_PROBES, ids=[p[0] for p in JSON_PROBES])
def test_CONF_FILES_explain_refuses_a_malformed_json_batch_in_one_line(tmp_path, capsys, name, change, key, words):
    path = batch_json(tmp_path, change)
    code, line = run(capsys, "explain", path)
    assert code == 2 and line.startswith(f"espo-ref explain: {path}: {key}: ") and words in line, line
    assert not (tmp_path / "b.explain.html").exists()


def test_CONF_FILES_explain_refuses_json_nested_200000_deep_in_its_own_process(tmp_path):
    """In a process of its own, with the interpreter's real stack: it was a RecursionError, exit 1."""
    path = tmp_path / "deep.json"
    path.write_bytes(b'{"inputs": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")
    proc = subprocess.run([sys.executable, "-m", "espo_ref.cli", "explain", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.strip() == (f"espo-ref explain: {path}: JSON nested 200,001 levels deep, more than the 64 "
                                   f"allowed; refused before parsing")


@pytest.mark.parametrize("probe", ["truncated", "logged loss a string", "config nested deep", "tokens ragged",
                                   "object array"])
def test_CONF_FILES_explain_refuses_a_malformed_npz_batch_in_one_line(tmp_path, capsys, probe):
    if probe == "truncated":
        path = batch_npz(tmp_path)
        path.write_bytes(path.read_bytes()[:700])
        key, words = None, "not a zip archive (no end-of-directory record: not a zip, or truncated)"
    elif probe == "logged loss a string":
        path = batch_npz(tmp_path, logged={"loss": "abc"})
        key, words = "logged.loss", "must be a number, got a string 'abc'"
    elif probe == "config nested deep":
        path = tmp_path / "b.npz"
        arrays = {f"inputs.{k}": v for k, v in INPUTS.items()}
        np.savez(path, **arrays, config_json=np.str_('{"vocab_size": ' + "[" * 100_000 + "]" * 100_000 + "}"))
        key, words = "config_json", "JSON nested 100,001 levels deep"
    elif probe == "tokens ragged":
        path = batch_npz(tmp_path)
        arrays = dict(np.load(path))
        np.savez(path, **arrays | {"tokens": np.array(["a", "b"])})
        key, words = None, "tokens must be 1 rows of token strings"
    else:
        path = tmp_path / "b.npz"
        np.savez(path, **{f"inputs.{k}": v for k, v in INPUTS.items()} | {"config_json": np.str_("{}")},
                 tokens=np.array([[{"a": 1}]], dtype=object))
        key, words = "tokens", "holds Python objects (a pickle); files are read without pickles"
    code, line = run(capsys, "explain", path)
    prefix = f"espo-ref explain: {path}: " + (f"{key}: " if key else "")
    assert code == 2 and line.startswith(prefix) and words in line, line


def test_CONF_FILES_explain_refuses_a_decompression_bomb_before_decompressing(tmp_path, capsys):
    """Item 7: a 1.5 MB .npz that decompresses to 1.6 GB drove explain to 1.6 GB of memory; now it is
    refused from the zip's directory, with a few MiB at the peak."""
    path = npz_bomb(tmp_path / "bomb.npz")
    assert path.stat().st_size < 2_000_000
    tracemalloc.start()
    try:
        code, line = run(capsys, "explain", path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 2 and line == (f"espo-ref explain: {path}: its arrays declare 1,600,000,128 bytes decompressed, "
                                  f"more than the 256 MiB allowed; refused before decompressing anything")
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"


# --- train and --resume -------------------------------------------------------------------------

TINY = ["--prompts-per-step", "2", "--group-size", "4", "--model-hidden", "32", "--model-layers", "1",
        "--model-heads", "2", "--max-new-tokens", "10", "--quiet", "--samples-every", "0"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run of one step with its checkpoints, copied by each probe before it is broken."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("probe-run") / "run"
    assert main(["train", "--out", str(out), "--steps", "1", "--checkpoint-every", "1", *TINY]) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def resume(capsys, out) -> tuple[int, str]:
    return run(capsys, "train", "--out", out, "--resume", "--steps", "2", "--quiet")


def _state(out: Path) -> Path:
    return out / "checkpoints" / "step-000001" / "state.json"


def _edit_state(out: Path, change) -> Path:
    path = _state(out)
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state))
    return path


DEEP = "[" * 200_000 + "]" * 200_000

RESUME_PROBES = [
    ("latest.json nested deep", lambda out: (out / "checkpoints" / "latest.json").write_text(DEEP),
     "checkpoints/latest.json: not a checkpoint pointer (JSON nested 200,000 levels deep"),
    ("config.json nested deep", lambda out: (out / "config.json").write_text('{"task_options": ' + DEEP + "}"),
     "--resume: {out}/config.json: JSON nested 200,001 levels deep"),
    ("config.json a wrong type", lambda out: (out / "config.json").write_text(
        json.dumps({**json.loads((out / "config.json").read_text()), "device": 5})),
     "--resume: {out}/config.json: device: must be a string, got a number"),
    ("state.json nested deep", lambda out: _state(out).write_text(DEEP),
     "state.json: JSON nested 200,000 levels deep"),
    ("state.json rng a string", lambda out: _edit_state(out, _set("rng", "x")),
     "state.json: rng: must be an object with 'python' and 'numpy', got a string"),
    ("state.json rng python wrong", lambda out: _edit_state(out, _set("rng", "python", [3, "x", None])),
     "state.json: rng: 'python' must be [3, 625 ints"),
    ("state.json rng numpy keys strings", lambda out: _edit_state(
        out, lambda s: s["rng"]["numpy"].__setitem__(1, ["a"] * 624)), "state.json: rng: 'numpy' must be"),
    ("state.json step a string", lambda out: _edit_state(out, _set("step", "1")),
     "state.json: step: must be an int >= 0, got a string '1'"),
    ("state.json step a float", lambda out: _edit_state(out, _set("step", 1.5)),
     "state.json: step: must be an int >= 0, got a number 1.5"),
    ("state.json negative step", lambda out: _edit_state(out, _set("step", -3)),
     "state.json: step: must be an int >= 0, got a number -3"),
    ("state.json summary a list", lambda out: _edit_state(out, _set("summary", [1])),
     "state.json: summary: must be an object, got an array"),
    ("metrics.jsonl not UTF-8", lambda out: (out / "metrics.jsonl").write_bytes(b'{"step": 1, "x": "\xff\xfe"}\n'),
     "{out}/metrics.jsonl:1: not UTF-8 (invalid start byte at byte 18)"),
    ("metrics.jsonl line nested deep", lambda out: (out / "metrics.jsonl").write_text(DEEP + "\n" + '{"step": 1}\n'),
     "{out}/metrics.jsonl:1: JSON nested 200,000 levels deep"),
    ("metrics.jsonl a list", lambda out: (out / "metrics.jsonl").write_text('[1]\n{"step": 1}\n'),
     "{out}/metrics.jsonl:1: expected a JSON object, got an array"),
    ("rng.pt not the rng", lambda out: __import__("torch").save({"torch": [1]}, out / "checkpoints" / "step-000001"
                                                                / "rng.pt"),
     "rng.pt: not the RNG states of a checkpoint"),
]


@pytest.mark.parametrize("name, breaks, words", RESUME_PROBES, ids=[p[0] for p in RESUME_PROBES])
def test_CONF_FILES_train_resume_refuses_a_malformed_run_file_in_one_line(run_copy, capsys, name, breaks, words):
    """Item 5: these were 'internal error', exit 1 (or exit 2 without the file's name)."""
    breaks(run_copy)
    code, line = resume(capsys, run_copy)
    assert code == 2 and words.format(out=run_copy) in line, line
    assert line.startswith("espo-ref train: ") and "internal error" not in line


def test_CONF_FILES_a_task_jsonl_line_nested_deep_is_refused_naming_the_line(tmp_path, capsys):
    pytest.importorskip("torch")
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "1+1?", "answer": 2}\n{"prompt": ' + DEEP + ', "answer": 1}\n')
    code, line = run(capsys, "train", "--out", tmp_path / "run", "--steps", "1", "--task", f"jsonl:{data}", *TINY)
    assert code == 2 and f"{data}:2: JSON nested 200,001 levels deep" in line, line


def test_CONF_FILES_init_weights_with_a_compressed_member_is_refused_before_torch_load(tmp_path, capsys):
    """A tensor file whose member is deflated could expand without bound inside torch.load."""
    import zipfile

    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(3)}, path)
    with zipfile.ZipFile(path) as z:
        members = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(name, data)
    code, line = run(capsys, "train", "--out", tmp_path / "run", "--steps", "1", "--init-weights", path, *TINY)
    assert code == 2 and f"--init-weights {path}: w/data.pkl: a compressed member" in line, line


def test_CONF_FILES_task_options_nested_deep_is_a_usage_error(tmp_path, capsys):
    code, line = run(capsys, "train", "--out", tmp_path / "run", "--task-options", "[" * 100_000 + "]" * 100_000)
    assert code == 2 and "argument --task-options: JSON nested 100,000 levels deep" in line, line
