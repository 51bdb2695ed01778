"""Checks of espo_ref.integrations.verl against the real verl 0.9.1 (run inside .venv-verl).

Run by tests/test_integration_verl.py: ``python tests/peers/verl_plugin_checks.py`` prints one
JSON line {"passed": [...], "failed": {name: message}} and exits 1 when a check failed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import traceback
from pathlib import Path

import torch

import espo_ref.integrations.verl as ev
from espo_ref.integrations.verl._loss import _wrap_compute_old_log_prob
from espo_ref.config import ESPOConfig
from espo_ref.errors import ESPOInputError
from espo_ref.torch import espo_loss
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.utils import tensordict_utils as tu
from verl.workers.config import ActorConfig
from tensordict import TensorDict

V = 50
CONFIGS = [
    {},
    {"espo_grouping": "entropy_ranges", "espo_entropy_edges": (0.2, 0.45)},
    {"espo_clip": "fixed", "espo_eps_low": 0.2, "espo_eps_high": 0.28},
    {"espo_ratio_form": "literal", "espo_top_fraction": 0.5, "espo_drop_low_group": True},
    {"espo_grouping": "token", "espo_eps_reading": "token_over_groups", "espo_alpha": 0.5},
]


def actor(**espo) -> ActorConfig:
    pl = ev.ESPOPolicyLossConfig(espo_vocab_size=V, **espo)
    return ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=2, policy_loss=pl)


def batch(seed: int, B: int = 6, T: int = 9, empty: bool = False):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    if empty:
        lengths[1] = 0
    mask = torch.arange(T)[None, :] < lengths[:, None]
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    logp = old + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ent = torch.rand(B, T, generator=g, dtype=torch.float64) * 2.5
    adv = torch.randn(B, 1, generator=g, dtype=torch.float64).expand(B, T).clone()
    z = torch.zeros((), dtype=torch.float64)
    return (torch.where(mask, logp, z), torch.where(mask, old, z), torch.where(mask, ent, z), mask,
            torch.where(mask, adv, z))


def reference(logp, old, ent, mask, adv, espo):
    lp = logp.clone().requires_grad_(True)
    cfg = ev.to_espo_config(actor(**espo))
    res = espo_loss(lp, old, ent, mask, adv, cfg)
    res.loss.backward()
    return res.loss.detach(), lp.grad


def ours(logp, old, ent, mask, adv, config, via_context=False):
    lp = logp.clone().requires_grad_(True)
    fn = get_policy_loss_fn("espo")
    kwargs = dict(old_log_prob=old, log_prob=lp, advantages=adv, response_mask=mask,
                  loss_agg_mode="token-mean", config=config, rollout_is_weights=None)
    if via_context:
        token = ev._loss._OLD_ENTROPY_VAR.set(ent)
        try:
            loss, metrics = fn(**kwargs)
        finally:
            ev._loss._OLD_ENTROPY_VAR.reset(token)
    else:
        loss, metrics = fn(**kwargs, old_entropy=ent)
    loss.backward()
    return loss.detach(), lp.grad, metrics


def close(a, b, what):
    if not torch.allclose(a, b, rtol=1e-10, atol=1e-12):
        raise AssertionError(f"{what}: {a} != {b} (max diff {(a - b).abs().max()})")


def check_equals_reference():
    assert ev.to_espo_config(actor()) == ESPOConfig(vocab_size=V)
    for espo in CONFIGS:
        for seed in range(4):
            inputs = batch(seed)
            ref_loss, ref_grad = reference(*inputs, espo)
            loss, grad, metrics = ours(*inputs, actor(**espo), via_context=seed % 2 == 1)
            close(loss, ref_loss, f"loss {espo} seed {seed}")
            close(grad, ref_grad, f"grad {espo} seed {seed}")
            assert metrics and all(k.startswith("actor/espo_") and isinstance(v, float) for k, v in metrics.items())


def check_micro_batch_sum():
    for espo in CONFIGS:
        for seed in range(3):
            logp, old, ent, mask, adv = batch(seed, B=8)
            ref_loss, ref_grad = reference(logp, old, ent, mask, adv, espo)
            for dp, micro in ((1, 2), (1, 3), (2, 2)):
                config = actor(**espo)
                config.global_batch_info.update(global_batch_size=8, dp_size=dp)
                total, grad = torch.zeros((), dtype=torch.float64), torch.zeros_like(logp)
                for rank in range(dp):
                    rows = list(range(rank, 8, dp))  # rank's share of the mini-batch
                    for start in range(0, len(rows), micro):
                        idx = torch.tensor(rows[start:start + micro])
                        loss, g, _ = ours(logp[idx], old[idx], ent[idx], mask[idx], adv[idx], config)
                        total += loss / dp  # DDP/FSDP average over ranks
                        grad[idx] += g / dp
                close(total, ref_loss, f"micro-batch loss sum {espo} dp={dp} micro={micro}")
                close(grad, ref_grad, f"micro-batch grad sum {espo} dp={dp} micro={micro}")
    # no global_batch_size: each micro-batch is its own mean (verl's default when G is unknown)
    config = actor()
    inputs = batch(0)
    close(ours(*inputs, config)[0], reference(*inputs, {})[0], "no scaling without global_batch_size")
    # an empty response is in verl's G but not in [ESPO-AGG]'s N: the sum is espo_loss * N / G
    logp, old, ent, mask, adv = inputs = batch(5, B=8, empty=True)
    config.global_batch_info.update(global_batch_size=8, dp_size=1)
    total = sum(ours(*(t[i:i + 2] for t in inputs), config)[0] for i in range(0, 8, 2))
    close(total, reference(*inputs, {})[0] * 7 / 8, "empty response counted in G")


def expect_error(call, *words) -> str:
    """The ESPOInputError ``call()`` raises, whose message holds every word."""
    try:
        call()
    except ESPOInputError as exc:
        assert all(word in str(exc) for word in words), str(exc)
        return str(exc)
    raise AssertionError(f"accepted; expected an error naming {words}")


def check_errors():
    inputs = batch(0)
    config = actor()
    expect_error(lambda: get_policy_loss_fn("espo")(old_log_prob=inputs[1], log_prob=inputs[0], advantages=inputs[4],
                                                    response_mask=inputs[3], config=config),
                 "old entropy", "bypass", "espo_ref.integrations.verl")
    bad = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=2,
                      policy_loss=ev.ESPOPolicyLossConfig())
    expect_error(lambda: ours(*inputs, bad), "espo_vocab_size")
    in_mini_batch = actor(espo_grouping="batch_top_fraction")
    in_mini_batch.global_batch_info.update(global_batch_size=16, dp_size=1)
    expect_error(lambda: ours(*inputs, in_mini_batch), "batch_top_fraction")
    # a direct call on a whole batch may rank it, and equals the reference
    whole = actor(espo_grouping="batch_top_fraction")
    close(ours(*inputs, whole)[0], reference(*inputs, {"espo_grouping": "batch_top_fraction"})[0],
          "batch_top_fraction on a whole batch")


def verl_micro_batch(logp, old, ent, mask, adv, entropy_key, P=3):
    """A dense (v0-style) micro-batch TensorDict and the flat model output verl's ppo_loss reads."""
    B, T = mask.shape
    lengths = mask.sum(1)
    prompts = torch.ones(B, P, dtype=torch.long)
    attention = torch.cat([torch.ones(B, P, dtype=torch.long), mask.long()], dim=1)
    data = TensorDict({"prompts": prompts, "responses": torch.ones(B, T, dtype=torch.long),
                       "attention_mask": attention, "response_mask": mask.long(), "old_log_probs": old,
                       "advantages": adv, entropy_key: ent}, batch_size=[B])
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=B)
    flat = torch.zeros(int((P + lengths).sum()), dtype=logp.dtype)
    positions, offset = [], 0
    for i in range(B):
        L = int(lengths[i])
        positions.append(torch.arange(offset + P - 1, offset + P - 1 + L))
        offset += P + L
    positions = torch.cat(positions)
    flat[positions] = logp[mask]
    return data, flat, positions


