"""Methods that adapt the frozen LLM: the soft prompt (and, later, LoRA and a steering vector).

Every method shares one small interface:

* ``trainable_parameters()`` — what the optimiser updates (the backbone stays frozen);
* ``apply(llm, input_ids, attention_mask) -> (inputs_embeds, attention_mask)`` — the method's effect on a
  left-padded chat batch (used by :func:`dispsafe_nb.objectives.sequence_logprobs`);
* ``bind(llm)`` — a system answering ``generate(prompts)`` like every other system;
* ``save(folder, config)`` / ``load(folder, llm)`` — artifacts are ``.safetensors`` + JSON, never code.

The soft prompt ``W`` (N x d) is inserted between each row's left padding and its chat tokens, so it sits
before the chat template (``[pad | W | <|im_start|>system ... assistant\\n]``), as in the paper.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dispsafe_nb.artifacts import ArtifactError, load_artifact, save_artifact
from dispsafe_nb.data import SPLIT_VERSION
from dispsafe_nb.models import LLM, DecodingConfig, generate_with_prefix, prepend_prefix

SOFT_PROMPT_KIND = "soft_prompt"
DEFAULT_N_TOKENS = 100
DEFAULT_INIT_TEXT = "You are a helpful assistant that refuses harmful requests and answers safe ones."
INITS = ("text", "random_vocab")


class SoftPrompt(nn.Module):
    """N trainable vectors ``W`` (N x d, float32) prepended to the frozen LLM's input embeddings.

    Holds no reference to the LLM (so the backbone's parameters never become this module's parameters);
    it records the model's name and hidden size for its artifact.
    """

    kind = SOFT_PROMPT_KIND

    def __init__(
        self,
        weight: torch.Tensor,
        model_name: str | None = None,
        init: str = "custom",
        init_text: str | None = None,
        seed: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if weight.ndim != 2 or weight.shape[0] < 1:
            raise ValueError(f"a soft prompt is N x d with N >= 1, got shape {tuple(weight.shape)}")
        self.W = nn.Parameter(weight.detach().clone().float())
        self.model_name = model_name
        self.init = init
        self.init_text = init_text
        self.seed = seed
        self.metadata: dict[str, Any] = dict(metadata or {})

    # ---- facts --------------------------------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        return int(self.W.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.W.shape[1])

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

    # ---- the method interface -----------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.W]

    def prefix(self) -> torch.Tensor:
        """The N x d prefix embeddings (with gradient)."""
        return self.W

    def apply(
        self, llm: LLM, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed left-padded ids and insert W after each row's padding; the mask grows to cover W."""
        self._check_fits(llm)
        return prepend_prefix(llm, input_ids, attention_mask, self.W)

    def bind(self, llm: LLM) -> SoftPromptSystem:
        """The student system (frozen LLM + this soft prompt) answering ``generate(prompts)``."""
        self._check_fits(llm)
        return SoftPromptSystem(llm, self)

    def _check_fits(self, llm: LLM) -> None:
        if llm.hidden_size != self.hidden_size:
            raise ValueError(
                f"soft prompt has hidden size {self.hidden_size} but model '{llm.name}' has hidden size "
                f"{llm.hidden_size}"
            )

    # ---- artifacts ----------------------------------------------------------------------------------------
    def save(self, folder: str | Path, config: dict[str, Any] | None = None) -> Path:
        """Write ``W`` (safetensors) and a JSON config: the soft prompt's identity (model name, hidden size,
        N, init, ...) plus the caller's ``config`` (objective, lr, steps, seed, training-data hash, ...).
        Caller keys may not overwrite the identity keys."""
        core = {**self.describe(), "dtype": str(self.W.dtype).removeprefix("torch.")}
        extra = {**self.metadata, **(config or {})}
        clash = sorted(k for k in extra if k in core and extra[k] != core[k] or k == "kind")
        if clash:
            raise ValueError(f"config keys {clash} clash with the soft prompt's own fields; rename them")
        return save_artifact(folder, SOFT_PROMPT_KIND, {"W": self.W}, {**extra, **core})

    @classmethod
    def load(
        cls, folder: str | Path, llm: LLM, strict: bool = True, device: str | torch.device | None = None
    ) -> SoftPrompt:
        """Load a saved soft prompt for ``llm``.

        A hidden-size mismatch always fails (ArtifactError naming both sizes and models). A different model
        name fails too unless ``strict=False`` (then it warns): a soft prompt is tuned to one model's
        embedding space, and a same-size model of another family would silently get nonsense.
        """
        tensors, config = load_artifact(folder, SOFT_PROMPT_KIND)
        if "W" not in tensors:
            raise ArtifactError(f"{folder} has no tensor 'W'; re-create the artifact")
        weight = tensors["W"]
        saved_model = config.get("model_name")
        saved_hidden = config.get("hidden_size", weight.shape[-1])
        if weight.ndim != 2 or weight.shape[1] != saved_hidden:
            raise ArtifactError(
                f"{folder}: W has shape {tuple(weight.shape)} but the config says hidden size {saved_hidden}"
            )
        if saved_hidden != llm.hidden_size:
            raise ArtifactError(
                f"soft prompt at {folder} has hidden size {saved_hidden} (trained on model '{saved_model}') "
                f"but model '{llm.name}' has hidden size {llm.hidden_size}: it cannot be applied to it"
            )
        if saved_model is not None and saved_model != llm.name:
            message = (
                f"soft prompt at {folder} was trained on model '{saved_model}' but is being loaded onto "
                f"model '{llm.name}' (both hidden size {llm.hidden_size})"
            )
            if strict:
                raise ArtifactError(message + "; pass strict=False to load it anyway")
            warnings.warn(message, stacklevel=2)
        trained_split = config.get("split_version")
        if "training_data_hash" in config and trained_split != SPLIT_VERSION:
            raise ArtifactError(
                f"soft prompt at {folder} was trained under split version {trained_split or 'v1 (seeded)'}, "
                f"not {SPLIT_VERSION}: its training data may hold prompts that are evaluated now (split "
                "leakage). Retrain it with this version of dispsafe_nb."
            )
        own = {"method", "model_name", "hidden_size", "n_tokens", "init", "init_text", "init_seed"}
        own |= {"n_parameters", "dtype", "kind"}
        soft = cls(
            weight,
            model_name=saved_model,
            init=config.get("init", "custom"),
            init_text=config.get("init_text"),
            seed=config.get("init_seed"),
            metadata={k: v for k, v in config.items() if k not in own},
        )
        return soft.to(device if device is not None else llm.device)


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


