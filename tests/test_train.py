"""The trainer (espo_ref.train): a 3-step CPU training per algorithm, exact resume,
the non-finite guard, the JSONL loader, verifiers, metrics and plots, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from espo_ref.cli import main as cli_main  # noqa: E402
from espo_ref.train import ALGOS, TrainConfig, train  # noqa: E402
from espo_ref.train import checkpoint as ckpt  # noqa: E402
from espo_ref.train import trainer as trainer_module  # noqa: E402
from espo_ref.train.losses import LOSSES, loss_config  # noqa: E402
from espo_ref.train.metrics import read_metrics  # noqa: E402
from espo_ref.train.rollout import response_mask_of, score, build_rollout  # noqa: E402
from espo_ref.train.tasks import (ArithTask, ReverseTask, exact_match, load_jsonl, load_verifier,  # noqa: E402
                                  make_task, numeric_match)
from espo_ref.train.tokenizer import CharTokenizer  # noqa: E402

STEP_KEYS = ("reward", "accuracy", "response_length", "entropy", "clipfrac_high", "clipfrac_low", "approx_kl",
             "grad_norm", "tokens_per_s", "step_time", "gen_time", "old_logprob_time", "update_time", "loss")


def tiny(tmp_path, name="run", **changes) -> TrainConfig:
    settings = dict(out_dir=str(tmp_path / name), steps=3, prompts_per_step=2, group_size=4, max_new_tokens=20,
                    model_hidden=32, model_layers=1, model_heads=2, ppo_epochs=2, minibatches=2, sft_steps=3,
                    sft_batch=8, checkpoint_every=1, score_truncated=True, seed=3)
    settings.update(changes)
    return TrainConfig(**settings)


# --- training -----------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGOS)
def test_train_three_steps_per_algorithm(tmp_path, algo):
    config = tiny(tmp_path, algo=algo)
    summary = train(config, progress=False)
    records = read_metrics(config.out_dir)
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        for key in STEP_KEYS:
            assert key in r and math.isfinite(r[key]), (algo, key, r.get(key))
        assert 0.0 <= r["reward"] <= 1.0 and 0.0 <= r["clipfrac_high"] <= 1.0
    if algo == "espo":
        for key in ("clipfrac_high_group", "clipfrac_low_group", "eps_mean_high_group", "eps_mean_low_group"):
            assert key in records[0], key
    assert summary["steps"] == 3
    out = Path(config.out_dir)
    for name in ("reward.png", "entropy.png", "clipfrac.png", "summary.json", "config.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "reward.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ckpt.latest_checkpoint(out / "checkpoints").name == "step-000003"


def test_ratios_move_and_clipping_acts(tmp_path):
    """Several mini-batch updates per rollout: the later ones see ratios != 1."""
    config = tiny(tmp_path, steps=2, lr=3e-3, ppo_epochs=2, minibatches=2, sft_steps=0,
                  verifier="test_train:length_verifier")  # rewards differ within a group
    train(config, progress=False)
    records = read_metrics(config.out_dir)
    assert all(r["advantage_abs_mean"] > 0 for r in records)
    assert all(r["approx_kl"] > 0 for r in records)
    assert any(r["clipfrac"] > 0 for r in records)


def _weights(out_dir):
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(Path(out_dir) / "checkpoints"))["weights"]


def test_resume_is_bit_identical(tmp_path, monkeypatch):
    """A run that crashes after step 3's metrics (before its checkpoint) and is resumed ends
    with the same weights, bit for bit, as the uninterrupted run."""
    straight = tiny(tmp_path, "straight", steps=4, checkpoint_every=2)
    train(straight, progress=False)

    broken = tiny(tmp_path, "broken", steps=4, checkpoint_every=2)
    real_save = ckpt.save_checkpoint

    def crash_at_step_3(ckpt_dir, step, *args, **kwargs):
        if step == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_save(ckpt_dir, step, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(broken.replace(checkpoint_every=1), progress=False)  # checkpoints 1, 2; crash at 3
    monkeypatch.setattr(ckpt, "save_checkpoint", real_save)
    assert [r["step"] for r in read_metrics(broken.out_dir)] == [1, 2, 3]
    with pytest.raises(ValueError, match="different configuration"):
        train(broken.replace(lr=0.5), resume=True, progress=False)
    train(broken.replace(checkpoint_every=1), resume=True, progress=False)

    a, b = _weights(straight.out_dir), _weights(broken.out_dir)
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"weights differ after resume: {differing}"
    rewards = lambda d: [(r["step"], r["reward"], r["loss"]) for r in read_metrics(d)]
    assert rewards(straight.out_dir) == rewards(broken.out_dir)


def test_refuses_to_overwrite_a_run(tmp_path):
    config = tiny(tmp_path, steps=1, sft_steps=0)
    train(config, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, progress=False)


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    real = trainer_module.compute_loss
    calls = {"n": 0}

    def nan_at_step_3(*args, **kwargs):
        result = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 2 * 4:  # steps 1-2 have 4 mini-batch updates each
            object.__setattr__(result, "loss", result.loss * float("nan"))
        return result

    monkeypatch.setattr(trainer_module, "compute_loss", nan_at_step_3)
    config = tiny(tmp_path, steps=5)
    with pytest.raises(trainer_module.NonFiniteLossError) as info:
        train(config, progress=False)
    message = str(info.value)
    assert "non-finite loss nan at step 3" in message and "mini-batch 1/2" in message
    assert "step-000002" in message
    latest = ckpt.latest_checkpoint(Path(config.out_dir) / "checkpoints")
    assert latest.name == "step-000002"
    loaded = ckpt.load_checkpoint(latest)
    assert loaded["state"]["step"] == 2
    assert all(bool(torch.isfinite(v).all()) for v in loaded["weights"].values() if v.is_floating_point())


def test_cli_train_and_resume(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "--out", str(out), "--steps", "2", "--prompts-per-step", "2", "--group-size", "2",
            "--model-hidden", "32", "--model-layers", "1", "--model-heads", "2", "--max-new-tokens", "20",
            "--checkpoint-every", "1", "--quiet", "--alpha", "0.05"]
    assert cli_main(args) == 0
    assert cli_main(["train", "--out", str(out), "--steps", "3", "--resume", "--quiet"]) == 0
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    assert json.loads((out / "config.json").read_text())["alpha"] == 0.05
    assert cli_main(["train", "--out", str(tmp_path / "bad"), "--algo", "gspo", "--alpha", "0.1", "--quiet"]) == 2
    assert "only apply to --algo espo" in capsys.readouterr().err


# --- configuration --------------------------------------------------------------------------


def test_loss_config_options():
    espo = loss_config(TrainConfig(alpha=0.05, grouping="none", log_ratio_clamp=None), 70)
    assert (espo.vocab_size, espo.alpha, espo.grouping, espo.log_ratio_clamp) == (70, 0.05, "none", None)
    gspo = loss_config(TrainConfig(algo="gspo", eps_high=1e-3), 70)
    assert (gspo.eps_low, gspo.eps_high, gspo.log_ratio_clamp) == (3e-4, 1e-3, 10.0)
    with pytest.raises(ValueError, match="only apply to --algo espo"):
        loss_config(TrainConfig(algo="grpo", top_fraction=0.1), 70)
    with pytest.raises(ValueError, match="algo must be one of"):
        TrainConfig(algo="ppo")
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        TrainConfig(group_size=1)


def test_losses_table_has_the_torch_loss_of_every_algo():
    import espo_ref.torch as backend

    assert tuple(LOSSES) == ALGOS
    for algo, loss in LOSSES.items():
        assert loss.fn is getattr(backend, f"{algo}_loss"), algo
        assert loss.takes_entropy == (algo == "espo"), algo


def test_train_step_is_its_steps_composed(tmp_path):
    """collect -> score -> old_policy -> advantages -> update return what they compute: run
    by hand on one run, they give the record train_step gives on an identical run."""
    from espo_ref.torch import grpo_advantages

    config = tiny(tmp_path, sft_steps=0)
    device = torch.device("cpu")
    with trainer_module.torch_settings(config, device):
        by_hand = trainer_module.start_run(config, device, init_weights=True)
        examples, rollout = trainer_module.collect(by_hand, 1)
        scores = trainer_module.score_step(by_hand, rollout, 1)
        old_logp, entropy = trainer_module.old_policy(by_hand, rollout, 1)
        advantages = grpo_advantages(scores.rewards, rollout.prompt_index, valid=scores.valid)
        update = trainer_module.update_policy(by_hand, rollout, old_logp, entropy, advantages, 1)

        composed = trainer_module.start_run(config, device, init_weights=True)
        record = trainer_module.train_step(composed, 1)
    B, R = rollout.response_ids.shape
    assert B == 2 * 4 and old_logp.shape == entropy.shape == (B, R) and advantages.shape == (B,)
    assert bool((old_logp[~rollout.response_mask] == 0).all()) and bool((entropy[~rollout.response_mask] == 0).all())
    assert len(update.losses) == len(update.grad_norms) == config.ppo_epochs * config.minibatches
    want = {"reward": float(scores.rewards.mean()), "loss": sum(update.losses) / len(update.losses),
            "grad_norm": sum(update.grad_norms) / len(update.grad_norms),
            "sample": f"{examples[0].prompt!r} -> {rollout.texts[0]!r}"}
    assert {key: record[key] for key in want} == want
    for a, b in zip(by_hand.model.parameters(), composed.model.parameters()):
        assert torch.equal(a, b)


def test_record_keys_follow_the_losses_metrics(tmp_path, monkeypatch):
    """A metric a loss adds reaches metrics.jsonl; the ones UNLOGGED_LOSS_METRICS names do not."""
    from espo_ref.train.metrics import UNLOGGED_LOSS_METRICS

    real = trainer_module.compute_loss

    def with_a_new_metric(*args, **kwargs):
        result = real(*args, **kwargs)
        result.metrics["a_new_metric"] = 0.25
        return result

    monkeypatch.setattr(trainer_module, "compute_loss", with_a_new_metric)
    config = tiny(tmp_path, algo="cispo", steps=1, sft_steps=0, checkpoint_every=0)
    train(config, progress=False)
    (record,) = read_metrics(config.out_dir)
    assert record["a_new_metric"] == 0.25
    assert "capped_frac" in record and not UNLOGGED_LOSS_METRICS & set(record)


def _one_step_recorded(tmp_path, monkeypatch, change=None, **loss_changes):
    """(the step's record, each update's loss inputs as float64 numpy, each call's ``validate``, the
    loss config) of step 1 of a fresh run whose loss config has ``loss_changes``; ``change(n, inputs)``
    may alter update n's inputs before the loss."""
    real = trainer_module.compute_loss
    seen = []

    def recording(algo, logp, old_logp, entropy, mask, advantages, config, **kwargs):
        inputs = [logp, old_logp, entropy, mask, advantages]
        if change is not None:
            inputs = change(len(seen), inputs)
        seen.append(([t.detach().double().numpy() if t.is_floating_point() else t.numpy() for t in inputs],
                     kwargs.get("validate", True)))
        return real(algo, *inputs, config, **kwargs)

    monkeypatch.setattr(trainer_module, "compute_loss", recording)
    config = tiny(tmp_path, sft_steps=0)
    with trainer_module.torch_settings(config, torch.device("cpu")):
        run = trainer_module.start_run(config, torch.device("cpu"), init_weights=True)
        run.loss_config = run.loss_config.replace(**loss_changes)
        record = trainer_module.train_step(run, 1)
    return record, [inputs for inputs, _ in seen], [validate for _, validate in seen], run.loss_config


