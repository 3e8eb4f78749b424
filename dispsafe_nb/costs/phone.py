"""What a phone's memory budget allows: the dual system (LLM + guard) against the LLM with a soft prompt.

Memory counted: the weights at their stored precision, the KV cache of one request at `context` positions (fp16),
and for the soft prompt its N vectors (fp16) and their N cached keys/values. Activations and the runtime's own
buffers are left out (they are small at batch 1 and the same for every option). `app_share` is the part of the RAM
one app can hold before the OS reclaims it: an assumption, stated in every result.
"""

from __future__ import annotations

from typing import Any

from dispsafe_nb.costs.flops import PAPER_ARCHITECTURES as A
from dispsafe_nb.costs.flops import (
    PAPER_N_TOKENS,
    Architecture,
    kv_cache_bytes,
    request_flops,
    weight_bytes,
)


def memory_options(
    llm: Architecture,
    guard: Architecture,
    context: int = 512,
    n_tokens: int = PAPER_N_TOKENS,
    bits_per_weight: float = 4.0,
    guard_bits_per_weight: float | None = None,
) -> dict[str, float]:
    """Bytes of the base LLM, the LLM with a soft prompt and the dual system, for one request at `context`."""
    guard_bits = bits_per_weight if guard_bits_per_weight is None else guard_bits_per_weight
    base = weight_bytes(llm, bits_per_weight) + kv_cache_bytes(llm, context)
    soft_prompt = base + n_tokens * llm.hidden * 2 + kv_cache_bytes(llm, n_tokens)
    dual = base + weight_bytes(guard, guard_bits) + kv_cache_bytes(guard, context)
    return {"base": base, "soft_prompt": soft_prompt, "dual": dual}


def phone_budget(
    llm: Architecture,
    guard: Architecture,
    ram_gb: float = 8.0,
    app_share: float = 0.5,
    context: int = 512,
    response_tokens: int = 128,
    n_tokens: int = PAPER_N_TOKENS,
    bits_per_weight: float = 4.0,
) -> dict[str, Any]:
    """One row per (LLM, guard): memory of each option in GB, whether it fits `app_share` of `ram_gb`, and the
    extra memory and compute (FLOPs of one request filling `context`, `response_tokens` of it generated) of the
    soft prompt (prefix KV cache) and of the dual system over the base model."""
    if not 0 < app_share <= 1:
        raise ValueError(f"app_share is a fraction of the RAM in (0, 1], got {app_share}")
    memory = memory_options(llm, guard, context, n_tokens, bits_per_weight)
    budget = ram_gb * 1e9 * app_share
    prompt_tokens = max(1, context - response_tokens)  # a request filling the context
    base_flops = request_flops(llm, prompt_tokens, response_tokens)
    soft_flops = request_flops(llm, prompt_tokens, response_tokens, n_prefix=n_tokens)
    dual_flops = request_flops(llm, prompt_tokens, response_tokens, guard=guard)
    return {
        "llm": llm.name,
        "guard": guard.name,
        "ram_gb": ram_gb,
        "app_share": app_share,
        "bits_per_weight": bits_per_weight,
        **{f"{k}_gb": v / 1e9 for k, v in memory.items()},
        **{f"{k}_fits": bool(v <= budget) for k, v in memory.items()},
        "soft_prompt_memory_extra": memory["soft_prompt"] / memory["base"] - 1,
        "dual_memory_extra": memory["dual"] / memory["base"] - 1,
        "soft_prompt_compute_extra": soft_flops / base_flops - 1,
        "dual_compute_extra": dual_flops / base_flops - 1,
    }


PAPER_PAIRS = tuple(
    (llm, guard)
    for llm in ("Llama-3.2-1B", "Llama-3.2-3B")
    for guard in ("Llama-Guard-3-1B", "Llama-Guard-3-8B")
)


def paper_pairs_budget(
    ram_gb: float = 8.0,
    app_share: float = 0.5,
    context: int = 512,
    response_tokens: int = 128,
    n_tokens: int = PAPER_N_TOKENS,
) -> list[dict[str, Any]]:
    """`phone_budget` for the paper's LLMs (1B, 3B) with Llama Guard 3 at 1B and 8B."""

    return [
        phone_budget(A[llm], A[guard], ram_gb, app_share, context, response_tokens, n_tokens)
        for llm, guard in PAPER_PAIRS
    ]
