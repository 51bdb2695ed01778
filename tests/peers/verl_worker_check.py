"""verl 0.9.1's real actor worker, on CPU, in one process, updating a tiny model with loss_mode "espo".

Run inside .venv-verl::

    .venv-verl/bin/python tests/peers/verl_worker_check.py

Prints one JSON line {"passed": bool, "checks": {...}, "failed": {...}, "seconds": float} and exits 0
when every check passed, 1 otherwise. No Ray, no GPU, no network (the model is built from a config).

What runs is verl's own code from ``ActorRolloutRefWorker.init_model`` down: the worker binds
``partial(engine_workers.ppo_loss, config=actor_config)`` (which ``install()`` made
``espo_ppo_loss``), ``TrainingWorker`` builds the FSDP2 engine (``FSDPEngineWithLMHead``), and

(a) ``compute_log_prob`` (-> ``TrainingWorker.infer_batch`` -> ``FSDPEngine.infer_batch``) with
    ``calculate_entropy=True``, as ``RayPPOTrainer._compute_old_log_prob`` calls it, gives the old
    log-probs and entropies, checked against the same HF model run by hand;
(b) ``update_actor`` (-> ``train_mini_batch`` -> ``train_batch`` -> ``FSDPEngine.train_batch``), as
    ``RayPPOTrainer._update_actor`` calls it, with the old entropy under "espo_old_entropy" (v0
    trainer) and then under "entropy" (v1 trainer): the loss reaches ``compute_policy_loss_espo``
    (its ``actor/espo_*`` metrics come back, ``espo_loss`` runs once per micro-batch and gets the
    micro-batch's old entropy) and the parameters change;
(c) the engine's loss and (pre-clipping) gradient norm equal ``espo_ref.torch.espo_loss`` and its
    gradient on the same tokens, computed on an HF copy of the engine's parameters;
(d) the mini-batch is validated once (one ``espo_loss(..., validate=True)`` on it) and the
    micro-batches are not (``validate=False``); the logged ``actor/espo_*`` are the mini-batch's
    over all its tokens: ``espo_ref.merge_metrics`` of the float64 core's metrics of the
    micro-batches, the second of which has only one-token responses (all in the high-entropy
    bucket: its low bucket is empty, and left out of that bucket's values).

How verl is made to run on CPU in one process, without editing verl (nothing in verl is patched):

1. ``VERL_USE_EXTERNAL_PLUGINS=none`` before ``import verl``: the plugin's ``verl.plugins`` entry
   point would import ``verl.workers.engine_workers`` during ``import verl``, and that imports
   ``verl/workers/engine/fsdp/transformer_impl.py``, whose module-level ``device_name =
   get_device_name()`` (line 89) fixes the platform before one can be registered ("nvidia", the
   fallback). The plugin is imported explicitly afterwards (its ``install()`` runs then).
2. A CPU platform registered through verl's platform plugin API (``PlatformRegistry.register`` +
   ``set_platform``, verl/plugin/platform/platform_manager.py): device "cpu", backend "gloo",
   ``current_device()`` "cpu" (verl calls ``.to(get_device_id())``), a device module with the few
   memory/seed functions verl calls, as no-ops.
3. ``VERL_ENGINE_DEVICE=cuda``: verl's own override of the engine lookup
   (verl/workers/engine/base.py ``EngineRegistry.get_engine_cls``); the FSDP engine is registered
   for devices ["cuda", "npu"] only (transformer_impl.py:1143) but runs on whatever device the
   platform names.
4. A single-rank gloo process group (MASTER_ADDR/PORT, RANK=0, WORLD_SIZE=1) initialised before the
   worker, so ``initialize_global_process_group_ray`` leaves it as is.
5. Model: attn_implementation "eager" (no flash-attn on CPU), fp32 mixed precision (for exact
   comparisons), torch.compile off; the checks run twice, with use_remove_padding=True (verl's
   default: packed sequences) and False.

strategy "fsdp2" only: with "fsdp" (FSDP1) verl wraps the model with ``sync_module_states=True``
(transformer_impl.py:444), which torch refuses for CPU parameters ("The module has CPU parameters or
buffers when `sync_module_states=True`, which requires them to be on GPU").

The one monkeypatch, in this project's own module: ``espo_ref.integrations.verl._loss.espo_loss`` is
wrapped for the update calls (and restored) to record each call's old entropy and loss.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import traceback
import types
from contextlib import contextmanager, redirect_stdout

T0 = time.time()

# (1) and (3): set before verl is imported
os.environ["VERL_USE_EXTERNAL_PLUGINS"] = "none"
os.environ["VERL_ENGINE_DEVICE"] = "cuda"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# (4): one rank on this machine
_sock = socket.socket()
_sock.bind(("127.0.0.1", 0))
_PORT = _sock.getsockname()[1]
_sock.close()
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_PORT), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                  LOCAL_WORLD_SIZE="1")

import json  # noqa: E402
import warnings  # noqa: E402

warnings.filterwarnings("ignore")

import torch  # noqa: E402


def _nothing(*args, **kwargs):
    return None


def _zero(*args, **kwargs):
    return 0


# what verl calls on get_torch_device() along the actor's path
_CPU_DEVICE_MODULE = types.SimpleNamespace(
    current_device=lambda: "cpu", device_count=lambda: 1, set_device=_nothing, synchronize=_nothing,
    is_available=lambda: True, manual_seed=torch.manual_seed, manual_seed_all=torch.manual_seed,
    empty_cache=_nothing, max_memory_allocated=_zero, max_memory_reserved=_zero, memory_allocated=_zero,
    memory_reserved=_zero, reset_peak_memory_stats=_nothing, mem_get_info=lambda *a: (0, 0),
    get_device_name=lambda *a: "CPU", get_rng_state=torch.get_rng_state, set_rng_state=torch.set_rng_state,
)


def _cpu_platform():
    """(2) verl's platform interface for the CPU, registered as "cpu" for this test process only."""
    from verl.plugin.platform import PlatformBase, PlatformRegistry

    @PlatformRegistry.register(platform="cpu")
    class PlatformCPU(PlatformBase):
        device_name = property(lambda self: "cpu")
        vendor_name = property(lambda self: "cpu")
        device_module = property(lambda self: _CPU_DEVICE_MODULE)

        def is_available(self):
            return True

        def current_device(self):
            return "cpu"  # verl does tensor.to(get_device_id()); an int would mean an accelerator

        def device_count(self):
            return 1

        def set_device(self, device_index):
            pass

        def synchronize(self, device_index=None):
            pass

        def manual_seed(self, seed):
            torch.manual_seed(seed)

        def manual_seed_all(self, seed):
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings):
            pass

        def empty_cache(self):
            pass

        def get_device_capability(self, device_index=0):
            return None, None

        def communication_backend_name(self):
            return "gloo"

        def visible_devices_envvar(self):
            return "CUDA_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg):
            yield

        def profiler_start(self):
            pass

        def profiler_stop(self):
            pass

        def ray_resource_name(self):
            return "CPU"

        def ray_noset_envvars(self):
            return []

        def is_ipc_supported(self):
            return False

        def cudart(self):
            return None

    return PlatformCPU()


