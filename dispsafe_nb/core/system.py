"""The one interface every system answers: the base LLM, the dual system (the teacher) and every method bound to
the LLM (soft prompt, LoRA, steering vector). Evaluation, the prober and the study take any `System`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from dispsafe_nb.core.decoding import DEFAULT_BATCH_SIZE, DecodingConfig


@runtime_checkable
class System(Protocol):
    """Anything that answers prompts. Options are keyword-only and mean the same in every system."""

    def generate(
        self,
        prompts: Sequence[str],
        *,
        decoding: DecodingConfig | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        num_samples: int = 1,
        progress: bool = False,
        per_prompt_seed: bool = False,
    ) -> list[str] | list[list[str]]:
        """One answer per prompt, or (`num_samples` > 1) a list of that many per prompt. `decoding` None means
        greedy with the default length; `per_prompt_seed` samples every (prompt, sample) row from its own seeded
        stream, so a prompt's answers do not depend on which prompts share its batch."""
        ...

    def describe(self) -> dict[str, Any]:
        """A JSON-able identity of the system (model, guard, method...), for records and artifacts."""
        ...
