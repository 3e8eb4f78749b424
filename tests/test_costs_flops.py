"""FLOPs and bytes from an architecture: published parameter counts, the flop counter on tiny models of every
architecture the project supports, the methods' extra cost, requests, phone budgets and bad input."""

from __future__ import annotations

import pytest
import torch

from dispsafe_nb.costs import (
    PAPER_ARCHITECTURES,
    Architecture,
    decode_flops,
    kv_cache_bytes,
    measured_decode_flops,
    method_decode_flops,
    phone_budget,
    prefill_flops,
    request_flops,
    weight_bytes,
)

# Each repository's published parameter count (model cards / safetensors index totals).
PUBLISHED_PARAMETERS = {
    "Llama-3.2-1B": 1_235_814_400,
    "Llama-3.2-3B": 3_212_749_824,
    "Qwen2-1.5B": 1_543_714_304,
    "Gemma-2-2B": 2_614_341_888,
    "Llama-Guard-3-8B": 8_030_261_248,
    "SmolLM2-135M": 134_515_008,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_parameter_counts_match_the_published_models(name):
    assert PAPER_ARCHITECTURES[name].parameters() == PUBLISHED_PARAMETERS[name]


def _tiny(kind: str, attention: str):
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    sizes = dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    config_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "gemma2": (Gemma2Config, Gemma2ForCausalLM),
    }[kind]
    extra = {"head_dim": 32} if kind == "gemma2" else {}
    config = config_cls(vocab_size=101, **sizes, **extra)
    config._attn_implementation = attention
    torch.manual_seed(0)
    return model_cls(config).eval()


@pytest.mark.parametrize(
    "kind,attention", [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa"), ("gemma2", "eager")]
)
@pytest.mark.parametrize("context", [1, 9, 33])
def test_the_formula_is_what_the_flop_counter_counts(kind, attention, context):
    model = _tiny(kind, attention)
    arch = Architecture.from_config(model.config)
    assert arch.parameters() == sum(p.numel() for p in model.parameters())
    assert measured_decode_flops(model, context) == decode_flops(arch, context)
    assert measured_decode_flops(model, context, batch=3) == decode_flops(arch, context)  # per row


def test_unmerged_lora_adds_its_two_small_products_per_adapted_matrix():
    from peft import LoraConfig, get_peft_model

    model = _tiny("llama", "sdpa")
    arch = Architecture.from_config(model.config)
    base = measured_decode_flops(model, 9)
    adapted = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    sizes = {"rank": 2, "targets": ("q_proj", "v_proj")}
    assert measured_decode_flops(adapted, 9) == method_decode_flops(arch, "lora", 9, **sizes)
    assert method_decode_flops(arch, "lora", 9, **sizes) - base == 2 * 2 * 2 * ((64 + 64) + (64 + 32))


def test_a_cached_soft_prompt_costs_attention_over_its_keys_only():
    arch = PAPER_ARCHITECTURES["Llama-3.2-3B"]
    assert method_decode_flops(arch, "soft_prompt", 512, n_tokens=100) == decode_flops(arch, 612)
    extra = method_decode_flops(arch, "soft_prompt", 512, n_tokens=100) / decode_flops(arch, 512) - 1
    assert 0 < extra < 0.01  # the paper's < 10 %, and far below it with the prefix cache
    assert method_decode_flops(arch, "steering_vector", 512) == decode_flops(arch, 512)


def test_prefill_and_requests_add_up():
    arch = PAPER_ARCHITECTURES["SmolLM2-135M"]
    # a prefill of one token after p cached ones is a decode step at p + 1 keys
    assert prefill_flops(arch, 1, past=7) == decode_flops(arch, 8)
    assert prefill_flops(arch, 5, logits="all") - prefill_flops(arch, 5) == 4 * 2 * arch.hidden * arch.vocab
    base = request_flops(arch, 10, 4)
    # the prefill yields token 1; steps 1..3 feed tokens 1..3, attending to 10 + t keys
    assert base == prefill_flops(arch, 10) + sum(decode_flops(arch, c) for c in (11, 12, 13))
    guard = PAPER_ARCHITECTURES["Llama-Guard-3-1B"]
    assert request_flops(arch, 10, 4, guard=guard) - base == prefill_flops(guard, 14)
    assert request_flops(arch, 10, 4, n_prefix=3) > base


def test_bytes():
    arch = PAPER_ARCHITECTURES["Llama-3.2-1B"]
    assert weight_bytes(arch, 4) == arch.parameters() / 2
    assert kv_cache_bytes(arch, 512) == 2 * 16 * 8 * 64 * 512 * 2


def test_a_phone_budget_reads_the_paper_s_case():
    a = PAPER_ARCHITECTURES
    same_size = phone_budget(a["Llama-3.2-1B"], a["Llama-3.2-1B"])
    # a guard as large as the LLM doubles memory and roughly doubles compute; the soft prompt adds < 1 %
    assert same_size["dual_memory_extra"] == pytest.approx(1.0, abs=1e-9)
    assert 0.8 < same_size["dual_compute_extra"] < 1.0
    assert same_size["soft_prompt_memory_extra"] < 0.01 and same_size["soft_prompt_compute_extra"] < 0.01
    big_guard = phone_budget(a["Llama-3.2-3B"], a["Llama-Guard-3-8B"], ram_gb=8, app_share=0.5)
    assert big_guard["soft_prompt_fits"] and not big_guard["dual_fits"]


def test_bad_input_says_what_to_fix():
    arch = PAPER_ARCHITECTURES["SmolLM2-135M"]
    with pytest.raises(ValueError, match="context must be at least 1"):
        decode_flops(arch, 0)
    with pytest.raises(ValueError, match="unknown method 'prefix'"):
        method_decode_flops(arch, "prefix", 8)
    with pytest.raises(ValueError, match="logits must be"):
        prefill_flops(arch, 4, logits="first")
    with pytest.raises(ValueError, match="app_share"):
        phone_budget(arch, arch, app_share=0)