def _setup() -> None:
    """(1)-(4) in order, then the plugin and what the checks use, as module globals."""
    global verl, ev, ev_loss, engine_workers, espo_loss, compose, initialize_config_dir, TensorDict
    global Tokenizer, models, pre_tokenizers, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, tu
    global ActorRolloutRefWorker, left_right_2_no_padding, no_padding_2_padding, espo_ref
    import verl
    from verl.plugin.platform import platform_manager, set_platform

    assert platform_manager._current_platform is None, "verl chose a platform before the CPU one was registered"
    set_platform(_cpu_platform())
    torch.distributed.init_process_group(backend="gloo", rank=0, world_size=1)

    import espo_ref
    import espo_ref.integrations.verl as ev  # install(): engine_workers.ppo_loss = espo_ppo_loss
    import espo_ref.integrations.verl._loss as ev_loss
    import verl.workers.engine_workers as engine_workers
    from espo_ref.torch import espo_loss
    from hydra import compose, initialize_config_dir
    from tensordict import TensorDict
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine_workers import ActorRolloutRefWorker
    from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding


V = 64
B, P, R = 4, 3, 5  # responses, prompt width, response width
MINI, MICRO = 4, 2  # one mini-batch of 4 responses in 2 micro-batches
LR = 1e-2


