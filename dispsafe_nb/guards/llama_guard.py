"""The Llama-Guard(-3) adapter: alpha = p('safe') from the first generated token, with its chat format."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dispsafe_nb.core.batching import plan_batches
from dispsafe_nb.core.loading import load_llm
from dispsafe_nb.guards.protocol import check_pairs

# ---------------------------------------------------------------------------------------------------------
# Llama-Guard-style generative guards
# ---------------------------------------------------------------------------------------------------------


CONTENT_FORMATS = ("parts", "string")


def _chat(prompt: str, response: str, content_format: str) -> list[dict[str, Any]]:
    """One (user, assistant) exchange as chat messages, each turn's content in `content_format`."""

    def content(text: str) -> Any:
        return [{"type": "text", "text": text}] if content_format == "parts" else text

    return [{"role": "user", "content": content(prompt)}, {"role": "assistant", "content": content(response)}]


def detect_content_format(tokenizer: Any) -> str:
    """Which message format the tokenizer's chat template renders: "string" or "parts".

    Renders a probe exchange both ways. "string" wins when the template shows both plain-string turns (older
    Llama-Guard-2 / Llama-Guard-3-8B-style templates, ordinary chat templates); "parts" when only the
    `[{"type": "text", "text": ...}]` form shows both turns without leaking the list itself (Llama-Guard-3-1B and
    11B-Vision iterate over content items, and silently drop plain-string turns).
    """
    user, agent = "dispsafe probe user turn", "dispsafe probe agent turn"
    rendered = {}
    for fmt in ("string", "parts"):
        try:
            rendered[fmt] = tokenizer.apply_chat_template(
                _chat(user, agent, fmt), tokenize=False, add_generation_prompt=True
            )
        except Exception:  # a template that cannot take this format is simply not a match
            rendered[fmt] = None
    text = rendered["string"]
    if text is not None and user in text and agent in text:
        return "string"
    text = rendered["parts"]
    if text is not None and user in text and agent in text and "'type'" not in text:
        return "parts"
    raise ValueError(
        "cannot tell which message content format this guard's chat template expects; "
        f"pass content_format as one of {CONTENT_FORMATS}"
    )


@dataclass
class LlamaGuard:
    """α = p("safe") / (p("safe") + p("unsafe")) for the guard's first generated token.

    Works with Llama-Guard-3 (1B/8B) and any causal LM whose chat template renders a (user, assistant) exchange
    into a classification prompt. `safe_token`/`unsafe_token` are the words' first token ids.

    `content_format` is how each turn's content goes to the chat template: "parts" is Llama-Guard-3-1B's own
    format, `[{"type": "text", "text": ...}]` (its template iterates over content items and renders a plain
    string as an empty turn); "string" is a plain string, for Llama-Guard-2 / Llama-Guard-3-8B-style templates
    (which fail on a list); "auto" (default) picks one by rendering a probe exchange (`detect_content_format`).
    `quantization` records how the guard's weights were loaded (set by `load_llama_guard`).
    """

    model: Any
    tokenizer: Any
    name: str = "llama-guard"
    safe_word: str = "safe"
    unsafe_word: str = "unsafe"
    batch_size: int | None = (
        8  # rows per forward pass at most; `core.batching`'s token budget bounds them too
    )
    content_format: str = "auto"
    quantization: str = "unknown"

    def __post_init__(self) -> None:
        if self.content_format not in ("auto", *CONTENT_FORMATS):
            raise ValueError(
                f"content_format must be 'auto' or one of {CONTENT_FORMATS}, not {self.content_format!r}"
            )
        if self.content_format == "auto":
            self.content_format = detect_content_format(self.tokenizer)

    def _first_token(self, word: str) -> int:
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"the guard's tokenizer maps {word!r} to no tokens")
        return int(ids[0])

    def guard_prompt(self, prompt: str, response: str) -> str:
        chat = _chat(prompt, response, self.content_format)
        return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    @torch.no_grad()
    def prob_safe(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        prompts, responses = check_pairs(prompts, responses)
        safe_id, unsafe_id = self._first_token(self.safe_word), self._first_token(self.unsafe_word)
        if safe_id == unsafe_id:
            raise ValueError(
                f"{self.safe_word!r} and {self.unsafe_word!r} start with the same token; pick other words"
            )
        # Left padding puts every row's next-token logits in the last column.
        self.tokenizer.padding_side = "left"
        device = self.model.get_input_embeddings().weight.device
        texts = [self.guard_prompt(p, r) for p, r in zip(prompts, responses, strict=True)]
        lengths = [len(i) for i in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        out = torch.zeros(len(texts), device="cpu")
        for rows in plan_batches(lengths, max_rows=self.batch_size, what="guard input (prompt + response)"):
            chunk = [texts[i] for i in rows]
            batch = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            batch = batch.to(device)
            logits = self.model(**batch, logits_to_keep=1).logits[:, -1, :].float()
            pair = torch.stack([logits[:, safe_id], logits[:, unsafe_id]], dim=-1)
            out[torch.tensor(rows, device="cpu")] = torch.softmax(pair, dim=-1)[:, 0].cpu()
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "guard": "llama-guard",
            "name": self.name,
            "quantization": self.quantization,
            "content_format": self.content_format,
        }


def load_llama_guard(
    name: str = "meta-llama/Llama-Guard-3-1B",
    quantization: str | None = None,
    content_format: str = "auto",
) -> LlamaGuard:
    """Load a Llama-Guard model (needs hub access or a local folder).

    content_format: "auto" (detect from the chat template), "parts" (Llama-Guard-3-1B) or "string"
    (Llama-Guard-2 / Llama-Guard-3-8B); see `LlamaGuard`.
    """

    llm = load_llm(name, quantization=quantization)  # sets a pad token when the tokenizer has none
    return LlamaGuard(
        llm.model, llm.tokenizer, name, content_format=content_format, quantization=llm.quantization
    )
