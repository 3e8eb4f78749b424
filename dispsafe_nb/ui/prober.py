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
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from dispsafe_nb.common.artifacts import CONFIG_FILE, ArtifactError
from dispsafe_nb.common.content_hash import stable_hash
from dispsafe_nb.common.journal import Journal
from dispsafe_nb.common.paths import cache_root, results_dir
from dispsafe_nb.core.decoding import DecodingConfig
from dispsafe_nb.core.llm import Generation, PromptError
from dispsafe_nb.core.loading import load_llm
from dispsafe_nb.core.scoring import sequence_logprobs
from dispsafe_nb.evaluation.judges import GuardJudge, judge_for_kind
from dispsafe_nb.guards.guard_training import load_embedding_guard, load_judge_guard
from dispsafe_nb.methods import METHOD_LOADERS, artifact_kind, load_method
from dispsafe_nb.system.dual_system import SafeSystem
from dispsafe_nb.ui.probe_records import ProbeDecoding, ProbeInputError, ProbeResult, SystemAnswer

# The request and result types live in `probe_records`; they are part of this module's API too.
__all__ = [
    "BASE",
    "DUAL",
    "PROBE_CHUNK",
    "ProbeDecoding",
    "ProbeInputError",
    "ProbeResult",
    "ProbeSession",
    "SECOND_JUDGE",
    "STRING_JUDGES",
    "SystemAnswer",
    "SystemSpec",
    "default_artifacts_dir",
    "discover_systems",
    "batch_journal_path",
    "parse_prompts",
    "probe",
]

BASE, DUAL = "base", "dual"
# The refusal judges shown for every answer: the two benchmarks' string rules, each recognising y_r.
STRING_JUDGES = {"JBB strings": "harmful", "XSTest strings": "borderline"}
SECOND_JUDGE = "second judge"

Progress = Callable[[int, int, str], None]  # (done, total, what is running now)


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
        self._base_greedy: dict[tuple[str, int, int], Generation] = {}

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

    def base_greedy(self, prompts: Sequence[str], max_new_tokens: int, seed: int) -> list[Generation]:
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

    def remember_base_greedy(self, prompt: str, max_new_tokens: int, seed: int, answer: Generation) -> None:
        """Keep a y_base computed elsewhere (a probe journal) as `base_greedy` would have."""
        self._base_greedy[(prompt, max_new_tokens, seed)] = answer


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


# Prompts per piece of work: every system answers a piece, then it is journaled (when a journal is given).
PROBE_CHUNK = 32