def tiny_model(path: str) -> Qwen2Config:
    torch.manual_seed(0)
    # initializer_range 0.5: peaked distributions, so entropies spread over [0, log V]
    config = Qwen2Config(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, tie_word_embeddings=False,
                         initializer_range=0.5)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tok = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(V)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t1", eos_token="t2",
                            bos_token="t3").save_pretrained(path)
    return config


def actor_worker(path: str, remove_padding: bool) -> ActorRolloutRefWorker:
    """verl's hydra config (as main_ppo composes it) with the README's ESPO actor, sized for CPU."""
    overrides = [
        f"actor_rollout_ref.model.path={path}",
        f"actor_rollout_ref.model.use_remove_padding={remove_padding}",
        "+actor_rollout_ref.model.override_config.attn_implementation=eager",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.actor.policy_loss._target_=espo_ref.integrations.verl.ESPOPolicyLossConfig",
        "actor_rollout_ref.actor.policy_loss.loss_mode=espo",
        "actor_rollout_ref.actor.entropy_from_logits_with_chunking=True",
        "actor_rollout_ref.actor.use_torch_compile=False",
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
        "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={MINI}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={MICRO}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={MICRO}",
        "actor_rollout_ref.rollout.n=1",
        "actor_rollout_ref.rollout.name=vllm",  # required by the config; no rollout is built (role "actor")
        f"actor_rollout_ref.actor.optim.lr={LR}",
    ]
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    worker = ActorRolloutRefWorker(config=cfg.actor_rollout_ref, role="actor")
    worker.init_model()
    return worker


def rollout_batch(seed: int):
    """Left-padded prompts, right-padded responses, as the rollout hands them to the trainer."""
    g = torch.Generator().manual_seed(seed)
    prompt_len, resp_len = [3, 2, 3, 1], [5, 3, 1, 1]  # micro-batch 2: one-token responses, no low bucket
    prompts, responses = torch.ones(B, P, dtype=torch.long), torch.ones(B, R, dtype=torch.long)
    pmask, rmask = torch.zeros(B, P, dtype=torch.long), torch.zeros(B, R, dtype=torch.long)
    for i in range(B):
        prompts[i, P - prompt_len[i]:] = torch.randint(4, V, (prompt_len[i],), generator=g)
        responses[i, :resp_len[i]] = torch.randint(4, V, (resp_len[i],), generator=g)
        pmask[i, P - prompt_len[i]:] = 1
        rmask[i, :resp_len[i]] = 1
    attention = torch.cat([pmask, rmask], 1)
    return {"prompts": prompts, "responses": responses, "input_ids": torch.cat([prompts, responses], 1),
            "attention_mask": attention, "position_ids": (attention.cumsum(1) - 1).clamp(min=0),
            "response_mask": rmask}


def as_td(batch: dict) -> TensorDict:
    return TensorDict({k: v.clone() for k, v in batch.items()}, batch_size=[B])


def engine_old_log_prob(worker, batch):
    """(a) RayPPOTrainer._compute_old_log_prob's steps 1-4 against the worker."""
    td = left_right_2_no_padding(as_td(batch))
    tu.assign_non_tensor(td, calculate_entropy=True, calculate_sum_pi_squared=False, compute_loss=False,
                         temperature=1.0)
    out = worker.compute_log_prob(td)
    return (no_padding_2_padding(tu.get(out, "log_probs"), td).float(),
            no_padding_2_padding(tu.get(out, "entropy"), td).float())


def engine_update(worker, batch, entropy_key, entropy, old_log_probs, advantages):
    """(b) RayPPOTrainer._update_actor's steps against the worker; returns its metrics."""
    td = as_td(batch)
    td["old_log_probs"], td["advantages"], td[entropy_key] = old_log_probs, advantages, entropy
    td = left_right_2_no_padding(td)
    tu.assign_non_tensor(td, calculate_entropy=False, distillation_use_topk=False, distillation_only=False,
                         global_batch_size=MINI, mini_batch_size=MINI, epochs=1, seed=42,
                         dataloader_kwargs={"shuffle": False}, compute_loss=True, temperature=1.0)
    return tu.get(worker.update_actor(td), "metrics")


def engine_params(worker) -> dict[str, torch.Tensor]:
    return {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for name, p in worker.actor.engine.module.named_parameters()}