def check_verl_ppo_loss_path():
    for key in ev.ENTROPY_KEYS:
        for espo in CONFIGS[:3]:
            inputs = batch(7, B=5)
            ref_loss, ref_grad = reference(*inputs, espo)
            data, flat, positions = verl_micro_batch(*inputs, entropy_key=key)
            flat.requires_grad_(True)
            config = actor(**espo)
            loss, metrics = ev.espo_ppo_loss(config, {"log_probs": flat}, data)
            loss.backward()
            close(loss.detach(), ref_loss, f"ppo_loss path {key} {espo}")
            grad = torch.zeros_like(inputs[0])
            grad[inputs[3]] = flat.grad[positions]
            close(grad, ref_grad, f"ppo_loss path grad {key} {espo}")
            assert any(k.startswith("actor/espo_") for k in metrics), sorted(metrics)
            assert ev._loss._OLD_ENTROPY_VAR.get() is None
    # without the old entropy in the micro-batch the loss says how to turn it on
    data, flat, _ = verl_micro_batch(*batch(7, B=5), entropy_key="something_else")
    expect_error(lambda: ev.espo_ppo_loss(actor(), {"log_probs": flat}, data), "old entropy")
    # other loss modes go to verl's ppo_loss untouched
    vanilla = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=2)
    data, flat, _ = verl_micro_batch(*batch(7, B=5), entropy_key="entropy")
    a = ev.espo_ppo_loss(vanilla, {"log_probs": flat}, data)[0]
    b = ev._loss._VERL_PPO_LOSS(vanilla, {"log_probs": flat}, data)[0]
    close(a, b, "vanilla passthrough")


