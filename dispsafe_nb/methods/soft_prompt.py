"""The soft prompt: N trainable vectors ``W`` (N x d) prepended to the frozen LLM's input embeddings.

``W`` is inserted between each row's left padding and its chat tokens, so it sits before the chat template
(``[pad | W | <|im_start|>system ... assistant\\n]``), as in the paper.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dispsafe_nb.common.artifacts import ArtifactError
from dispsafe_nb.core.llm import LLM
from dispsafe_nb.methods.base import Method, MethodSystem

SOFT_PROMPT_KIND = "soft_prompt"
# The project's soft-prompt length (one home for it: DistillConfig and new_method use it). The paper's default is
# 100 (ablation 10-200); on a 135M model on 2 CPU cores the study trains 20 (costs use the paper's 100).
DEFAULT_N_TOKENS = 20
DEFAULT_INIT_TEXT = "You are a helpful assistant that refuses harmful requests and answers safe ones."
INITS = ("text", "random_vocab")


class SoftPromptSystem(MethodSystem):
    """The student: the frozen LLM with a soft prompt, answering ``generate(prompts)``."""

    def __init__(self, llm: LLM, soft_prompt: SoftPrompt) -> None:
        super().__init__(llm, soft_prompt)

    @property
    def soft_prompt(self) -> SoftPrompt:
        return self.method  # type: ignore[return-value]


class SoftPrompt(Method):
    """N trainable vectors ``W`` (N x d, float32) prepended to the frozen LLM's input embeddings."""

    kind = SOFT_PROMPT_KIND
    system_class = SoftPromptSystem
    runs_on_llamacpp = True  # its vectors go in as input embeddings

    def __init__(
        self,
        weight: torch.Tensor,
        model_name: str | None = None,
        init: str = "custom",
        init_text: str | None = None,
        seed: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if weight.ndim != 2 or weight.shape[0] < 1:
            raise ValueError(f"a soft prompt is N x d with N >= 1, got shape {tuple(weight.shape)}")
        super().__init__(model_name, int(weight.shape[1]), metadata)
        self.W = nn.Parameter(weight.detach().clone().float())
        self.init = init
        self.init_text = init_text
        self.seed = seed

    def describe(self) -> dict[str, Any]:
        """JSON-able identity (also the core of the saved config)."""
        return {
            "method": SOFT_PROMPT_KIND,
            "model_name": self.model_name,
            "hidden_size": self.hidden_size,
            "n_tokens": self.n_tokens,
            "init": self.init,
            "init_text": self.init_text,
            "init_seed": self.seed,
            "n_parameters": self.W.numel(),
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"W": self.W}

    def prefix(self) -> torch.Tensor:
        """The N x d prefix embeddings (with gradient)."""
        return self.W

    @classmethod
    def identity_keys(cls) -> tuple[str, ...]:
        return ("n_tokens", "init", "init_text", "init_seed")

    @classmethod
    def from_artifact(
        cls, tensors: dict[str, torch.Tensor], config: dict[str, Any], metadata: dict[str, Any]
    ) -> SoftPrompt:
        if "W" not in tensors:
            raise ArtifactError("it has no tensor 'W'")
        weight = tensors["W"]
        saved_hidden = config.get("hidden_size", weight.shape[-1])
        if weight.ndim != 2 or weight.shape[1] != saved_hidden:
            raise ArtifactError(
                f"W has shape {tuple(weight.shape)} but the config says hidden size {saved_hidden}"
            )
        return cls(
            weight,
            model_name=config.get("model_name"),
            init=config.get("init", "custom"),
            init_text=config.get("init_text"),
            seed=config.get("init_seed"),
            metadata=metadata,
        )


def init_soft_prompt(
    llm: LLM,
    n_tokens: int = DEFAULT_N_TOKENS,
    init: str = "text",
    init_text: str = DEFAULT_INIT_TEXT,
    seed: int = 0,
) -> SoftPrompt:
    """A fresh soft prompt for ``llm`` (float32, on the model's device).

    init="text": tokenize ``init_text``, repeat its ids until there are N, truncate to N, and copy those
    (frozen) input-embedding rows (as peft's ``PromptTuningInit.TEXT``).
    init="random_vocab": N vocabulary rows drawn uniformly without replacement (seeded), skipping special
    tokens. The embedding module's own forward is used, so models that scale embeddings (Gemma) match.
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, not {n_tokens}")
    embed = llm.model.get_input_embeddings()
    if init == "text":
        ids = list(llm.tokenizer(init_text, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ValueError("init_text tokenizes to nothing; give it some text")
        ids = (ids * math.ceil(n_tokens / len(ids)))[:n_tokens]
        text = init_text
    elif init == "random_vocab":
        vocab = min(len(llm.tokenizer), embed.weight.shape[0])
        special = set(llm.tokenizer.all_special_ids)
        candidates = torch.tensor([i for i in range(vocab) if i not in special])
        if len(candidates) < n_tokens:
            raise ValueError(f"the vocabulary has only {len(candidates)} ordinary tokens for N={n_tokens}")
        gen = torch.Generator().manual_seed(seed)
        ids = candidates[torch.randperm(len(candidates), generator=gen)[:n_tokens]].tolist()
        text = None
    else:
        raise ValueError(f"init must be one of {INITS}, not {init!r}")
    with torch.no_grad():
        rows = embed(torch.tensor(ids, dtype=torch.long, device=embed.weight.device)).float()
    soft = SoftPrompt(rows, model_name=llm.name, init=init, init_text=text, seed=seed)
    return soft.to(llm.device)
