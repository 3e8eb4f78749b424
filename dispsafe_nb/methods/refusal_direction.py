"""The difference-in-means refusal direction (Arditi et al., 2024; andyrdt/refusal_direction): an untrained
steering reference beside the trained methods.

1. At every decoder layer l, the mean output activation at the *post-instruction* positions (the chat-template
   tokens after the user's text, e.g. ``<|im_end|>\\n<|im_start|>assistant\\n``) over harmful train prompts, minus
   the same mean over harmless ones: r_l (d-vector).
2. The layer: adding r_l at layer l (scale 1), the refusal it induces on harmful *validation* prompts (mean
   log q(y_r | x)) against the KL it costs on harmless ones (next-token KL(base ‖ steered) at the last prompt
   position, andyrdt's measure); the layer with the most refusal among those whose KL stays ≤ `max_kl`
   (andyrdt exclude the last 20 % of layers; so do we).
3. The scale: the same rule over a grid of multiples of r_l at that layer.

The result is a `SteeringVector` (origin "diff_in_means", no trainable parameters) and the table behind each
choice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from dispsafe_nb import data
from dispsafe_nb.core.batching import plan_batches
from dispsafe_nb.core.llm import LLM
from dispsafe_nb.core.model_parts import decoder_layers
from dispsafe_nb.core.scoring import next_token_log_probs, sequence_logprobs
from dispsafe_nb.methods import SteeringVector
from dispsafe_nb.methods.base import layer_count

DEFAULT_SCALES = (0.5, 1.0, 2.0, 4.0, 8.0)
DEFAULT_MAX_KL = 0.5
_MARK = "\uffffINSTRUCTION\uffff"


def post_instruction_length(llm: LLM) -> int:
    """How many chat-template tokens follow the user's text (checked against a real tokenisation)."""
    text = llm.chat_text(_MARK)
    suffix = text[text.index(_MARK) + len(_MARK) :]
    tok = llm.tokenizer
    ids = tok(suffix, add_special_tokens=False)["input_ids"]
    probe = tok(llm.chat_text("Hello there."), add_special_tokens=False)["input_ids"]
    if not ids or probe[-len(ids) :] != ids:
        raise ValueError(f"cannot locate the post-instruction tokens of model '{llm.name}''s chat template")
    return len(ids)


