"""FLOPs and bytes of a transformer from its configuration, for our model and the paper's.

The formulas count what dominates on a device and what `torch.utils.flop_counter` counts: matrix products, at
2 FLOPs per multiply-add. Norms, activations, softmax, rotary embeddings and the residual adds are left out (each is
O(d) per token against the O(d²) of a projection; for SmolLM2-135M they are well under 1 % of the total).

One generated token at context L (the new token attends to L keys, itself included) costs, per decoder layer,

    2·(d·H·h + 2·d·K·h + H·h·d)   the q, k, v and o projections (H query heads, K key/value heads of size h)
  + 4·H·h·L                       the attention scores q·kᵀ and the weighted sum of the values
  + 2·m·d·f                       the MLP (m = 3 matrices for a gated MLP such as SwiGLU, 2 otherwise)

and once per token 2·d·V for the vocabulary head. A soft prompt of N vectors read from a prefix KV cache only adds
attention over N more keys: 4·H·h·N per layer. LoRA kept unmerged adds 2·r·(d_in + d_out) per adapted matrix; a
steering vector adds d additions (no matrix product).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

# The paper's soft-prompt length (its on-device figures are for N = 100).
PAPER_N_TOKENS = 100


@dataclass(frozen=True)
class Architecture:
    """The sizes of a decoder (or encoder) transformer that determine its parameters and FLOPs."""

    name: str
    hidden: int  # d
    layers: int
    heads: int  # H, query heads
    kv_heads: int  # K, key/value heads (K < H: grouped-query attention)
    head_dim: int  # h
    ffn: int  # f, the MLP's inner width
    vocab: int  # V
    tied_embeddings: bool = True  # the vocabulary head reuses the input embeddings
    gated_mlp: bool = True  # SwiGLU / GeGLU: 3 matrices; a plain MLP has 2
    qkv_bias: bool = False
    norms_per_layer: int = 2  # Gemma-2 has 4 (pre and post, around attention and MLP)
    lm_head: bool = True  # False for an encoder used through its pooled embedding (our MiniLM guard)
    source: str = ""  # where the numbers come from

    @classmethod
    def from_config(cls, config: Any, name: str | None = None, source: str = "") -> Architecture:
        """Read a transformers config (Llama, Qwen2, Gemma-2, SmolLM2, BERT-style encoders)."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = text.num_attention_heads
        model_type = getattr(text, "model_type", "")
        encoder = model_type in {"bert", "roberta", "mpnet", "xlm-roberta"}
        return cls(
            name=name or getattr(text, "_name_or_path", "") or model_type,
            hidden=text.hidden_size,
            layers=text.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            ffn=text.intermediate_size,
            vocab=text.vocab_size,
            tied_embeddings=bool(getattr(text, "tie_word_embeddings", True)),
            gated_mlp=not encoder,
            qkv_bias=model_type == "qwen2" or encoder or bool(getattr(text, "attention_bias", False)),
            norms_per_layer=4 if model_type.startswith("gemma2") else 2,
            lm_head=not encoder,
            source=source or "transformers config",
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ---- parameters -------------------------------------------------------------------------------------
    def layer_matmul_parameters(self) -> int:
        """Weights of one layer's matrix products (projections and MLP), biases excluded."""
        d, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return d * q + 2 * d * kv + q * d + (3 if self.gated_mlp else 2) * d * self.ffn

    def parameters(self) -> int:
        """All parameters: embeddings, layers (with biases and norms), final norm, untied head."""
        d, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        per_layer = self.layer_matmul_parameters() + self.norms_per_layer * d
        if self.qkv_bias:
            per_layer += q + 2 * kv
        head = self.vocab * d if self.lm_head and not self.tied_embeddings else 0
        return self.vocab * d + self.layers * per_layer + d + head


# Published configurations of the paper's models (the config.json of each Hugging Face repository, which the
# hub-less tests cannot fetch: the counts are pinned against the published totals in tests/test_costs_flops.py;
# the Llama Guards have the layers of the model each was fine-tuned from), and of our default, SmolLM2-135M.
PAPER_ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("Llama-3.2-1B", 2048, 16, 32, 8, 64, 8192, 128256, source="meta-llama/Llama-3.2-1B"),
        Architecture("Llama-3.2-3B", 3072, 28, 24, 8, 128, 8192, 128256, source="meta-llama/Llama-3.2-3B"),
        Architecture(
            "Qwen2-1.5B", 1536, 28, 12, 2, 128, 8960, 151936, qkv_bias=True, source="Qwen/Qwen2-1.5B"
        ),
        Architecture(
            "Gemma-2-2B", 2304, 26, 8, 4, 256, 9216, 256000, norms_per_layer=4, source="google/gemma-2-2b"
        ),
        Architecture(
            "Llama-Guard-3-1B",
            2048,
            16,
            32,
            8,
            64,
            8192,
            128256,
            tied_embeddings=False,
            source="meta-llama/Llama-Guard-3-1B: Llama-3.2-1B's layers; its repository lists 1.5B parameters, "
            "which an untied output head (+0.26B) accounts for",
        ),
        Architecture(
            "Llama-Guard-3-8B",
            4096,
            32,
            32,
            8,
            128,
            14336,
            128256,
            tied_embeddings=False,
            source="meta-llama/Llama-Guard-3-8B (Llama-3.1-8B)",
        ),
        Architecture(
            "SmolLM2-135M", 576, 30, 9, 3, 64, 1536, 49152, source="HuggingFaceTB/SmolLM2-135M-Instruct"
        ),
    )
}