class MiniEngine:
    """verl's engine train_batch in miniature (forward_backward_batch: verl's ppo_loss per micro-batch of
    ``micro`` rows, backward; then the optimizer step), one data-parallel rank."""

    def __init__(self, inputs, micro):
        self.inputs, self.micro, self.micro_metrics = inputs, micro, []

    def get_data_parallel_group(self):
        return None

    def is_mp_src_rank_with_outputs(self):
        return True

    def train_batch(self, data, loss_function):
        B = self.inputs[3].shape[0]
        for start in range(0, B, self.micro):
            part, flat, _ = verl_micro_batch(*(t[start:start + self.micro] for t in self.inputs), entropy_key="entropy")
            tu.assign_non_tensor(part, global_batch_size=B)
            flat.requires_grad_(True)
            loss, metrics = loss_function(model_output={"log_probs": flat}, data=part)
            loss.backward()
            self.micro_metrics.append(metrics)
        return {"metrics": {"grad_norm": 1.0}}


def check_train_batch_hook():
    """[ESPO-METRICS] [ESPO-INPUT] The engine hook (espo_train_batch) around a mini-batch of 3 micro-batches:
    the mini-batch is validated once before them (a NaN old entropy is refused with espo_loss's message,
    before any micro-batch runs), each micro-batch's loss is unvalidated and returns no espo metric, and the
    mini-batch's actor/espo_* (one verl Metric each) are espo_ref.merge_metrics of the core's metrics of the
    micro-batches, where the first has an empty high-entropy bucket, left out; a NaN log_prob in a
    micro-batch is an error after the mini-batch; another loss passes through."""
    import functools

    import numpy as np

    import espo_ref
    from verl.utils.metric import AggregationType, Metric

    espo = {"espo_grouping": "entropy_ranges", "espo_entropy_edges": (0.5,)}
    config = actor(**espo)
    logp, old, ent, mask, adv = inputs = batch(11, B=6)
    ent[:2] = 0.0  # micro-batch 0: every token below the edge, its high bucket empty
    ent[2:] = torch.where(mask[2:], ent[2:] + 1.3, 0.0)  # up to 3.8 nat of log 50 = 3.9: both buckets
    whole, _, _ = verl_micro_batch(*inputs, entropy_key="entropy")
    loss_fn = functools.partial(ev.espo_ppo_loss, config=config)
    hook = ev._loss.espo_train_batch(MiniEngine.train_batch)

    calls, real = [], ev._loss.espo_loss

    def recording(*args, **kwargs):
        calls.append(kwargs.get("validate"))
        return real(*args, **kwargs)

    ev._loss.espo_loss = recording
    try:
        engine = MiniEngine(inputs, micro=2)
        outputs = hook(engine, whole, loss_fn)
    finally:
        ev._loss.espo_loss = real
    assert calls == [True, False, False, False], calls  # the mini-batch's check, then 3 micro-batches
    assert all(not any(k.startswith("actor/espo_") for k in m) for m in engine.micro_metrics), engine.micro_metrics
    cfg = ev.to_espo_config(config)
    parts = [espo_ref.espo_loss(*(np.asarray(t[i:i + 2]) for t in (logp, old, ent, mask, adv)), cfg).metrics
             for i in range(0, 6, 2)]
    assert parts[0]["high_group_tokens"] == 0 and all(p["high_group_tokens"] > 0 for p in parts[1:]), parts
    want = espo_ref.merge_metrics(parts)
    for key, value in want.items():
        got = outputs["metrics"][f"actor/espo_{key}"]
        assert isinstance(got, Metric) and got.aggregation == AggregationType.MEAN and len(got.values) == 1
        close(torch.tensor(got.values[0]), torch.tensor(value), f"actor/espo_{key}")
    assert outputs["metrics"]["actor/espo_tokens"].values[0] == int(mask.sum())

    # a NaN old entropy on a response token: refused before any micro-batch, with espo_loss's message
    bad_ent = ent.clone()
    bad_ent[3, 0] = float("nan")
    bad = (logp, old, bad_ent, mask, adv)
    engine = MiniEngine(bad, micro=2)
    message = expect_error(lambda: hook(engine, verl_micro_batch(*bad, entropy_key="entropy")[0], loss_fn),
                           "entropy has a non-finite value", "[3, 0]")
    assert not engine.micro_metrics
    assert message == expect_error(lambda: espo_loss(old, old, bad_ent, mask, adv, cfg))

    # a NaN current log_prob in a micro-batch: not checked there, an error after the mini-batch
    nan_logp = logp.clone()
    nan_logp[4, 0] = float("nan")
    engine = MiniEngine((nan_logp, old, ent, mask, adv), micro=2)
    expect_error(lambda: hook(engine, whole, loss_fn), "1 micro-batch", "not finite", "log_prob")
    assert len(engine.micro_metrics) == 3

    # another loss: verl's train_batch as it is
    vanilla = functools.partial(ev.espo_ppo_loss, config=ActorConfig(strategy="fsdp", rollout_n=1,
                                                                     ppo_micro_batch_size_per_gpu=2))
    outputs = hook(MiniEngine(inputs, micro=2), whole, vanilla)
    assert not any(k.startswith("actor/espo_") for k in outputs["metrics"]), outputs["metrics"]


