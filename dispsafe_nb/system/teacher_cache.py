"""The safe LLM system (the paper's teacher): the LLM answers, a guard judges, unsafe answers become y_r.

    p(r | x) = Σ_y p(y | x) [ α(x, y) 1(r = y) + (1 − α(x, y)) 1(r = y_r) ]

`SafeSystem.generate` runs it like any other system. `teacher_samples` gives training data for distillation:
k samples y ~ p(y | x) per prompt with their α, cached on disk and shared by every method and objective.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from dispsafe_nb.common.content_hash import stable_hash
from dispsafe_nb.common.paths import cache_root
from dispsafe_nb.core.decoding import TEACHER_DECODING, DecodingConfig
from dispsafe_nb.core.llm import LLM
from dispsafe_nb.guards.protocol import DEFAULT_REFUSAL, SAFE_THRESHOLD

if TYPE_CHECKING:
    from dispsafe_nb.system.dual_system import SafeSystem


# ---------------------------------------------------------------------------------------------------------
# Teacher samples for distillation, cached on disk
# ---------------------------------------------------------------------------------------------------------


# Version of the teacher-cache entry format. v1 stored texts only; v2 adds the sampled token ids and finish
# flags. An entry of another version is never read as this one: it is recomputed.
TEACHER_CACHE_FORMAT = 2


class TeacherSampleError(ValueError):
    """A teacher sample cannot be trained on as given (e.g. it lacks the sampled token ids)."""


@dataclass(frozen=True)
class TeacherSample:
    """k responses y ~ p(y|x) for one prompt, their α(x, y), and the refusal y_r.

    `response_ids` are the token ids generate() sampled (without the end-of-turn token) and `finished` says
    whether each answer ended on its own; training and the bound check score exactly those ids, and a truncated
    answer as a prefix (no eos). Samples built from texts alone (None) cannot be trained on."""

    prompt: str
    responses: tuple[str, ...]
    alphas: tuple[float, ...]
    refusal: str
    response_ids: tuple[tuple[int, ...], ...] | None = None
    finished: tuple[bool, ...] | None = None

    def __post_init__(self) -> None:
        k = len(self.responses)
        if len(self.alphas) != k:
            raise ValueError(f"{k} responses but {len(self.alphas)} alphas for prompt {self.prompt[:60]!r}")
        if (self.response_ids is None) != (self.finished is None):
            raise ValueError("give both response_ids and finished, or neither")
        if self.response_ids is not None and not (len(self.response_ids) == len(self.finished) == k):
            raise ValueError(
                f"{k} responses but {len(self.response_ids)} id lists / {len(self.finished)} flags"
            )

    @property
    def has_ids(self) -> bool:
        return self.response_ids is not None

    @property
    def refusal_mass(self) -> float:
        """Monte-Carlo estimate of the teacher's probability of answering y_r: mean of 1 − α."""
        return sum(1.0 - a for a in self.alphas) / len(self.alphas)


