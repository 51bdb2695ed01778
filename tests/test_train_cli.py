"""The CLI contract of ``espo-ref train`` and ``espo-ref demo``: exit 0 success, 1 the run's
own negative result (a non-finite loss) or a failed checkpoint write (a full disk), 2 a
usage or input error; one line on stderr naming the flag, file (and JSONL line), folder or
step; a traceback only with -v; nothing deleted or overwritten that this invocation did
not create unless --overwrite."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from espo_ref.cli import main as cli_main  # noqa: E402
from espo_ref.train import checkpoint as ckpt  # noqa: E402
from espo_ref.train import demo as demo_module  # noqa: E402
from espo_ref.train import trainer as trainer_module  # noqa: E402
from espo_ref.train.metrics import read_metrics  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"
TINY = ["--prompts-per-step", "2", "--group-size", "4", "--model-hidden", "32", "--model-layers", "1",
        "--model-heads", "2", "--max-new-tokens", "10", "--quiet"]


def run_cli(capsys, *args):
    """(exit status, stderr) of ``espo-ref ARGS`` run in this process."""
    capsys.readouterr()
    try:
        code = cli_main([str(a) for a in args])
    except SystemExit as e:  # argparse
        code = e.code
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def train_args(out, *extra):
    return ["train", "--out", out, "--steps", "1", *TINY, *extra]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- item 1: the demo never deletes what it did not write without --overwrite ----------------


@pytest.fixture
def tiny_demo(monkeypatch):
    settings = dict(demo_module.DEMO_SETTINGS, model_hidden=32, model_layers=1, model_heads=2, prompts_per_step=2,
                    group_size=2, max_new_tokens=10, sft_steps=2, sft_batch=4, eval_prompts=2, checkpoint_every=1)
    monkeypatch.setattr(demo_module, "DEMO_SETTINGS", settings)


def test_demo_refuses_a_folder_holding_a_demo_folder(tmp_path, capsys):
    mine = tmp_path / "espo" / "my-notes.txt"
    mine.parent.mkdir()
    mine.write_text("keep me")
    code, err = run_cli(capsys, "demo", "--out", tmp_path, "--steps", "1", "--quiet")
    line = one_line(err)
    assert code == 2 and str(tmp_path / "espo") in line and "--overwrite" in line, line
    assert mine.read_text() == "keep me"
    assert not (tmp_path / "warmstart").exists() and not (tmp_path / "report.md").exists()


def test_demo_refuses_an_earlier_report(tmp_path, capsys):
    (tmp_path / "report.md").write_text("an earlier report")
    code, err = run_cli(capsys, "demo", "--out", tmp_path, "--quiet")
    assert code == 2 and "report.md" in one_line(err)
    assert (tmp_path / "report.md").read_text() == "an earlier report"


def test_demo_overwrite_replaces_only_what_a_demo_writes(tmp_path, capsys, tiny_demo):
    assert run_cli(capsys, "demo", "--out", tmp_path, "--steps", "1", "--quiet")[0] == 0
    mine = [tmp_path / "espo" / "my-notes.txt", tmp_path / "warmstart" / "notes.txt", tmp_path / "data.jsonl"]
    for path in mine:
        path.write_text("keep me")
    assert run_cli(capsys, "demo", "--out", tmp_path, "--steps", "1", "--quiet")[0] == 2
    code, err = run_cli(capsys, "demo", "--out", tmp_path, "--steps", "2", "--quiet", "--overwrite")
    assert code == 0, err
    assert all(path.read_text() == "keep me" for path in mine)
    assert [r["step"] for r in read_metrics(tmp_path / "espo")] == [1, 2]
    assert (tmp_path / "report.md").exists() and (tmp_path / "gspo" / "checkpoints" / "latest.json").exists()
    # a 2-step run's summaries are over its 2 steps, and say so (not "last 10")
    report = (tmp_path / "report.md").read_text()
    assert "reward, last 2 |" in report and "last 10" not in report


def test_demo_steps_zero_is_a_usage_error(tmp_path, capsys):
    code, err = run_cli(capsys, "demo", "--out", tmp_path, "--steps", "0")
    assert code == 2 and "--steps" in one_line(err)


# --- item 3: any file of a run marks it; --resume needs a run ------------------------------


def test_a_run_without_checkpoints_is_not_replaced(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, *train_args(out, "--checkpoint-every", "0", "--seed", "1"))[0] == 0
    before = {name: (out / name).read_bytes() for name in ("metrics.jsonl", "config.json")}
    code, err = run_cli(capsys, *train_args(out, "--checkpoint-every", "0", "--seed", "2"))
    line = one_line(err)
    assert code == 2 and str(out) in line and "--resume" in line and "--overwrite" in line, line
    assert {name: (out / name).read_bytes() for name in before} == before
    code, err = run_cli(capsys, "train", "--out", out, "--resume", "--steps", "2", "--quiet")
    line = one_line(err)
    assert code == 2 and str(out) in line and "no checkpoint" in line, line


@pytest.mark.parametrize("marker", ["metrics.jsonl", "config.json", "report.md", "reward.png", "checkpoints"])
def test_any_file_of_a_run_marks_the_folder(tmp_path, marker):
    out = tmp_path / "run"
    out.mkdir()
    (out / marker).mkdir() if marker == "checkpoints" else (out / marker).write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        trainer_module.check_out_dir(out, resume=False, overwrite=False)


@pytest.mark.parametrize("make", [False, True])
def test_resume_of_a_folder_without_a_run_is_an_error(tmp_path, capsys, make):
    out = tmp_path / "nothing"
    if make:
        out.mkdir()
        (out / "notes.txt").write_text("x")
    code, err = run_cli(capsys, "train", "--out", out, "--resume", "--steps", "1", "--quiet")
    line = one_line(err)
    assert code == 2 and str(out) in line and "holds no run" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] if make else not out.exists()


def test_train_overwrite_replaces_only_the_runs_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, *train_args(out, "--checkpoint-every", "1"))[0] == 0
    (out / "notes.txt").write_text("keep me")
    code, err = run_cli(capsys, *train_args(out, "--overwrite", "--steps", "2", "--checkpoint-every", "0"))
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "keep me"
    assert not (out / "checkpoints").exists() and [r["step"] for r in read_metrics(out)] == [1, 2]


# --- item 4: a diverging run is the run's own negative result ------------------------------


def test_diverging_run_stops_with_step_minibatch_and_value(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_cli(capsys, *train_args(out, "--steps", "3", "--lr", "1e30", "--score-truncated", "true",
                                            "--verifier", "test_train:length_verifier"))
    line = one_line(err)
    assert code == 1, line
    assert "non-finite loss at step 1" in line and "mini-batch" in line and ("nan" in line or "inf" in line), line
    assert "step-000000" in line
    assert ckpt.latest_checkpoint(out / "checkpoints").name == "step-000000"
    assert read_metrics(out) == []


def test_no_checkpoint_of_diverged_weights(tmp_path, monkeypatch):
    """Weights made non-finite by a step's last update are not saved: the last good
    checkpoint stays the latest."""
    real = trainer_module.train_step

    def poisoning_step(run, step, **kwargs):
        record = real(run, step, **kwargs)
        with torch.no_grad():
            next(run.model.parameters()).view(-1)[0] = float("nan")
        return record

    monkeypatch.setattr(trainer_module, "train_step", poisoning_step)
    config = trainer_module.TrainConfig(out_dir=str(tmp_path / "run"), steps=2, prompts_per_step=2, group_size=4,
                                        max_new_tokens=10, model_hidden=32, model_layers=1, model_heads=2,
                                        checkpoint_every=1)
    with pytest.raises(trainer_module.NonFiniteLossError, match=r"non-finite model weights nan at step 1 "
                                                                r"\(after its last update\)"):
        trainer_module.train(config, progress=False)
    assert ckpt.latest_checkpoint(Path(config.out_dir) / "checkpoints").name == "step-000000"


def test_a_nonfinite_metric_is_reported_not_averaged_away(tmp_path, monkeypatch):
    """approx_kl of one mini-batch update is infinite: the step's value is infinite, the
    record names it, and a warning says which step and mini-batch."""
    real = trainer_module.compute_loss
    calls = {"n": 0}

    def inf_kl_once(*args, **kwargs):
        result = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            result.metrics["approx_kl"] = float("inf")
        return result

    monkeypatch.setattr(trainer_module, "compute_loss", inf_kl_once)
    logged = []
    config = trainer_module.TrainConfig(out_dir=str(tmp_path / "run"), steps=2, prompts_per_step=2, group_size=4,
                                        max_new_tokens=10, model_hidden=32, model_layers=1, model_heads=2,
                                        checkpoint_every=0)
    trainer_module.train(config, progress=False, log=logged.append)
    first, second = read_metrics(config.out_dir)
    assert first["approx_kl"] == math.inf and first["nonfinite_metrics"] == ["approx_kl"]
    assert math.isfinite(second["approx_kl"]) and "nonfinite_metrics" not in second
    assert any("step 1: metric approx_kl is inf" in m and "mini-batch 2/2" in m for m in logged), logged


# --- item 6: prompt + max_new_tokens against the model's positions ---------------------------


@pytest.mark.parametrize("length", [1_000_000, 404])
def test_a_prompt_longer_than_the_models_positions_is_refused(tmp_path, capsys, length):
    """The tiny model has 256 positions: a 1 MB prompt (which would make transformers try
    to allocate a terabyte) and a 405-token one (<bos> + 404 characters) are refused before
    the first step, naming the JSONL line."""
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "1+1", "answer": "2"}) + "\n"
                    + json.dumps({"prompt": "x" * length, "answer": "2"}) + "\n")
    out = tmp_path / "run"
    code, err = run_cli(capsys, *train_args(out, "--task", f"jsonl:{data}"))
    line = one_line(err)
    assert code == 2 and line.startswith(f"espo-ref train: {data}:2: the prompt is {length + 1} tokens"), line
    assert "256 (max_position_embeddings)" in line and "--max-new-tokens" in line
    assert not out.exists()


def test_a_prompt_that_fits_only_without_the_response_budget_is_refused(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "x" * 240, "answer": "2"}) + "\n")  # <bos> + 240: 241 tokens
    assert run_cli(capsys, *train_args(tmp_path / "a", "--task", f"jsonl:{data}", "--max-new-tokens", "15"))[0] == 0
    code, err = run_cli(capsys, *train_args(tmp_path / "b", "--task", f"jsonl:{data}", "--max-new-tokens", "16"))
    assert code == 2 and f"{data}:1:" in one_line(err) and "257 positions" in err


# --- item 7: one line and the right status instead of a traceback ------------------------------


class Evil:
    def __reduce__(self):
        return (os.mkdir, (os.environ["ESPO_REF_EVIL_MARKER"],))


@pytest.fixture
def verifiers(tmp_path, monkeypatch):
    """Verifier modules on sys.path: one that raises on import, one that raises when called."""
    (tmp_path / "raising_on_import.py").write_text("raise RuntimeError('broken at import')\n")
    (tmp_path / "raising_verifier.py").write_text("def verify(response, answer):\n    return 1 / 0\n")
    (tmp_path / "string_verifier.py").write_text("def verify(response, answer):\n    return 'yes'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


CASES = [
    ("missing verifier module", ["--verifier", "no_such_module_xyz:verify"], 2,
     "--verifier no_such_module_xyz:verify: no module named 'no_such_module_xyz'"),
    ("missing verifier function", ["--verifier", "math:no_such_fn"], 2, "has no attribute 'no_such_fn'"),
    ("verifier raising on import", ["--verifier", "raising_on_import:verify"], 2,
     "importing 'raising_on_import' raised RuntimeError: broken at import"),
    ("verifier raising", ["--verifier", "raising_verifier:verify", "--score-truncated", "true"], 2,
     "at step 1: --verifier raising_verifier:verify raised ZeroDivisionError"),
    ("verifier returning a string", ["--verifier", "string_verifier:verify", "--score-truncated", "true"], 2,
     "at step 1: --verifier string_verifier:verify: the verifier returned 'yes'"),
    ("unknown task option", ["--task-options", '{"bogus": 1}'], 2,
     "--task-options: unknown option(s) 'bogus' for task arith"),
    ("task options not an object", ["--task-options", "[1, 2]"], 2,
     "argument --task-options: expected a JSON object"),
    ("task options not JSON", ["--task-options", "{bogus"], 2, "argument --task-options: not valid JSON"),
    ("bad task option value", ["--task-options", '{"max_operand": "9"}'], 2, "'max_operand' must be an integer"),
    ("unknown flag", ["--bogus"], 2, "unrecognized arguments: --bogus"),
    ("bad flag value", ["--steps", "x"], 2, "argument --steps: invalid int value"),
    ("bad config value", ["--group-size", "1"], 2, "--group-size: group_size must be >= 2"),
]


@pytest.mark.parametrize("name, extra, status, text", CASES, ids=[c[0] for c in CASES])
def test_input_errors_are_one_line(tmp_path, capsys, verifiers, name, extra, status, text):
    code, err = run_cli(capsys, *train_args(tmp_path / "run", *extra))
    line = one_line(err)
    assert code == status and text in line, line


def test_verbose_adds_the_traceback(tmp_path, capsys, verifiers):
    code, err = run_cli(capsys, *train_args(tmp_path / "run", "--verifier", "raising_on_import:verify", "-v"))
    assert code == 2 and "Traceback" in err and "broken at import" in err.splitlines()[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tmp_path, capsys):
    code, err = run_cli(capsys, *train_args(tmp_path / "run", "--device", "cuda"))
    line = one_line(err)
    assert code == 2 and "--device cuda: CUDA is not available" in line


def test_an_evil_pickle_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("ESPO_REF_EVIL_MARKER", str(marker))
    evil = tmp_path / "evil.pt"
    torch.save({"weight": Evil()}, evil)
    code, err = run_cli(capsys, *train_args(tmp_path / "run", "--init-weights", evil))
    line = one_line(err)
    assert code == 2 and f"--init-weights {evil}: refused" in line and "posix.mkdir" in line, line
    assert not marker.exists()


@pytest.mark.parametrize("content, text", [
    (b"not a torch file", "not a torch tensor file"),
    ("tensor", "not a state_dict"),
    ("wrong keys", "does not fit the model"),
])
def test_init_weights_that_are_not_the_models(tmp_path, capsys, content, text):
    path = tmp_path / "weights.pt"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "wrong keys":
        torch.save({"other.weight": torch.zeros(3)}, path)
    else:
        path.write_bytes(content)
    code, err = run_cli(capsys, *train_args(tmp_path / "run", "--init-weights", path))
    assert code == 2 and f"--init-weights {path}" in one_line(err) and text in err


class FullDisk:
    """A file whose writes fail with ENOSPC after a few bytes (torch reports that as
    RuntimeError('... unexpected pos ...'))."""

    def __init__(self, path):
        self.file = open(path, "wb")
        self.written = 0

    def write(self, data):
        self.written += len(data)
        if self.written > 64:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.file.write(data)

    def flush(self):
        self.file.flush()

    def fileno(self):
        return self.file.fileno()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_a_full_disk_at_a_checkpoint(tmp_path, capsys, monkeypatch):
    """Exit 1 (the environment failed the run, the command was right); one line naming the
    checkpoint and 'no space left'; the previous checkpoint stays the latest, no temp folder."""
    real = ckpt._writer
    monkeypatch.setattr(ckpt, "_writer", lambda path: FullDisk(path) if "step-000001" in str(path) else real(path))
    out = tmp_path / "run"
    code, err = run_cli(capsys, *train_args(out, "--steps", "2", "--checkpoint-every", "1"))
    line = one_line(err)
    assert code == 1, line
    assert f"cannot write checkpoint {out / 'checkpoints' / 'step-000001'}: no space left on device" in line
    assert "unexpected pos" not in line and "step-000000" in line
    assert ckpt.latest_checkpoint(out / "checkpoints").name == "step-000000"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest.json", "step-000000"]


def test_a_full_disk_while_writing_metrics(tmp_path, capsys, monkeypatch):
    from espo_ref.train.metrics import MetricsLog

    class FullFile:
        def __init__(self, file):
            self.file = file

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

        def close(self):
            self.file.close()

    real_init = MetricsLog.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.file = FullFile(self.file)

    monkeypatch.setattr(MetricsLog, "__init__", init)
    out = tmp_path / "run"
    code, err = run_cli(capsys, *train_args(out))
    line = one_line(err)
    assert code == 1 and f"cannot write {out / 'metrics.jsonl'}: no space left on device" in line, line


# --- item 9: stale temp folders, check before import, latest.json stays inside -------------


def test_stale_temp_folders_of_dead_processes_are_removed_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, *train_args(out, "--checkpoint-every", "1"))[0] == 0
    folder = out / "checkpoints"
    dead, alive = dead_pid(), os.getppid()
    names = {f".step-000002.tmp-{dead}": False, f".step-000002.tmp-{alive}": True,  # name: kept?
             ".step-2.tmp-1": True, f"step-000002.tmp-{dead}": True, f".step-000002.tmp-{dead}x": True}
    for name in names:
        (folder / name).mkdir()
        (folder / name / "weights.pt").write_bytes(b"x" * 1000)
    code, err = run_cli(capsys, "train", "--out", out, "--resume", "--steps", "2", "--quiet")
    assert code == 0, err
    assert {name: (folder / name).exists() for name in names} == names


def test_resume_checks_the_config_before_importing_its_verifier(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run_cli(capsys, *train_args(out, "--checkpoint-every", "1"))[0] == 0
    marker = tmp_path / "imported"
    (tmp_path / "side_effect_verifier.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef verify(response, answer):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**saved, "verifier": "side_effect_verifier:verify"}))
    code, err = run_cli(capsys, "train", "--out", out, "--resume", "--steps", "2", "--quiet")
    line = one_line(err)
    assert code == 2 and "different configuration" in line and "verifier" in line, line
    assert not marker.exists() and "side_effect_verifier" not in sys.modules


@pytest.mark.parametrize("pointer", ["../../elsewhere", "/tmp", "step-000001/../../x", "step-1", 3])
def test_latest_json_may_not_leave_the_checkpoints_folder(tmp_path, capsys, pointer):
    out = tmp_path / "run"
    assert run_cli(capsys, *train_args(out, "--checkpoint-every", "1"))[0] == 0
    (out / "checkpoints" / "latest.json").write_text(json.dumps({"step": 1, "path": pointer}))
    code, err = run_cli(capsys, "train", "--out", out, "--resume", "--steps", "2", "--quiet")
    line = one_line(err)
    assert code == 2 and "latest.json" in line and "refusing" in line, line


def test_latest_json_through_a_link_to_outside_is_refused(tmp_path):
    folder = tmp_path / "checkpoints"
    (tmp_path / "outside" / "step-000001").mkdir(parents=True)
    folder.mkdir()
    (folder / "step-000001").symlink_to(tmp_path / "outside" / "step-000001")
    (folder / "latest.json").write_text(json.dumps({"step": 1, "path": "step-000001"}))
    with pytest.raises(ValueError, match="outside"):  # TrainInputError: exit 2
        ckpt.latest_checkpoint(folder)


# --- item 10: the demo's time, measured, is the same in --help and the README --------------


def test_demo_time_is_stated_in_help_and_readme(capsys):
    from espo_ref.train.cli import DEMO_TIME

    with pytest.raises(SystemExit):
        cli_main(["demo", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert DEMO_TIME in shown and "measured" in DEMO_TIME
    train_section = README.read_text().split("## Train", 1)[1].split("\n## ", 1)[0]
    assert DEMO_TIME in " ".join(train_section.split())


def test_a_second_training_into_the_same_out_is_refused_while_the_first_runs(tmp_path, capsys):
    """Both used to pass the start-up check; one then wrote the other's metrics and config."""
    import fcntl
    import os

    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / ".espo-ref.lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242\n")
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running training holds
    try:
        code, err = run_cli(capsys, *train_args(out))
        line = one_line(err)
        assert code == 2 and "another training (pid 4242) is writing there" in line and str(out) in line, line
        assert sorted(p.name for p in out.iterdir()) == [".espo-ref.lock"]  # nothing written beside it
    finally:
        os.close(fd)
    code, err = run_cli(capsys, *train_args(out))
    assert code == 0, err
    assert (out / "metrics.jsonl").exists()


@pytest.mark.parametrize("command", ["train", "demo"])
def test_train_and_demo_without_torch_say_which_extra_to_install(tmp_path, command):
    """A `pip install -e .` has no torch: "internal error: ModuleNotFoundError", exit 1, before."""
    out = tmp_path / "run"
    code = ("import sys; sys.modules['torch'] = None\n"  # import torch raises ModuleNotFoundError, as uninstalled
            "from espo_ref.cli import main\n"
            f"sys.exit(main([{command!r}, '--out', {str(out)!r}, '--steps', '1']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"espo-ref {command}: needs the torch package: pip install 'espo-ref[train]' "
                                   "(in a checkout: pip install -e '.[train]')")
    assert not out.exists()


def test_a_raw_pickle_for_init_weights_is_one_line_without_torchs_warning(tmp_path):
    """torch.load warned about the pickle protocol (two lines on stderr) before the refusal; a
    process of its own, so that stderr is what a user sees (pytest would catch the warning)."""
    import pickle

    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}, protocol=4))
    argv = [str(a) for a in train_args(tmp_path / "run", "--init-weights", raw)]
    proc = subprocess.run([sys.executable, "-m", "espo_ref.cli", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "pickle protocol" not in proc.stderr and str(raw) in proc.stderr