def post_instruction_outputs(
    llm: LLM, prompts: Sequence[str], batch_size: int = 16, progress: bool = False
) -> Iterator[tuple[int, list[torch.Tensor]]]:
    """Per batch of prompts: its start index and each decoder layer's output at the post-instruction positions,
    (batch, n_post, d) in float64 on the CPU."""
    if not prompts:
        raise ValueError("no prompts to read activations of")
    n_post = post_instruction_length(llm)
    layers = decoder_layers(llm)
    captured: dict[int, torch.Tensor] = {}

    def hook(index: int):
        def record(module: Any, args: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            # left padding: every row's post-instruction tokens are its last n_post positions
            captured[index] = hidden[:, -n_post:, :].double().cpu()

        return record

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        # consecutive prompts (callers place the outputs by position), within the token budget
        lengths = llm.chat_lengths(list(prompts))
        batches = plan_batches(lengths, max_rows=batch_size, keep_order=True)
        for batch in tqdm(batches, desc="activations", disable=not progress):
            with torch.no_grad():
                # logits of the last position only: the hooks read the hidden states, not the B x T x V logits
                llm.model(**llm.encode_chat([prompts[i] for i in batch]), use_cache=False, logits_to_keep=1)
            yield batch[0], [captured[i] for i in range(len(layers))]
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def mean_activations(llm: LLM, prompts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """(n_layers, d): each decoder layer's output averaged over the post-instruction positions and prompts."""
    if not prompts:
        raise ValueError("no prompts to average activations over")
    sums = torch.zeros(layer_count(llm), llm.hidden_size, dtype=torch.float64)
    for _, outputs in post_instruction_outputs(llm, prompts, batch_size):
        for i, hidden in enumerate(outputs):
            sums[i] += hidden.sum(dim=(0, 1))
    return (sums / (len(prompts) * post_instruction_length(llm))).float()


def diff_in_means(llm: LLM, harmful: Sequence[str], harmless: Sequence[str]) -> torch.Tensor:
    """(n_layers, d): mean activation over harmful prompts minus over harmless ones, per layer."""
    return mean_activations(llm, harmful) - mean_activations(llm, harmless)


@torch.no_grad()
def steering_effect(
    llm: LLM, vector: SteeringVector, harmful: Sequence[str], harmless: Sequence[str], refusal: str
) -> dict[str, float]:
    """{"refusal": mean log q(y_r | x) on harmful prompts, "kl": mean next-token KL(base ‖ steered) on harmless}."""
    logq = sequence_logprobs(llm, list(harmful), [refusal] * len(harmful), method=vector, batch_size=16)
    base = next_token_log_probs(llm, list(harmless))
    steered = next_token_log_probs(llm, list(harmless), method=vector)
    kl = (base.exp() * (base - steered)).sum(-1)
    return {"refusal": float(logq.mean()), "kl": float(kl.mean())}


@dataclass
class DirectionFit:
    """The chosen layer and scale, with every candidate measured on the validation prompts."""

    layer: int
    scale: float
    max_kl: float
    layers: list[dict[str, float]] = field(default_factory=list)
    scales: list[dict[str, float]] = field(default_factory=list)
    n_train: tuple[int, int] = (0, 0)
    n_val: tuple[int, int] = (0, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "scale": self.scale,
            "max_kl": self.max_kl,
            "layers": self.layers,
            "scales": self.scales,
            "n_train": list(self.n_train),
            "n_val": list(self.n_val),
        }


def _choose(rows: list[dict[str, float]], max_kl: float) -> dict[str, float]:
    """The row with the most refusal among those within the KL budget (else the one with the least KL)."""
    within = [r for r in rows if r["kl"] <= max_kl]
    if not within:
        return min(rows, key=lambda r: r["kl"])
    return max(within, key=lambda r: r["refusal"])


def fit_refusal_direction(
    llm: LLM,
    harmful_train: Sequence[str],
    harmless_train: Sequence[str],
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    refusal: str,
    layers: Sequence[int] | None = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    max_kl: float = DEFAULT_MAX_KL,
    progress: bool = True,
) -> tuple[SteeringVector, DirectionFit]:
    """The difference-in-means direction at the layer and scale chosen on validation prompts (module docstring)."""
    n_layers = layer_count(llm)
    candidates = list(layers) if layers is not None else list(range(int(0.8 * n_layers)))
    bad = [i for i in candidates if not 0 <= i < n_layers]
    if bad or not candidates:
        raise ValueError(f"candidate layers {bad or candidates} are out of range 0 ... {n_layers - 1}")
    directions = diff_in_means(llm, harmful_train, harmless_train)
    fit = DirectionFit(-1, 1.0, max_kl, n_train=(len(harmful_train), len(harmless_train)))
    fit.n_val = (len(harmful_val), len(harmless_val))

    def vector(layer: int, scale: float) -> SteeringVector:
        return SteeringVector(directions[layer], layer, n_layers, llm.name, scale, "diff_in_means").to(
            llm.device
        )

    for layer in tqdm(candidates, desc="refusal direction: layers", disable=not progress):
        effect = steering_effect(llm, vector(layer, 1.0), harmful_val, harmless_val, refusal)
        fit.layers.append({"layer": layer, "norm": float(directions[layer].norm()), **effect})
    fit.layer = int(_choose(fit.layers, max_kl)["layer"])
    for scale in tqdm(scales, desc="refusal direction: scales", disable=not progress):
        effect = steering_effect(llm, vector(fit.layer, scale), harmful_val, harmless_val, refusal)
        fit.scales.append({"scale": float(scale), **effect})
    fit.scale = float(_choose(fit.scales, max_kl)["scale"])
    chosen = vector(fit.layer, fit.scale)
    blob = json.dumps([list(harmful_train), list(harmless_train)]).encode()
    chosen.metadata.update(
        {
            "refusal_direction_fit": fit.to_dict(),
            "refusal": refusal,
            "training_data_hash": hashlib.sha256(blob).hexdigest()[:16],
            "split_version": data.SPLIT_VERSION,
        }
    )
    return chosen, fit