def check_install():
    first, second = ev.install(), ev.install()
    assert first == second, (first, second)
    import verl.workers.engine_workers as ew
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    assert first == {"engine_workers": True, "engine": True, "ray_trainer": True}, first
    assert ew.ppo_loss is ev.espo_ppo_loss
    from verl.workers.engine.base import BaseEngine
    assert BaseEngine.train_batch._espo_wrapped
    assert RayPPOTrainer._compute_old_log_prob._espo_wrapped
    # the v0 hook keeps a copy of the old entropy that survives fit()'s pop of "entropys"
    entropys = torch.rand(2, 3, dtype=torch.float64)

    def old_log_prob_pass(self, batch):
        return DataProto.from_dict({"old_log_probs": torch.zeros(2, 3, dtype=torch.float64), "entropys": entropys})

    out = _wrap_compute_old_log_prob(old_log_prob_pass)(None, None)
    out.batch.pop("entropys")
    assert torch.equal(out.batch[ev.OLD_ENTROPY], entropys)
    return "patched"


ROOT = Path(__file__).resolve().parents[2]


def readme_verl_overrides() -> list[str]:
    """The hydra overrides of the README's `python3 -m verl.trainer.main_ppo` command."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?verl\.trainer\.main_ppo.*?)```", text, re.S)
    assert block, "README has no verl.trainer.main_ppo command"
    command = block.group(1).replace("\\\n", " ")
    line = next(ln for ln in command.splitlines() if "verl.trainer.main_ppo" in ln)
    return shlex.split(line.split("verl.trainer.main_ppo", 1)[1])


def check_readme_command():
    """The README's command line composes through verl's own hydra config into the actor
    config the loss reads, with the paper's setup."""
    import os

    import verl
    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass

    overrides = readme_verl_overrides()
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert isinstance(actor.policy_loss, ev.ESPOPolicyLossConfig), type(actor.policy_loss)
    assert actor.policy_loss.loss_mode == "espo"
    espo = ev.to_espo_config(actor, vocab_size=151936)
    assert espo == ESPOConfig(vocab_size=151936, alpha=0.02, top_fraction=0.2), espo
    assert (cfg.actor_rollout_ref.rollout.n, cfg.data.train_batch_size, cfg.actor_rollout_ref.actor.optim.lr,
            cfg.actor_rollout_ref.rollout.temperature, cfg.data.max_response_length,
            cfg.trainer.total_epochs) == (8, 128, 1e-6, 1.0, 16384, 3)
    assert cfg.algorithm.adv_estimator == "grpo" and not cfg.algorithm.rollout_correction.bypass_mode
    assert cfg.algorithm.rollout_correction.rollout_is is None
    ev.check_float32_entropy(actor)  # the README's actor passes the entropy-precision guard
    # ... and the same command without entropy_from_logits_with_chunking is refused, naming the key
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        bare = compose(config_name="ppo_trainer",
                       overrides=[o for o in overrides if "entropy_from_logits_with_chunking" not in o])
    expect_error(lambda: ev.check_float32_entropy(omega_conf_to_dataclass(bare.actor_rollout_ref.actor)),
                 "actor_rollout_ref.actor.entropy_from_logits_with_chunking=True")
    return f"{len(overrides)} overrides composed"


