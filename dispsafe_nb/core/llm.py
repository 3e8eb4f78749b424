"""The `LLM` (a causal LM with its tokenizer and chat format) and its batched, left-padded generation."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dispsafe_nb.common.names import unknown_name_message
from dispsafe_nb.core.batching import plan_batches
from dispsafe_nb.core.decoding import (
    DEFAULT_BATCH_SIZE,
    GENERATION_ENGINES,
    DecodingConfig,
    RowSeededSampler,
    row_seed,
)
from dispsafe_nb.core.fast_decoding import bf16_twin, decode, plain_generation_config
from dispsafe_nb.core.llamacpp_engine import LlamaCppError, LlamaCppRuntime, gguf_sha256, runtime_for
from dispsafe_nb.core.prefix_cache import PrefixCache


class PromptError(ValueError):
    """A prompt cannot be used as given (empty, or longer than the model's context)."""


@dataclass(frozen=True)
class Generation:
    """One generated answer exactly as sampled: its text, its token ids (without the end-of-turn token) and
    whether it finished on its own (`finished`) or was cut at `max_new_tokens` (a prefix, scored without eos).

    Scoring the ids, not a re-tokenisation of the text, is what makes log q(y) the probability of *this* sample:
    decoding then re-encoding does not always give back the same ids."""

    text: str
    token_ids: tuple[int, ...]
    finished: bool


@dataclass
class LLM:
    """A causal LM with its tokenizer: the base system, answering `generate(prompts)`."""

    model: Any
    tokenizer: Any
    name: str
    quantization: str = "none"
    system_prompt: str | None = None
    on_overlong: str = "error"  # "error" or "truncate" (keeps the start of the user's text, warns)
    info: dict[str, Any] = field(default_factory=dict)
    gguf_file: Path | None = None  # the GGUF file the llama.cpp engine runs (None: a model without one)
    # How generate() decodes (GENERATION_ENGINES); `with_engine` gives a copy with another.
    engine: str = "fast"

    # ---- facts about the model -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def context_length(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or self.tokenizer.model_max_length)

    def describe(self) -> dict[str, Any]:
        """A JSON-able identity of this model, for result records and artifact configs, and so for every cache
        key of answers (evaluation records, teacher samples). An engine other than the default "fast" is named
        (absent means "fast", so keys made before there were engines stay valid; "fast" and "hf" give the same
        tokens); "llamacpp" adds the sha256 of the GGUF file it runs."""
        out = {
            "name": self.name,
            "hidden_size": self.hidden_size,
            "quantization": self.quantization,
            "context_length": self.context_length,
            "system_prompt": self.system_prompt,
            **self.info,
        }
        if self.engine != "fast":
            out["engine"] = self.engine
        if self.engine == "llamacpp" and self.gguf_file is not None:
            out["gguf_sha256"] = gguf_sha256(self.gguf_file)
        return out

    def with_engine(self, engine: str) -> LLM:
        """This LLM (the same weights and tokenizer, nothing copied) answering through `engine`; every system
        built on the copy (the dual system, a method's student) generates with it."""
        if engine not in GENERATION_ENGINES:
            raise ValueError(unknown_name_message("generation engine", engine, GENERATION_ENGINES))
        if engine == "llamacpp":
            self.require_gguf()
        return replace(self, engine=engine)

    def require_gguf(self) -> Path:
        """The GGUF file llama.cpp runs, or an error saying how to get a model that has one."""
        if self.gguf_file is None:
            raise LlamaCppError(
                f"{self.name} was not loaded from a GGUF file, which llama.cpp needs: load the embedded default "
                "(load_llm()) or keep a PyTorch engine ('fast')"
            )
        return self.gguf_file

    # ---- prompts ---------------------------------------------------------------------------------------
    def chat_text(self, prompt: str, response: str | None = None) -> str:
        """The chat-templated text for one user prompt, ending where the assistant starts to speak
        (or after `response` when given, without the end-of-turn token)."""
        messages = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": prompt})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text if response is None else text + response

    def check_prompts(self, prompts: Sequence[str], reserve_tokens: int = 0) -> list[str]:
        """Validate prompts: non-empty, and fitting in the context with `reserve_tokens` left for the answer.

        Over-long prompts raise `PromptError` by default; with `on_overlong="truncate"` the user's text is cut
        to fit (its start is kept) and a warning names the prompt.
        """
        if isinstance(prompts, str):
            raise TypeError("pass a list of prompts, not a single string")
        prompts = list(prompts)
        if not prompts:
            raise PromptError("no prompts given")
        empty = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
        if empty:
            raise PromptError(
                f"empty or whitespace-only prompt(s) at index {empty}; give each prompt some text"
            )
        overhead = len(self.tokenizer(self.chat_text(""), add_special_tokens=False)["input_ids"])
        budget = self.context_length - reserve_tokens - overhead
        checked = []
        for i, prompt in enumerate(prompts):
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if len(ids) <= budget:
                checked.append(prompt)
                continue
            if self.on_overlong != "truncate":
                raise PromptError(
                    f"prompt {i} has {len(ids)} tokens but the model's context ({self.context_length}) leaves "
                    f"{budget} for it after the chat template and {reserve_tokens} new tokens; shorten it, or "
                    "load the model with on_overlong='truncate'"
                )
            warnings.warn(
                f"prompt {i} truncated from {len(ids)} to {budget} tokens to fit the context", stacklevel=3
            )
            checked.append(self.tokenizer.decode(ids[:budget]))
        return checked

    def chat_lengths(self, prompts: Sequence[str]) -> list[int]:
        """The number of tokens of each prompt's chat text (what `encode_chat` gives it before padding)."""
        texts = [self.chat_text(p) for p in prompts]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def encode_chat(
        self, prompts: Sequence[str], reserve_tokens: int = 0, validate: bool = True
    ) -> dict[str, torch.Tensor]:
        """Chat-template and tokenize prompts, left-padded (so every answer starts at the same column)."""
        if validate:
            prompts = self.check_prompts(prompts, reserve_tokens)
        texts = [self.chat_text(p) for p in prompts]
        self.tokenizer.padding_side = "left"
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.device) for k, v in batch.items()}

    # ---- generation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        decoding: DecodingConfig | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        num_samples: int = 1,
        progress: bool = False,
        per_prompt_seed: bool = False,
        token_budget: int | None = None,
    ) -> list[str] | list[list[str]]:
        """Answer each prompt. Returns one string per prompt, or `num_samples` strings per prompt when > 1.

        per_prompt_seed: sample every (prompt, sample index) row from its own random stream, seeded by the prompt
        text and `decoding.seed`, so a prompt's samples do not depend on which prompts share its batch.
        batch_size, token_budget: at most this many prompts, and this many padded tokens, per forward pass
        (`core.batching`; the budget's default has one home there).
        """
        return generate_with_prefix(
            self,
            prompts,
            None,
            decoding,
            batch_size,
            num_samples,
            progress,
            per_prompt_seed=per_prompt_seed,
            token_budget=token_budget,
        )

    @torch.no_grad()
    def generate_detailed(
        self,
        prompts: Sequence[str],
        *,
        decoding: DecodingConfig | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        num_samples: int = 1,
        progress: bool = False,
        per_prompt_seed: bool = False,
        token_budget: int | None = None,
    ) -> list[list[Generation]]:
        """Like `generate`, but `num_samples` `Generation`s (text, token ids, finished) per prompt."""
        return generate_with_prefix(
            self,
            prompts,
            None,
            decoding,
            batch_size,
            num_samples,
            progress,
            per_prompt_seed=per_prompt_seed,
            details=True,
            token_budget=token_budget,
        )


