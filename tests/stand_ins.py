"""Tiny stand-ins for the fast tests: a character tokenizer and a random 1-layer Llama (no download, no real model)."""

from __future__ import annotations

import sys

import torch

EOS, PAD, BOS = 1, 0, 2


class CharTokenizer:
    """Just what sequence_logprobs needs of a tokenizer: one id per character, eos/pad ids, a chat template.
    With `bos`, it adds that special token unless told add_special_tokens=False, like a Hugging Face tokenizer;
    without, it never adds one."""

    eos_token_id, pad_token_id, model_max_length, padding_side = EOS, PAD, 256, "left"

    def __init__(self, bos: int | None = None):
        self.bos = bos

    def __call__(self, text, add_special_tokens=True):
        if isinstance(text, list):  # a batch, as Hugging Face tokenizers take one
            return {"input_ids": [self(t, add_special_tokens)["input_ids"] for t in text]}
        ids = [3 + ord(c) % 61 for c in text]
        return {"input_ids": [self.bos, *ids] if self.bos is not None and add_special_tokens else ids}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def tiny_llama(seed: int = 0, initializer_range: float | None = None, layers: int = 1):
    """A random Llama (1 layer unless told) over the tokenizer's 64 ids (frozen, eval mode);
    `initializer_range` None keeps transformers' default."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    extra = {} if initializer_range is None else {"initializer_range": initializer_range}
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        pad_token_id=PAD,
        eos_token_id=EOS,
        **extra,
    )
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def tiny_llm(initializer_range: float | None = None, tokenizer: CharTokenizer | None = None, layers: int = 1):
    """The stand-in as an `LLM`."""
    from dispsafe_nb.core.llm import LLM

    return LLM(tiny_llama(0, initializer_range, layers), tokenizer or CharTokenizer(), "tiny-stand-in")


def patch_everywhere(monkeypatch, module, attr: str, replacement) -> None:
    """Replace `module.attr` wherever the package holds it: its home module and every module that imported it by
    name (a patch of a function must reach its callers, whichever module they live in)."""
    real = getattr(module, attr)
    for loaded in [m for name, m in list(sys.modules.items()) if name.startswith("dispsafe_nb")]:
        if getattr(loaded, attr, None) is real:
            monkeypatch.setattr(loaded, attr, replacement)
    monkeypatch.setattr(module, attr, replacement)


class WordGuard:
    """A guard stand-in: alpha 0.2 where the prompt mentions a bomb, 0.9 elsewhere."""

    def prob_safe(self, prompts, responses):
        return torch.tensor([0.2 if "bomb" in p else 0.9 for p in prompts])

    def describe(self):
        return {"guard": "word"}