@dataclass
class SoftPromptSystem:
    """The student: the frozen LLM with a soft prompt, answering ``generate(prompts)``."""

    llm: LLM
    soft_prompt: SoftPrompt

    def generate(
        self,
        prompts: Sequence[str],
        decoding: DecodingConfig | None = None,
        batch_size: int = 16,
        progress: bool = False,
        *,
        num_samples: int = 1,
        per_prompt_seed: bool = False,
    ) -> list[str] | list[list[str]]:
        """One answer per prompt (``num_samples`` > 1: that many per prompt), greedy by default;
        ``per_prompt_seed`` samples every (prompt, sample) row from its own seeded stream."""
        with torch.no_grad():
            return generate_with_prefix(
                self.llm,
                prompts,
                self.soft_prompt.W.detach(),
                decoding,
                batch_size=batch_size,
                num_samples=num_samples,
                progress=progress,
                per_prompt_seed=per_prompt_seed,
            )

    def describe(self) -> dict[str, Any]:
        return {
            "system": "soft_prompt",
            "model": self.llm.describe(),
            "soft_prompt": {**self.soft_prompt.describe(), **self.soft_prompt.metadata},
        }


# ---- artifacts by kind ------------------------------------------------------------------------------------
# How to load a saved method onto a model, by the `kind` its JSON records. A new method registers its loader
# here; whatever discovers artifacts (the probing widget, notebooks) then finds it without code changes.
METHOD_LOADERS: dict[str, Any] = {SOFT_PROMPT_KIND: SoftPrompt.load}


def artifact_kind(folder: str | Path) -> str | None:
    """The `kind` recorded in an artifact folder's JSON, or None when the folder holds no readable artifact."""
    import json

    from dispsafe_nb.artifacts import CONFIG_FILE

    path = Path(folder) / CONFIG_FILE
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def load_method(folder: str | Path, llm: LLM) -> Any:
    """Load whatever method the artifact in `folder` holds (dispatching on its JSON `kind`) for `llm`.

    Fails with an `ArtifactError` naming the kind when no loader is registered for it, and with the loader's
    own error (naming both models) when the artifact was trained on another model."""
    kind = artifact_kind(folder)
    if kind is None:
        raise ArtifactError(f"{folder} holds no readable artifact config; re-create the artifact")
    if kind not in METHOD_LOADERS:
        raise ArtifactError(
            f"{folder} holds a {kind!r} artifact, for which no loader is registered "
            f"(known kinds: {', '.join(sorted(METHOD_LOADERS))})"
        )
    return METHOD_LOADERS[kind](folder, llm)
