"""A compact decoding loop over a KV cache: greedy, or driven by a logits processor (our per-row seeded sampler).

It does what `transformers`' `generate()` does for these two modes — prefill, then one token at a time, finished
rows padded — without its per-step bookkeeping, and it can start from a soft prompt's `PrefixCache` instead of
re-encoding the prompt for every batch. A test keeps its tokens identical to `generate()`'s in fp32.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from dispsafe_nb.core.prefix_cache import PrefixCache

Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# generate() turns these generation-config settings into logits processors or stopping rules even when decoding
# greedily; our loop does not, so a model whose config sets any of them decodes through generate() instead.
_NEUTRAL_SETTINGS: dict[str, tuple[Any, ...]] = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None, []),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "suppress_tokens": (None, []),
    "begin_suppress_tokens": (None, []),
    "sequence_bias": (None, {}),
    "exponential_decay_length_penalty": (None,),
    "guidance_scale": (None, 1.0),
    "watermarking_config": (None,),
    "stop_strings": (None, []),
    "max_time": (None,),
}


def plain_generation_config(model: Any) -> bool:
    """Does greedy `generate()` on `model` apply nothing but the argmax (so our loop gives the same tokens)?"""
    config = getattr(model, "generation_config", None)
    if config is None:
        return True
    return all(getattr(config, name, None) in neutral for name, neutral in _NEUTRAL_SETTINGS.items())


@torch.no_grad()
def decode(
    llm: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    prefix_cache: PrefixCache | None = None,
    processor: Processor | None = None,
) -> torch.Tensor:
    """New tokens for left-padded rows (after `prefix_cache`'s positions when given), greedy unless `processor`
    (called as generate() calls a logits processor: ids so far, next-token scores in fp32) rewrites the scores.
    Returns [rows, steps]: a row that emitted end-of-turn is padded after it; steps stop when every row has
    finished or at `max_new_tokens`."""
    from transformers import DynamicCache  # noqa: PLC0415 (deferred: transformers takes seconds to import; only code that runs a model needs it)

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    model, rows = llm.model, input_ids.shape[0]
    eos, pad = llm.tokenizer.eos_token_id, llm.tokenizer.pad_token_id
    pad = eos if pad is None else pad
    n_prefix = 0 if prefix_cache is None else prefix_cache.n_tokens
    cache = DynamicCache(config=model.config) if prefix_cache is None else prefix_cache.expand(rows)
    mask = torch.cat([attention_mask.new_ones(rows, n_prefix), attention_mask], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions[:, n_prefix:],
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    position = positions[:, -1:]
    seen = input_ids if prefix_cache is None else input_ids.new_empty(rows, 0)
    finished = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
    tokens = []
    for step in range(max_new_tokens):
        scores = out.logits[:, -1, :].to(torch.float32)
        if processor is not None:
            scores = processor(seen, scores)
        token = scores.argmax(-1).masked_fill(finished, pad)
        tokens.append(token)
        finished |= token == eos
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        seen = torch.cat([seen, token[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
        position = position + 1
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=position,
            cache=out.cache,
            use_cache=True,
        )
    return torch.stack(tokens, dim=1)


_BF16_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def bf16_twin(llm: Any) -> Any:
    """`llm` with a bfloat16 copy of its model (made once per model, kept while the model lives): decoding reads
    half the bytes and runs bf16 matrix products. Its answers can differ from float32's where two tokens are
    nearly tied (`benchmarks/costs.py` reports how often). A method acting inside the model (LoRA's adapters, a
    steering hook) would not be copied faithfully, so such a model is refused."""

    model = llm.model
    if llm.quantization == "nf4" or any(not p.is_floating_point() for p in model.parameters()):
        raise ValueError(
            "bf16 decoding copies a floating-point model; this one is quantised (nf4): use engine='fast'"
        )
    if model.dtype == torch.bfloat16:
        return llm
    if any(m._forward_hooks or m._forward_pre_hooks or hasattr(m, "lora_A") for m in model.modules()):
        raise ValueError(
            "the model carries hooks or adapters (LoRA, a steering vector): bf16 decoding supports the base model "
            "and soft prompts; use engine='fast'"
        )
    if model not in _BF16_TWINS:
        _BF16_TWINS[model] = copy.deepcopy(model).to(torch.bfloat16).eval().requires_grad_(False)
    return replace(llm, model=_BF16_TWINS[model])
