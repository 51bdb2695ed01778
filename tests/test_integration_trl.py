"""ESPOTrainer (espo_ref.integrations.trl) against espo_ref's ESPO loss on batches TRL builds [ESPO-OBJ].

Needs trl==1.16.0 (``pip install "espo-ref[trl]"``); without it the tests that train skip, except
under CI=true, where a missing trl is a failure. Tiny Qwen3 models are built from a config and a
character tokenizer: nothing is downloaded. CPU only, about half a minute.
"""

import importlib.util
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import espo_ref
from espo_ref.tolerances import compare, tolerance

from helpers.asserts import assert_close

ROOT = Path(__file__).resolve().parent.parent
SUPPORTED_TRL = "1.16.0"
INSTALL = 'pip install "espo-ref[trl]"'


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _missing_trl() -> str | None:
    try:
        import trl
    except ImportError:
        return f"trl is not installed: {INSTALL}"
    if trl.__version__ != SUPPORTED_TRL:
        return f"trl {trl.__version__} is installed; espo_ref.integrations.trl supports exactly trl=={SUPPORTED_TRL}"
    return None


MISSING = _missing_trl()
needs_trl = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


def test_trl_is_installed():
    """Under CI=true a missing (or unsupported) trl fails the run instead of skipping it."""
    if MISSING is None:
        return
    if _in_ci():
        pytest.fail(f"{MISSING} (CI=true: the trl integration must be tested)")
    pytest.skip(MISSING)


# --- (4) import errors: no trl, and a trl of another version ------------------------------------------


def _import_integration(monkeypatch, trl_module):
    monkeypatch.delitem(sys.modules, "espo_ref.integrations.trl", raising=False)
    monkeypatch.setitem(sys.modules, "trl", trl_module)
    return importlib.import_module("espo_ref.integrations.trl")


def test_import_without_trl_names_the_extra(monkeypatch):
    with pytest.raises(ImportError) as info:
        _import_integration(monkeypatch, None)  # None in sys.modules: "import trl" raises ImportError
    assert INSTALL in str(info.value) and "trl" in str(info.value)


@pytest.mark.parametrize("version", ["1.15.0", "1.16.1", "2.0.0"])
def test_import_with_another_trl_version_fails_with_the_supported_one(monkeypatch, version):
    fake = types.ModuleType("trl")
    fake.__version__ = version
    with pytest.raises(ImportError) as info:
        _import_integration(monkeypatch, fake)
    message = str(info.value)
    assert f"trl=={SUPPORTED_TRL}" in message and f"trl {version} is installed" in message and INSTALL in message


# --- tiny model, tokenizer, data ----------------------------------------------------------------------

CHARS = list(" 0123456789+=?abcdefghijklmnopqrstuvwxyz")
PROMPTS = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(4) for b in range(4)]


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<unk>"] + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def tiny_model(seed=0):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=3 + len(CHARS), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config)


