"""Where a causal LM keeps its parts: the decoder layers, the backbone and the output head."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispsafe_nb.core.llm import LLM


def backbone_and_head(model: Any) -> tuple[Any, Any]:
    """The decoder stack (ids/embeds -> final normed hidden states) and the vocabulary head of a causal LM."""
    head = model.get_output_embeddings()
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else None
    if backbone is None:
        backbone = getattr(model, "model", None) or getattr(model, "base_model", None)
    if head is None or backbone is None or backbone is model:
        raise TypeError(f"cannot split {type(model).__name__} into a backbone and an lm_head")
    return backbone, head


def decoder_layers(llm: LLM) -> Any:
    """The model's list of transformer blocks (``model.model.layers`` for Llama, Qwen2, Gemma)."""
    backbone, _ = backbone_and_head(llm.model)
    layers = getattr(backbone, "layers", None)
    if layers is None:
        raise TypeError(f"{type(llm.model).__name__} has no list of decoder layers at .layers")
    return layers