def test_ESPO_METRICS_a_steps_loss_metrics_are_token_weighted_over_its_updates(tmp_path, monkeypatch):
    """[ESPO-METRICS] metrics.jsonl's loss metrics of a step of 4 updates (2 epochs x 2 mini-batches)
    are those of all the updates' tokens: espo_ref.merge_metrics of the numpy core's metrics of each
    update, where the first update's high-entropy bucket is empty (its entropies set to 0) and is
    left out of that bucket's values instead of entering them as 0."""
    import espo_ref

    def no_high_bucket_first(n, inputs):
        if n == 0:
            inputs[2] = torch.zeros_like(inputs[2])
        return inputs

    record, updates, _, config = _one_step_recorded(tmp_path, monkeypatch, no_high_bucket_first,
                                                    grouping="entropy_ranges", entropy_edges=(0.5,))
    parts = [espo_ref.espo_loss(*inputs, config).metrics for inputs in updates]
    assert len(parts) == 4 and parts[0]["high_group_tokens"] == 0 and parts[0]["eps_mean_high_group"] == 0.0
    assert all(p["high_group_tokens"] > 0 for p in parts[1:])
    want = espo_ref.merge_metrics(parts)
    logged = [key for key in want if key in record]
    assert {"clipfrac", "clipfrac_high_group", "eps_mean_high_group", "eps_mean_low_group", "approx_kl",
            "ratio_mean"} <= set(logged)
    for key in logged:
        assert record[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    plain = sum(p["eps_mean_high_group"] for p in parts) / len(parts)  # what a mean of the updates gave
    assert record["eps_mean_high_group"] != pytest.approx(plain, rel=1e-3)


def test_ESPO_INPUT_the_batch_is_validated_once_where_it_is_built(tmp_path, monkeypatch):
    """[ESPO-INPUT] The updates call the loss with validate=False; the batch was checked once, when
    old_logp, entropy and advantages were computed: a NaN entropy on a response token is refused
    there, before any update, with the message the validating loss gives on that batch."""
    _, updates, validates, _ = _one_step_recorded(tmp_path, monkeypatch)
    assert len(updates) == 4 and validates == [False] * 4

    import espo_ref
    import espo_ref.torch as et

    real_old_policy = trainer_module.old_policy
    built = {}

    def nan_entropy(run, rollout, step):
        old_logp, entropy = real_old_policy(run, rollout, step)
        row, pos = (int(i) for i in rollout.response_mask.nonzero()[3])
        entropy = entropy.clone()
        entropy[row, pos] = float("nan")
        built.update(old_logp=old_logp, entropy=entropy, mask=rollout.response_mask, config=run.loss_config)
        return old_logp, entropy

    monkeypatch.setattr(trainer_module, "old_policy", nan_entropy)
    config = tiny(tmp_path, name="bad", sft_steps=0, steps=1)
    with pytest.raises(espo_ref.ESPOInputError) as info:
        train(config, progress=False)
    assert "entropy has a non-finite value" in str(info.value) and "at response position" in str(info.value)
    with pytest.raises(espo_ref.ESPOInputError) as direct:
        et.espo_loss(built["old_logp"], built["old_logp"], built["entropy"], built["mask"],
                     torch.zeros(built["mask"].shape[0]), built["config"])
    assert str(info.value) == str(direct.value)
    assert read_metrics(config.out_dir) == []


def test_a_nonfinite_logp_in_an_update_stops_the_run(tmp_path, monkeypatch):
    """The current policy's log-probabilities are not validated in the update's loss: a NaN one on
    a response token (here put there by hand; a diverged model is caught at its logits) makes the
    loss NaN, and the run stops naming the step and mini-batch, as for any non-finite loss."""
    real = trainer_module.response_logprobs

    def nan_logp(model, batch, *args, **kwargs):
        logp, entropy = real(model, batch, *args, **kwargs)
        row, pos = (int(i) for i in batch.response_mask.nonzero()[0])
        return logp.index_put((torch.tensor([row]), torch.tensor([pos])), torch.tensor(float("nan"))), entropy

    monkeypatch.setattr(trainer_module, "response_logprobs", nan_logp)
    config = tiny(tmp_path, sft_steps=0, steps=1, checkpoint_every=0)
    with pytest.raises(trainer_module.NonFiniteLossError, match=r"non-finite loss nan at step 1 \(epoch 1/2, "
                                                                r"mini-batch 1/2\)"):
        train(config, progress=False)


def test_boolean_arguments_are_keyword_only():
    """The trainer's functions take no boolean positionally (``f(x, True)`` reads as nothing);
    a dataclass's generated __init__ aside (records such as TrainConfig are built by field name)."""
    import dataclasses
    import importlib
    import inspect

    names = ("checkpoint", "cli", "config", "demo", "errors", "losses", "metrics", "model", "rollout", "tasks",
             "tokenizer", "trainer")
    positional = []
    for name in names:
        module = importlib.import_module(f"espo_ref.train.{name}")
        for _, obj in inspect.getmembers(module, lambda o: inspect.isfunction(o) or inspect.isclass(o)):
            if obj.__module__ != module.__name__:
                continue
            functions = [obj] if inspect.isfunction(obj) else [
                f for key, f in vars(obj).items()
                if inspect.isfunction(f) and not (key == "__init__" and dataclasses.is_dataclass(obj))]
            for fn in functions:
                for param in inspect.signature(fn).parameters.values():
                    if param.kind is param.POSITIONAL_OR_KEYWORD and param.annotation in (bool, "bool"):
                        positional.append(f"{module.__name__}.{fn.__qualname__}({param.name})")
    assert not positional, positional


# --- rollout pieces ----------------------------------------------------------------------------


def test_response_mask_stops_after_eos():
    eos = 2
    ids = torch.tensor([[5, 6, eos, 0, 0], [5, eos, eos, 7, 0], [5, 6, 7, 8, 9]])
    want = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(response_mask_of(ids, eos), want)


def test_unscored_and_truncated_responses_are_invalid():
    tok = CharTokenizer()
    eos = tok.eos_token_id
    rows = [tok.encode(" the answer is 7 .") + [eos], tok.encode(" the answer is 8 .") + [eos], tok.encode(" the an")]
    width = max(len(r) for r in rows)
    r_ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    p_ids = torch.full((3, 2), tok.bos_token_id)
    rollout = build_rollout(p_ids, torch.ones_like(p_ids), r_ids, torch.zeros(3), ["7", "7", "7"], tok)
    assert rollout.texts == [" the answer is 7 .", " the answer is 8 .", " the an"]
    scores = score(rollout, ArithTask())
    assert scores.rewards.tolist() == [1.0, 0.0, 0.0] and scores.valid.tolist() == [True, True, False]
    assert scores.correct.tolist() == [True, False, False]
    assert score(rollout, ArithTask(), score_truncated=True).valid.tolist() == [True, True, True]
    skip_eights = ArithTask(verifier=lambda response, answer: None if "8" in response else 1.0)
    assert score(rollout, skip_eights).valid.tolist() == [True, False, False]


# --- tasks, verifiers, JSONL ---------------------------------------------------------------------


def test_builtin_tasks_are_seeded_and_verifiable():
    import numpy as np

    for name in ("arith", "reverse"):
        task = make_task(name)
        a, b = task.batch(5, 7, 4), task.batch(5, 7, 4)
        assert a == b and a != task.batch(5, 8, 4)
        rng = np.random.default_rng(0)
        for ex in a:
            assert task.verify(task.format_answer(ex.answer), ex.answer) == 1.0
            assert task.verify(task.format_response(ex, rng, correct_fraction=1.0), ex.answer) == 1.0
    assert ArithTask().verify(" the answer is 11 .", "11") == 1.0
    assert ArithTask().verify(" the answer is 11", "11") == 0.0
    assert ArithTask(terms=3, times=True).example(np.random.default_rng(1)).prompt.startswith("Q: ")
    assert ReverseTask().verify(" 4 1 3 .", "4 1 3") == 1.0
    assert ReverseTask().verify(" 4 1 9 .", "4 1 3") == pytest.approx(2 / 3)
    assert ReverseTask().verify(" 4 1 .", "4 1 3") == 0.0


def test_verifiers():
    assert exact_match("  42 \n", "42") == 1.0 and exact_match("42.", "42") == 0.0
    assert numeric_match("so x = 3.50", "3.5") == 1.0
    assert numeric_match("1,000 apples", "1000") == 1.0
    assert numeric_match("no number", "3") == 0.0 and numeric_match("4", "3") == 0.0
    assert load_verifier("numeric") is numeric_match
    assert load_verifier("math:isclose").__name__ == "isclose"
    with pytest.raises(ValueError, match="module:function"):
        load_verifier("fuzzy")
    task = make_task("arith", verifier="test_train:length_verifier")
    assert task.verify("abc", "x") == 3.0


def length_verifier(response: str, answer: str) -> float:
    """A user-supplied verifier for the hook test."""
    return float(len(response))


def test_jsonl_loader(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "1+1?", "answer": 2}\n\n{"prompt": "hi", "answer": "yo", "response": " yo"}\n')
    examples = load_jsonl(good)
    assert [(e.prompt, e.answer, e.response) for e in examples] == [("1+1?", "2", None), ("hi", "yo", " yo")]
    task = make_task(f"jsonl:{good}", verifier="numeric")
    assert task.verify("it is 2", "2") == 1.0
    assert len(task.batch(0, 3, 5)) == 5


@pytest.mark.parametrize("lines, line, text", [
    (['{"prompt": "a", "answer": "b"}', '{"prompt": "a", "answer": '], 2, "not valid JSON"),
    (['{"prompt": "a", "answer": "b"}', "", '["prompt", "answer"]'], 3, "expected a JSON object"),
    (['{"prompt": "a"}'], 1, "missing field 'answer'"),
    (['{"prompt": "a", "answer": "b"}', '{"prompt": 3, "answer": "b"}'], 2, "'prompt' must be a non-empty string"),
    (['{"prompt": "a", "answer": [1]}'], 1, "'answer' must be a string or a number"),
    (['{"prompt": "a", "answer": true}'], 1, "'answer' must be a string or a number"),
    (['{"prompt": "a", "answer": "b"}', '{"prompt": "a", "answer": NaN}'], 2, "'answer' must be finite"),
])
def test_jsonl_loader_rejects_malformed_lines(tmp_path, lines, line, text):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as info:
        load_jsonl(path)
    assert str(info.value).startswith(f"{path}:{line}: ") and text in str(info.value)


def test_jsonl_loader_rejects_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(ValueError, match="no examples"):
        load_jsonl(path)


def test_cli_train_options_are_config_fields():
    import dataclasses

    from espo_ref.train.cli import TRAIN_OPTIONS

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(field in fields for _, field, _, _ in TRAIN_OPTIONS)


# --- models ------------------------------------------------------------------------------------


def _local_model_folder(path: Path) -> Path:
    """A tiny Qwen2 model and a Hugging Face fast tokenizer (character-level) saved locally."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from espo_ref.train.model import build_tiny

    chars = CharTokenizer()
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(chars.tokens)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")
    build_tiny(chars, hidden=32, layers=1, heads=2).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_local_hugging_face_model_trains(tmp_path):
    folder = _local_model_folder(tmp_path / "model")
    config = tiny(tmp_path, model=str(folder), steps=2, sft_steps=2)
    summary = train(config, progress=False)
    assert summary["steps"] == 2 and len(read_metrics(config.out_dir)) == 2


def test_logits_path_matches_hidden_state_path(monkeypatch):
    """The two ways to get response log-probs and entropies [ESPO-ENT] agree."""
    from espo_ref.train import rollout as rollout_module
    from espo_ref.train.model import build_tiny

    tok = CharTokenizer()
    model = build_tiny(tok, hidden=32, layers=1, heads=2, seed=1)
    prompts = [tok.prompt_ids("Q: 1+2 = ?\nA:"), tok.prompt_ids("Q: 13+2 = ?\nA:")]
    gen = torch.Generator().manual_seed(0)
    p_ids, p_mask, r_ids = rollout_module.generate(model, prompts, eos=tok.eos_token_id, pad=tok.pad_token_id,
                                                   max_new_tokens=6, temperature=1.0, generator=gen,
                                                   device=torch.device("cpu"))
    batch = build_rollout(p_ids, p_mask, r_ids, torch.tensor([0, 1]), ["3", "15"], tok)
    hidden = rollout_module.response_logprobs(model, batch, 0.7, torch.device("cpu"), with_entropy=True)
    monkeypatch.setattr(rollout_module, "hidden_path_ok", lambda model: False)
    logits = rollout_module.response_logprobs(model, batch, 0.7, torch.device("cpu"), with_entropy=True)
    for a, b in zip(hidden, logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert bool((hidden[0][~batch.response_mask] == 0).all())


def test_jsonl_loader_names_the_line_of_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"prompt": "a", "answer": "b"}\n{"prompt": "\xff", "answer": "b"}\n')
    with pytest.raises(ValueError, match=rf"^{path}:2: not UTF-8"):
        load_jsonl(path)


def test_a_torn_last_metrics_line_is_dropped_on_read(tmp_path):
    """A run killed while writing its last metrics line can still be resumed."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "rew')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        read_metrics(path)


def test_hidden_state_path_only_when_logits_are_the_plain_head():
    """A model that scales its logits (Granite's logits_scaling) must use its own logits."""
    from transformers import GraniteConfig, GraniteForCausalLM

    from espo_ref.train.model import build_tiny, hidden_path_ok

    assert hidden_path_ok(build_tiny(CharTokenizer(), hidden=32, layers=1, heads=2))
    config = GraniteConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=2, logits_scaling=8.0)
    torch.manual_seed(0)
    assert not hidden_path_ok(GraniteForCausalLM(config))
