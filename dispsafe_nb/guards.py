"""Guards: models of α(x, y) = p(safe | prompt x, response y), the teacher's safety judgement.

Every guard answers `prob_safe(prompts, responses) -> tensor`. Two implementations:

* `EmbeddingGuard` (offline default): MiniLM-L6 sentence embeddings and two small trained heads, combined by the
  factorisation  p(unsafe | x, y) = p(harmful | x) · p(complies | y).
  Why factorise? An exchange is unsafe exactly when a harmful request meets a compliant answer. Each factor can be
  learned from data this project can hold: labelled *requests* (public benchmarks plus our bundled set) and
  refusal vs. compliant *answers* — we never need (or write) harmful answers. A joint head over (x, y) would need
  harmful completions as positives. The price: the guard cannot see harm that lives only in the answer.
* `LlamaGuard`: any HF generative guard in the Llama-Guard style; α = p("safe") against p("unsafe") as the first
  token the guard would generate under its own chat template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from dispsafe_nb.artifacts import load_artifact, save_artifact
from dispsafe_nb.encoders import MINILM_ID, SentenceEncoder, load_encoder

DEFAULT_REFUSAL = "I'm sorry, but I can't help with that request."


@runtime_checkable
class Guard(Protocol):
    """Anything that scores exchanges: α(x, y) = p(safe | x, y), one value per (prompt, response) pair."""

    def prob_safe(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor: ...

    def describe(self) -> dict[str, Any]: ...


def _check_pairs(prompts: Sequence[str], responses: Sequence[str]) -> tuple[list[str], list[str]]:
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
        raise ValueError(
            f"{len(prompts)} prompts but {len(responses)} responses: give one response per prompt"
        )
    return prompts, responses


# ---------------------------------------------------------------------------------------------------------
# The embedding guard
# ---------------------------------------------------------------------------------------------------------


class ProbeHead(nn.Module):
    """Logistic regression (hidden=0) or a one-hidden-layer MLP on a sentence embedding; outputs a logit."""

    def __init__(self, dim: int, hidden: int = 0):
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.net = (
            nn.Linear(dim, 1)
            if hidden == 0
            else nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


@dataclass
class EmbeddingGuard:
    """α(x, y) = 1 − p(harmful | x) · p(complies | y).

    The prompt side may use a fine-tuned copy of MiniLM (`prompt_encoder`); the response side uses the
    stock encoder (telling refusals from answers needs no fine-tuning). Train with
    `dispsafe_nb.guard_training.load_embedding_guard()`.
    """

    prompt_encoder: SentenceEncoder
    response_encoder: SentenceEncoder
    prompt_head: ProbeHead
    response_head: ProbeHead
    config: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def prob_harmful(self, prompts: Sequence[str]) -> torch.Tensor:
        """p(harmful | x) for each prompt."""
        return torch.sigmoid(self.prompt_head(self.prompt_encoder.encode(prompts)))

    @torch.no_grad()
    def prob_complies(self, responses: Sequence[str]) -> torch.Tensor:
        """p(complies | y) for each response; an empty answer complies with nothing."""
        responses = list(responses)
        embeddings = self.response_encoder.encode([r if r.strip() else "." for r in responses])
        probs = torch.sigmoid(self.response_head(embeddings))
        empty = torch.tensor([not r.strip() for r in responses], dtype=torch.bool)
        return probs.masked_fill(empty, 0.0)

    def prob_safe(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        prompts, responses = _check_pairs(prompts, responses)
        return 1.0 - self.prob_harmful(prompts) * self.prob_complies(responses)

    def describe(self) -> dict[str, Any]:
        return {
            "guard": "embedding",
            "encoder": self.response_encoder.name,
            "key": self.config.get("key"),
            "role": self.config.get("role", "teacher"),
        }

    def save(self, folder: str | Path) -> Path:
        tensors = {f"prompt.{k}": v for k, v in self.prompt_head.state_dict().items()}
        tensors |= {f"response.{k}": v for k, v in self.response_head.state_dict().items()}
        if self.prompt_encoder is not self.response_encoder:
            # Only the fine-tuned parameters differ from the stock encoder; store just those.
            stock = dict(self.response_encoder.model.named_parameters())
            for name, param in self.prompt_encoder.model.named_parameters():
                if not torch.equal(param, stock[name]):
                    tensors[f"prompt_encoder.{name}"] = param
        meta = {"config": self.config, "report": self.report, "dim": self.prompt_head.dim}
        return save_artifact(folder, "embedding_guard", tensors, meta)

    @classmethod
    def load(cls, folder: str | Path, encoder: SentenceEncoder | None = None) -> EmbeddingGuard:
        """Load a saved guard; `encoder` is the stock MiniLM (loaded when not given)."""
        tensors, meta = load_artifact(folder, "embedding_guard")
        wanted = meta["config"].get("encoder", MINILM_ID)
        if encoder is None or encoder.name != wanted:
            encoder = load_encoder(wanted)
        if encoder.dim != meta["dim"]:
            raise ValueError(
                f"guard in {folder} was trained on {meta['dim']}-d embeddings but the encoder gives {encoder.dim}-d"
            )
        hidden = int(meta["config"]["hidden"])
        heads = []
        for prefix in ("prompt.", "response."):
            head = ProbeHead(meta["dim"], hidden)
            head.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
            heads.append(head.eval())
        tuned = {
            k[len("prompt_encoder.") :]: v for k, v in tensors.items() if k.startswith("prompt_encoder.")
        }
        prompt_encoder = encoder
        if tuned:
            prompt_encoder = encoder.clone(name=f"{encoder.name}+finetuned")
            missing = set(tuned) - set(dict(prompt_encoder.model.named_parameters()))
            if missing:
                raise ValueError(
                    f"guard in {folder} has encoder weights this encoder lacks: {sorted(missing)[:3]}"
                )
            prompt_encoder.model.load_state_dict(tuned, strict=False)
            prompt_encoder.model.eval()
        return cls(prompt_encoder, encoder, heads[0], heads[1], meta["config"], meta.get("report", {}))


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
    batch_size: int = 8
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
        prompts, responses = _check_pairs(prompts, responses)
        safe_id, unsafe_id = self._first_token(self.safe_word), self._first_token(self.unsafe_word)
        if safe_id == unsafe_id:
            raise ValueError(
                f"{self.safe_word!r} and {self.unsafe_word!r} start with the same token; pick other words"
            )
        # Left padding puts every row's next-token logits in the last column.
        self.tokenizer.padding_side = "left"
        device = self.model.get_input_embeddings().weight.device
        texts = [self.guard_prompt(p, r) for p, r in zip(prompts, responses, strict=True)]
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            batch = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            batch = batch.to(device)
            logits = self.model(**batch).logits[:, -1, :].float()
            pair = torch.stack([logits[:, safe_id], logits[:, unsafe_id]], dim=-1)
            out.append(torch.softmax(pair, dim=-1)[:, 0].cpu())
        return torch.cat(out)

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
    from dispsafe_nb.models import load_llm

    llm = load_llm(name, quantization=quantization)  # sets a pad token when the tokenizer has none
    return LlamaGuard(
        llm.model, llm.tokenizer, name, content_format=content_format, quantization=llm.quantization
    )
