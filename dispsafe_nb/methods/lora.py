"""LoRA through peft: low-rank updates ``ΔW = (α/r) B A`` on chosen linear layers of the frozen LLM.

The adapter's parameters (A, B per target module) live in this module. ``active(llm)`` injects peft's LoRA
layers into the model (`peft.tuners.lora.LoraModel` with a `LoraConfig`; plain `nn.Linear` for the dequantised
GGUF default, bitsandbytes `Linear4bit` for nf4 backbones), points their weights at our parameters, and on exit
unloads them again, so the model is the untouched base model outside the context.

The paper matches LoRA's trainable parameters to the soft prompt's (rank 2–3 at 1–3B): `match_budget` chooses
the rank (and, below rank 1 on every layer, a subset of evenly spaced layers) within ±25 % of a budget.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dispsafe_nb.common.artifacts import ArtifactError
from dispsafe_nb.core.llm import LLM
from dispsafe_nb.methods.base import Method, layer_count

LORA_KIND = "lora"
DEFAULT_TARGETS = ("q_proj", "v_proj")
BUDGET_TOLERANCE = 0.25
_ADAPTER = "dispsafe"
_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


class LoraBudgetError(ValueError):
    """No LoRA rank / layer choice brings the trainable parameters within tolerance of the budget."""


@dataclass(frozen=True)
class LoraTarget:
    """One linear layer LoRA adapts: its module name (relative to the model), shape and decoder layer."""

    name: str
    in_features: int
    out_features: int
    layer: int


def lora_targets(
    llm: LLM, target_modules: Sequence[str] = DEFAULT_TARGETS, layers: Sequence[int] | None = None
) -> list[LoraTarget]:
    """The linear layers whose name ends in one of `target_modules`, in decoder `layers` (all when None)."""
    targets = []
    for name, module in llm.model.named_modules():
        short = name.rsplit(".", 1)[-1]
        match = _LAYER_INDEX.search(name + ".")
        if short not in target_modules or match is None or not hasattr(module, "in_features"):
            continue
        layer = int(match.group(1))
        if layers is None or layer in layers:
            targets.append(LoraTarget(name, int(module.in_features), int(module.out_features), layer))
    if not targets:
        available = sorted(
            {n.rsplit(".", 1)[-1] for n, m in llm.model.named_modules() if hasattr(m, "in_features")}
        )
        raise ValueError(
            f"no linear layer of model '{llm.name}' matches target modules {list(target_modules)}; "
            f"its linear layers are named {available}"
        )
    return targets


def lora_parameter_count(targets: Sequence[LoraTarget], rank: int) -> int:
    """Trainable parameters of rank-`rank` LoRA on `targets`: r (in + out) per module."""
    return rank * sum(t.in_features + t.out_features for t in targets)


def match_budget(
    llm: LLM,
    budget: int,
    target_modules: Sequence[str] = DEFAULT_TARGETS,
    rank: int | None = None,
    tolerance: float = BUDGET_TOLERANCE,
) -> tuple[int, tuple[int, ...] | None, int]:
    """(rank, layers or None for all, parameter count) of LoRA within ±`tolerance` of `budget` parameters.

    With `rank` given, only checks it (on every layer). Otherwise the rank closest to the budget on every layer;
    when even rank 1 on every layer is too many, rank 1 on evenly spaced layers. Raises `LoraBudgetError` when
    nothing fits, saying which ranks or layer counts would."""
    if budget < 1:
        raise LoraBudgetError(f"the parameter budget must be positive, not {budget}")
    every = lora_targets(llm, target_modules)
    per_rank = lora_parameter_count(every, 1)
    n_layers = len({t.layer for t in every})
    low, high = budget * (1 - tolerance), budget * (1 + tolerance)
    if rank is not None:
        count = lora_parameter_count(every, rank)
        if not low <= count <= high:
            best = max(1, round(budget / per_rank))
            raise LoraBudgetError(
                f"LoRA rank {rank} on {list(target_modules)} of all {n_layers} layers has {count:,} trainable "
                f"parameters, {count / budget:.0%} of the budget of {budget:,} (allowed ±{tolerance:.0%}); "
                f"rank {best} has {lora_parameter_count(every, best):,}, or pass rank=None to choose"
            )
        return rank, None, count
    if per_rank <= high:
        best = max(1, round(budget / per_rank))
        count = lora_parameter_count(every, best)
        if low <= count <= high:
            return best, None, count
    per_layer = per_rank / n_layers
    k = round(budget / per_layer)
    if k >= 1:
        layers = tuple(
            sorted(
                {round(i * (n_layers - 1) / max(k - 1, 1)) for i in range(k)} if k > 1 else {n_layers // 2}
            )
        )
        count = lora_parameter_count(lora_targets(llm, target_modules, layers), 1)
        if low <= count <= high:
            return 1, layers, count
    raise LoraBudgetError(
        f"no LoRA on {list(target_modules)} of model '{llm.name}' comes within ±{tolerance:.0%} of {budget:,} "
        f"parameters: one layer at rank 1 has {per_layer:,.0f}, every layer at rank 1 {per_rank:,}; change the "
        "budget (the soft prompt's N) or the target modules"
    )


def _key(name: str) -> str:
    return name.replace(".", "__")


class LoRA(Method):
    """LoRA adapters on the frozen LLM, applied through peft inside ``active(llm)``."""

    kind = LORA_KIND

    def __init__(
        self,
        weights: dict[str, tuple[torch.Tensor, torch.Tensor]],
        rank: int,
        alpha: float,
        target_modules: Sequence[str],
        layers: Sequence[int] | None,
        model_name: str | None,
        hidden_size: int,
        n_layers: int,
        seed: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model_name, hidden_size, metadata)
        if rank < 1:
            raise ValueError(f"the LoRA rank must be >= 1, not {rank}")
        if not weights:
            raise ValueError("LoRA needs at least one target module")
        self.rank, self.alpha, self.seed = int(rank), float(alpha), seed
        self.target_modules = tuple(target_modules)
        self.layers = None if layers is None else tuple(int(i) for i in layers)
        self.n_layers = int(n_layers)
        self.module_names = sorted(weights)
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        for name, (a, b) in weights.items():
            if a.shape[0] != rank or b.shape[1] != rank:
                raise ValueError(
                    f"LoRA weights of {name} have shapes {tuple(a.shape)}, {tuple(b.shape)}, not rank {rank}"
                )
            self.A[_key(name)] = nn.Parameter(a.detach().clone().float())
            self.B[_key(name)] = nn.Parameter(b.detach().clone().float())
        self._active_on: set[int] = set()

    def describe(self) -> dict[str, Any]:
        return {
            "method": LORA_KIND,
            "model_name": self.model_name,
            "hidden_size": self.hidden_size,
            "n_layers": self.n_layers,
            "rank": self.rank,
            "lora_alpha": self.alpha,
            "target_modules": list(self.target_modules),
            "layers": None if self.layers is None else list(self.layers),
            "init_seed": self.seed,
            "n_parameters": self.n_parameters(),
        }

    @classmethod
    def identity_keys(cls) -> tuple[str, ...]:
        return ("n_layers", "rank", "lora_alpha", "target_modules", "layers", "init_seed")

    def tensors(self) -> dict[str, torch.Tensor]:
        # peft's own state-dict names, so the weights read like any peft LoRA adapter's
        out = {}
        for name in self.module_names:
            out[f"base_model.model.{name}.lora_A.weight"] = self.A[_key(name)]
            out[f"base_model.model.{name}.lora_B.weight"] = self.B[_key(name)]
        return out

    @classmethod
    def from_artifact(
        cls, tensors: dict[str, torch.Tensor], config: dict[str, Any], metadata: dict[str, Any]
    ) -> LoRA:
        weights = {}
        for key, a in tensors.items():
            if key.endswith(".lora_A.weight"):
                name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                b = tensors.get(f"base_model.model.{name}.lora_B.weight")
                if b is None:
                    raise ArtifactError(f"it has lora_A but no lora_B for module {name}")
                weights[name] = (a, b)
        return cls(
            weights,
            rank=config["rank"],
            alpha=config["lora_alpha"],
            target_modules=config["target_modules"],
            layers=config.get("layers"),
            model_name=config.get("model_name"),
            hidden_size=config["hidden_size"],
            n_layers=config["n_layers"],
            seed=config.get("init_seed"),
            metadata=metadata,
        )

    def check_fits(self, llm: LLM) -> None:
        super().check_fits(llm)
        self.check_layer_count(llm, self.n_layers)
        for name in self.module_names:
            try:
                module = llm.model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"model '{llm.name}' has no module {name} for this LoRA") from None
            base = getattr(module, "base_layer", module)
            a, b = self.A[_key(name)], self.B[_key(name)]
            if (a.shape[1], b.shape[0]) != (base.in_features, base.out_features):
                raise ValueError(
                    f"LoRA on {name} expects {a.shape[1]} -> {b.shape[0]} features but model '{llm.name}' has "
                    f"{base.in_features} -> {base.out_features}"
                )

    def peft_config(self) -> Any:
        from peft import LoraConfig  # noqa: PLC0415 (deferred: peft is needed by LoRA only)

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            target_modules=list(self.target_modules),
            layers_to_transform=None if self.layers is None else list(self.layers),
            lora_dropout=0.0,
            bias="none",
        )

    @contextlib.contextmanager
    def active(self, llm: LLM) -> Iterator[None]:
        """Inject peft LoRA layers whose weights are this module's parameters; unload them on exit."""
        self.check_fits(llm)
        if id(llm.model) in self._active_on:  # nested use (generation inside a trainer's context)
            yield
            return
        with _injected(llm, self.peft_config()) as layers:
            missing = sorted(set(self.module_names) - set(layers))
            if missing or set(layers) - set(self.module_names):
                raise RuntimeError(
                    f"peft adapted other modules than this LoRA holds (missing: {missing[:3]})"
                )
            for name, layer in layers.items():
                layer.lora_A[_ADAPTER].weight = self.A[_key(name)]
                layer.lora_B[_ADAPTER].weight = self.B[_key(name)]
            self._active_on.add(id(llm.model))
            try:
                yield
            finally:
                self._active_on.discard(id(llm.model))


