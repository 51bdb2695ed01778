"""``espo-ref explain``: the reference on one batch per token, an implementation's differences on it,
and the batches and rollouts a training run saves for it."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from espo_ref.cli import main
from espo_ref.explain import Batch, compare, espo_config_of, load_batch, save_batch, token_view
from espo_ref.explain.html import explain_page

ROOT = Path(__file__).resolve().parent.parent
V = 16


def ties_batch(path: Path) -> Path:
    """One response of 4 tokens whose entropies (1.0, 2.0, 2.0, 0.5) tie at the top: with rho = 0.2,
    n_high = ceil(0.8) = 1 and the spec ([ESPO-GROUP-TOPFRAC]) puts the earlier tie, token "b",
    alone in the high group."""
    logp = np.array([[-1.0, -0.5, -0.7, -2.0]])
    old = logp - np.array([[0.01, -0.02, 0.03, 0.0]])
    save_batch(path, dict(logp=logp, old_logp=old, entropy=np.array([[1.0, 2.0, 2.0, 0.5]]),
                          mask=np.ones((1, 4), bool), advantages=np.array([1.0])), {"vocab_size": V},
               tokens=[["a", "b", "c", "d"]])
    return path


def run_cli(capsys, *argv):
    code = main(["explain", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_ESPO_GROUP_TOPFRAC_explain_shows_the_groups_and_clips_worked_by_hand(tmp_path):
    view = token_view(load_batch(ties_batch(tmp_path / "b.npz")), espo_config_of(load_batch(tmp_path / "b.npz")))
    rows = view.rows(0)
    assert [r["group"] for r in rows] == [1, 0, 1, 1]
    # group 1 = {a, c, d}: log s = mean(0.01, 0.03, 0.0); eps = 0.02 * mean(1.0, 2.0, 0.5) / log 16
    log_s1, eps1 = (0.01 + 0.03 + 0.0) / 3, 0.02 * (3.5 / 3) / math.log(V)
    log_s0, eps0 = -0.02, 0.02 * 2.0 / math.log(V)
    for r, (log_s, eps) in zip(rows, [(log_s1, eps1), (log_s0, eps0), (log_s1, eps1), (log_s1, eps1)]):
        assert r["ratio"] == pytest.approx(math.exp(log_s), rel=1e-12)
        assert r["eps_high"] == pytest.approx(eps, rel=1e-12)
    # A = 1 > 0: clipped above where exp(log s) > 1 + eps: group 1 yes (1.0134 > 1.0084), "b" no (0.980)
    assert [r["clipped"] for r in rows] == ["high", "", "high", "high"]
    # Eq. 5: J = (1/K) sum over groups of the group mean; K = 2, and the clipped group contributes
    # clip(s) A = (1 + eps1); the high group s0 A
    want = -0.5 * ((1 + eps1) + math.exp(log_s0))
    assert view.loss == pytest.approx(want, rel=1e-12)


def test_CONF_MISREADINGS_explain_names_the_first_differing_tokens_and_the_misreading(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    batch = ties_batch(tmp_path / "b.npz")
    code, out, err = run_cli(capsys, batch, "--impl", "later_ties:espo_loss")
    assert code == 1, err
    assert "later-ties [ESPO-GROUP-TOPFRAC]" in out and "first differing tokens" in out
    # later ties put "c" (position 2) in the high group instead of "b" (position 1)
    view = token_view(load_batch(batch), espo_config_of(load_batch(batch)))
    comparison = compare(view, "later_ties:espo_loss")
    groups = {(d.position, d.token): (d.reference, d.yours) for d in comparison.differences if d.field == "groups"}
    assert groups == {(1, "b"): (0.0, 1.0), (2, "c"): (1.0, 0.0)}
    assert comparison.first(1)[0].position == 0 and comparison.status == "fail"
    page = (tmp_path / "b.explain.html").read_text()
    assert "later-ties" in page and 'id="differences"' in page and "differs" in page


def test_CONF_MISREADINGS_explain_with_a_conformant_implementation_exits_0(tmp_path, capsys):
    code, out, _ = run_cli(capsys, ties_batch(tmp_path / "b.npz"), "--impl", "espo_ref.torch:espo_loss")
    assert code == 0 and "agrees with the reference" in out


def test_ESPO_CONFIG_explain_flags_override_the_batchs_config(tmp_path):
    batch = load_batch(ties_batch(tmp_path / "b.npz"))
    # rho = 0.5 of L = 4: n_high = 2, the two tied entropies
    view = token_view(batch, espo_config_of(batch, {"top_fraction": 0.5}))
    assert [r["group"] for r in view.rows(0)] == [1, 0, 0, 1]


def test_explain_reads_the_dump_of_conform_as_json_and_npz(tmp_path, capsys):
    assert main(["conform", "--dump", "espo_loss/default/float64/1", "--to", str(tmp_path)]) == 0
    capsys.readouterr()
    stem = tmp_path / "espo_loss__default__float64__1"
    npz, js = load_batch(stem.with_suffix(".npz")), load_batch(stem.with_suffix(".json"))
    case = json.loads(stem.with_suffix(".json").read_text())
    for batch in (npz, js):
        view = token_view(batch, espo_config_of(batch))
        assert view.loss == pytest.approx(case["expected"]["loss"], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("problem, word", [
    ("missing", "advantages"), ("pickle", "pickles"), ("no-vocab", "--vocab-size"), ("bad-option", "grouping"),
    ("suffix", ".npz or .json"), ("absent", "no such file"), ("mask", "boolean or 0/1"),
    ("folder", "is a folder; give one batch file (.npz or .json) (it holds b.npz)"),
    ("html-folder", "is a folder; give the page's file name"), ("html-no-folder", "does not exist"),
    ("html-unwritable", "cannot write it"),
])
def test_explain_input_errors_exit_2_with_one_line(tmp_path, capsys, problem, word):
    path = ties_batch(tmp_path / "b.npz")
    extra = []
    if problem == "missing":
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files if k != "inputs.advantages"}
        np.savez(path, **arrays)
    elif problem == "pickle":
        np.savez(path, **{"inputs.logp": np.array([{"a": 1}], dtype=object)})
    elif problem == "no-vocab":
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files if k != "config_json"}
        np.savez(path, **arrays)
    elif problem == "bad-option":
        extra = ["--grouping", "nonsense"]
    elif problem == "mask":  # a half-true mask position: the loss's own mask check names it
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        arrays["inputs.mask"] = np.array([[1.0, 0.5, 1.0, 1.0]])
        np.savez(path, **arrays)
    elif problem == "suffix":
        path = path.rename(tmp_path / "b.txt")
    elif problem == "html-folder":
        extra = ["--html", str(tmp_path)]
    elif problem == "html-no-folder":
        extra = ["--html", str(tmp_path / "absent" / "page.html")]
    elif problem == "html-unwritable":  # a folder no file can be created in, even by root
        extra = ["--html", "/proc/espo-ref-page.html"]
    elif problem == "folder":  # a run's batches/ folder given whole
        (tmp_path / "batches").mkdir()
        path = path.rename(tmp_path / "batches" / "b.npz").parent
    else:
        path = tmp_path / "absent.npz"
    code, out, err = run_cli(capsys, path, *extra)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and word in err and "Traceback" not in err


def test_explain_never_overwrites_a_page_it_did_not_write(tmp_path, capsys):
    batch = ties_batch(tmp_path / "b.npz")
    page = tmp_path / "b.explain.html"
    page.write_text("mine")
    code, _, err = run_cli(capsys, batch)
    assert code == 2 and "--force" in err and page.read_text() == "mine"
    code, _, _ = run_cli(capsys, batch, "--force")
    assert code == 0 and "espo-ref explain" in page.read_text()


def test_explain_page_colours_each_token_by_group_and_marks_clips(tmp_path):
    batch = load_batch(ties_batch(tmp_path / "b.npz"))
    page = explain_page(token_view(batch, espo_config_of(batch)))
    spans = [line for line in page.split("<span class=\"tok ")[1:] if "data-key=\"0-" in line]
    assert [s.split('"')[0] for s in spans] == ["g1 clip-high", "g0", "g1 clip-high", "g1 clip-high"]
    assert page.count('<tr id="row-0-') == 4 and "http" not in page.split("<body>")[1]


def test_batch_tokens_must_match_the_batch(tmp_path):
    with pytest.raises(Exception, match="tokens must be 1 rows"):
        from espo_ref.explain import _tokens_from

        _tokens_from([["a"], ["b"]], (1, 4), "x")
    batch = Batch({"mask": np.ones((1, 2), bool)})
    assert batch.token(0, 1) == "#1"


# --- from a training run -----------------------------------------------------------------------


def parity_reward(response: str, answer: str) -> float:
    """A verifier whose reward varies with the response (its length's parity), so that even an
    untrained model gets non-zero advantages."""
    return float(len(response) % 2)


@pytest.fixture(scope="module")
def espo_run(tmp_path_factory):
    torch = pytest.importorskip("torch")  # noqa: F841
    from espo_ref.train.config import TrainConfig
    from espo_ref.train.trainer import train

    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(out_dir=str(out), steps=3, prompts_per_step=4, group_size=4, max_new_tokens=12,
                         model_hidden=32, model_layers=1, model_heads=2, ppo_epochs=1, minibatches=2, sft_steps=0,
                         checkpoint_every=0, seed=5, verifier="test_explain:parity_reward", samples_every=2,
                         samples_kept=3, lr=0.05, score_truncated=True)
    train(config, progress=False, log=lambda *_: None)
    return out


def test_ESPO_OBJ_explain_reproduces_the_loss_the_trainer_logged(espo_run, capsys):
    batches = sorted((espo_run / "batches").glob("step_*.npz"))
    assert [p.name for p in batches] == [f"step_{s:06d}{last}.npz" for s in (1, 2, 3) for last in ("", "_last")]
    for path in batches:
        batch = load_batch(path)
        view = token_view(batch, espo_config_of(batch))
        assert batch.logged["loss"] != 0.0  # the parity reward makes advantages non-zero
        # the trainer's loss is torch float32 on the same tensors; the reference recomputes in float64
        assert view.loss == pytest.approx(batch.logged["loss"], rel=1e-5, abs=1e-7)
    code, out, _ = run_cli(capsys, batches[-1])
    assert code == 0 and "reproduced by the reference" in out


def test_ESPO_GROUP_training_writes_rollouts_and_a_token_view(espo_run):
    records = [json.loads(line) for line in (espo_run / "rollouts.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in records}) == [1, 2, 3] and all(len([r for r in records if r["step"] == s]) == 3
                                                                     for s in (1, 2, 3))
    for r in records:
        n = len(r["tokens"])
        assert n and all(len(r[k]) == n for k in ("entropy", "group", "eps", "clipped", "trained"))
        assert set(r["group"]) <= {0, 1} and 0 in r["group"]
        batch = load_batch(espo_run / r["batch"])
        assert batch.tokens[r["index"]][:n] == r["tokens"]
        np.testing.assert_array_equal(np.asarray(r["entropy"], dtype=np.float32),
                                      batch.inputs["entropy"][r["index"], :n])
    page = (espo_run / "token_view.html").read_text()
    assert "Step 1" in page and "Step 3" in page and "Step 2" not in page


def test_explain_shows_escape_sequences_in_a_batch_as_text_never_as_control(tmp_path, capsys):
    """ANSI/OSC escapes in crafted tokens or logged values cleared the screen, set the title or
    overwrote the verdict lines."""
    path = tmp_path / "b.npz"
    logp = np.array([[-1.0, -0.5, -0.7, -2.0]])
    save_batch(path, dict(logp=logp, old_logp=logp - 0.01, entropy=np.array([[1.0, 2.0, 2.0, 0.5]]),
                          mask=np.ones((1, 4), bool), advantages=np.array([1.0])), {"vocab_size": V},
               tokens=[["\x1b[2J", "b", "\x1b]0;pwned\x07", "\u202ed"]], logged={"loss": 0.1, "step": "\x1b[1A\r"})
    code, out, err = run_cli(capsys, path, "--rows", "10")
    assert code == 0, err
    assert not any(c in out for c in "\x1b\x07\r\u202e")
    assert "\\x1b[2J" in out and "\\x1b]0;pwned\\x07" in out and "\\x1b[1A\\x0d" in out