def digits_reward(completions, **kwargs):
    """Varied rewards for random completions: the share of digits."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def make_trainer(folder, model=None, **overrides):
    from datasets import Dataset

    from espo_ref.integrations.trl import ESPOGRPOConfig, ESPOTrainer

    options = dict(output_dir=str(folder), per_device_train_batch_size=8, num_generations=4,
                   max_completion_length=10, temperature=0.7, num_iterations=2, max_steps=2, logging_steps=1,
                   use_cpu=True, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True)
    options.update(overrides)
    return ESPOTrainer(model=model if model is not None else tiny_model(), reward_funcs=digits_reward,
                       args=ESPOGRPOConfig(**options), train_dataset=Dataset.from_list(PROMPTS),
                       processing_class=tiny_tokenizer())


def generation_batch(trainer, seed, prompts=2):
    """A batch built by TRL: each prompt repeated num_generations times, as its sampler does."""
    import torch

    trainer.model.train()
    torch.manual_seed(seed)
    rows = [dict(row) for row in PROMPTS[2 * seed: 2 * seed + prompts] for _ in range(trainer.num_generations)]
    return trainer._generate_and_score_completions(rows)


def model_inputs(batch):
    import torch

    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    return ids, attention, batch["completion_ids"].size(1)


def policy_logps_and_entropies(trainer, batch):
    """TRL's per-token log-probs and entropies (sampling temperature) of the trainer's model now."""
    import torch

    with torch.no_grad():
        logps, ent, _ = trainer._get_per_token_logps_and_entropies(trainer.model, *model_inputs(batch),
                                                                   compute_entropy=True)
    return logps, ent


def perturb(model, seed, scale):
    import torch

    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def trainer_loss(trainer, batch, monkeypatch, accumulation=1):
    """(loss, d loss / d logp, logp, current entropies) of ESPOTrainer._compute_loss on ``batch``, as one
    of ``accumulation`` gradient-accumulation micro-batches."""
    seen = []
    original = trainer._get_per_token_logps_and_entropies

    def spy(*args, **kwargs):
        logps, ent, aux = original(*args, **kwargs)
        logps.retain_grad()
        seen.append((logps, ent))
        return logps, ent, aux

    with monkeypatch.context() as m:
        m.setattr(trainer, "_get_per_token_logps_and_entropies", spy)
        trainer.current_gradient_accumulation_steps = accumulation
        trainer.model.zero_grad()
        loss = trainer._compute_loss(trainer.model, batch)
        loss.backward()
        trainer._log_espo_step("train")  # what the optimizer step's last micro-batch does
    (logps, ent), = seen
    return loss.detach(), logps.grad.detach(), logps.detach(), ent.detach()


def reference(logp, old_logp, entropy, mask, advantages, config):
    """espo_ref.torch.espo_loss (float32, autograd) and the numpy float64 core on the same tokens."""
    import espo_ref.torch as et

    lp = logp.clone().requires_grad_(True)
    res = et.espo_loss(lp, old_logp, entropy, mask.bool(), advantages, config)
    res.loss.backward()
    core = espo_ref.espo_loss(*(np.asarray(t.detach().double().numpy()) for t in (logp, old_logp, entropy)),
                              mask.bool().numpy(), advantages.double().numpy(), config)
    return res.loss.detach(), lp.grad, core, res.metrics


F32_VALUE = tolerance("torch", "float32", "value")  # the trainer's loss is float32 (tiny float32 models)
F32_GRAD = tolerance("torch", "float32", "grad")


# --- (1) the trainer's loss and gradient are ESPO's -------------------------------------------------------

CONFIGS = {
    "default": {},
    "grouping-none": {"grouping": "none"},
    "drop-low-group": {"drop_low_group": True},
    "ratio-literal": {"ratio_form": "literal"},
}
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def off_policy(tmp_path_factory):
    """An off-policy trainer (num_iterations=2: TRL stores old log-probs) at temperature 0.7."""
    if MISSING:
        pytest.skip(MISSING)
    return make_trainer(tmp_path_factory.mktemp("espo-trl"))


@needs_trl
@pytest.mark.parametrize("seed", SEEDS)
def test_ESPO_OBJ_trl_trainer_loss_and_gradient_equal_espo_loss(off_policy, seed, monkeypatch):
    """[ESPO-OBJ] [ESPO-ENT-DOMAIN] On a TRL batch (its completion_mask, per-completion advantages, log-probs and
    entropies from _get_per_token_logps_and_entropies), the trainer's loss and d loss / d logp equal
    espo_ref.torch.espo_loss and the float64 core, for several configs."""
    import torch

    trainer = off_policy
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    try:
        batch = generation_batch(trainer, seed)
        old_logps, old_ent = policy_logps_and_entropies(trainer, batch)  # the sampling policy's, recomputed
        assert torch.equal(batch["old_per_token_logps"], old_logps)
        assert torch.equal(batch["old_per_token_entropies"], old_ent)
        perturb(trainer.model, seed, scale=0.01)  # the policy moved since sampling
        mask, adv = batch["completion_mask"], batch["advantages"]
        assert adv.shape == (mask.shape[0],) and bool(mask.any())
        clipped = 0.0
        for name, options in CONFIGS.items():
            trainer.espo_config = trainer.args.espo_config(trainer.espo_config.vocab_size).replace(**options)
            loss, grad, logp, _ = trainer_loss(trainer, batch, monkeypatch)
            want_loss, want_grad, core, metrics = reference(logp, old_logps, old_ent, mask, adv, trainer.espo_config)
            assert_close(loss, want_loss, F32_VALUE, "ESPO-OBJ", f"{name}, seed {seed}: loss vs espo_ref.torch")
            assert_close(grad, want_grad, F32_GRAD, "ESPO-OBJ",
                         f"{name}, seed {seed}: d loss / d logp vs espo_ref.torch")
            assert_close(loss, core.loss, F32_VALUE, "ESPO-OBJ", f"{name}, seed {seed}: loss vs the float64 core")
            assert_close(grad, core.grad, F32_GRAD, "ESPO-OBJ",
                         f"{name}, seed {seed}: d loss / d logp vs the float64 core")
            assert trainer._metrics["train"]["espo/clipfrac"][-1] == pytest.approx(metrics["clipfrac"], abs=1e-6)
            clipped = max(clipped, metrics["clipfrac"])
        assert 0.0 < clipped < 1.0, "the perturbation should clip some tokens and not all"
    finally:
        trainer.model.load_state_dict(state)
        trainer.espo_config = trainer.args.espo_config(trainer.espo_config.vocab_size)


@needs_trl
def test_on_policy_loss_uses_the_current_entropies_detached(tmp_path, monkeypatch):
    """On-policy (TRL stores no old log-probs), old log-probs and entropies are the current ones, detached:
    every ratio is 1 and the loss is ESPO's on the current entropies; with gradient accumulation, each
    micro-batch's loss is divided by the number of micro-batches (as TRL's loss_type="grpo")."""
    trainer = make_trainer(tmp_path, num_iterations=1)
    batch = generation_batch(trainer, 0)
    assert "old_per_token_logps" not in batch and "old_per_token_entropies" not in batch
    loss, grad, logp, ent = trainer_loss(trainer, batch, monkeypatch)
    want_loss, want_grad, core, metrics = reference(logp, logp, ent, batch["completion_mask"], batch["advantages"],
                                                    trainer.espo_config)
    assert metrics["ratio_mean"] == 1.0 and metrics["clipfrac"] == 0.0
    assert_close(loss, want_loss, F32_VALUE, "ESPO-OBJ", "on-policy loss")
    assert_close(grad, want_grad, F32_GRAD, "ESPO-OBJ", "on-policy d loss / d logp")
    assert_close(grad, core.grad, F32_GRAD, "ESPO-OBJ", "on-policy d loss / d logp vs the float64 core")
    loss, grad, _, _ = trainer_loss(trainer, batch, monkeypatch, accumulation=4)
    assert_close(loss, want_loss / 4, F32_VALUE, "ESPO-OBJ", "on-policy loss, 1 of 4 accumulated micro-batches")
    assert_close(grad, want_grad / 4, F32_GRAD, "ESPO-OBJ",
                 "on-policy d loss / d logp, 1 of 4 accumulated micro-batches")


# --- (2) the entropy of the loss is the old policy's, at the sampling temperature -------------------------


@needs_trl
def test_ESPO_ENT_DOMAIN_trl_loss_uses_the_old_policys_entropy(off_policy, monkeypatch):
    """[ESPO-ENT-DOMAIN] The entropies stored at generation are Eq. 6 of the sampling policy at the sampling
    temperature (checked against the float64 core on the model's logits), and the loss after a weight change
    uses them, not the current policy's."""
    import torch

    trainer = off_policy
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    try:
        batch = generation_batch(trainer, 3)
        stored = batch["old_per_token_entropies"]
        mask = batch["completion_mask"].bool()
        ids, attention, keep = model_inputs(batch)
        with torch.no_grad():
            logits = trainer.model(input_ids=ids, attention_mask=attention).logits[:, -keep - 1:-1]
        want = espo_ref.token_entropy(logits.double().numpy(), temperature=trainer.args.temperature)
        report = compare(stored.numpy()[mask.numpy()], want[mask.numpy()],
                         tolerance("torch-logprob", "float32", "value"))
        assert report["ok"], f"[ESPO-ENT-DOMAIN] stored entropy vs Eq. 6 at the sampling temperature: {report}"
        at_one = espo_ref.token_entropy(logits.double().numpy(), temperature=1.0)
        assert np.abs(at_one - want)[mask.numpy()].max() > 1e-2  # the temperature matters for this check

        perturb(trainer.model, 3, scale=0.2)  # change the weights between generation and the loss
        loss, grad, logp, current = trainer_loss(trainer, batch, monkeypatch)
        assert (current - stored)[mask].abs().max() > 1e-2, "the weight change should move the entropies"
        old_logp = batch["old_per_token_logps"]
        with_old, grad_old, _, _ = reference(logp, old_logp, stored, mask, batch["advantages"], trainer.espo_config)
        with_current, grad_current, _, _ = reference(logp, old_logp, current, mask, batch["advantages"],
                                                     trainer.espo_config)
        assert_close(loss, with_old, F32_VALUE, "ESPO-ENT-DOMAIN", "loss with the stored (old) entropies")
        assert_close(grad, grad_old, F32_GRAD, "ESPO-ENT-DOMAIN", "gradient with the stored (old) entropies")
        assert not compare(np.asarray(grad), np.asarray(grad_current), tolerance("torch", "float32", "grad"))["ok"], \
            "the current entropies give another gradient, so this test tells the two apart"
    finally:
        trainer.model.load_state_dict(state)


# --- (3) a 2-step training run logs ESPO's metrics --------------------------------------------------------

ESPO_KEYS = ("espo/clipfrac", "espo/clipfrac_high_group", "espo/clipfrac_low_group", "espo/eps_mean_high_group",
             "espo/eps_mean_low_group")


@needs_trl
def test_two_step_training_logs_espo_metrics(tmp_path):
    """[ESPO-METRICS] Two optimizer steps on one generation batch (the second off-policy, on the stored
    entropies): TRL's logs carry ESPO's metrics, and the weights moved."""
    import torch

    trainer = make_trainer(tmp_path, learning_rate=1e-2, per_device_train_batch_size=4)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 2
    log_v = math.log(trainer.espo_config.vocab_size)
    for h in steps:
        for key in ESPO_KEYS:
            assert key in h and math.isfinite(h[key]), f"{key} missing from the logs: {sorted(h)}"
        for key in ("espo/clipfrac", "espo/clipfrac_high_group", "espo/clipfrac_low_group"):
            assert 0.0 <= h[key] <= 1.0
        assert h["espo/eps_mean_high_group"] == pytest.approx(0.02 * h["espo/entropy_mean_high_group"] / log_v,
                                                              rel=1e-5)
        assert h["espo/eps_mean_high_group"] >= h["espo/eps_mean_low_group"] > 0.0
    # the second step trains on the first step's batch: the same stored old entropies (espo/entropy_mean),
    # while the current policy's (TRL's entropy) and the ratios have moved
    assert steps[1]["espo/tokens"] == steps[0]["espo/tokens"]
    assert steps[1]["espo/entropy_mean"] == steps[0]["espo/entropy_mean"]
    assert steps[1]["entropy"] != steps[0]["entropy"] and steps[1]["espo/approx_kl"] > 0.0
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


@needs_trl
def test_example_script_runs_tiny(capsys):
    """examples/trl_espo.py --tiny: the paper's ESPO options on a tiny model, 2 steps on CPU."""
    spec = importlib.util.spec_from_file_location("trl_espo_example", ROOT / "examples" / "trl_espo.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    history = example.main(["--tiny", "--mini-batches", "2"])
    steps = [h for h in history if "loss" in h]
    assert len(steps) == 2 and all(key in h for h in steps for key in ESPO_KEYS)


# --- (4) metrics of an optimizer step, validation once per batch ----------------------------------------


def _record_micro_batches(monkeypatch, holder, change=None):
    """Record each micro-batch's espo_loss call (validate=False: not the build-time check) as
    (global_step, float64 numpy inputs, config); ``change(n, entropy)`` may alter call n's entropies."""
    import espo_ref.integrations.trl as integration

    real, calls = integration.espo_loss, []

    def recording(logp, old, ent, mask, adv, config, **kwargs):
        if kwargs.get("validate") is False:
            if change is not None:
                ent = change(len(calls), ent)
            inputs = [t.detach().double().numpy() for t in (logp, old, ent)] + [mask.numpy(), adv.double().numpy()]
            calls.append((holder[0].state.global_step, inputs, config))
        return real(logp, old, ent, mask, adv, config, **kwargs)

    monkeypatch.setattr(integration, "espo_loss", recording)
    return calls


@needs_trl
def test_ESPO_METRICS_trl_logs_each_optimizer_steps_metrics_over_all_its_tokens(tmp_path, monkeypatch):
    """[ESPO-METRICS] With 2 gradient-accumulation micro-batches per optimizer step, each step's logged
    espo/* values are those of all its tokens: espo_ref.merge_metrics of the float64 core's metrics of its
    micro-batches (counts summed, not averaged; fractions token-weighted), where the first micro-batch of
    each step has an empty high-entropy bucket (entropies set to 0, grouping entropy_ranges) and is left
    out of that bucket's values instead of entering them as 0."""
    holder = []
    calls = _record_micro_batches(monkeypatch, holder, lambda n, ent: ent * 0 if n % 2 == 0 else ent)
    trainer = make_trainer(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                           espo_grouping="entropy_ranges", espo_entropy_edges=[0.5], learning_rate=1e-2)
    holder.append(trainer)
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 2 and [c[0] for c in calls] == [0, 0, 1, 1]
    for s, logged in enumerate(steps):
        parts = [espo_ref.espo_loss(*inputs, config).metrics for step, inputs, config in calls if step == s]
        assert parts[0]["high_group_tokens"] == 0 and parts[1]["high_group_tokens"] > 0
        want = espo_ref.merge_metrics(parts)
        for key, value in want.items():
            assert logged[f"espo/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-7), (s, key)
        assert logged["espo/tokens"] == sum(p["tokens"] for p in parts)  # a total: 2x a micro-batch mean
        assert logged["espo/eps_mean_high_group"] == pytest.approx(parts[1]["eps_mean_high_group"], rel=1e-5)
        assert logged["espo/eps_mean_high_group"] != pytest.approx(
            (parts[0]["eps_mean_high_group"] + parts[1]["eps_mean_high_group"]) / 2, rel=1e-3)


@needs_trl
def test_ESPO_INPUT_trl_validates_each_batch_once_where_it_is_built(tmp_path, monkeypatch):
    """[ESPO-INPUT] The micro-batches call espo_loss with validate=False; the batch is checked once when
    _generate_and_score_completions builds it: a NaN old entropy on a completion token is refused there,
    with espo_loss's message naming the argument and the batch position."""
    import torch
    from trl import GRPOTrainer

    import espo_ref.integrations.trl as integration

    real, seen = integration.espo_loss, []

    def recording(*args, **kwargs):
        seen.append(kwargs.get("validate"))
        return real(*args, **kwargs)

    monkeypatch.setattr(integration, "espo_loss", recording)
    make_trainer(tmp_path / "good").train()  # one generation batch for 2 optimizer steps
    assert seen == [True, False, False], seen

    original = GRPOTrainer._get_per_token_logps_and_entropies

    def nan_entropies(self, *args, **kwargs):
        logps, entropies, aux = original(self, *args, **kwargs)
        return logps, None if entropies is None else torch.full_like(entropies, float("nan")), aux

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", nan_entropies)
    trainer = make_trainer(tmp_path / "bad")
    with pytest.raises(espo_ref.ESPOInputError,
                       match=r"^entropy has a non-finite value np.float64\(nan\) at response position \[0, 0\]$"):
        generation_batch(trainer, 0)


@needs_trl
def test_a_nonfinite_logp_refuses_the_optimizer_step(tmp_path):
    """The current policy's log-probabilities are not checked per micro-batch: a NaN one on a completion
    token makes the loss NaN, and the optimizer step is refused at its last micro-batch, before the
    optimizer steps (the weights are unchanged)."""
    import torch

    trainer = make_trainer(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    original = trainer._get_per_token_logps_and_entropies

    def nan_logps(*args, **kwargs):
        logps, entropies, aux = original(*args, **kwargs)
        if torch.is_grad_enabled():  # the loss's forward, not the old-policy pass
            nan = torch.zeros_like(logps, dtype=torch.bool)
            nan[0, 0] = True
            logps = torch.where(nan, float("nan"), logps)
        return logps, entropies, aux

    trainer._get_per_token_logps_and_entropies = nan_logps
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(espo_ref.ESPOInputError, match="micro-batch.* of optimizer step 1 is not finite"):
        trainer.train()
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


# --- configuration ----------------------------------------------------------------------------------------


@needs_trl
def test_config_carries_and_checks_the_espo_options(tmp_path):
    """[ESPO-CONFIG] ESPOGRPOConfig builds the ESPOConfig (vocab_size = the model's logits width) and rejects
    a bad ESPO option at construction."""
    from espo_ref.integrations.trl import ESPOGRPOConfig

    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", num_generations=2,
                per_device_train_batch_size=2)
    options = dict(espo_alpha=0.05, espo_top_fraction=0.3, espo_grouping="entropy_ranges",
                   espo_entropy_edges=[0.5, 0.9], espo_drop_low_group=True, espo_clip="fixed", espo_eps_low=0.2,
                   espo_eps_high=0.28, espo_eps_reading="token_over_groups", espo_ratio_form="literal",
                   espo_log_ratio_clamp=None, espo_entropy_tolerance=1e-3)
    config = ESPOGRPOConfig(**base, **options).espo_config(vocab_size=151936)
    assert config == espo_ref.ESPOConfig(vocab_size=151936, alpha=0.05, top_fraction=0.3, grouping="entropy_ranges",
                                         entropy_edges=(0.5, 0.9), drop_low_group=True, clip="fixed", eps_low=0.2,
                                         eps_high=0.28, eps_reading="token_over_groups", ratio_form="literal",
                                         log_ratio_clamp=None, entropy_tolerance=1e-3)
    with pytest.raises(espo_ref.ESPOInputError, match="grouping"):
        ESPOGRPOConfig(**base, espo_grouping="quantile")
    trainer = make_trainer(tmp_path)
    assert trainer.espo_config.vocab_size == trainer.model.get_output_embeddings().weight.shape[0] == 3 + len(CHARS)


@needs_trl
@pytest.mark.parametrize("option", [{"beta": 0.04}, {"delta": 1.5}, {"top_entropy_quantile": 0.2},
                                    {"off_policy_mask_threshold": 0.5}, {"entropy_coef": 0.01}])
def test_options_that_change_the_objective_are_refused(tmp_path, option):
    with pytest.raises(ValueError, match=f"does not support {next(iter(option))}"):
        make_trainer(tmp_path, **option)


@needs_trl
def test_a_plain_grpo_config_is_refused(tmp_path):
    from trl import GRPOConfig

    from espo_ref.integrations.trl import ESPOTrainer

    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(TypeError, match="ESPOGRPOConfig"):
        ESPOTrainer(model=tiny_model(), reward_funcs=digits_reward, args=args)
