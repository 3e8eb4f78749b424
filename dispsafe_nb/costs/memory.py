"""What the models we load hold: parameters and bytes of the LLM and the guard, and the dual system's summary.

Parameters are counted once even where two parts share them (a guard whose prompt and response sides use the same encoder). Bytes
are counted at each model's real precision: the embedded LLM's as its GGUF file stores them (4-bit blocks with their
scales; transformers dequantises them to fp32 in memory on this CPU, an on-device runtime does not), every other
module at the dtype it holds in memory (the guard: fp32).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from dispsafe_nb.core.llm import LLM
from dispsafe_nb.core.loading import EMBEDDED_MODELS, embedded_model_folder
from dispsafe_nb.costs.flops import Architecture, kv_cache_bytes
from dispsafe_nb.guards.protocol import Guard
from dispsafe_nb.methods import new_method


def count_parameters(*modules: nn.Module) -> int:
    """Distinct parameters across `modules` (a tensor shared by two of them counts once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for p in module.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())


def module_bytes(*modules: nn.Module) -> int:
    """Bytes of the distinct parameters and buffers across `modules`, each at its own dtype."""
    seen: dict[int, int] = {}
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def llm_weight_bytes(llm: LLM) -> int:
    """The LLM's weights in bytes as a device would hold them: for an embedded GGUF model, the sizes of the tensors
    in its file (at their quantised types); otherwise the parameters at their in-memory dtypes (for an nf4 model,
    bitsandbytes' packed 4-bit storage)."""

    if getattr(llm, "name", None) in EMBEDDED_MODELS:
        import gguf  # noqa: PLC0415 (deferred: the GGUF reader is needed to read a GGUF header only)

        path = embedded_model_folder(llm.name) / EMBEDDED_MODELS[llm.name].gguf_file
        return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)
    return module_bytes(llm.model)


def guard_modules(guard: Guard) -> list[nn.Module]:
    """The torch modules that make up a guard: an `EmbeddingGuard`'s encoders and heads, or a generative guard's
    model (e.g. `LlamaGuard`)."""
    parts = ("prompt_encoder.model", "response_encoder.model", "prompt_head", "response_head")
    found = []
    for path in parts:
        obj = guard
        for name in path.split("."):
            obj = getattr(obj, name, None)
        if isinstance(obj, nn.Module):
            found.append(obj)
    if not found and isinstance(getattr(guard, "model", None), nn.Module):
        found.append(guard.model)
    if not found:
        raise TypeError(
            f"cannot find the modules of a {type(guard).__name__}: give it encoders and heads or a .model"
        )
    return found


def dual_system_costs(llm: LLM, guard: Guard, timing: dict[str, float]) -> dict[str, float]:
    """Parameters (millions) and weight megabytes (each at its real precision) of the LLM and the guard, the dual
    system's parameter and memory ratios, and the time per prompt spent generating vs. guarding (`timing` as
    `harness.evaluate_base_and_dual` returns it) with its ratio."""
    if timing.get("n", 0) < 1 or timing.get("generate_s", 0.0) <= 0.0:
        raise ValueError(f"timing must cover at least one prompt with some generation time, got {timing}")
    llm_params = count_parameters(llm.model)
    guard_params = count_parameters(*guard_modules(guard))
    llm_bytes, guard_bytes = llm_weight_bytes(llm), module_bytes(*guard_modules(guard))
    generate_ms = 1000 * timing["generate_s"] / timing["n"]
    guard_ms = 1000 * timing["guard_s"] / timing["n"]
    return {
        "llm_params_M": llm_params / 1e6,
        "guard_params_M": guard_params / 1e6,
        "dual_param_ratio": (llm_params + guard_params) / llm_params,
        "llm_MB": llm_bytes / 1e6,
        "guard_MB": guard_bytes / 1e6,
        "dual_memory_ratio": (llm_bytes + guard_bytes) / llm_bytes,
        "generate_ms_per_prompt": generate_ms,
        "guard_ms_per_prompt": guard_ms,
        "dual_cost_ratio": (generate_ms + guard_ms) / generate_ms,
    }


def method_memory_rows(llm: LLM, guard: Guard, n_tokens: int) -> list[dict[str, Any]]:
    """What each option adds to the LLM, in parameters and bytes (fp16, as a device would keep a prompt, its cached
    keys/values or an adapter), beside the LLM at its real precision and the guard in fp32. Rows: LLM, soft
    prompt, its cached keys/values, LoRA, steering vector, guard."""

    llm_params, llm_bytes = count_parameters(llm.model), llm_weight_bytes(llm)
    rows = [{"part": f"LLM ({llm.name}, {llm.quantization})", "parameters": llm_params, "bytes": llm_bytes}]
    for kind in ("soft_prompt", "lora", "steering_vector"):
        method = (
            new_method(kind, llm, n_tokens=n_tokens) if kind != "steering_vector" else new_method(kind, llm)
        )
        n = method.n_parameters()
        rows.append({"part": _method_label(method.describe()), "parameters": n, "bytes": 2 * n})
    # read from a prefix cache, the soft prompt also keeps its N positions' keys and values at every layer
    cache_bytes = kv_cache_bytes(Architecture.from_config(llm.model.config), n_tokens)
    rows.insert(2, {"part": "soft prompt's cached keys/values (fp16)", "parameters": 0, "bytes": cache_bytes})
    guard_params = count_parameters(*guard_modules(guard))
    rows.append(
        {"part": "guard (fp32)", "parameters": guard_params, "bytes": module_bytes(*guard_modules(guard))}
    )
    for row in rows:
        row["share_of_llm_parameters"] = row["parameters"] / llm_params
        row["share_of_llm_bytes"] = row["bytes"] / llm_bytes
    return rows


def _method_label(d: dict[str, Any]) -> str:
    if d["method"] == "lora":
        layers = "all" if d["layers"] is None else len(d["layers"])
        return f"LoRA (rank {d['rank']} on {', '.join(d['target_modules'])} of {layers} layers, fp16)"
    if d["method"] == "steering_vector":
        return f"steering vector (layer {d['layer']}, fp16)"
    return f"soft prompt (N = {d['n_tokens']}, fp16)"
