"""Probing safety systems prompt by prompt: the computation behind the prompt-probing widget.

`probe(session, prompts, systems, decoding)` is a plain function returning a `ProbeResult`; the widget in
`dispsafe_nb.ui.widgets` only renders it, and notebooks and tests call it directly. Per prompt and system it reports
the answer(s), the teacher guard's α for each answer, each judge's verdict, the refusal rate over k samples (a
system is a distribution: one greedy answer is a single draw from it, at temperature 0), the sequence
probabilities q(y_r | x) of the refusal and q(y_base | x) of the base model's own greedy answer for every
system that is the frozen LLM with a method applied (the base model included: it is the method-free reference),
and the wall time each system took.

A `ProbeSession` loads the model, the teacher guard and the second judge once and reuses them across calls;
systems are "base", "dual" and every artifact found under the artifacts folder, discovered by its JSON `kind`.
"""

from __future__ import annotations

import difflib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dispsafe_nb.common.artifacts import CONFIG_FILE, ArtifactError
from dispsafe_nb.common.paths import results_dir
from dispsafe_nb.core.decoding import PROBING_DECODING, TEACHER_DECODING, DecodingConfig
from dispsafe_nb.core.llm import PromptError
from dispsafe_nb.core.loading import load_llm
from dispsafe_nb.core.scoring import sequence_logprobs
from dispsafe_nb.evaluation.judges import GuardJudge, judge_for_kind
from dispsafe_nb.guards.guard_training import load_embedding_guard, load_judge_guard
from dispsafe_nb.methods import METHOD_LOADERS, artifact_kind, load_method
from dispsafe_nb.system.dual_system import SafeSystem

BASE, DUAL = "base", "dual"
MAX_NEW_TOKENS_LIMIT = 512
MAX_SAMPLES = 32
# The refusal judges shown for every answer: the two benchmarks' string rules, each recognising y_r.
STRING_JUDGES = {"JBB strings": "harmful", "XSTest strings": "borderline"}
SECOND_JUDGE = "second judge"

Progress = Callable[[int, int, str], None]  # (done, total, what is running now)


class ProbeInputError(ValueError):
    """The request cannot be probed as given (empty or over-long prompt, no or unknown system, bad decoding);
    the message says what to change."""


# ---------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeDecoding:
    """How every selected system decodes. mode "greedy" gives one answer per prompt; "sampled" gives `k` answers
    drawn at `temperature` (each (prompt, sample) row from its own seeded stream, so reruns repeat)."""

    mode: str = "greedy"
    temperature: float = TEACHER_DECODING.temperature
    max_new_tokens: int = PROBING_DECODING.max_new_tokens
    k: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("greedy", "sampled"):
            raise ProbeInputError(f"decoding mode must be 'greedy' or 'sampled', not {self.mode!r}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ProbeInputError(
                f"max new tokens must lie in 1..{MAX_NEW_TOKENS_LIMIT}, not {self.max_new_tokens}"
            )
        if not 1 <= self.k <= MAX_SAMPLES:
            raise ProbeInputError(f"k samples must lie in 1..{MAX_SAMPLES}, not {self.k}")
        if self.mode == "greedy" and self.k != 1:
            raise ProbeInputError(
                "greedy decoding gives one answer per prompt: set k = 1 or choose 'sampled'"
            )
        if self.mode == "sampled" and not 0.0 < self.temperature <= 2.0:
            raise ProbeInputError(f"sampling needs a temperature in (0, 2], not {self.temperature}")

    def to_decoding(self) -> DecodingConfig:
        temperature = 0.0 if self.mode == "greedy" else self.temperature
        return DecodingConfig(max_new_tokens=self.max_new_tokens, temperature=temperature, seed=self.seed)


# ---------------------------------------------------------------------------------------------------------
# Systems: discovered, loaded once, reused
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SystemSpec:
    """A system the session can run: the base model, the dual system, or a saved artifact."""

    name: str
    kind: str  # "base", "dual", or an artifact's JSON kind ("soft_prompt", later "lora", "steering", ...)
    folder: str | None = None
    loadable: bool = True
    note: str = ""


def default_artifacts_dir() -> Path:
    """Where notebooks and benchmarks save methods: <results>/artifacts."""

    return results_dir() / "artifacts"


def discover_systems(artifacts_dir: str | Path | None = None) -> list[SystemSpec]:
    """ "base", "dual", then every artifact folder under `artifacts_dir` (any depth), named by its path there.
    An artifact whose kind has no registered loader is listed as not loadable, with the reason."""

    specs = [SystemSpec(BASE, BASE), SystemSpec(DUAL, DUAL)]
    root = Path(artifacts_dir) if artifacts_dir is not None else default_artifacts_dir()
    if not root.is_dir():
        return specs
    for config in sorted(root.rglob(CONFIG_FILE)):
        folder = config.parent
        kind = artifact_kind(folder)
        if kind is None:
            continue
        name = folder.relative_to(root).as_posix()
        known = kind in METHOD_LOADERS
        note = "" if known else f"no loader registered for kind {kind!r}"
        specs.append(SystemSpec(name, kind, str(folder), known, note))
    return specs


