"""Methods that adapt the frozen LLM, behind one interface (`base.Method`): one file per method.

* `soft_prompt` — N trainable vectors prepended to the input embeddings (the paper's DiSP);
* `lora` — low-rank adapters through peft, parameter-matched to the soft prompt;
* `steering` — one vector added to the residual stream at one layer (trained, or the fitted refusal direction);
* `refusal_direction` — the difference-in-means refusal direction, its layer and scale chosen on validation prompts;
* `device_export` — a soft-prompt student written as an app runs it with llama.cpp (`export_for_device`).

Every method has ``trainable_parameters()``, ``apply(llm, ids, mask)`` (its input embeddings), ``active(llm)``
(its effect inside the forward pass), ``bind(llm)`` (a system with ``generate``), ``save``/``load``
(``.safetensors`` + JSON with ``kind``, model name and sizes). `new_method` builds a fresh one by name;
`load_method` loads any saved one by the ``kind`` its JSON records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dispsafe_nb.common.artifacts import CONFIG_FILE, ArtifactError
from dispsafe_nb.common.names import unknown_name_message
from dispsafe_nb.core.llm import LLM
from dispsafe_nb.methods.base import Method, MethodSystem
from dispsafe_nb.methods.lora import (
    DEFAULT_TARGETS,
    LORA_KIND,
    LoRA,
    LoraBudgetError,
    init_lora,
    match_budget,
)
from dispsafe_nb.methods.soft_prompt import (
    DEFAULT_INIT_TEXT,
    DEFAULT_N_TOKENS,
    INITS,
    SOFT_PROMPT_KIND,
    SoftPrompt,
    SoftPromptSystem,
    init_soft_prompt,
)
from dispsafe_nb.methods.steering import (
    STEERING_KIND,
    SteeringLayerError,
    SteeringVector,
    init_steering,
)

__all__ = [
    "DEFAULT_INIT_TEXT",
    "DEFAULT_N_TOKENS",
    "DEFAULT_TARGETS",
    "INITS",
    "LORA_KIND",
    "METHODS",
    "METHOD_LOADERS",
    "SOFT_PROMPT_KIND",
    "STEERING_KIND",
    "LoRA",
    "LoraBudgetError",
    "Method",
    "MethodSystem",
    "SoftPrompt",
    "SoftPromptSystem",
    "SteeringLayerError",
    "SteeringVector",
    "artifact_kind",
    "init_lora",
    "init_soft_prompt",
    "init_steering",
    "load_method",
    "match_budget",
    "new_method",
]

# The trainable methods by name (what `DistillConfig.method` names).
METHODS = (SOFT_PROMPT_KIND, LORA_KIND, STEERING_KIND)

# How to load a saved method onto a model, by the `kind` its JSON records. A new method registers its loader
# here; whatever discovers artifacts (the probing widget, notebooks) then finds it without code changes.
METHOD_LOADERS: dict[str, Any] = {
    SOFT_PROMPT_KIND: SoftPrompt.load,
    LORA_KIND: LoRA.load,
    STEERING_KIND: SteeringVector.load,
}


def new_method(
    name: str,
    llm: LLM,
    *,
    n_tokens: int = DEFAULT_N_TOKENS,
    init: str = "text",
    init_text: str = DEFAULT_INIT_TEXT,
    seed: int = 0,
    lora_rank: int | None = None,
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS,
    steering_layer: int | None = None,
) -> Method:
    """A fresh, trainable method for `llm` by name.

    The soft prompt has N = `n_tokens` vectors; LoRA matches the soft prompt's parameter count at the same N
    (N x d, within ±25 %: `lora.match_budget`; a given `lora_rank` is checked against it); the steering vector
    sits at `steering_layer` (default the middle layer) and starts at 0."""
    check_method_name(name)
    if name == SOFT_PROMPT_KIND:
        return init_soft_prompt(llm, n_tokens, init, init_text, seed)
    if name == LORA_KIND:
        return init_lora(
            llm, budget=n_tokens * llm.hidden_size, rank=lora_rank, target_modules=lora_targets, seed=seed
        )
    return init_steering(llm, steering_layer)


def check_method_name(name: str) -> str:
    """`name` if it is a trainable method, else a ValueError suggesting the closest one."""
    if name not in METHODS:
        raise ValueError(unknown_name_message("method", name, METHODS))
    return name


def artifact_kind(folder: str | Path) -> str | None:
    """The `kind` recorded in an artifact folder's JSON, or None when the folder holds no readable artifact."""
    path = Path(folder) / CONFIG_FILE
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def load_method(folder: str | Path, llm: LLM) -> Method:
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
