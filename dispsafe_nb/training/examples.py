"""Training examples from teacher samples, the training mix, and the order and batching of examples."""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from dispsafe_nb import data
from dispsafe_nb.common.names import unknown_name_message
from dispsafe_nb.core.llm import LLM
from dispsafe_nb.data.mixes import BORDERLINE_SOURCES, group_mix
from dispsafe_nb.system.teacher_cache import TeacherSample, TeacherSampleError
from dispsafe_nb.training.config import BUCKETINGS

if TYPE_CHECKING:
    from dispsafe_nb.training.config import DistillConfig


@dataclass(frozen=True)
class Example:
    """One training example: a prompt, one teacher sample y (its text, the sampled token ids, whether it
    finished) with its α, and the refusal."""

    prompt: str
    response: str
    alpha: float
    refusal: str
    response_ids: tuple[int, ...] = ()
    finished: bool = True
    harmful: bool | None = None  # the prompt's label, when known (only the perplexity baseline uses it)


def examples_from_samples(
    samples: Sequence[TeacherSample], labels: Mapping[str, bool] | None = None
) -> list[Example]:
    """Flatten teacher samples into (x, y, α, y_r) examples; every sample must carry its token ids.
    `labels`: {prompt: is harmful} (for the perplexity baseline); every prompt must then have one."""
    missing = [s.prompt for s in samples if not s.has_ids]
    if missing:
        raise TeacherSampleError(
            f"{len(missing)} teacher sample(s) lack the sampled token ids (first: {missing[0][:60]!r}); "
            "build them with safe_system.teacher_samples(), which keeps the ids and finish flags generate() gave"
        )
    if labels is not None:
        unlabelled = [s.prompt for s in samples if s.prompt not in labels]
        if unlabelled:
            raise ValueError(
                f"{len(unlabelled)} training prompt(s) have no harmful/benign label (first: "
                f"{unlabelled[0][:60]!r}); pass labels for every prompt, e.g. from train.prompt_labels(records)"
            )
    return [
        Example(
            s.prompt,
            y,
            float(a),
            s.refusal,
            tuple(ids),
            bool(fin),
            None if labels is None else labels[s.prompt],
        )
        for s in samples
        for y, a, ids, fin in zip(s.responses, s.alphas, s.response_ids, s.finished, strict=True)
    ]


def data_hash(examples: Sequence[Example]) -> str:
    """A short hash of the training data, stored with the artifact."""
    blob = json.dumps([asdict(e) for e in examples], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def training_mix(
    n_harmful: int = 48, n_benign: int = 48, n_borderline: int = 32, seed: int = 0, split: str = "train"
) -> list[data.PromptRecord]:
    """Notebook 03's CPU-friendly default: 128 prompts from the train split (or "val" for validation) of every
    source the paper-scale mix draws from (`mixes.MIX_SOURCES`), each group's prompts shared evenly among its
    sources -- harmful: the bundled phrasing-form requests (imperatives, questions, first-person needs,
    role-play ...), the bundled harmful set, AdvBench and ToxiGen statements framed as requests; borderline: the
    bundled safe twins and borderline set; benign: bundled, ToxiGen's neutral requests and Alpaca. Evaluation-only
    sets and the test split are refused by `data.training_prompts`."""
    return group_mix(n_harmful, n_borderline, n_benign, seed=seed, split=split)


def prompt_labels(records: Sequence[data.PromptRecord]) -> dict[str, bool]:
    """{prompt text: is harmful} for a training mix (the perplexity baseline's targets)."""
    return {r.text: bool(r.is_harmful) for r in records}


def prompt_kinds(records: Sequence[data.PromptRecord]) -> dict[str, str]:
    """{prompt text: "harmful", "borderline" (the bundled borderline-safe set) or "benign"} for a training mix."""
    return {
        r.text: "harmful" if r.is_harmful else ("borderline" if r.source in BORDERLINE_SOURCES else "benign")
        for r in records
    }


def batch_indices(n: int, cfg: DistillConfig, step: int, micro: int) -> list[int]:
    # A pure function of (seed, step, micro-batch): resuming at any step draws the same batches.
    if cfg.sampling == "epoch":
        start = (step * cfg.grad_accum + micro) * cfg.batch_size
        return [_epoch_order(n, cfg.seed, pos // n)[pos % n] for pos in range(start, start + cfg.batch_size)]
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 97 + micro)
    return torch.randint(0, n, (cfg.batch_size,), generator=gen).tolist()


@functools.lru_cache(maxsize=8)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The order epoch `epoch` visits n examples in (a seeded permutation; every example once)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * (epoch + 1))
    return tuple(torch.randperm(n, generator=gen).tolist())


def steps_per_epoch(n_examples: int, cfg: DistillConfig) -> int:
    """Steps that visit every example once at the config's effective batch (batch_size x grad_accum)."""
    return math.ceil(n_examples / (cfg.batch_size * cfg.grad_accum))


def example_tokens(llm: LLM, example: Example) -> int:
    """The tokens a step scores for `example` beyond the chat template: its prompt and the longer of y and y_r
    (each with its eos), the length that sets the padding of its micro-batch."""
    tok = llm.tokenizer
    prompt = len(tok(example.prompt, add_special_tokens=False)["input_ids"])
    refusal = len(tok(example.refusal, add_special_tokens=False)["input_ids"]) + 1
    return prompt + max(len(example.response_ids) + int(example.finished), refusal)


def micro_batches(
    examples: Sequence[Example], draws: Sequence[Sequence[int]], bucketing: str, length: Any
) -> list[list[Example]]:
    """A step's micro-batches from its draws (one list of indices per micro-batch). "none": as drawn; "length":
    all draws sorted by `length(example)` and cut into micro-batches of the same sizes."""
    if bucketing not in BUCKETINGS:
        raise ValueError(unknown_name_message("bucketing", bucketing, BUCKETINGS))
    if bucketing == "none" or len(draws) < 2:
        return [[examples[i] for i in d] for d in draws]
    ordered = sorted((i for d in draws for i in d), key=lambda i: length(examples[i]))
    out, start = [], 0
    for d in draws:
        out.append([examples[i] for i in ordered[start : start + len(d)]])
        start += len(d)
    return out
