"""How to decode (`DecodingConfig`) and reproducible sampling: per-row seeds and the sampler's log-probs."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from dispsafe_nb.common.names import unknown_name_message
from dispsafe_nb.common.validation import check_field, is_int, is_real

GENERATION_ENGINES = ("fast", "fast_bf16", "hf", "llamacpp")


# The batch size generation uses when a caller does not choose one (rows of prompts decoded together).
DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class DecodingConfig:
    """How to decode. temperature 0 means greedy; the seed makes sampling reproducible. Every field is checked
    when the config is made (a bad value names the field, the value and the allowed range). The named presets
    below are the project's defaults; `decoding_preset(name, seed=...)` gives one with changes."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_field(
            "DecodingConfig", "max_new_tokens", self.max_new_tokens, "an int >= 1", is_int(lambda x: x >= 1)
        )
        check_field(
            "DecodingConfig",
            "temperature",
            self.temperature,
            "a finite number >= 0 (0: greedy)",
            is_real(lambda x: x >= 0),
        )
        check_field(
            "DecodingConfig", "top_p", self.top_p, "a number in (0, 1]", is_real(lambda x: 0 < x <= 1)
        )
        check_field("DecodingConfig", "seed", self.seed, "an int >= 0", is_int(lambda x: x >= 0))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Named presets, the one home of the project's decoding defaults.
EVALUATION_DECODING = DecodingConfig(max_new_tokens=64)  # greedy answers that evaluation judges
# The teacher's samples: a little below temperature 1 keeps a 135M model's samples fluent.
TEACHER_DECODING = DecodingConfig(max_new_tokens=64, temperature=0.7, top_p=0.95)
PROBING_DECODING = DecodingConfig(max_new_tokens=48)  # the prober and the over-refusal explorer (greedy)
DECODING_PRESETS: dict[str, DecodingConfig] = {
    "evaluation": EVALUATION_DECODING,
    "teacher": TEACHER_DECODING,
    "probing": PROBING_DECODING,
}


def decoding_preset(name: str, **changes: Any) -> DecodingConfig:
    """The preset `name` ("evaluation", "teacher", "probing") with `changes` (e.g. ``seed=1``), checked anew."""
    if name not in DECODING_PRESETS:
        raise ValueError(unknown_name_message("decoding preset", name, DECODING_PRESETS))
    return replace(DECODING_PRESETS[name], **changes)


def samples_per_prompt(answers: list[str] | list[list[str]], num_samples: int) -> list[list[str]]:
    """`generate()` output as one list of samples per prompt (it returns flat strings when num_samples == 1)."""
    return [[a] for a in answers] if num_samples == 1 else answers


def row_seed(prompt: str, seed: int, sample: int) -> int:
    """The seed of one (prompt, sample index) row: stable across runs, batches and machines."""

    return int(hashlib.sha256(f"{seed}:{sample}:{prompt}".encode()).hexdigest()[:12], 16)


def sampling_log_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Log-probabilities of the distribution a sampler draws from: softmax(logits / temperature), cut to the
    nucleus (the smallest set of most likely tokens whose mass reaches `top_p`) and renormalised; tokens outside
    it get -inf. `keep` (one token id per row, optional) is never cut: a token that was sampled must stay in the
    support even when recomputed logits put it a rounding error outside the nucleus."""
    if temperature <= 0:
        raise ValueError(f"sampling needs a temperature > 0, not {temperature}")
    log_probs = torch.log_softmax(logits / temperature, dim=-1)
    if top_p >= 1.0:
        return log_probs
    sorted_lp, order = log_probs.sort(dim=-1, descending=True)
    sorted_p = sorted_lp.exp()
    outside_sorted = sorted_p.cumsum(-1) - sorted_p > top_p  # the mass before a token already reaches top_p
    outside = torch.zeros_like(outside_sorted).scatter(-1, order, outside_sorted)
    if keep is not None:
        outside[torch.arange(len(keep), device=logits.device), keep] = False
    return torch.log_softmax(log_probs.masked_fill(outside, float("-inf")), dim=-1)


class RowSeededSampler:
    """A logits processor that samples every row from its own `torch.Generator` (temperature, nucleus top-p)
    and returns logits that allow only the sampled token."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float = 1.0):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"{scores.shape[0]} rows but {len(self.generators)} row seeds")
        chosen = self.choose(scores, range(len(self.generators)))
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(chosen)), torch.tensor(chosen)] = 0.0
        return out

    def choose(self, scores: torch.Tensor, rows: Sequence[int]) -> list[int]:
        """One token for each of `rows` (their scores, in that order), each drawn from that row's own generator:
        a row's draws do not depend on which other rows are still decoding (the llama.cpp engine passes only
        its unfinished rows)."""
        probs = torch.softmax(scores.float().cpu() / self.temperature, dim=-1)
        if self.top_p < 1.0:  # the same nucleus as `sampling_log_probs` (a test keeps the two equal)
            sorted_p, order = probs.sort(dim=-1, descending=True)
            outside = sorted_p.cumsum(-1) - sorted_p > self.top_p  # keep the smallest set reaching top_p
            sorted_p[outside] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return [
            int(torch.multinomial(probs[i], 1, generator=self.generators[row])) for i, row in enumerate(rows)
        ]
