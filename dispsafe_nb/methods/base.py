"""The interface every method shares, the system a method makes of the frozen LLM, and the artifact plumbing.

A method adapts the frozen LLM with a few trainable parameters. It acts in one or both of two places:

* ``apply(llm, input_ids, attention_mask) -> (inputs_embeds, attention_mask)`` — the input embeddings (a soft
  prompt inserts its vectors; other methods embed the ids unchanged);
* ``active(llm)`` — a context inside which the model's forward pass carries the method's effect (LoRA's adapter
  layers, a steering vector's hook); on leaving it the model is exactly the base model again.

Every caller that runs the model for a method does ``with method.active(llm): embeds, mask = method.apply(...)``
and then the forward pass, so a new method needs no change in the objectives, the trainer or the generator.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from dispsafe_nb.common.artifacts import ArtifactError, load_artifact, save_artifact
from dispsafe_nb.core.decoding import DEFAULT_BATCH_SIZE, DecodingConfig
from dispsafe_nb.core.llamacpp_engine import LlamaCppError
from dispsafe_nb.core.llm import LLM, generate_with_prefix, prepend_prefix
from dispsafe_nb.core.model_parts import decoder_layers
from dispsafe_nb.data import SPLIT_VERSION

# Fields every method's describe() carries; the loader checks them against the model.
IDENTITY_FIELDS = ("method", "model_name", "hidden_size", "n_parameters")


@dataclass
class MethodSystem:
    """The student: the frozen LLM with a method, answering ``generate(prompts)`` like every other system."""

    llm: LLM
    method: Method

    def generate(
        self,
        prompts: Sequence[str],
        *,
        decoding: DecodingConfig | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool = False,
        num_samples: int = 1,
        per_prompt_seed: bool = False,
        details: bool = False,
    ) -> list[Any]:
        """One answer per prompt (``num_samples`` > 1: that many per prompt), greedy by default;
        ``per_prompt_seed`` samples every (prompt, sample) row from its own seeded stream; ``details`` returns
        `llm.Generation`s (with token ids) as `LLM.generate_detailed` does."""
        if self.llm.engine == "fast_bf16" and self.method.prefix() is None:
            raise ValueError(
                f"engine 'fast_bf16' decodes a bfloat16 copy of the model, which the {self.method.kind} method's "
                "hooks and adapters do not reach: generate with llm.with_engine('fast')"
            )
        if self.llm.engine == "llamacpp" and not self.method.runs_on_llamacpp:
            raise LlamaCppError(
                f"the {self.method.kind} method changes the model inside its layers, which the llama.cpp engine "
                "does not apply: generate with a PyTorch engine (llm.with_engine('fast'))"
            )
        prefix = self.method.prefix()
        cvec = self.method.control_vector() if self.llm.engine == "llamacpp" else None
        with torch.no_grad(), self.method.active(self.llm):
            return generate_with_prefix(
                self.llm,
                prompts,
                None if prefix is None else prefix.detach(),
                decoding,
                batch_size=batch_size,
                num_samples=num_samples,
                progress=progress,
                per_prompt_seed=per_prompt_seed,
                details=details,
                control_vector=cvec,
            )

    def describe(self) -> dict[str, Any]:
        kind = self.method.kind
        return {
            "system": kind,
            "model": self.llm.describe(),
            kind: {**self.method.describe(), **self.method.metadata},
        }


class Method(nn.Module):
    """Base class: trainable parameters, their effect on a forward pass, a bound system, and artifacts.

    Subclasses set ``kind`` and implement ``describe()``, ``tensors()``, ``from_artifact()``; they override
    ``prefix()`` (a soft prompt) and/or ``active()`` (hooks, adapters). The module never holds the LLM, so the
    backbone's parameters never become a method's parameters.
    """

    kind: ClassVar[str] = "method"
    system_class: ClassVar[type[MethodSystem]] = MethodSystem  # what `bind` returns
    # Does the llama.cpp engine apply this method? (A prefix goes in as input embeddings, a steering vector as a
    # control vector; other hooks inside the layers and adapters do not run there.)
    runs_on_llamacpp: ClassVar[bool] = False

    def __init__(self, model_name: str | None, hidden_size: int, metadata: dict[str, Any] | None = None):
        super().__init__()
        self.model_name = model_name
        self._hidden_size = int(hidden_size)
        self.metadata: dict[str, Any] = dict(metadata or {})

    # ---- facts --------------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    @property
    def n_tokens(self) -> int:
        """Positions the method inserts before the chat text (0 unless it has a prefix)."""
        prefix = self.prefix()
        return 0 if prefix is None else int(prefix.shape[0])

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def describe(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        """The tensors an artifact stores (names are stable across versions)."""
        raise NotImplementedError

    # ---- the method interface -----------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def named_trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def prefix(self) -> torch.Tensor | None:
        """N x d embeddings inserted after each row's left padding, or None."""
        return None

    def control_vector(self) -> tuple[int, torch.Tensor] | None:
        """(layer, d-vector) the llama.cpp engine adds after that layer (its control vector), or None."""
        return None

    def apply(
        self, llm: LLM, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The input embeddings of a left-padded batch (with the prefix inserted, when there is one)."""
        self.check_fits(llm)
        prefix = self.prefix()
        if prefix is None:
            return llm.model.get_input_embeddings()(input_ids), attention_mask
        return prepend_prefix(llm, input_ids, attention_mask, prefix)

    @contextlib.contextmanager
    def active(self, llm: LLM) -> Iterator[None]:
        """Inside this context the model's forward pass carries the method (nothing to do for a prefix)."""
        self.check_fits(llm)
        yield

    def bind(self, llm: LLM) -> MethodSystem:
        """The student system (frozen LLM + this method) answering ``generate(prompts)``."""
        self.check_fits(llm)
        return self.system_class(llm, self)

    def check_fits(self, llm: LLM) -> None:
        """Raise ValueError when the method cannot act on `llm` (naming both sides)."""
        if llm.hidden_size != self.hidden_size:
            raise ValueError(
                f"{self.kind} has hidden size {self.hidden_size} (trained on model '{self.model_name}') but "
                f"model '{llm.name}' has hidden size {llm.hidden_size}"
            )

    def check_layer_count(self, llm: LLM, n_layers: int) -> None:
        """Raise ValueError when the method was made for `n_layers` decoder layers and `llm` has another count."""
        found = layer_count(llm)
        if found != n_layers:
            raise ValueError(
                f"{self.kind} was made for {n_layers} decoder layers (model '{self.model_name}') but model "
                f"'{llm.name}' has {found}"
            )

    # ---- artifacts ----------------------------------------------------------------------------------------
    def save(self, folder: str | Path, config: dict[str, Any] | None = None) -> Path:
        """Write the tensors (safetensors) and a JSON config: the method's identity (``describe()``) plus the
        caller's ``config`` (objective, lr, steps, seed, training-data hash, ...). Caller keys may not overwrite
        identity keys."""
        core = {**self.describe(), "dtype": _dtype_name(self.tensors())}
        extra = {**self.metadata, **(config or {})}
        clash = sorted(k for k in extra if k in core and extra[k] != core[k] or k == "kind")
        if clash:
            raise ValueError(f"config keys {clash} clash with the {self.kind}'s own fields; rename them")
        return save_artifact(folder, self.kind, self.tensors(), {**extra, **core})

    @classmethod
    def from_artifact(
        cls, tensors: dict[str, torch.Tensor], config: dict[str, Any], metadata: dict[str, Any]
    ) -> Method:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def load(
        cls, folder: str | Path, llm: LLM, strict: bool = True, device: str | torch.device | None = None
    ) -> Method:
        """Load a saved method for ``llm``.

        A hidden-size or layer mismatch always fails (ArtifactError naming both models). A different model
        name fails too unless ``strict=False`` (then it warns): a method is tuned to one model, and a same-size
        model of another family would silently get nonsense. An artifact trained under another split version
        fails (its training data may hold prompts evaluated now)."""
        tensors, config = _load_of_kind(folder, cls.kind)
        saved_model = config.get("model_name")
        saved_hidden = config.get("hidden_size")
        if saved_hidden is not None and saved_hidden != llm.hidden_size:
            raise ArtifactError(
                f"{cls.kind} at {folder} has hidden size {saved_hidden} (trained on model '{saved_model}') "
                f"but model '{llm.name}' has hidden size {llm.hidden_size}: it cannot be applied to it"
            )
        if saved_model is not None and saved_model != llm.name:
            message = (
                f"{cls.kind} at {folder} was trained on model '{saved_model}' but is being loaded onto "
                f"model '{llm.name}' (both hidden size {llm.hidden_size})"
            )
            if strict:
                raise ArtifactError(message + "; pass strict=False to load it anyway")
            warnings.warn(message, stacklevel=2)
        trained_split = config.get("split_version")
        if "training_data_hash" in config and trained_split != SPLIT_VERSION:
            raise ArtifactError(
                f"{cls.kind} at {folder} was trained under split version {trained_split or 'v1 (seeded)'}, "
                f"not {SPLIT_VERSION}: its training data may hold prompts that are evaluated now (split "
                "leakage). Retrain it with this version of dispsafe_nb."
            )
        own = set(IDENTITY_FIELDS) | {"dtype", "kind"} | set(cls.identity_keys())
        metadata = {k: v for k, v in config.items() if k not in own}
        try:
            method = cls.from_artifact(tensors, config, metadata)
        except (KeyError, ValueError) as err:
            raise ArtifactError(f"{folder}: {err}; re-create the artifact") from err
        try:
            method.check_fits(llm)
        except ValueError as err:
            raise ArtifactError(f"{cls.kind} at {folder} cannot be applied: {err}") from err
        return method.to(device if device is not None else llm.device)

    @classmethod
    def identity_keys(cls) -> tuple[str, ...]:
        """Config keys that belong to the method itself (not carried over as metadata on load)."""
        return ()


def _dtype_name(tensors: dict[str, torch.Tensor]) -> str:
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    return dtypes[0] if len(dtypes) == 1 else ",".join(dtypes)


def _load_of_kind(folder: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`load_artifact`, with a pointer to `methods.load_method` when the folder holds another method."""
    try:
        return load_artifact(folder, kind)
    except ArtifactError as err:
        if "artifact, not a" in str(err):
            raise ArtifactError(
                f"{err}: load it with its own class, or with dispsafe_nb.methods.load_method(folder, llm), "
                "which reads the kind"
            ) from err
        raise


def layer_count(llm: LLM) -> int:
    return len(decoder_layers(llm))
