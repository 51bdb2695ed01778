"""Checks of espo_ref.integrations.verl against the real verl 0.9.1 (run inside .venv-verl).

Run by tests/test_integration_verl.py: ``python tests/peers/verl_plugin_checks.py`` prints one
JSON line {"passed": [...], "failed": {name: message}} and exits 1 when a check failed.
"""

from __future__ import annotations

import json
import sys
import traceback

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


def check_errors():
    inputs = batch(0)
    config = actor()
    try:
        ours(*inputs, config, via_context=False) if False else get_policy_loss_fn("espo")(
            old_log_prob=inputs[1], log_prob=inputs[0], advantages=inputs[4], response_mask=inputs[3],
            config=config)
    except ESPOInputError as exc:
        msg = str(exc)
        assert "old entropy" in msg and "bypass" in msg and "espo_ref.integrations.verl" in msg, msg
    else:
        raise AssertionError("missing entropy accepted")
    bad = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=2,
                      policy_loss=ev.ESPOPolicyLossConfig())
    try:
        ours(*inputs, bad)
    except ESPOInputError as exc:
        assert "espo_vocab_size" in str(exc), str(exc)
    else:
        raise AssertionError("missing vocab size accepted")
    in_mini_batch = actor(espo_grouping="batch_top_fraction")
    in_mini_batch.global_batch_info.update(global_batch_size=16, dp_size=1)
    try:
        ours(*inputs, in_mini_batch)
    except ESPOInputError as exc:
        assert "batch_top_fraction" in str(exc), str(exc)
    else:
        raise AssertionError("batch_top_fraction accepted inside a mini-batch")
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
    try:
        ev.espo_ppo_loss(actor(), {"log_probs": flat}, data)
    except ESPOInputError as exc:
        assert "old entropy" in str(exc)
    else:
        raise AssertionError("missing entropy accepted in the ppo_loss path")
    # other loss modes go to verl's ppo_loss untouched
    vanilla = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=2)
    data, flat, _ = verl_micro_batch(*batch(7, B=5), entropy_key="entropy")
    a = ev.espo_ppo_loss(vanilla, {"log_probs": flat}, data)[0]
    b = ev._loss._VERL_PPO_LOSS(vanilla, {"log_probs": flat}, data)[0]
    close(a, b, "vanilla passthrough")


def check_install():
    first, second = ev.install(), ev.install()
    assert first == second, (first, second)
    import verl.workers.engine_workers as ew
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    assert first == {"engine_workers": True, "ray_trainer": True}, first
    assert ew.ppo_loss is ev.espo_ppo_loss
    assert RayPPOTrainer._compute_old_log_prob._espo_wrapped
    # the v0 hook keeps a copy of the old entropy that survives fit()'s pop of "entropys"
    entropys = torch.rand(2, 3, dtype=torch.float64)

    def old_log_prob_pass(self, batch):
        return DataProto.from_dict({"old_log_probs": torch.zeros(2, 3, dtype=torch.float64), "entropys": entropys})

    out = _wrap_compute_old_log_prob(old_log_prob_pass)(None, None)
    out.batch.pop("entropys")
    assert torch.equal(out.batch[ev.OLD_ENTROPY], entropys)
    return "patched"


CHECKS = [check_equals_reference, check_micro_batch_sum, check_errors, check_verl_ppo_loss_path, check_install]

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