# ---- FLOPs ------------------------------------------------------------------------------------------------
def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def attention_flops(arch: Architecture, queries: int, keys: int) -> int:
    """q·kᵀ and the weighted sum of values over all layers, `queries` × `keys` scores per head (counted in full,
    as the flop counter does; a causal kernel can skip the masked half)."""
    return arch.layers * 4 * arch.heads * arch.head_dim * queries * keys


def decode_flops(arch: Architecture, context: int) -> int:
    """FLOPs of one generated token whose query attends to `context` keys (itself included), KV cache in use."""
    _check_positive(context=context)
    head = 2 * arch.hidden * arch.vocab if arch.lm_head else 0
    return arch.layers * 2 * arch.layer_matmul_parameters() + attention_flops(arch, 1, context) + head


def decode_flops_breakdown(arch: Architecture, context: int) -> dict[str, int]:
    """`decode_flops` split into its parts: attention projections, attention itself, MLP, vocabulary head."""
    d, q, kv = arch.hidden, arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    return {
        "q_k_v_o_projections": arch.layers * 2 * (d * q + 2 * d * kv + q * d),
        "attention": attention_flops(arch, 1, context),
        "mlp": arch.layers * 2 * (3 if arch.gated_mlp else 2) * d * arch.ffn,
        "vocabulary_head": 2 * d * arch.vocab if arch.lm_head else 0,
    }


def prefill_flops(arch: Architecture, tokens: int, past: int = 0, logits: str = "last") -> int:
    """FLOPs of one forward pass over `tokens` new positions after `past` cached ones (attention over the full
    `past + tokens` keys, as the flop counter counts it); vocabulary logits at the last position ("last"), at every
    position ("all") or none ("none": an encoder or a scoring pass that skips the head)."""
    _check_positive(tokens=tokens)
    if logits not in {"last", "all", "none"}:
        raise ValueError(f"logits must be 'last', 'all' or 'none', not {logits!r}")
    n_logits = {"last": 1, "all": tokens, "none": 0}[logits] if arch.lm_head else 0
    linear = arch.layers * 2 * arch.layer_matmul_parameters() * tokens
    return linear + attention_flops(arch, tokens, past + tokens) + 2 * arch.hidden * arch.vocab * n_logits


def method_decode_flops(arch: Architecture, method: str, context: int, **sizes: int) -> int:
    """FLOPs of one generated token of the base model with `method` added: "base", "soft_prompt" (`n_tokens`
    vectors read from the prefix KV cache), "lora" (`rank` on `targets` matrices per layer in `layers`,
    unmerged; merged LoRA costs what the base costs), "steering_vector" (no extra matrix product)."""
    base = decode_flops(arch, context)
    if method in {"base", "steering_vector"}:
        return base
    if method == "soft_prompt":
        return base + attention_flops(arch, 1, sizes["n_tokens"])
    if method == "lora":
        d, q, kv = arch.hidden, arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
        shapes = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d)}  # (in, out)
        targets = sizes.get("targets", ("q_proj", "v_proj"))
        per_layer = sum(2 * sizes["rank"] * sum(shapes[t]) for t in targets)
        return base + sizes.get("layers", arch.layers) * per_layer
    raise ValueError(f"unknown method {method!r}: one of base, soft_prompt, lora, steering_vector")


