"""A steering vector: one vector ``v`` (d) added to the residual stream at the output of one decoder layer.

``active(llm)`` registers a forward hook on that layer that adds ``scale · v`` to its output hidden states at
every position (prompt and generated tokens alike, as activation addition does) and removes it on exit.
Trained with the distillation loss (TV-DiSV, ``origin="trained"``, starting from 0 = the base model), or fitted
without training as the difference-in-means refusal direction (``origin="diff_in_means"``: see
`dispsafe_nb.methods.refusal_direction`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from dispsafe_nb.common.artifacts import ArtifactError
from dispsafe_nb.core.llm import LLM
from dispsafe_nb.core.model_parts import decoder_layers
from dispsafe_nb.methods.base import Method, layer_count

STEERING_KIND = "steering_vector"
ORIGINS = ("trained", "diff_in_means")


class SteeringLayerError(ValueError):
    """A steering layer outside the model's decoder layers."""


def check_layer(llm: LLM, layer: int) -> int:
    """`layer` if it indexes one of the model's decoder layers, else a SteeringLayerError naming the range."""
    n_layers = layer_count(llm)
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n_layers:
        raise SteeringLayerError(
            f"steering layer {layer!r} is out of range: model '{llm.name}' has {n_layers} decoder layers, "
            f"0 ... {n_layers - 1} (the middle one is {n_layers // 2})"
        )
    return layer


class SteeringVector(Method):
    """``scale · v`` added to the output of decoder layer ``layer``."""

    kind = STEERING_KIND
    runs_on_llamacpp = True  # as llama.cpp's control vector after the same layer

    def __init__(
        self,
        vector: torch.Tensor,
        layer: int,
        n_layers: int,
        model_name: str | None,
        scale: float = 1.0,
        origin: str = "trained",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if vector.ndim != 1:
            raise ValueError(f"a steering vector is one d-vector, got shape {tuple(vector.shape)}")
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, not {origin!r}")
        if not 0 <= layer < n_layers:
            raise SteeringLayerError(f"steering layer {layer} is out of range 0 ... {n_layers - 1}")
        super().__init__(model_name, int(vector.shape[0]), metadata)
        # The fitted refusal direction is a fixed reference: it has no trainable parameters.
        self.v = nn.Parameter(vector.detach().clone().float(), requires_grad=origin == "trained")
        self.layer, self.n_layers = int(layer), int(n_layers)
        self.scale = float(scale)
        self.origin = origin

    def describe(self) -> dict[str, Any]:
        return {
            "method": STEERING_KIND,
            "model_name": self.model_name,
            "hidden_size": self.hidden_size,
            "n_layers": self.n_layers,
            "layer": self.layer,
            "scale": self.scale,
            "origin": self.origin,
            "n_parameters": self.v.numel(),
        }

    def n_parameters(self) -> int:
        return self.v.numel()

    @classmethod
    def identity_keys(cls) -> tuple[str, ...]:
        return ("n_layers", "layer", "scale", "origin")

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"v": self.v}

    @classmethod
    def from_artifact(
        cls, tensors: dict[str, torch.Tensor], config: dict[str, Any], metadata: dict[str, Any]
    ) -> SteeringVector:
        if "v" not in tensors:
            raise ArtifactError("it has no tensor 'v'")
        return cls(
            tensors["v"],
            layer=config["layer"],
            n_layers=config["n_layers"],
            model_name=config.get("model_name"),
            scale=config.get("scale", 1.0),
            origin=config.get("origin", "trained"),
            metadata=metadata,
        )

    def check_fits(self, llm: LLM) -> None:
        super().check_fits(llm)
        self.check_layer_count(llm, self.n_layers)

    def control_vector(self) -> tuple[int, torch.Tensor]:
        """``scale · v`` after layer ``layer``: what the hook adds, in llama.cpp's form."""
        return self.layer, (self.scale * self.v).detach()

    @contextlib.contextmanager
    def active(self, llm: LLM) -> Iterator[None]:
        """Add ``scale · v`` to the layer's output for the duration of the context (the hook is then removed)."""
        self.check_fits(llm)
        handle = decoder_layers(llm)[self.layer].register_forward_hook(self._add)
        try:
            yield
        finally:
            handle.remove()

    def _add(self, module: nn.Module, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        steered = hidden + (self.scale * self.v).to(device=hidden.device, dtype=hidden.dtype)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered


def init_steering(llm: LLM, layer: int | None = None, scale: float = 1.0) -> SteeringVector:
    """A trainable steering vector for `llm` at `layer` (default the middle layer), starting at 0 (the base)."""
    n_layers = layer_count(llm)
    layer = n_layers // 2 if layer is None else check_layer(llm, layer)
    vector = torch.zeros(llm.hidden_size)
    return SteeringVector(vector, layer, n_layers, llm.name, scale=scale).to(llm.device)