class ProbeSession:
    """The model, the teacher guard and the second judge, loaded once (lazily), and every system bound once.

    Pass `llm`, `guard`, `judge_guard` to reuse objects already loaded (notebooks, tests); by default they are the
    project's defaults (`load_llm()`, `load_embedding_guard()`, `load_judge_guard()`).
    """

    def __init__(
        self,
        llm: Any | None = None,
        guard: Any | None = None,
        judge_guard: Any | None = None,
        artifacts_dir: str | Path | None = None,
        use_second_judge: bool = True,
    ) -> None:
        self._llm, self._guard, self._judge_guard = llm, guard, judge_guard
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir is not None else default_artifacts_dir()
        self.use_second_judge = use_second_judge
        self._bound: dict[str, tuple[Any, Any | None]] = {}
        self._base_greedy: dict[tuple[str, int, int], Any] = {}

    # ---- lazily loaded parts ---------------------------------------------------------------------------
    @property
    def llm(self) -> Any:
        if self._llm is None:
            self._llm = load_llm()
        return self._llm

    @property
    def guard(self) -> Any:
        if self._guard is None:
            self._guard = load_embedding_guard(progress=False)
        return self._guard

    @property
    def second_judge(self) -> Any | None:
        if not self.use_second_judge:
            return None
        if self._judge_guard is None:
            self._judge_guard = load_judge_guard(progress=False)

        return GuardJudge(self._judge_guard)

    @property
    def refusal(self) -> str:
        return self.dual_system().refusal

    def dual_system(self) -> Any:

        if DUAL not in self._bound:
            self._bound[DUAL] = (SafeSystem(self.llm, self.guard), None)
        return self._bound[DUAL][0]

    # ---- systems ---------------------------------------------------------------------------------------
    def systems(self) -> list[SystemSpec]:
        """The systems available now (artifacts saved since the session started included)."""
        return discover_systems(self.artifacts_dir)

    def spec(self, name: str) -> SystemSpec:
        specs = {s.name: s for s in self.systems()}
        if name not in specs:
            close = difflib.get_close_matches(name, list(specs), n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ProbeInputError(f"unknown system {name!r}.{hint} Available: {', '.join(specs)}")
        return specs[name]

    def system(self, name: str) -> tuple[Any, Any | None]:
        """(a system with `generate`, the method applied to the frozen LLM or None), loaded once.

        Raises `ArtifactError` for an artifact that cannot be loaded (another model, corrupt, unknown kind)."""
        if name in self._bound:
            return self._bound[name]
        spec = self.spec(name)
        if spec.kind == BASE:
            self._bound[name] = (self.llm, None)
        elif spec.kind == DUAL:
            self.dual_system()
        else:
            if not spec.loadable:
                raise ArtifactError(f"{spec.folder}: {spec.note}")

            method = load_method(spec.folder, self.llm)
            self._bound[name] = (method.bind(self.llm), method)
        return self._bound[name]

    def base_greedy(self, prompts: Sequence[str], max_new_tokens: int, seed: int) -> list[Any]:
        """The base model's greedy answers as `llm.Generation`s (text, the generated token ids, whether it
        finished), cached per prompt: the y_base whose probability every method-applied system reports. Scoring
        the ids with the finish flag scores exactly what was generated (a cut answer as the prefix it is)."""
        missing = [p for p in prompts if (p, max_new_tokens, seed) not in self._base_greedy]
        if missing:
            decoding = DecodingConfig(max_new_tokens=max_new_tokens, seed=seed)
            for prompt, gens in zip(
                missing, self.llm.generate_detailed(missing, decoding=decoding), strict=True
            ):
                self._base_greedy[(prompt, max_new_tokens, seed)] = gens[0]
        return [self._base_greedy[(p, max_new_tokens, seed)] for p in prompts]


# ---------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SystemAnswer:
    """One system's behaviour on one prompt."""

    system: str
    prompt: str
    answers: list[str]
    alphas: list[float]  # teacher guard's α(x, y) for each answer shown
    verdicts: dict[str, list[bool]]  # judge -> refused (string rules) / safe (second judge), per answer
    refused: list[bool]  # refused by either string rule, per answer
    latency_s: float  # wall time to answer this prompt (the batch's time / its prompts); dual: LLM + guard
    llm_answers: list[str] | None = None  # dual only: what the LLM said before the guard
    llm_alphas: list[float] | None = None  # dual only: α of those answers (what decided a replacement)
    # log q(y_r | x) and log q(y_base | x) at temperature 1 (the model's own distribution, which training fits) for
    # the frozen LLM with its method (none for the base model); None for the dual system (a mixture)
    logq_refusal: float | None = None
    logq_base_answer: float | None = None  # y_base: the base model's greedy answer, scored as generated

    @property
    def refusal_rate(self) -> float:
        return sum(self.refused) / len(self.refused)

    @property
    def mean_alpha(self) -> float:
        return sum(self.alphas) / len(self.alphas)

    @property
    def replaced(self) -> list[bool] | None:
        if self.llm_answers is None:
            return None
        return [a != y for a, y in zip(self.answers, self.llm_answers, strict=True)]


@dataclass
class ProbeResult:
    """Everything one probe call produced: answers per (prompt, system), errors per system, the config."""

    prompts: list[str]
    systems: list[str]
    decoding: ProbeDecoding
    refusal: str
    answers: list[SystemAnswer] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # system -> why it could not run
    base_answers: list[str] = field(default_factory=list)  # y_base per prompt (greedy)

    def answer(self, system: str, prompt: str) -> SystemAnswer:
        for a in self.answers:
            if a.system == system and a.prompt == prompt:
                return a
        raise KeyError(f"no answer of {system!r} to {prompt!r}")

    def table(self) -> pd.DataFrame:
        """One row per (prompt, system): refusal rate over the samples, mean α, log q(y_r|x), latency."""
        rows = [
            {
                "prompt": a.prompt,
                "system": a.system,
                "k": len(a.answers),
                "refusal_rate": a.refusal_rate,
                "mean_alpha": a.mean_alpha,
                "logq_refusal": a.logq_refusal,
                "q_refusal": None if a.logq_refusal is None else math.exp(a.logq_refusal),
                "logq_base_answer": a.logq_base_answer,
                "latency_s": a.latency_s,
            }
            for a in self.answers
        ]
        return pd.DataFrame(rows)

    def summary(self) -> pd.DataFrame:
        """One row per system: prompts, refusal rate, mean α, mean log q(y_r|x), total latency."""
        table = self.table()
        if table.empty:
            return table
        grouped = table.groupby("system", sort=False)
        out = grouped.agg(
            prompts=("prompt", "count"),
            refusal_rate=("refusal_rate", "mean"),
            mean_alpha=("mean_alpha", "mean"),
            mean_logq_refusal=("logq_refusal", "mean"),
            latency_s=("latency_s", "sum"),
        )
        return out.reindex([s for s in self.systems if s in out.index])

    def to_metrics(self) -> dict[str, Any]:
        """JSON-able numbers per system (what notebooks emit and checks read)."""
        summary = self.summary()
        per_system = {
            system: {k: (None if pd.isna(v) else float(v)) for k, v in row.items()}
            for system, row in summary.iterrows()
        }
        return {
            "systems": per_system,
            "errors": dict(self.errors),
            "n_prompts": len(self.prompts),
            "decoding": asdict(self.decoding),
        }


# ---------------------------------------------------------------------------------------------------------
# The callback
# ---------------------------------------------------------------------------------------------------------


def parse_prompts(text: str | Sequence[str]) -> list[str]:
    """One prompt, or many (a list, or text with one prompt per line; blank lines are skipped)."""
    if isinstance(text, str):
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        prompts = [p for p in text if isinstance(p, str) and p.strip()]
        if len(prompts) != len(list(text)):
            raise ProbeInputError("every prompt must be non-empty text; remove the empty ones")
    if not prompts:
        raise ProbeInputError("the prompt is empty: type a prompt or choose a preset")
    return prompts


def _check_request(session: ProbeSession, prompts: list[str], systems: Sequence[str], decoding: Any) -> None:
    if not isinstance(decoding, ProbeDecoding):
        raise ProbeInputError(f"decoding must be a ProbeDecoding, not {type(decoding).__name__}")
    if not systems:
        raise ProbeInputError("no system selected: choose at least one (e.g. 'base' and 'dual')")
    if len(set(systems)) != len(systems):
        raise ProbeInputError(f"a system is selected twice: {list(systems)}")
    for name in systems:
        session.spec(name)
    try:
        # The longest prefix a method may add is unknown here; the context check reserves the answer's tokens.
        session.llm.check_prompts(prompts, reserve_tokens=decoding.max_new_tokens)
    except PromptError as err:
        raise ProbeInputError(str(err)) from err


def _judge_verdicts(session: ProbeSession, prompt: str, answers: list[str]) -> dict[str, list[bool]]:

    verdicts = {
        label: judge_for_kind(kind, session.refusal).refusals(answers).tolist()
        for label, kind in STRING_JUDGES.items()
    }
    judge = session.second_judge
    if judge is not None:
        scores = judge([prompt] * len(answers), answers).tolist()
        verdicts[SECOND_JUDGE] = [float(s) >= judge.threshold for s in scores]
    return verdicts


def _answers_of(session: ProbeSession, name: str, prompts: list[str], decoding: ProbeDecoding) -> Any:
    """k answers per prompt; for the dual system also the LLM's own answers and their α."""
    system, _ = session.system(name)
    dec = decoding.to_decoding()
    if name == DUAL:  # the LLM's answers, then the guard's part of the same system
        raw = session.llm.generate(prompts, decoding=dec, num_samples=decoding.k, per_prompt_seed=True)
        raw = [[r] for r in raw] if decoding.k == 1 else raw
        flat_prompts = [p for p, ys in zip(prompts, raw, strict=True) for _ in ys]
        outputs = system.apply_guard(flat_prompts, [y for ys in raw for y in ys], dec.seed)
        k = decoding.k
        rows = [outputs[i * k : (i + 1) * k] for i in range(len(prompts))]
        return [[o.final for o in row] for row in rows], raw, [[o.alpha for o in row] for row in rows]
    out = system.generate(prompts, decoding=dec, num_samples=decoding.k, per_prompt_seed=True)
    return ([[a] for a in out] if decoding.k == 1 else out), None, None


def probe(
    session: ProbeSession,
    prompts: str | Sequence[str],
    systems: Sequence[str],
    decoding: ProbeDecoding | None = None,
    progress: Progress | None = None,
) -> ProbeResult:
    """Run every selected system on every prompt and score the answers (see the module docstring).

    Bad input (empty or over-long prompt, no or unknown system, bad decoding) raises `ProbeInputError` before any
    work. A system that cannot be loaded (an artifact for another model, a corrupt one) is recorded in
    `result.errors` with the reason, and the other systems still answer."""

    decoding = decoding or ProbeDecoding()
    prompts = parse_prompts(prompts)
    systems = list(systems)
    _check_request(session, prompts, systems, decoding)
    result = ProbeResult(prompts, systems, decoding, session.refusal)
    total = len(systems) + 1
    if progress:
        progress(0, total, "the base model's greedy answers (y_base)")
    base = []
    if any(name != DUAL for name in systems):
        base = session.base_greedy(prompts, decoding.max_new_tokens, decoding.seed)
        result.base_answers = [g.text for g in base]
    for i, name in enumerate(systems, start=1):
        if progress:
            progress(i, total, name)
        try:
            _, method = session.system(name)  # loading is not the system's latency
            started = time.perf_counter()
            finals, raw, raw_alphas = _answers_of(session, name, prompts, decoding)
            elapsed = time.perf_counter() - started
            logq_r = logq_b = None
            if name != DUAL:  # the frozen LLM with a method (or none): its sequence probabilities are exact
                n = len(prompts)
                logq_r = sequence_logprobs(session.llm, prompts, [result.refusal] * n, method=method).tolist()
                logq_b = sequence_logprobs(
                    session.llm,
                    prompts,
                    None,
                    append_eos=[g.finished for g in base],
                    method=method,
                    response_ids=[g.token_ids for g in base],
                ).tolist()
            flat_prompts = [p for p, ys in zip(prompts, finals, strict=True) for _ in ys]
            alphas = session.guard.prob_safe(flat_prompts, [y for ys in finals for y in ys]).tolist()
            verdicts = [
                _judge_verdicts(session, prompt, ys) for prompt, ys in zip(prompts, finals, strict=True)
            ]
        except (ArtifactError, ValueError, RuntimeError) as err:  # this system fails; the others still answer
            result.errors[name] = f"{type(err).__name__}: {err}"
            continue
        start = 0
        for j, (prompt, ys) in enumerate(zip(prompts, finals, strict=True)):
            strings = [verdicts[j][label] for label in STRING_JUDGES]
            result.answers.append(
                SystemAnswer(
                    system=name,
                    prompt=prompt,
                    answers=list(ys),
                    alphas=alphas[start : start + len(ys)],
                    verdicts=verdicts[j],
                    refused=[any(v) for v in zip(*strings, strict=True)],
                    latency_s=elapsed / len(prompts),
                    llm_answers=None if raw is None else list(raw[j]),
                    llm_alphas=None if raw_alphas is None else list(raw_alphas[j]),
                    logq_refusal=None if logq_r is None else float(logq_r[j]),
                    logq_base_answer=None if logq_b is None else float(logq_b[j]),
                )
            )
            start += len(ys)
    if progress:
        progress(total, total, "done")
    return result
