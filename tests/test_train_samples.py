"""What a training run saves for ``espo-ref explain`` and the token view: a sampled step's first and
last mini-batch updates (the last after the policy moved, so its clipped tokens show, on both
sides), rollouts.jsonl for every algorithm, the demo report's count of the last batch's clips,
and the README's deliberately wrong implementation, which differs from the reference on such a
batch and is named by its misreading."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from espo_ref.cli import main as cli_main  # noqa: E402
from espo_ref.explain import espo_config_of, load_batch, token_view  # noqa: E402
from espo_ref.train import demo as demo_module  # noqa: E402
from espo_ref.train.config import TrainConfig  # noqa: E402
from espo_ref.train.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def parity_reward(response: str, answer: str) -> float:
    """Rewards that vary within a group even for an untrained model (the response length's parity)."""
    return float(len(response) % 2)


def short_run(out: Path, algo: str) -> TrainConfig:
    """Two steps of the tiny model, two updates each (the second after the first moved the policy),
    a sample of both steps; with seed 4 and lr 0.01 the last update of step 2 clips tokens on both
    sides (16 above, 29 below of 74 with torch 2.13 on CPU)."""
    config = TrainConfig(out_dir=str(out), algo=algo, steps=2, prompts_per_step=4, group_size=4, max_new_tokens=12,
                         model_hidden=32, model_layers=1, model_heads=2, ppo_epochs=1, minibatches=2, sft_steps=0,
                         checkpoint_every=0, seed=4, verifier="test_train_samples:parity_reward", samples_every=1,
                         samples_kept=3, lr=0.01, score_truncated=True)
    train(config, progress=False, log=lambda *_: None)
    return config


@pytest.fixture(scope="module")
def espo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("espo")
    short_run(out, "espo")
    return out


def clips(path: Path) -> tuple[int, int]:
    """(tokens clipped above 1 + eps, below 1 - eps) when the reference runs on the saved batch."""
    batch = load_batch(path)
    view = token_view(batch, espo_config_of(batch))
    return int(view.arrays["clipped_high"].sum()), int(view.arrays["clipped_low"].sum())


def test_ESPO_CLIPMASK_the_last_saved_batch_is_the_last_update_and_clips_on_both_sides(espo_run):
    """The demo's batches were all first mini-batches of a step, where the ratio is exactly 1: explain
    showed no clipped token on any of them."""
    names = sorted(p.name for p in (espo_run / "batches").glob("*.npz"))
    assert names == ["step_000001.npz", "step_000001_last.npz", "step_000002.npz", "step_000002_last.npz"]
    last = espo_run / "batches" / names[-1]
    batch = load_batch(last)
    assert batch.logged["update"] == "epoch 1/1, mini-batch 2/2" and batch.logged["step"] == 2
    # its old_logp is the rollout's, its logp the moved policy's: ratios are no longer 1
    assert not np.allclose(batch.inputs["logp"], batch.inputs["old_logp"])
    high, low = clips(last)
    assert high > 0 and low > 0, (high, low)
    # the reference reproduces the loss the trainer logged on that update
    view = token_view(batch, espo_config_of(batch))
    assert view.loss == pytest.approx(batch.logged["loss"], rel=1e-5, abs=1e-7)
    # a step's first update has ratio 1: nothing is clipped there
    assert clips(espo_run / "batches" / "step_000002.npz") == (0, 0)


def test_ESPO_GROUP_rollouts_come_from_the_last_update_and_name_its_batch(espo_run):
    records = [json.loads(line) for line in (espo_run / "rollouts.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 1, 1, 2, 2, 2]
    assert {r["batch"] for r in records} == {"batches/step_000001_last.npz", "batches/step_000002_last.npz"}
    for r in records:
        batch = load_batch(espo_run / r["batch"])
        n = len(r["tokens"])
        assert batch.tokens[r["index"]][:n] == r["tokens"] and len(r["group"]) == len(r["eps"]) == n


def test_demo_report_says_how_many_tokens_the_last_batch_clips(espo_run):
    line = demo_module.last_batch_line(espo_run)
    high, low = clips(espo_run / "batches" / "step_000002_last.npz")
    assert f"batches/step_000002_last.npz` (step 2, the step's last update: epoch 1/1, mini-batch 2/2" in line
    assert f"clipped above 1 + eps (A > 0) and {low} below 1 - eps" in line and f"has {high} of its" in line
    assert f"espo-ref explain {espo_run / 'batches' / 'step_000002_last.npz'}" in line


def test_demo_saves_a_last_batch_of_its_last_step():
    """The demo's README commands name batches/step_<DEMO_STEPS>_last.npz: the demo samples its last
    step and makes more than one update per step."""
    settings = demo_module.DEMO_SETTINGS
    assert settings["ppo_epochs"] * settings["minibatches"] > 1
    assert demo_module.demo_config("runs/demo").samples_every  # (the last step is always sampled)


def test_a_baselines_rollouts_are_written(tmp_path):
    """gspo/rollouts.jsonl of the demo was empty: only ESPO steps were sampled."""
    out = tmp_path / "gspo"
    short_run(out, "gspo")
    records = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 1, 1, 2, 2, 2]
    for r in records:
        n = len(r["tokens"])
        assert n and len(r["entropy"]) == len(r["clipped"]) == len(r["trained"]) == n
        assert set(r["clipped"]) <= {"", "high", "low"}
        assert r["group"] is None and r["eps"] is None and r["batch"] is None  # no entropy groups, no ESPO batch
    assert any(side for r in records for side in r["clipped"])  # the last update clips
    assert not (out / "batches").exists() and not (out / "token_view.html").exists()


# --- the README's deliberately wrong implementation ---------------------------------------------


def readme_wrong_impl_command() -> list[str]:
    """The README's `espo-ref explain ... --impl examples....` command, as words."""
    commands = [line.split("#")[0].strip() for line in README.read_text().splitlines()
                if line.startswith("espo-ref explain") and "--impl examples." in line]
    assert len(commands) == 1, commands
    return shlex.split(commands[0])


def console_script(args: list[str], *, cwd: Path, lib: Path) -> subprocess.CompletedProcess:
    """``espo-ref ARGS`` as the installed console script runs it: espo_ref imported from ``lib`` (a
    folder holding only a link to it), the current folder not on the import path (the runner must
    put it there for ``--impl examples....``)."""
    code = ("import os, sys; sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())]; "
            "from espo_ref.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(lib)}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_readme_wrong_implementation_command_names_the_demo_batch_and_an_example():
    words = readme_wrong_impl_command()
    assert words[:2] == ["espo-ref", "explain"]
    batch = Path(words[2])
    assert batch == Path("runs/demo") / "espo" / "batches" / f"step_{demo_module.DEMO_STEPS:06d}_last.npz"
    impl = words[words.index("--impl") + 1]
    module = impl.split(":")[0]
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), impl
    # the README's first explain command shows the same batch
    plain = [line.split("#")[0].split() for line in README.read_text().splitlines()
             if line.startswith("espo-ref explain runs/")]
    assert ["espo-ref", "explain", str(batch)] in plain


def test_CONF_MISREADINGS_the_readme_wrong_implementation_differs_on_a_last_batch_and_is_named(espo_run, tmp_path,
                                                                                              monkeypatch):
    """examples/later_ties.py agreed with the reference on every demo batch (no ties there); the
    README's example is run here as the README gives it, from the repository root, on a last batch."""
    words = readme_wrong_impl_command()
    batch = tmp_path / "step_last.npz"
    batch.write_bytes((espo_run / "batches" / "step_000002_last.npz").read_bytes())
    lib = tmp_path / "lib"  # espo_ref alone, so that only the current folder can provide examples/
    lib.mkdir()
    (lib / "espo_ref").symlink_to(ROOT / "espo_ref")
    done = console_script([words[1], str(batch), *words[3:]], cwd=ROOT, lib=lib)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "DIFFERS from the reference" in done.stdout
    assert re.search(r"misreading that reproduces your outputs: literal-eq9 \[ESPO-RATIO-TOKEN\]", done.stdout), \
        done.stdout
    # on a step's first batch (ratio 1, pi = pi_old) the misreading agrees with the reference
    first = tmp_path / "step_first.npz"
    first.write_bytes((espo_run / "batches" / "step_000002.npz").read_bytes())
    monkeypatch.chdir(ROOT)
    assert cli_main(["explain", str(first), "--impl", words[words.index("--impl") + 1]]) == 0


def test_CONF_MISREADINGS_a_float32_batch_is_diagnosed_on_float64_inputs(tmp_path, capsys, monkeypatch):
    """A trainer saves float32 batches; the diagnosis runs on the batch's float64 twin, whose arrays were
    still float32: the reading then computed log-ratios in float32 and missed the float64 outputs of
    literal_eq9 (on the demo's last batch "no catalogued reading fits")."""
    from espo_ref.explain import save_batch

    rng = np.random.default_rng(0)
    logp = -rng.exponential(2.0, size=(4, 12)).astype(np.float32)
    old_logp = (logp + rng.normal(0.0, 0.02, size=logp.shape)).astype(np.float32)
    entropy = rng.uniform(0.0, 2.0, size=logp.shape).astype(np.float32)
    path = tmp_path / "b.npz"
    save_batch(path, dict(logp=logp, old_logp=old_logp, entropy=entropy, mask=np.ones(logp.shape, bool),
                          advantages=np.array([1.0, -1.0, 0.5, -0.5], np.float32)), {"vocab_size": 16})
    monkeypatch.chdir(ROOT)
    capsys.readouterr()
    assert cli_main(["explain", str(path), "--impl", "examples.literal_eq9:espo_loss"]) == 1
    assert "misreading that reproduces your outputs: literal-eq9 [ESPO-RATIO-TOKEN]" in capsys.readouterr().out
