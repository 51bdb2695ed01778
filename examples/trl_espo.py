"""ESPO with TRL: the paper's setup (Sheng et al., arXiv:2512.00499, Section 4.1) on a Qwen3 base model.

    pip install "espo-ref[trl]"                         # trl==1.16.0, the one version supported
    accelerate launch examples/trl_espo.py --model Qwen/Qwen3-1.7B-Base --dataset train.jsonl
    python examples/trl_espo.py --tiny                  # 2 steps on CPU, tiny model built from a config

Paper setup used here: G = 8 responses per prompt, 128 prompts per step (1024 responses), learning
rate 1e-6, alpha = 0.02, top 20% highest-entropy tokens as the high group, temperature 1.0, responses
up to 16,384 tokens, 3 epochs (8,192 SimpleRL prompts: 192 steps; the paper reports 200), no KL term.
The paper trains with verl and vLLM on 32 H100s; this script runs TRL's GRPO loop with the ESPO loss.

What you must set:

* ``--model``: a Qwen3 base model (1.7B, 4B, 14B, 30B-A3B in the paper), a hub id or a local folder.
* ``--dataset``: a JSON-lines file, one prompt per line with fields ``prompt`` (the text the model
  continues, your prompt template already applied) and ``answer`` (the reference final answer).
  The paper uses the SimpleRL data; it is not bundled.
* the reward: ``boxed_answer_reward`` below compares the last ``\\boxed{...}`` of a response with
  ``answer`` as strings. Replace it with a real math verifier (e.g. math-verify) for real runs.
* the batch layout: 1024 responses per step = per-device batch x processes x gradient
  accumulation. ``--per-device-batch`` is yours to fit memory; the accumulation is derived from it
  and ``WORLD_SIZE``. The digest gives no mini-batch size, so by default each batch of responses
  makes one optimizer step (on-policy); ``--mini-batches k`` makes k steps per batch (off-policy,
  where the old policy's entropies are stored at generation time).
* ``--use-vllm`` for vLLM rollouts (colocated); ESPOTrainer needs
  ``vllm_importance_sampling_correction=False``, which this script sets. Not tested here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile

PAPER = {
    "num_generations": 8,          # G
    "prompts_per_step": 128,       # batch size in prompts
    "learning_rate": 1e-6,
    "espo_alpha": 0.02,            # Table 3's best
    "espo_top_fraction": 0.2,      # the 20% grouping proportion
    "temperature": 1.0,
    "max_completion_length": 16384,
    "num_train_epochs": 3,
}


def boxed_answer_reward(completions, answer, **kwargs):
    """1.0 when the last \\boxed{...} of the response equals the reference answer (as text), else 0.0."""
    rewards = []
    for completion, reference in zip(completions, answer):
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        found = re.findall(r"\\boxed\{([^{}]*)\}", text)
        rewards.append(float(bool(found) and found[-1].strip() == str(reference).strip()))
    return rewards


def tiny_model_and_tokenizer(seed: int = 0):
    """A character tokenizer and a tiny random Qwen3 built from a config: no download."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    specials = ["<pad>", "<eos>", "<unk>"]
    chars = list(" 0123456789+-*=?.:{}\\abcdefghijklmnopqrstuvwxyz")
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(specials + chars)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                                        unk_token="<unk>")
    config = Qwen3Config(vocab_size=len(specials) + len(chars), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         max_position_embeddings=256, pad_token_id=0, eos_token_id=1, bos_token_id=None,
                         tie_word_embeddings=True)
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config), tokenizer


def tiny_dataset():
    from datasets import Dataset

    return Dataset.from_list([{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(4) for b in range(4)])


def tiny_reward(completions, answer, **kwargs):
    """Toy reward for --tiny: the answer's digits, plus a little for each digit written (varied rewards)."""
    return [float(c.strip().startswith(a)) + 0.1 * sum(ch.isdigit() for ch in c) for c, a in zip(completions, answer)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="2 steps on CPU with a tiny model built from a config")
    p.add_argument("--model", help="Qwen3 base model: hub id or local folder")
    p.add_argument("--dataset", help="JSON-lines file with fields prompt and answer")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--per-device-batch", type=int, default=8, help="responses per device per micro-step")
    p.add_argument("--mini-batches", type=int, default=1, help="optimizer steps per batch of responses")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (-1: epochs)")
    p.add_argument("--use-vllm", action="store_true", help="vLLM rollouts, colocated (untested here)")
    args = p.parse_args(argv)
    if not args.tiny and not (args.model and args.dataset):
        p.error("--model and --dataset are required (or --tiny)")
    return args


def build(args):
    """(model, tokenizer or None, dataset, reward function, ESPOGRPOConfig) for the run."""
    from espo_ref.integrations.trl import ESPOGRPOConfig

    output_dir = args.output_dir or tempfile.mkdtemp(prefix="espo-trl-")
    common = dict(output_dir=output_dir, learning_rate=PAPER["learning_rate"], espo_alpha=PAPER["espo_alpha"],
                  espo_top_fraction=PAPER["espo_top_fraction"], temperature=PAPER["temperature"], beta=0.0,
                  logging_steps=1, report_to="none")
    if args.tiny:
        model, tokenizer = tiny_model_and_tokenizer()
        config = ESPOGRPOConfig(**common, num_generations=4, per_device_train_batch_size=4,
                                gradient_accumulation_steps=1, steps_per_generation=args.mini_batches,
                                max_completion_length=8, max_steps=2 if args.max_steps < 0 else args.max_steps,
                                use_cpu=True, bf16=False, save_strategy="no")
        return model, tokenizer, tiny_dataset(), tiny_reward, config

    from datasets import Dataset

    with open(args.dataset) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    responses = PAPER["prompts_per_step"] * PAPER["num_generations"]
    per_step = responses // args.mini_batches
    if responses % args.mini_batches or per_step % (args.per_device_batch * world):
        raise SystemExit(f"{responses} responses per batch / {args.mini_batches} mini-batches must be a multiple of "
                         f"per-device batch {args.per_device_batch} x {world} processes")
    accumulation = per_step // (args.per_device_batch * world)
    config = ESPOGRPOConfig(
        **common,
        num_generations=PAPER["num_generations"],
        max_completion_length=PAPER["max_completion_length"],
        num_train_epochs=PAPER["num_train_epochs"],
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_batch,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation * args.mini_batches,
        bf16=True,
        gradient_checkpointing=True,
        use_vllm=args.use_vllm,
        vllm_mode="colocate",
        vllm_importance_sampling_correction=False,
        save_strategy="steps",
        save_steps=50,
    )
    return args.model, None, Dataset.from_list(rows), boxed_answer_reward, config


def main(argv=None):
    """Train; returns the trainer's log history."""
    from espo_ref.integrations.trl import ESPOTrainer

    args = parse_args(argv)
    model, tokenizer, dataset, reward, config = build(args)
    trainer = ESPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer)
    trainer.train()
    return trainer.state.log_history


if __name__ == "__main__":
    for entry in main():
        print({k: v for k, v in entry.items() if k.startswith("espo/") or k in ("loss", "reward", "step")})
