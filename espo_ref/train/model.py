"""Policy models: a tiny causal LM from a transformers config, or a local Hugging Face model."""

from __future__ import annotations

from pathlib import Path

import torch

from .tokenizer import CharTokenizer, HFTokenizer


def build_tiny(tokenizer: CharTokenizer, hidden: int = 64, layers: int = 2, heads: int = 4,
               max_positions: int = 256, seed: int = 0):
    """A Qwen2-style causal LM with random weights (seeded): ``layers`` decoder layers of
    width ``hidden``, tied input/output embeddings, no dropout."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if hidden % heads:
        raise ValueError(f"model_hidden ({hidden}) must be a multiple of model_heads ({heads})")
    config = Qwen2Config(
        vocab_size=tokenizer.vocab_size, hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2) if heads % 2 == 0 else heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True, attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model


def load_policy(name: str, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0):
    """(model, tokenizer): ``tiny`` builds the tiny model and the project's character
    tokenizer; anything else is the path of a local Hugging Face causal LM and tokenizer."""
    if name == "tiny":
        tokenizer = CharTokenizer()
        return build_tiny(tokenizer, hidden, layers, heads, seed=seed), tokenizer
    path = Path(name)
    if not path.is_dir():
        raise ValueError(f"--model must be 'tiny' or a local model folder; {name!r} is not a folder")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    try:  # float32 master weights (bf16 autocast on CUDA); transformers < 4.56 names it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, torch_dtype=torch.float32)
    return model, HFTokenizer(tokenizer)


def vocab_size(model) -> int:
    """The size of the model's softmax (the output head's rows; config.vocab_size when the
    model has no separate head): the V of Eq. 6 and of log|V| in Eq. 8 [ESPO-ENT-DOMAIN]."""
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else int(model.config.vocab_size)


POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def model_positions(model) -> tuple[int, str] | None:
    """(the longest sequence the model takes, the config field that says so), or None when
    its config names none of POSITION_FIELDS."""
    config = getattr(model, "config", None)
    for name in POSITION_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, name
    return None


def hidden_path_ok(model) -> bool:
    """Whether the logits are exactly lm_head(final hidden state) (no soft-capping, scaling
    or multiplier, whatever the config calls it): checked once on a short probe sequence
    and remembered on the model."""
    known = getattr(model, "_espo_ref_hidden_path_ok", None)
    if known is not None:
        return known
    head = model.get_output_embeddings()
    ok = False
    if head is not None:
        device = next(model.parameters()).device
        ids = (torch.arange(1, 9, device=device) % vocab_size(model)).unsqueeze(0)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits.float()
            hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
            ok = torch.allclose(head(hidden).float(), logits, rtol=1e-4, atol=1e-4)
        model.train(was_training)
    model._espo_ref_hidden_path_ok = bool(ok)
    return bool(ok)
