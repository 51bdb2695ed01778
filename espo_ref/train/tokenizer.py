"""Tokenizers for training: a character-level vocabulary built in the project, and an
adapter giving a local Hugging Face tokenizer the same small interface.

The trainer needs only: ``encode(text) -> list[int]`` (no special tokens), ``decode(ids)``
(special tokens dropped), ``prompt_ids(prompt)`` (what the model sees before its answer),
``pad_token_id``, ``eos_token_id`` and ``vocab_size``.
"""

from __future__ import annotations

import json
import string

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
CHARACTERS = " \n" + string.digits + string.ascii_lowercase + string.ascii_uppercase + "+-*/=?:.,;!'\"()[]<>#_%"


class CharTokenizer:
    """One token per character of CHARACTERS, plus <pad>, <bos>, <eos>, <unk>.

    Prompts are plain text, no chat template: ``prompt_ids`` is <bos> + the characters.
    A character outside the vocabulary encodes as <unk>.
    """

    def __init__(self, characters: str = CHARACTERS):
        if len(set(characters)) != len(characters):
            raise ValueError("characters must not repeat")
        self.tokens = list(SPECIALS) + list(characters)
        self.index = {c: i for i, c in enumerate(self.tokens)}
        self.pad_token_id = self.index[PAD]
        self.bos_token_id = self.index[BOS]
        self.eos_token_id = self.index[EOS]
        self.unk_token_id = self.index[UNK]

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(c, self.unk_token_id) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.tokens[i] for i in ids if int(i) >= len(SPECIALS))

    def token_strings(self, ids) -> list[str]:
        """Each id as its own string (specials by name), for per-token views."""
        return [self.tokens[int(i)] if 0 <= int(i) < len(self.tokens) else UNK for i in ids]

    def prompt_ids(self, prompt: str) -> list[int]:
        return [self.bos_token_id] + self.encode(prompt)

    def to_json(self) -> str:
        return json.dumps({"type": "char", "characters": "".join(self.tokens[len(SPECIALS):])})


class HFTokenizer:
    """A local Hugging Face tokenizer behind the trainer's interface.

    ``prompt_ids`` applies the tokenizer's chat template (one user message, generation
    prompt added) when it has one; otherwise it encodes the prompt with the tokenizer's
    own special tokens (e.g. a BOS).
    """

    def __init__(self, tokenizer):
        self.tok = tokenizer
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token_id; the trainer needs one to end responses")
        self.eos_token_id = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def token_strings(self, ids) -> list[str]:
        """Each id decoded on its own (what it adds to the text), for per-token views."""
        return [self.tok.decode([int(i)]) for i in ids]

    def prompt_ids(self, prompt: str) -> list[int]:
        if getattr(self.tok, "chat_template", None):
            text = self.tok.apply_chat_template([{"role": "user", "content": prompt}],
                                                add_generation_prompt=True, tokenize=False)
            return self.encode(text)
        return list(self.tok.encode(prompt, add_special_tokens=True))
