"""The safe LLM system (the paper's teacher): the LLM answers, a guard judges, unsafe answers become y_r.

    p(r | x) = Σ_y p(y | x) [ α(x, y) 1(r = y) + (1 − α(x, y)) 1(r = y_r) ]

`SafeSystem.generate` runs it like any other system. `teacher_samples` gives training data for distillation:
k samples y ~ p(y | x) per prompt with their α, cached on disk and shared by every method and objective.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dispsafe_nb.content_hash import stable_hash
from dispsafe_nb.guards import DEFAULT_REFUSAL, Guard
from dispsafe_nb.models import LLM, DecodingConfig
from dispsafe_nb.paths import cache_root

# Sampling the teacher: a little below temperature 1 keeps a 135M model's samples fluent.
TEACHER_DECODING = DecodingConfig(max_new_tokens=64, temperature=0.7, top_p=0.95, seed=0)


@dataclass(frozen=True)
class SafeSystemOutput:
    prompt: str
    response: str  # what the LLM said
    alpha: float  # guard's p(safe | prompt, response)
    final: str  # what the system returns: response or the refusal

    @property
    def replaced(self) -> bool:
        return self.final != self.response


@dataclass
class SafeSystem:
    """LLM + guard. mode="threshold" refuses when α < threshold; mode="sample" keeps y with probability α
    (the stochastic system of the paper's formula; seeded)."""

    llm: LLM
    guard: Guard
    refusal: str = DEFAULT_REFUSAL
    threshold: float = 0.5
    mode: str = "threshold"

    def __post_init__(self) -> None:
        if self.mode not in {"threshold", "sample"}:
            raise ValueError(f"mode must be 'threshold' or 'sample', not {self.mode!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], not {self.threshold}")

    def respond(
        self,
        prompts: Sequence[str],
        decoding: DecodingConfig | None = None,
        batch_size: int = 16,
        progress: bool = False,
        per_prompt_seed: bool = False,
    ) -> list[SafeSystemOutput]:
        """Full trace per prompt: the LLM's answer, α, and the final output."""
        decoding = decoding or DecodingConfig()
        prompts = list(prompts)
        responses = self.llm.generate(
            prompts, decoding, batch_size=batch_size, progress=progress, per_prompt_seed=per_prompt_seed
        )
        return self.apply_guard(prompts, responses, decoding.seed)

    def apply_guard(
        self, prompts: Sequence[str], responses: Sequence[str], seed: int = 0
    ) -> list[SafeSystemOutput]:
        """The guard's part on answers already given: α for each (prompt, response) and what the system returns
        (the response, or y_r); `seed` drives the coins of mode "sample", drawn in order."""
        alphas = self.guard.prob_safe(list(prompts), list(responses)).tolist()
        rng = random.Random(seed)
        return [
            SafeSystemOutput(
                prompt, response, float(alpha), response if self._keeps(alpha, rng) else self.refusal
            )
            for prompt, response, alpha in zip(prompts, responses, alphas, strict=True)
        ]

    def _keeps(self, alpha: float, rng: random.Random) -> bool:
        """Does the system return the LLM's answer (else y_r)? α ≥ threshold, or a coin with probability α."""
        return alpha >= self.threshold if self.mode == "threshold" else rng.random() < alpha

    def generate(
        self,
        prompts: Sequence[str],
        decoding: DecodingConfig | None = None,
        batch_size: int = 16,
        progress: bool = False,
        num_samples: int = 1,
        per_prompt_seed: bool = False,
    ) -> list[str] | list[list[str]]:
        """The common system interface: one final answer per prompt (`num_samples` > 1: that many per prompt,
        each the system's output for its own base sample)."""
        if num_samples == 1:
            return [o.final for o in self.respond(prompts, decoding, batch_size, progress, per_prompt_seed)]
        decoding = decoding or DecodingConfig()
        prompts = list(prompts)
        gens = self.llm.generate(
            prompts,
            decoding,
            batch_size=batch_size,
            num_samples=num_samples,
            progress=progress,
            per_prompt_seed=per_prompt_seed,
        )
        flat = [y for ys in gens for y in ys]
        outputs = self.apply_guard([p for p in prompts for _ in range(num_samples)], flat, decoding.seed)
        finals = [o.final for o in outputs]
        return [finals[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]

    def describe(self) -> dict[str, Any]:
        return {
            "system": "dual",
            "model": self.llm.describe(),
            "guard": self.guard.describe(),
            "refusal": self.refusal,
            "threshold": self.threshold,
            "mode": self.mode,
        }


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


def deployed_alphas(samples: Sequence[TeacherSample], threshold: float = 0.5) -> list[TeacherSample]:
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
    from tqdm.auto import tqdm

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
            chunk, decoding, batch_size=batch_size, num_samples=k, per_prompt_seed=True
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