def sample_from_texts(
    llm: LLM, prompt: str, responses: Sequence[str], alphas: Sequence[float], refusal: str = DEFAULT_REFUSAL
) -> TeacherSample:
    """A teacher sample from answers written as text (e.g. in a test or an exercise): each answer is tokenized
    by the model's tokenizer and treated as finished. Samples from `teacher_samples` keep what was sampled."""
    ids = tuple(tuple(llm.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses)
    return TeacherSample(
        prompt, tuple(responses), tuple(float(a) for a in alphas), refusal, ids, (True,) * len(responses)
    )


@dataclass
class TeacherCache:
    """One JSON file per prompt under a folder keyed by model, guard, refusal, decoding and k.

    Every entry carries a checksum of its content: a damaged or mismatching entry is detected, reported,
    deleted and recomputed — never silently used.
    """

    key: dict[str, Any]
    root: Path = field(default_factory=lambda: cache_root() / "teacher")

    @property
    def folder(self) -> Path:
        return self.root / stable_hash(self.key)[:16]

    def path(self, prompt: str) -> Path:
        return self.folder / f"{hashlib.sha256(prompt.encode()).hexdigest()[:24]}.json"

    def get(self, prompt: str) -> TeacherSample | None:
        path = self.path(prompt)
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if entry.get("format") != TEACHER_CACHE_FORMAT:
                warnings.warn(
                    f"teacher cache entry {path} has format {entry.get('format', 1)}, not {TEACHER_CACHE_FORMAT}; "
                    "recomputing it",
                    stacklevel=2,
                )
                path.unlink(missing_ok=True)
                return None
            body = entry["sample"]
            if entry["checksum"] != stable_hash(body) or body["prompt"] != prompt:
                raise ValueError("checksum or prompt mismatch")
            return TeacherSample(
                body["prompt"],
                tuple(body["responses"]),
                tuple(body["alphas"]),
                body["refusal"],
                tuple(tuple(int(t) for t in ids) for ids in body["response_ids"]),
                tuple(bool(f) for f in body["finished"]),
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            warnings.warn(f"teacher cache entry {path} is corrupt ({err}); recomputing it", stacklevel=2)
            path.unlink(missing_ok=True)
            return None

    def put(self, sample: TeacherSample) -> None:
        if not sample.has_ids:
            raise TeacherSampleError("only samples with their token ids and finish flags are cached")
        self.folder.mkdir(parents=True, exist_ok=True)
        key_file = self.folder / "key.json"
        if not key_file.exists():
            key_file.write_text(json.dumps(self.key, indent=2, sort_keys=True, default=str), encoding="utf-8")
        body = {
            "prompt": sample.prompt,
            "responses": list(sample.responses),
            "alphas": list(sample.alphas),
            "refusal": sample.refusal,
            "response_ids": [list(ids) for ids in sample.response_ids],
            "finished": list(sample.finished),
        }
        payload = json.dumps(
            {"format": TEACHER_CACHE_FORMAT, "checksum": stable_hash(body), "sample": body},
            ensure_ascii=False,
        )
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(payload)
        os.replace(tmp, self.path(sample.prompt))


def deployed_alphas(
    samples: Sequence[TeacherSample], threshold: float = SAFE_THRESHOLD
) -> list[TeacherSample]:
    """The samples as the *deployed* dual system treats them: α → 1 where α ≥ threshold (the answer is kept), else
    0 (replaced by y_r). Eq. 4 with these α distils the thresholded system that greedy evaluation compares with,
    instead of the soft distribution that keeps y with probability α."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], not {threshold}")
    return [replace(s, alphas=tuple(1.0 if a >= threshold else 0.0 for a in s.alphas)) for s in samples]


def prompt_seed(prompt: str, seed: int) -> int:
    """A per-prompt seed, so a prompt's samples do not depend on which other prompts were asked with it."""
    return int(hashlib.sha256(f"{seed}:{prompt}".encode()).hexdigest()[:8], 16)


def teacher_cache_key(
    model: dict[str, Any],
    guard: dict[str, Any],
    refusal: str,
    decoding: DecodingConfig | dict[str, Any],
    k: int,
) -> dict[str, Any]:
    """The key of a teacher-sample cache (`TeacherCache(key).folder`): the model's and the guard's descriptions
    (an embedding guard's carries its content key, `guard_training.guard_key`, so retraining it on other texts
    moves the cache), the refusal, the decoding settings, k, the sampler and the entry format."""
    return {
        "model": model,
        "guard": guard,
        "refusal": refusal,
        "decoding": decoding.to_dict() if isinstance(decoding, DecodingConfig) else dict(decoding),
        "k": k,
        "sampler": "row-seeded-v1",  # how samples are drawn; part of the key so other schemes never mix in
        "format": TEACHER_CACHE_FORMAT,
    }


def teacher_samples(
    system: SafeSystem,
    prompts: Sequence[str],
    k: int = 4,
    decoding: DecodingConfig = TEACHER_DECODING,
    cache: bool = True,
    cache_root_dir: Path | None = None,
    progress: bool = True,
    batch_size: int = 8,
) -> list[TeacherSample]:
    """k samples per prompt from the base LLM with their α under the system's guard (computed once, cached)."""

    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if decoding.greedy and k > 1:
        raise ValueError("greedy decoding gives one answer per prompt: use k=1 or a temperature above 0")
    prompts = system.llm.check_prompts(list(prompts), reserve_tokens=decoding.max_new_tokens)
    key = teacher_cache_key(system.llm.describe(), system.guard.describe(), system.refusal, decoding, k)
    store = TeacherCache(key, cache_root_dir or cache_root() / "teacher") if cache else None
    cached = {p: store.get(p) for p in prompts} if store else {}
    missing = list(dict.fromkeys(p for p in prompts if cached.get(p) is None))
    # Batched generation, but every (prompt, sample) row draws from its own seeded stream: a prompt's samples
    # never depend on which other prompts were asked with it.
    for start in tqdm(range(0, len(missing), batch_size), desc="teacher samples", disable=not progress):
        chunk = missing[start : start + batch_size]
        out = system.llm.generate_detailed(
            chunk, decoding=decoding, batch_size=batch_size, num_samples=k, per_prompt_seed=True
        )
        for prompt, gens in zip(chunk, out, strict=True):
            responses = [g.text for g in gens]
            alphas = system.guard.prob_safe([prompt] * k, responses).tolist()
            sample = TeacherSample(
                prompt,
                tuple(responses),
                tuple(float(a) for a in alphas),
                system.refusal,
                tuple(g.token_ids for g in gens),
                tuple(g.finished for g in gens),
            )
            cached[prompt] = sample
            if store:
                store.put(sample)
    samples = [cached[p] for p in prompts]
    return samples