@torch.no_grad()  # generation never needs gradients; a trainable prefix would otherwise keep every pass's graph
def generate_with_prefix(
    llm: LLM,
    prompts: Sequence[str],
    prefix: torch.Tensor | None,
    decoding: DecodingConfig | None = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    num_samples: int = 1,
    progress: bool = False,
    *,
    per_prompt_seed: bool = False,
    details: bool = False,
    engine: str | None = None,
    token_budget: int | None = None,
    control_vector: tuple[int, torch.Tensor] | None = None,
) -> list[str] | list[list[str]] | list[list[Generation]]:
    """Generate with optional prefix embeddings (N x d, e.g. a soft prompt) placed before the chat text.

    engine (None: the LLM's own, `llm.engine`): "fast" decodes greedy and per-row-seeded answers with
    `fast_decoding.decode`, reading a prefix from its KV cache (`prefix_cache.PrefixCache`, computed once per call);
    "hf" runs transformers' `generate()` with the prefix inside every row. Both give the same tokens (tests); sampling from the shared random stream
    (`per_prompt_seed=False`), and any model whose generation config adds logits processors (a repetition
    penalty, banned words: `fast_decoding.plain_generation_config`), always run through `generate()`.
    "fast_bf16": "fast" on a bfloat16 copy of the model (`fast_decoding.bf16_twin`; base model and soft prompts
    only): its answers may differ where two tokens are nearly tied.
    "llamacpp": the GGUF file's own 4-bit kernels through llama.cpp (`core.llamacpp_engine`; greedy or
    per-row-seeded; the prefix fed as input embeddings, its KV computed once and copied to every row): the deployed
    system's answers, which may differ from the PyTorch engines' (dequantised fp32) where tokens are nearly tied.
    `control_vector` (llamacpp only): (layer, d-vector) added after that layer, llama.cpp's form of a steering
    vector (the PyTorch engines apply one through the method's hook instead).

    Micro-batches (`core.batching.plan_batches`): at most `batch_size` prompts (None: no cap) and `token_budget`
    padded tokens (rows x (chat prompt + prefix + max_new_tokens)) each, longest prompts first; answers come back in
    the prompts' order. Greedy and per-prompt-seeded answers do not depend on the split (tests); sampling from the
    shared stream does.

    Rows are laid out [pad ... pad | prefix | chat tokens]: left padding keeps the prefix glued to its prompt,
    and the attention mask covers the prefix. Sampling is seeded per call so results are reproducible; with
    `per_prompt_seed`, per (prompt, sample) row instead (see `LLM.generate`). With `details`, returns
    `num_samples` `Generation`s per prompt (always nested), with the sampled token ids and finish flags.
    """

    decoding = decoding or DecodingConfig()
    engine = engine or llm.engine
    if isinstance(prompts, str):
        raise TypeError("pass a list of prompts, not a single string")
    prompts = list(prompts)
    n_prefix = 0 if prefix is None else int(prefix.shape[0])
    prompts = llm.check_prompts(prompts, reserve_tokens=decoding.max_new_tokens + n_prefix)
    if engine not in GENERATION_ENGINES:
        raise ValueError(unknown_name_message("generation engine", engine, GENERATION_ENGINES))
    lengths = [n + n_prefix + decoding.max_new_tokens for n in llm.chat_lengths(prompts)]
    batches = plan_batches(
        lengths, budget=token_budget, max_rows=batch_size, rows_per_item=num_samples, what="prompt"
    )

    fast = engine in ("fast", "fast_bf16") and (decoding.greedy or per_prompt_seed)
    fast = fast and plain_generation_config(llm.model)
    if engine == "fast_bf16":
        if not fast:
            raise ValueError(
                "engine='fast_bf16' decodes greedily or with per_prompt_seed=True only, on a model whose "
                "generation config adds no logits processor (repetition penalty, banned words, ...)"
            )
        llm = bf16_twin(llm)
    runtime = _llamacpp_runtime(llm, decoding, per_prompt_seed) if engine == "llamacpp" else None
    if control_vector is not None and runtime is None:
        raise ValueError(
            "a control vector is llama.cpp's; on a PyTorch engine the steering method's hook adds it"
        )
    prefix_cache = None
    if fast and prefix is not None:
        prefix_cache = PrefixCache(llm, prefix)
    answers: list[list[Any]] = [[] for _ in prompts]
    with torch.random.fork_rng(devices=[llm.device] if llm.device.type == "cuda" else []):
        torch.manual_seed(decoding.seed)
        for indices in tqdm(batches, desc="generate", disable=not progress):
            chunk = [prompts[i] for i in indices]
            batch = llm.encode_chat(chunk, validate=False)
            seeds = None
            if per_prompt_seed and not decoding.greedy:
                seeds = [row_seed(p, decoding.seed, j) for p in chunk for j in range(num_samples)]
            if runtime is not None:
                out = _llamacpp_batch(
                    llm, runtime, batch, prefix, decoding, num_samples, seeds, control_vector
                )
            elif fast:
                out = _decode_batch(llm, batch, prefix_cache, decoding, num_samples, seeds)
            else:
                out = _generate_batch(llm, batch, prefix, decoding, num_samples, seeds)
            rows = split_generated(llm, out) if details else None
            texts = llm.tokenizer.batch_decode(out, skip_special_tokens=True)
            for i, index in enumerate(indices):
                span = slice(i * num_samples, (i + 1) * num_samples)
                if details:
                    answers[index] = [
                        Generation(t.strip(), ids, fin)
                        for t, (ids, fin) in zip(texts[span], rows[span], strict=True)
                    ]
                else:
                    answers[index] = [t.strip() for t in texts[span]]
    if details:
        return answers
    return [a[0] for a in answers] if num_samples == 1 else answers