def _system_identity(session: ProbeSession, name: str) -> str:
    """What a journaled answer of `name` depends on besides the prompts: an artifact's files (size, mtime)."""
    spec = session.spec(name)
    if spec.folder is None:
        return spec.kind
    files = sorted(Path(spec.folder).rglob("*"))
    return stable_hash(
        [(str(f.relative_to(spec.folder)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    )


def batch_journal_path(
    session: ProbeSession, prompts: Sequence[str], systems: Sequence[str], decoding: ProbeDecoding
) -> Path:
    """Where the widget's batch mode journals a request: under the cache, named by the request (prompts, systems,
    decoding, model), so running the same batch again after a crashed kernel resumes it."""
    request = [list(prompts), list(systems), asdict(decoding), session.llm.describe()]
    return cache_root() / "probe_journals" / f"{stable_hash(request)[:20]}.jsonl"


def _probe_journal(
    session: ProbeSession, decoding: ProbeDecoding, journal: str | Path | None
) -> Journal | None:
    if journal is None:
        return None
    judge = session.second_judge
    config = {
        "llm": session.llm.describe(),
        "guard": session.guard.describe(),
        "second_judge": None if judge is None else judge.describe(),
        "decoding": asdict(decoding),
        "refusal": session.refusal,
    }
    return Journal(journal, "probe", config)


def _base_answers(
    session: ProbeSession, chunk: list[str], decoding: ProbeDecoding, book: Journal | None
) -> list[Generation]:
    """y_base for a chunk of prompts (from the journal when it has them)."""
    key = f"base_greedy/{stable_hash(chunk)}"
    if book is not None and key in book:
        gens = [Generation(g["text"], tuple(g["token_ids"]), g["finished"]) for g in book.get(key)]
        for prompt, gen in zip(chunk, gens, strict=True):
            session.remember_base_greedy(prompt, decoding.max_new_tokens, decoding.seed, gen)
        return gens
    gens = session.base_greedy(chunk, decoding.max_new_tokens, decoding.seed)
    if book is not None:
        book.record(key, [asdict(g) for g in gens])
    return gens


def _probe_chunk(
    session: ProbeSession,
    name: str,
    chunk: list[str],
    base: list[Generation],
    decoding: ProbeDecoding,
    refusal: str,
) -> list[SystemAnswer]:
    """One system's answers to a chunk of prompts, scored (raises what the system raises)."""
    _, method = session.system(name)  # loading is not the system's latency
    started = time.perf_counter()
    finals, raw, raw_alphas = _answers_of(session, name, chunk, decoding)
    elapsed = time.perf_counter() - started
    logq_r = logq_b = None
    if name != DUAL:  # the frozen LLM with a method (or none): its sequence probabilities are exact
        n = len(chunk)
        # values only: with gradients on, a trainable soft prompt keeps every micro-batch's graph (all activations)
        # alive until the end, so memory grew with the number of prompts (11 GB at 50 long ones)
        with torch.no_grad():
            logq_r = sequence_logprobs(session.llm, chunk, [refusal] * n, method=method).tolist()
            logq_b = sequence_logprobs(
                session.llm,
                chunk,
                None,
                append_eos=[g.finished for g in base],
                method=method,
                response_ids=[g.token_ids for g in base],
            ).tolist()
    flat_prompts = [p for p, ys in zip(chunk, finals, strict=True) for _ in ys]
    alphas = session.guard.prob_safe(flat_prompts, [y for ys in finals for y in ys]).tolist()
    verdicts = [_judge_verdicts(session, prompt, ys) for prompt, ys in zip(chunk, finals, strict=True)]
    out, start = [], 0
    for j, (prompt, ys) in enumerate(zip(chunk, finals, strict=True)):
        strings = [verdicts[j][label] for label in STRING_JUDGES]
        out.append(
            SystemAnswer(
                system=name,
                prompt=prompt,
                answers=list(ys),
                alphas=alphas[start : start + len(ys)],
                verdicts=verdicts[j],
                refused=[any(v) for v in zip(*strings, strict=True)],
                latency_s=elapsed / len(chunk),
                llm_answers=None if raw is None else list(raw[j]),
                llm_alphas=None if raw_alphas is None else list(raw_alphas[j]),
                logq_refusal=None if logq_r is None else float(logq_r[j]),
                logq_base_answer=None if logq_b is None else float(logq_b[j]),
            )
        )
        start += len(ys)
    return out


def probe(
    session: ProbeSession,
    prompts: str | Sequence[str],
    systems: Sequence[str],
    decoding: ProbeDecoding | None = None,
    progress: Progress | None = None,
    *,
    journal: str | Path | None = None,
) -> ProbeResult:
    """Run every selected system on every prompt and score the answers (see the module docstring).

    Bad input (empty or over-long prompt, no or unknown system, bad decoding) raises `ProbeInputError` before any
    work. A system that cannot be loaded (an artifact for another model, a corrupt one) is recorded in
    `result.errors` with the reason, and the other systems still answer.

    Prompts go through in pieces of `PROBE_CHUNK`, and every model call within a piece in micro-batches bounded by
    `core.batching`'s token budget, so memory does not grow with the number of prompts. `journal`: a file where
    each piece's answers are written as soon as they are scored; the same call again (an interrupted run, a crashed
    kernel) takes finished pieces from it and runs only the rest. A journal of other settings is refused."""

    decoding = decoding or ProbeDecoding()
    prompts = parse_prompts(prompts)
    systems = list(systems)
    _check_request(session, prompts, systems, decoding)
    result = ProbeResult(prompts, systems, decoding, session.refusal)
    book = _probe_journal(session, decoding, journal)
    chunks = [prompts[s : s + PROBE_CHUNK] for s in range(0, len(prompts), PROBE_CHUNK)]
    total, done = len(chunks) * (len(systems) + 1), 0
    answers: dict[str, list[SystemAnswer]] = {name: [] for name in systems}
    for c, chunk in enumerate(chunks):
        where = f" (prompts {c * PROBE_CHUNK + 1}-{c * PROBE_CHUNK + len(chunk)} of {len(prompts)})"
        if progress:
            progress(
                done, total, "the base model's greedy answers (y_base)" + (where if len(chunks) > 1 else "")
            )
        base = []
        if any(name != DUAL for name in systems):
            base = _base_answers(session, chunk, decoding, book)
            result.base_answers += [g.text for g in base]
        done += 1
        for name in systems:
            if progress:
                progress(done, total, name + (where if len(chunks) > 1 else ""))
            done += 1
            if name in result.errors:
                continue
            key = f"{name}@{_system_identity(session, name)}/{stable_hash(chunk)}" if book is not None else ""
            if book is not None and key in book:
                answers[name] += [SystemAnswer(**a) for a in book.get(key)]
                continue
            try:
                piece = _probe_chunk(session, name, chunk, base, decoding, result.refusal)
            except (
                ArtifactError,
                ValueError,
                RuntimeError,
            ) as err:  # this system fails; the others still answer
                result.errors[name] = f"{type(err).__name__}: {err}"
                answers[name] = []
                continue
            if book is not None:
                book.record(key, [asdict(a) for a in piece])
            answers[name] += piece
    for name in systems:
        result.answers += answers[name]
    if progress:
        progress(total, total, "done")
    return result
