"""Measured speed: this machine's limits, the trainer's throughput, decoding speed and per-token latency.

Every function returns plain numbers for a benchmark JSON; none asserts a target (targets live in
`benchmarks/costs.py`). Timings are medians over repeats after a warm-up call, in one process, so ratios between
two measurements share the machine's state.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from dispsafe_nb.core.decoding import DecodingConfig
from dispsafe_nb.core.llm import LLM, generate_with_prefix
from dispsafe_nb.core.prefix_cache import PrefixCache
from dispsafe_nb.core.scoring import left_pad, response_token_ids, sequence_logprobs
from dispsafe_nb.costs.flops import CPU_ATTENTION
from dispsafe_nb.guards.protocol import Guard
from dispsafe_nb.methods.base import Method
from dispsafe_nb.training.batch_loss import batch_loss_of
from dispsafe_nb.training.config import DistillConfig
from dispsafe_nb.training.examples import example_tokens, micro_batches
from dispsafe_nb.training.objectives import tv_disp_loss


def _synchronize() -> None:
    """Wait for queued GPU work (a CUDA call returns before its kernels finish): timings then cover the work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` calls, after `warmup` untimed calls (GPU work included)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _synchronize()
        start = time.perf_counter()
        fn()
        _synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def counted_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` (forward and backward included) as `torch.utils.flop_counter` counts them."""

    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        fn()
    return counter.get_total_flops()


# ---- the machine ----------------------------------------------------------------------------------------
def matmul_peak(
    dtype: torch.dtype = torch.float32, size: int = 1024, repeats: int = 5, device: str | torch.device = "cpu"
) -> float:
    """FLOP/s of a square `size` matrix product at `dtype` on `device`: the practical peak the trainer is measured
    against."""
    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    b = torch.randn(size, size, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    seconds = median_seconds(lambda: a @ b, repeats=repeats)
    return 2 * size**3 / seconds


def read_bandwidth(n_bytes: int = 256 * 2**20, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Bytes/s of reading a large float32 tensor on `device` once (a reduction): the bound of memory-bound
    decoding."""
    x = torch.ones(n_bytes // 4, device=device)
    seconds = median_seconds(lambda: x.sum(), repeats=repeats)
    return n_bytes / seconds


def machine_limits(
    repeats: int = 5,
    matmul_size: int = 1024,
    read_bytes: int = 512 * 2**20,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """The fp32 and bf16 matrix-product peaks (FLOP/s) and read bandwidth (bytes/s) of `device` (the one the model
    runs on), measured now."""
    return {
        "fp32_peak": matmul_peak(torch.float32, matmul_size, repeats, device),
        "bf16_peak": matmul_peak(torch.bfloat16, matmul_size, repeats, device),
        "read_bandwidth": read_bandwidth(read_bytes, repeats, device),
        "matmul_size": matmul_size,
        "read_bytes": read_bytes,
        "device": str(device),
    }


# ---- training -------------------------------------------------------------------------------------------
def naive_terms(llm: LLM, method: Method, batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The naive reference of Eq. 4's two log-probs, computed the obvious way: one full pass per (prompt, response)
    pair — y and y_r separately — with vocabulary logits at every position, in float32."""

    tok = llm.tokenizer
    prompts = [e.prompt for e in batch]
    ids_y = response_token_ids(
        llm, None, [list(e.response_ids) for e in batch], [e.finished for e in batch], len(batch)
    )
    ids_r = response_token_ids(llm, [e.refusal for e in batch], None, True, len(batch))
    out = []
    with method.active(llm):
        for branch in (ids_y, ids_r):
            prompt_ids = [tok(llm.chat_text(p), add_special_tokens=False)["input_ids"] for p in prompts]
            ids, mask = left_pad(llm, [p + r for p, r in zip(prompt_ids, branch, strict=True)], llm.device)
            embeds, mask = method.apply(llm, ids, mask)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
            log_probs = torch.log_softmax(logits.float(), dim=-1)  # every position, full vocabulary
            total = embeds.shape[1]
            rows = []
            for i, r in enumerate(branch):
                targets = torch.tensor(r, device=llm.device)
                picked = log_probs[i, total - len(r) - 1 : total - 1].gather(-1, targets[:, None])
                rows.append(picked.sum())
            out.append(torch.stack(rows))
    return out[0], out[1]


def training_step(
    llm: LLM, method: Method, batch: Sequence[Any], cfg: DistillConfig, naive: bool = False
) -> Callable[[], float]:
    """A closure running one TV-DiSP step's forward and backward on `batch` (no optimiser update, so repeats see
    the same parameters): our trainer's (`cfg.scoring`, `cfg.autocast`) or the naive reference's."""

    params = list(method.trainable_parameters())

    def step() -> float:
        for p in params:
            p.grad = None
        if naive:
            logq_y, logq_r = naive_terms(llm, method, batch)
            alpha = torch.tensor([e.alpha for e in batch], dtype=logq_y.dtype, device=logq_y.device)
            same = torch.tensor(
                [e.response.strip() == e.refusal.strip() for e in batch], device=logq_y.device
            )
            loss = tv_disp_loss(logq_y, logq_r, alpha, same).mean()
        else:
            loss = batch_loss_of(llm, method, batch, cfg).loss
        loss.backward()
        return float(loss.detach())

    return step


def response_tokens(llm: LLM, batch: Sequence[Any]) -> int:
    """Tokens a TV-DiSP step scores: every y (with its eos when finished) and every y_r (with its eos)."""
    refusal = [len(llm.tokenizer(e.refusal, add_special_tokens=False)["input_ids"]) + 1 for e in batch]
    return sum(len(e.response_ids) + int(e.finished) for e in batch) + sum(refusal)


def training_throughput(
    llm: LLM, method: Method, batch: Sequence[Any], cfg: DistillConfig, repeats: int = 3
) -> dict[str, dict[str, float]]:
    """Per variant — the naive reference; our previous scorer (`scoring="separate"`: one pass per pair, logits at
    response positions only); ours (`"shared_prompt"`) in float32 and with bf16 autocast — median step seconds,
    response tokens per second, the step's counted FLOPs and the FLOP/s achieved, and its loss (the variants must
    agree)."""
    variants = {
        "naive_fp32": (replace(cfg, scoring="separate"), True),
        "separate_fp32": (replace(cfg, scoring="separate", autocast="none"), False),
        "ours_fp32": (replace(cfg, scoring="shared_prompt", autocast="none"), False),
        "ours_bf16": (replace(cfg, scoring="shared_prompt", autocast="bf16"), False),
    }
    n_tokens = response_tokens(llm, batch)
    out = {}
    for name, (variant_cfg, naive) in variants.items():
        step = training_step(llm, method, batch, variant_cfg, naive)
        seconds = median_seconds(step, repeats=repeats)
        flops = counted_flops(step)
        out[name] = {
            "step_s": seconds,
            "response_tokens": n_tokens,
            "tokens_per_s": n_tokens / seconds,
            "step_flops": flops,
            "achieved_flops_per_s": flops / seconds,
            "loss": step(),
        }
    return out


def bucketing_gain(
    llm: LLM, method: Method, examples: Sequence[Any], cfg: DistillConfig, repeats: int = 3
) -> dict[str, Any]:
    """One step of `cfg.grad_accum` micro-batches of `cfg.batch_size` over `examples` (taken in order, as one
    step's draws) with the trainer's length bucketing and without: median step seconds (forward and backward of
    every micro-batch), padded-token share by example length, and the step's loss (the two must agree)."""

    need = cfg.batch_size * cfg.grad_accum
    if len(examples) < need:
        raise ValueError(f"need {need} examples (batch_size x grad_accum), got {len(examples)}")
    draws = [list(range(k, k + cfg.batch_size)) for k in range(0, need, cfg.batch_size)]
    length = {id(e): example_tokens(llm, e) for e in examples[:need]}
    params = list(method.trainable_parameters())
    out: dict[str, Any] = {"batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum}
    for bucketing in ("none", "length"):
        batches = micro_batches(examples, draws, bucketing, lambda e: length[id(e)])

        def step(batches: list = batches) -> float:
            for p in params:
                p.grad = None
            total = 0.0
            for batch in batches:
                loss = batch_loss_of(llm, method, batch, cfg).loss / len(batches)
                loss.backward()
                total += float(loss.detach())
            return total

        real = sum(length[id(e)] for b in batches for e in b)
        padded = sum(len(b) * max(length[id(e)] for e in b) for b in batches)
        out[bucketing] = {
            "step_s": median_seconds(step, repeats=repeats),
            "padded_share": 1 - real / padded,
            "loss": step(),
        }
    out["speedup"] = out["none"]["step_s"] / out["length"]["step_s"]
    return out


# ---- decoding -------------------------------------------------------------------------------------------
def generation_speed(
    llm: LLM,
    prompts: Sequence[str],
    max_new_tokens: int,
    engine: str,
    prefix: torch.Tensor | None = None,
    repeats: int = 3,
) -> dict[str, float]:
    """Greedy generation of `prompts` as one batch with `engine` ("fast" or "hf"): median seconds, generated
    tokens (every row's new tokens up to its end-of-turn) and tokens/s."""

    decoding = DecodingConfig(max_new_tokens=max_new_tokens)

    def run() -> list[Any]:
        return generate_with_prefix(llm, prompts, prefix, decoding, len(prompts), details=True, engine=engine)

    seconds = median_seconds(run, repeats=repeats)
    generated = sum(len(g[0].token_ids) + int(g[0].finished) for g in run())
    return {"seconds": seconds, "tokens": generated, "tokens_per_s": generated / seconds}


def engine_agreement(
    llm: LLM, prompts: Sequence[str], max_new_tokens: int, engine: str, reference: str
) -> dict[str, float]:
    """How far `engine`'s greedy answers follow `reference`'s: the share of prompts with identical tokens and the
    mean share of each answer's leading tokens that agree."""

    decoding = DecodingConfig(max_new_tokens=max_new_tokens)
    runs = [
        generate_with_prefix(llm, prompts, None, decoding, len(prompts), details=True, engine=e)
        for e in (engine, reference)
    ]
    same, prefix_shares = [], []
    for a, b in zip(runs[0], runs[1], strict=True):
        x, y = a[0].token_ids, b[0].token_ids
        same.append(x == y)
        agree = next((i for i, (u, v) in enumerate(zip(x, y, strict=False)) if u != v), min(len(x), len(y)))
        prefix_shares.append(agree / max(len(x), len(y), 1))
    return {
        "identical_share": sum(same) / len(same),
        "mean_agreeing_prefix_share": statistics.fmean(prefix_shares),
        "n_prompts": len(same),
    }


@torch.no_grad()
def decode_step_seconds(
    llm: LLM, context: int, prefix_cache: Any | None = None, batch: int = 1, repeats: int = 7
) -> float:
    """Median seconds of one decode step whose token attends to `context` prompt positions (plus the prefix's N
    when `prefix_cache` is given), batch `batch`: the KV cache is filled once and cropped back after every step."""
    from transformers import DynamicCache  # noqa: PLC0415 (deferred: transformers takes seconds to import; only code that runs a model needs it)

    vocab = llm.model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (batch, context), generator=torch.Generator().manual_seed(0)).to(llm.device)
    n_prefix = 0 if prefix_cache is None else prefix_cache.n_tokens
    cache = DynamicCache(config=llm.model.config) if prefix_cache is None else prefix_cache.expand(batch)
    mask = torch.ones(batch, n_prefix + context, dtype=torch.long, device=llm.device)
    positions = torch.arange(n_prefix, n_prefix + context, device=llm.device)[None].expand(batch, -1)
    llm.model(
        input_ids=ids[:, :-1],
        attention_mask=mask[:, :-1],
        position_ids=positions[:, :-1],
        cache=cache,
        use_cache=True,
    )

    def step() -> None:
        llm.model(
            input_ids=ids[:, -1:],
            attention_mask=mask,
            position_ids=positions[:, -1:],
            cache=cache,
            use_cache=True,
        )
        cache.crop(-1)  # drop the token just added: every repeat decodes at the same context

    return median_seconds(step, repeats=repeats, warmup=2)


@torch.no_grad()
def prefill_seconds(llm: LLM, tokens: int, repeats: int = 5) -> float:
    """Median seconds of one forward pass over `tokens` random tokens (batch 1) filling a fresh KV cache."""
    from transformers import DynamicCache  # noqa: PLC0415 (deferred: transformers takes seconds to import; only code that runs a model needs it)

    vocab = llm.model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(0)).to(llm.device)
    return median_seconds(
        lambda: llm.model(input_ids=ids, cache=DynamicCache(config=llm.model.config), use_cache=True),
        repeats=repeats,
    )


def decode_seconds_by_batch(
    llm: LLM, context: int, batches: Sequence[int], repeats: int = 5
) -> dict[int, float]:
    """Seconds per generated token (one decode step / rows) at `context`, per batch size: decoding reads every
    weight once per step whatever the batch, so more rows share that cost until compute becomes the bound."""
    return {b: decode_step_seconds(llm, context, batch=b, repeats=repeats) / b for b in batches}


@torch.no_grad()
def prefix_cache_agreement(
    llm: LLM, prefix: torch.Tensor, prompts: Sequence[str], responses: Sequence[str], max_new_tokens: int = 16
) -> dict[str, float]:
    """Does reading the prefix from its KV cache change anything? Greedy tokens (share of rows identical) and
    log q(response | prompt) (largest absolute difference) with the cache against the prefix inside every row."""

    greedy = DecodingConfig(max_new_tokens=max_new_tokens)
    cached = generate_with_prefix(llm, prompts, prefix, greedy, details=True, engine="fast")
    inline = generate_with_prefix(llm, prompts, prefix, greedy, details=True, engine="hf")
    same = [a[0].token_ids == b[0].token_ids for a, b in zip(cached, inline, strict=True)]
    with_cache = sequence_logprobs(llm, prompts, responses, prefix_cache=PrefixCache(llm, prefix))
    without = sequence_logprobs(llm, prompts, responses, prefix=prefix)
    return {
        "tokens_identical_share": sum(same) / len(same),
        "max_logprob_difference": float((with_cache - without).abs().max()),
        "n_prompts": len(prompts),
    }


def per_token_latency(
    llm: LLM,
    guard: Guard,
    prefix: torch.Tensor,
    context: int,
    response_tokens: int,
    repeats: int = 5,
) -> dict[str, float]:
    """Measured time per generated token at `context`: the base model, and the model with `prefix` read from its
    `PrefixCache`; what re-encoding the prefix in every request would add (its prefill); and the dual system's time
    per request over the base model's (a `context`-token prefill plus `response_tokens` decode steps, plus the
    guard's pass over the prompt and the response)."""

    # the two alternate, three rounds each: a ratio of two timings is only as good as their shared conditions
    cache, bases, softs = PrefixCache(llm, prefix), [], []
    for _ in range(3):
        bases.append(decode_step_seconds(llm, context, repeats=repeats))
        softs.append(decode_step_seconds(llm, context, cache, repeats=repeats))
    base, soft = statistics.median(bases), statistics.median(softs)
    inline = prefill_seconds(llm, int(prefix.shape[0]), repeats=repeats)
    text = "Explain how a bicycle gear system works and why it helps riders climb steep hills. " * 40
    prompt, response = text[: context * 4], text[: response_tokens * 4]
    calls = iter(range(10**9))  # a new text every call: the guard's encoders memoise what they have embedded

    def judge() -> None:
        n = next(calls)
        guard.prob_safe([f"{n} {prompt}"], [f"{n} {response}"])

    guard_s = median_seconds(judge, repeats=repeats)
    # one request: the prefill of a `context`-token prompt, then `response_tokens` decode steps
    per_request = prefill_seconds(llm, context, repeats=repeats) + response_tokens * base
    return {
        "context": context,
        "n_tokens": int(prefix.shape[0]),
        "response_tokens": response_tokens,
        "base_step_s": base,
        "soft_prompt_step_s": soft,
        "soft_prompt_latency_ratio": soft / base,
        "inline_prefix_s": inline,
        "guard_s_per_request": guard_s,
        "base_request_s": per_request,
        "dual_latency_ratio": (per_request + guard_s) / per_request,
    }