def split_generated(llm: LLM, new_tokens: torch.Tensor) -> list[tuple[tuple[int, ...], bool]]:
    """(token ids before the first end-of-turn token, whether there was one) for each generated row.

    generate() stops a row at eos and pads it afterwards; a row without eos ran to max_new_tokens (truncated)."""
    eos = llm.tokenizer.eos_token_id
    out = []
    for row in new_tokens.tolist():
        if eos in row:
            out.append((tuple(row[: row.index(eos)]), True))
        else:
            out.append((tuple(row), False))
    return out


def _generate_batch(
    llm: LLM,
    batch: dict[str, torch.Tensor],
    prefix: torch.Tensor | None,
    decoding: DecodingConfig,
    num_samples: int,
    row_seeds: list[int] | None = None,
) -> torch.Tensor:
    """Run `model.generate` on one encoded batch; returns only the new tokens."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": decoding.max_new_tokens,
        "num_return_sequences": num_samples,
        "pad_token_id": llm.tokenizer.pad_token_id,
        "eos_token_id": llm.tokenizer.eos_token_id,
    }
    if decoding.greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    elif row_seeds is not None:
        # Our processor draws each row's token from its own generator and leaves only that token possible;
        # greedy decoding then picks it. generate()'s shared RNG is never used.
        from transformers import LogitsProcessorList  # noqa: PLC0415 (deferred: transformers takes seconds to import; only code that runs a model needs it)

        sampler = RowSeededSampler(row_seeds, decoding.temperature, decoding.top_p)
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        kwargs["logits_processor"] = LogitsProcessorList([sampler])
    else:
        kwargs.update(do_sample=True, temperature=decoding.temperature, top_p=decoding.top_p, top_k=0)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if row_seeds is not None and num_samples > 1:
        # greedy generate() refuses num_return_sequences > 1: repeat the rows ourselves (same order)
        ids, mask = ids.repeat_interleave(num_samples, 0), mask.repeat_interleave(num_samples, 0)
        kwargs["num_return_sequences"] = 1
    if prefix is None:
        out = llm.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        return out[:, ids.shape[1] :]
    embeds, mask = prepend_prefix(llm, ids, mask, prefix)
    # With inputs_embeds only, generate() returns just the new tokens.
    return llm.model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)


def _decode_batch(
    llm: LLM,
    batch: dict[str, torch.Tensor],
    prefix_cache: Any | None,
    decoding: DecodingConfig,
    num_samples: int,
    row_seeds: list[int] | None = None,
) -> torch.Tensor:
    """`_generate_batch` through our decoding loop (greedy, or per-row seeded sampling): only the new tokens."""

    ids, mask = batch["input_ids"], batch["attention_mask"]
    if num_samples > 1:
        ids, mask = ids.repeat_interleave(num_samples, 0), mask.repeat_interleave(num_samples, 0)
    processor = None
    if row_seeds is not None:
        processor = RowSeededSampler(row_seeds, decoding.temperature, decoding.top_p)
    return decode(llm, ids, mask, decoding.max_new_tokens, prefix_cache=prefix_cache, processor=processor)


def _llamacpp_runtime(llm: LLM, decoding: DecodingConfig, per_prompt_seed: bool) -> LlamaCppRuntime:
    if not (decoding.greedy or per_prompt_seed):
        raise ValueError(
            "engine='llamacpp' decodes greedily or with per_prompt_seed=True (every row its own seeded stream); "
            "sampling from one shared stream runs on engine='hf'"
        )
    return runtime_for(llm.require_gguf())


def _llamacpp_batch(
    llm: LLM,
    runtime: LlamaCppRuntime,
    batch: dict[str, torch.Tensor],
    prefix: torch.Tensor | None,
    decoding: DecodingConfig,
    num_samples: int,
    row_seeds: list[int] | None = None,
    control_vector: tuple[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """`_decode_batch` on llama.cpp: the rows' unpadded token ids (each repeated `num_samples` times), the same
    choice of token (argmax, or each row's seeded sampler); new tokens padded after end-of-turn like `decode`'s."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    rows = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True) for _ in range(num_samples)]
    sampler = None if row_seeds is None else RowSeededSampler(row_seeds, decoding.temperature, decoding.top_p)

    def choose(logits: torch.Tensor, active: Sequence[int]) -> list[int]:
        return logits.argmax(-1).tolist() if sampler is None else sampler.choose(logits, active)

    vectors = None if prefix is None else prefix.detach().to(torch.float32).cpu().numpy()
    eos, pad = llm.tokenizer.eos_token_id, llm.tokenizer.pad_token_id
    steering = None
    if control_vector is not None:
        steering = (control_vector[0], control_vector[1].detach().to(torch.float32).cpu().numpy())
    new = runtime.generate(
        rows,
        prefix=vectors,
        max_new_tokens=decoding.max_new_tokens,
        eos_id=eos,
        choose=choose,
        steering=steering,
    )
    width = max(len(t) for t in new)
    return torch.tensor([t + [eos if pad is None else pad] * (width - len(t)) for t in new], dtype=torch.long)


def prepend_prefix(
    llm: LLM, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed left-padded ids and insert `prefix` between the padding and each row's first real token."""
    embed = llm.model.get_input_embeddings()
    tok_embeds = embed(input_ids)
    prefix = prefix.to(device=tok_embeds.device, dtype=tok_embeds.dtype)
    n_rows, n_prefix = input_ids.shape[0], prefix.shape[0]
    pad_lengths = (attention_mask == 0).sum(dim=1)
    embeds = []
    masks = []
    for row in range(n_rows):
        p = int(pad_lengths[row])
        embeds.append(torch.cat([tok_embeds[row, :p], prefix, tok_embeds[row, p:]], dim=0))
        masks.append(
            torch.cat([attention_mask[row, :p], attention_mask.new_ones(n_prefix), attention_mask[row, p:]])
        )
    return torch.stack(embeds), torch.stack(masks)