def request_flops(
    llm: Architecture,
    prompt_tokens: int,
    response_tokens: int,
    n_prefix: int = 0,
    guard: Architecture | None = None,
) -> int:
    """FLOPs of one request: the LLM's prefill of the prompt (after `n_prefix` soft-prompt positions read from a
    prefix KV cache), `response_tokens - 1` decode steps (the prefill yields the first token), and with a `guard`
    its one pass over prompt and response (logits at the last position for a generative guard such as Llama
    Guard, none for an encoder). Divide by `response_tokens` for FLOPs per generated token."""
    _check_positive(prompt_tokens=prompt_tokens, response_tokens=response_tokens)
    total = prefill_flops(llm, prompt_tokens, past=n_prefix)
    # decode step t feeds generated token t, which attends to the prefix, the prompt and tokens 1..t
    total += sum(decode_flops(llm, n_prefix + prompt_tokens + t) for t in range(1, response_tokens))
    if guard is not None:
        total += prefill_flops(
            guard, prompt_tokens + response_tokens, logits="last" if guard.lm_head else "none"
        )
    return total


# ---- bytes ------------------------------------------------------------------------------------------------
def weight_bytes(arch: Architecture, bits_per_weight: float) -> float:
    """Bytes of all parameters stored at `bits_per_weight` (4 for a 4-bit model before its block scales; a GGUF
    Q4_K_M file averages about 4.8, our Q4_1 SmolLM2 5.7 with its fp32 norms)."""
    return arch.parameters() * bits_per_weight / 8


def kv_cache_bytes(arch: Architecture, context: int, bytes_per_value: int = 2) -> int:
    """Keys and values of `context` positions over all layers (fp16 by default)."""
    return 2 * arch.layers * arch.kv_heads * arch.head_dim * context * bytes_per_value


# ---- measured ---------------------------------------------------------------------------------------------
@torch.no_grad()
def measured_decode_flops(model: Any, context: int, batch: int = 1) -> int:
    """The flop counter's FLOPs of one decode step of `model` (a transformers causal LM) at `context` keys, per
    row: a prefill of `context - 1` random tokens fills the KV cache, then one token is counted."""

    _check_positive(context=context)
    device = next(model.parameters()).device
    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, context), generator=generator).to(device)
    past = None
    if context > 1:
        past = model(input_ids=ids[:, :-1], use_cache=True).cache
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        model(input_ids=ids[:, -1:], cache=past, use_cache=True)
    return counter.get_total_flops() // batch


def formula_check(model: Any, context: int) -> dict[str, float]:
    """The analytic FLOPs per generated token of `model` against the flop counter's, at `context`."""
    analytic = decode_flops(Architecture.from_config(model.config), context)
    counted = measured_decode_flops(model, context)
    return {"analytic": analytic, "counted": counted, "relative_error": abs(analytic - counted) / counted}


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:

    return sdpa_flop_count(query_shape, key_shape, value_shape)


# The flop counter knows the CUDA attention kernels but not the CPU one that scaled_dot_product_attention runs here:
# without this entry, attention would count as 0 FLOPs on a CPU.
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def paper_flops_table(context: int = 512, n_tokens: int = PAPER_N_TOKENS) -> list[dict[str, Any]]:
    """Per paper model: parameters, 4-bit bytes, FLOPs per generated token at `context`, and with a soft prompt
    of `n_tokens` vectors (prefix KV cache)."""
    rows = []
    for arch in PAPER_ARCHITECTURES.values():
        base = decode_flops(arch, context)
        soft = method_decode_flops(arch, "soft_prompt", context, n_tokens=n_tokens)
        rows.append(
            {
                "model": arch.name,
                "parameters_B": arch.parameters() / 1e9,
                "weights_4bit_GB": weight_bytes(arch, 4) / 1e9,
                "gflops_per_token": base / 1e9,
                "gflops_per_token_soft_prompt": soft / 1e9,
                "soft_prompt_extra": soft / base - 1,
                "soft_prompt_parameter_share": n_tokens * arch.hidden / arch.parameters(),
            }
        )
    return rows


def paper_comparison(reported: dict[str, Any]) -> dict[str, Any]:
    """Our formula on the paper's model beside its reported FLOPs per token (`paper.SOFT_PROMPT_FLOPS`)."""
    arch = PAPER_ARCHITECTURES[reported["model"]]
    context, n = reported["context"], reported["n_tokens"]
    return {
        "paper": dict(reported),
        "ours_base_gflops": decode_flops(arch, context) / 1e9,
        "ours_soft_gflops": method_decode_flops(arch, "soft_prompt", context, n_tokens=n) / 1e9,
    }