def hf_reference(config, params, batch):
    """The HF model with the engine's parameters: response log-probs and entropies, float64 head."""
    model = Qwen2ForCausalLM(config)
    model.config._attn_implementation = "eager"
    missing, unexpected = model.load_state_dict(params, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits[:, P - 1:P - 1 + R].double()
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, batch["responses"][..., None])[..., 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    mask = batch["response_mask"].bool()
    zero = torch.zeros((), dtype=logp.dtype)
    return model, torch.where(mask, logp, zero), torch.where(mask, entropy, zero).detach()


def close(a, b, what, rtol=1e-4, atol=1e-5):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if not torch.allclose(a, b, rtol=rtol, atol=atol):
        raise AssertionError(f"{what}: max |diff| {(a - b).abs().max().item():.3g} ({a} vs {b})")
    return float((a - b).abs().max())


def main() -> dict:
    checks: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = tiny_model(tmp)
        # verl's default (packed sequences) and the padded path
        for remove_padding in (True, False):
            start = time.time()
            checks[f"use_remove_padding={remove_padding}"] = check_worker(config, tmp, remove_padding)
            checks[f"use_remove_padding={remove_padding}"]["seconds"] = round(time.time() - start, 2)
    return checks


def check_worker(config, path: str, remove_padding: bool) -> dict:
    checks: dict = {}
    worker = actor_worker(path, remove_padding)

    # the worker bound verl's engine_workers.ppo_loss at init_model: install() made it ours
    loss_fn = worker.actor.loss_fn
    assert engine_workers.ppo_loss is ev.espo_ppo_loss
    assert loss_fn.func is ev.espo_ppo_loss, loss_fn
    actor_config = loss_fn.keywords["config"]
    assert isinstance(actor_config.policy_loss, ev.ESPOPolicyLossConfig)
    espo_cfg = ev.to_espo_config(actor_config)
    assert espo_cfg.vocab_size == V, espo_cfg  # read from the worker's model_config.hf_config
    checks["engine"] = type(worker.actor.engine).__name__
    checks["loss_fn"] = f"{loss_fn.func.__module__}.{loss_fn.func.__name__}"

    batch = rollout_batch(1)
    mask = batch["response_mask"].bool()
    g = torch.Generator().manual_seed(2)
    for step, entropy_key in enumerate(ev.ENTROPY_KEYS):  # "espo_old_entropy" (v0), then "entropy" (v1)
        before = engine_params(worker)
        # (a) old-log-prob pass through the engine, checked against the HF model by hand
        logp_engine, ent_engine = engine_old_log_prob(worker, batch)
        ref_model, logp_ref, ent_ref = hf_reference(config, before, batch)
        checks[f"step{step}_logp_max_diff"] = close(logp_engine, logp_ref, "old log-probs vs HF")
        checks[f"step{step}_entropy_max_diff"] = close(ent_engine, ent_ref, "old entropy vs HF")
        assert ent_engine[mask].std() > 0.3, ent_engine  # entropies spread, so the groups differ

        # a rollout policy a little off the current one, so ratios and clipping are exercised
        old = torch.where(mask, logp_engine + 0.3 * torch.randn(B, R, generator=g), torch.zeros(()))
        advantages = torch.randn(B, 1, generator=g).expand(B, R) * mask

        # (b) one update through the engine; record what reaches espo_loss (monkeypatch, restored)
        calls, validations = [], []
        original = ev_loss.espo_loss

        def recording_espo_loss(log_prob, old_log_prob, old_entropy, response_mask, advantages, *args, **kwargs):
            result = original(log_prob, old_log_prob, old_entropy, response_mask, advantages, *args, **kwargs)
            if kwargs.get("validate") is False:  # a micro-batch (the mini-batch's check validates)
                inputs = [t.detach().double().numpy() for t in (log_prob, old_log_prob, old_entropy)]
                calls.append((old_entropy.detach().clone(), response_mask.detach().clone(), float(result.loss),
                              inputs + [response_mask.bool().numpy(), advantages.detach().double().numpy()]))
            else:
                validations.append(response_mask.shape[0])
            return result

        ev_loss.espo_loss = recording_espo_loss
        try:
            metrics = engine_update(worker, batch, entropy_key, ent_engine, old, advantages)
        finally:
            ev_loss.espo_loss = original
        after = engine_params(worker)

        espo_keys = sorted(k for k in metrics if k.startswith("actor/espo_"))
        assert "actor/espo_clipfrac" in espo_keys and "actor/espo_trained_tokens" in espo_keys, sorted(metrics)
        assert len(calls) == MINI // MICRO, f"espo_loss ran {len(calls)} times, expected {MINI // MICRO}"
        assert validations == [MINI], f"the mini-batch was validated on {validations} rows, expected once on {MINI}"
        # each micro-batch's loss got that micro-batch's old entropy (rows in order: shuffle off)
        for m, (old_entropy, micro_mask, _, _) in enumerate(calls):
            rows = slice(m * MICRO, (m + 1) * MICRO)
            assert torch.equal(micro_mask.bool(), mask[rows][:, :micro_mask.shape[1]]), (m, micro_mask)
            close(old_entropy[micro_mask.bool()], ent_engine[rows][mask[rows]], f"old entropy of micro-batch {m}",
                  rtol=0, atol=0)
        changed = max(float((after[n] - before[n]).abs().max()) for n in before)
        assert changed > LR / 2, f"parameters moved by at most {changed}"

        # (c) the engine's loss and gradient norm vs espo_ref.torch.espo_loss on the same tokens
        ref = espo_loss(logp_ref, old.double(), ent_engine.double(), mask, advantages.double(), espo_cfg)
        ref.loss.backward()
        ref_grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in ref_model.parameters()
                                       if p.grad is not None))
        engine_loss = float(metrics["loss"][0] if isinstance(metrics["loss"], list) else metrics["loss"])
        engine_grad_norm = float(metrics["grad_norm"][0] if isinstance(metrics["grad_norm"], list)
                                 else metrics["grad_norm"])
        close(engine_loss, ref.loss.item(), "engine loss vs espo_loss", rtol=1e-5, atol=1e-6)
        close(sum(c[2] * (c[1].bool().any(1).sum().item()) / MINI for c in calls), ref.loss.item(),
              "micro-batch espo_loss calls, scaled, vs espo_loss of the mini-batch", rtol=1e-5, atol=1e-6)
        close(engine_grad_norm, ref_grad_norm, "engine grad norm vs espo_loss grad norm", rtol=1e-4, atol=1e-6)
        # (d) the mini-batch's metrics over all its tokens, the empty low bucket left out
        parts = [espo_ref.espo_loss(*c[3], espo_cfg).metrics for c in calls]
        assert parts[1]["low_group_tokens"] == 0 < parts[0]["low_group_tokens"], parts
        for key, value in espo_ref.merge_metrics(parts).items():
            logged = metrics[f"actor/espo_{key}"]
            close(float(logged[0] if isinstance(logged, list) else logged), value, f"actor/espo_{key}",
                  rtol=1e-5, atol=1e-6)
        logged_tokens = metrics["actor/espo_tokens"]
        assert float(logged_tokens[0] if isinstance(logged_tokens, list) else logged_tokens) == int(mask.sum())
        checks[f"step{step}"] = {
            "entropy_key": entropy_key, "engine_loss": engine_loss, "espo_loss": ref.loss.item(),
            "engine_grad_norm": engine_grad_norm, "espo_grad_norm": ref_grad_norm.item(),
            "max_param_change": changed, "espo_loss_calls": len(calls), "espo_metric_keys": len(espo_keys),
            "clipfrac": ref.metrics.get("clipfrac"),
        }
    return checks


if __name__ == "__main__":
    failed, checks = {}, {}
    with redirect_stdout(sys.stderr):  # verl prints progress; stdout carries only the JSON line
        try:
            _setup()
        except Exception:  # noqa: BLE001 - reported (an import, the platform, the process group)
            failed["setup"] = traceback.format_exc()[-4000:]
        else:
            try:
                checks = main()
            except Exception:  # noqa: BLE001 - reported
                failed["worker"] = traceback.format_exc()[-4000:]
        finally:
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
    print(json.dumps({"passed": not failed, "checks": checks, "failed": failed,
                      "seconds": round(time.time() - T0, 2)}, default=str))
    sys.exit(1 if failed else 0)