@contextlib.contextmanager
def _injected(llm: LLM, config: Any) -> Iterator[dict[str, Any]]:
    """peft LoRA layers injected into ``llm.model`` for the duration of the context: {module name: layer}."""
    from peft.tuners.lora import LoraLayer, LoraModel  # noqa: PLC0415 (deferred: peft is needed by LoRA only)

    model = llm.model
    grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    had_config = hasattr(model, "peft_config")
    # peft draws random initial weights we overwrite at once: keep the caller's random stream untouched
    with torch.random.fork_rng(devices=[]):
        tuner = LoraModel(model, config, _ADAPTER)
    try:
        yield {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    finally:
        tuner.unload()
        if not had_config and hasattr(model, "peft_config"):
            del model.peft_config
        for name, p in model.named_parameters():
            p.requires_grad_(grad_flags.get(name, False))


def init_lora(
    llm: LLM,
    budget: int | None = None,
    rank: int | None = None,
    target_modules: Sequence[str] = DEFAULT_TARGETS,
    alpha: float | None = None,
    seed: int = 0,
    tolerance: float = BUDGET_TOLERANCE,
) -> LoRA:
    """A fresh LoRA for `llm` with peft's initialisation (A Kaiming-uniform, seeded; B = 0: starts as the base).

    `budget`: the trainable-parameter count to match (e.g. the soft prompt's N x d), choosing the rank (or
    checking the given `rank`) by `match_budget`. Without a budget, `rank` (default 1) on every layer.
    `alpha` defaults to 2 x rank (scaling α/r = 2)."""
    if budget is not None:
        rank, layers, _ = match_budget(llm, budget, target_modules, rank, tolerance)
    else:
        rank, layers = rank or 1, None
    alpha = float(alpha if alpha is not None else 2 * rank)
    draft = LoRA(
        {
            t.name: (torch.zeros(rank, t.in_features), torch.zeros(t.out_features, rank))
            for t in lora_targets(llm, target_modules, layers)
        },
        rank,
        alpha,
        target_modules,
        layers,
        llm.name,
        llm.hidden_size,
        layer_count(llm),
        seed,
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in draft.module_names:
            a = draft.A[_key(name)]
            # peft's init: kaiming_uniform_(a=sqrt(5)) on A, i.e. U(-1/sqrt(in), 1/sqrt(in)); B stays 0
            bound = 1.0 / math.sqrt(a.shape[1])
            a.copy_(torch.rand(a.shape, generator=gen) * 2 * bound - bound)
    return draft.to(llm.device)