def check_bf16_entropy_claim():
    """What check_float32_entropy's docstring and message claim, measured with verl's own functions."""
    import verl.utils.torch_functional as F

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 151936, generator=g) * 3.0
    logits[::2, 0] += 25.0  # half the rows nearly deterministic
    logits = logits.bfloat16()
    exact = F.entropy_from_logits(logits.double())
    bf16 = (F.entropy_from_logits(logits).double() - exact).abs().max().item()
    chunked = (F.entropy_from_logits_with_chunking(logits, 16).double() - exact).abs().max().item()
    assert bf16 > 0.05 and chunked < 2e-3, (bf16, chunked)
    return f"max |error| bf16 {bf16:.3f} nat, chunked float32 {chunked:.1e} nat"


def check_entry_point():
    """`import verl` alone (a fresh process, as a Ray worker starts) loads the plugin."""
    code = ("import sys, verl\n"
            "from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY\n"
            "import verl.workers.engine_workers as ew\n"
            "print('espo' in POLICY_LOSS_REGISTRY, 'espo_ref.integrations.verl' in sys.modules,"
            " ew.ppo_loss.__name__ == 'espo_ppo_loss')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/",
                          env={k: v for k, v in os.environ.items() if k != "VERL_USE_EXTERNAL_PLUGINS"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-3:] == ["True", "True", "True"], proc.stdout[-500:]
    # verl's switch turns discovery off, and then nothing is registered
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/",
                          env={**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "none"})
    assert proc.stdout.split()[-3:] == ["False", "False", "False"], proc.stdout[-500:] + proc.stderr[-500:]
    # another verl version is refused with a message naming the supported one
    other = ("import verl\nverl.__version__ = '0.9.2'\n"
             "try:\n    import espo_ref.integrations.verl\nexcept ImportError as exc:\n    print('refused:', exc)\n")
    proc = subprocess.run([sys.executable, "-c", other], capture_output=True, text=True, cwd="/",
                          env={**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "none"})
    assert "refused:" in proc.stdout and "verl==0.9.1" in proc.stdout and "0.9.2" in proc.stdout, \
        proc.stdout[-500:] + proc.stderr[-500:]


def check_v0_hook_only_for_espo():
    """The v0 hook copies the entropy only when the trainer's loss is "espo"."""
    from types import SimpleNamespace

    from verl import DataProto

    def old_log_prob_pass(self, batch):
        return DataProto.from_dict({"old_log_probs": torch.zeros(2, 3), "entropys": torch.rand(2, 3)})

    hooked = _wrap_compute_old_log_prob(old_log_prob_pass)
    for mode, kept in (("espo", True), ("vanilla", False)):
        trainer = SimpleNamespace(config=SimpleNamespace(actor_rollout_ref=SimpleNamespace(
            actor=SimpleNamespace(policy_loss=SimpleNamespace(loss_mode=mode)))))
        out = hooked(trainer, None)
        assert (ev.OLD_ENTROPY in out.batch.keys()) is kept, (mode, list(out.batch.keys()))


CHECKS = [check_equals_reference, check_micro_batch_sum, check_errors, check_verl_ppo_loss_path,
          check_train_batch_hook, check_install, check_readme_command, check_bf16_entropy_claim, check_entry_point,
          check_v0_hook_only_for_espo]

if __name__ == "__main__":
    passed, failed, notes = [], {}, {}
    for check in CHECKS:
        try:
            note = check()
            passed.append(check.__name__)
            if note:
                notes[check.__name__] = note
        except Exception:  # noqa: BLE001 - reported
            failed[check.__name__] = traceback.format_exc()[-3000:]
    print(json.dumps({"passed": passed, "failed": failed, "notes": notes}))
    sys.exit(1 if failed else 0)
