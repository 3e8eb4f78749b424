"""Evaluate any system (anything with `generate(prompts)`) on named benchmark splits.

Each benchmark is a prompt set whose harmfulness is known, so refusal judgements turn into:
* SGS (safety guard score) on harmful sets: fraction of answers judged safe (a refusal, by the string judge;
  a second, guard-based judge that is *not* the teacher is reported beside it when given);
* over-refusal on borderline-safe sets: refusal rate, also per category;
* usefulness on benign sets: compliance (1 − refusal), and accuracy on the bundled verifiable instructions.
Results are `EvalRecord`s (JSON lines with the full config) and a pandas table.

With ``journal=path``, an evaluation writes what it finishes as it goes (`common.journal`): the answers of every
`JOURNAL_CHUNK` prompts, then each benchmark's records. An interrupted run keeps them; the same call again resumes
where it stopped (a journal of other settings is refused, not mixed in).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

import dispsafe_nb
from dispsafe_nb import data
from dispsafe_nb.common.content_hash import stable_hash
from dispsafe_nb.common.journal import Journal, open_journal
from dispsafe_nb.core.decoding import DecodingConfig, decoding_preset
from dispsafe_nb.core.llm import LLM
from dispsafe_nb.core.scoring import fidelity_kl
from dispsafe_nb.core.system import System
from dispsafe_nb.evaluation.benchmark_metrics import benchmark_judge, score_responses, score_samples
from dispsafe_nb.evaluation.benchmarks import SYSTEM_REFUSAL, benchmark, benchmark_records
from dispsafe_nb.evaluation.judges import RefusalJudge
from dispsafe_nb.evaluation.records import EvalRecord
from dispsafe_nb.guards.protocol import DEFAULT_REFUSAL
from dispsafe_nb.methods.base import Method
from dispsafe_nb.system.dual_system import SafeSystem

if TYPE_CHECKING:
    pass


def _record_config(
    system: System,
    judge: RefusalJudge,
    bench: str,
    limit: int | None,
    decoding: DecodingConfig,
    seed: int,
    second_judge: Any | None = None,
    samples_per_prompt: int = 1,
) -> dict[str, Any]:
    """Everything a record needs to be redone: system, judges, data split, decoding, seed, package version."""
    describe = getattr(second_judge, "describe", None)
    return {
        "system": system,
        "judge": judge.describe(),
        "second_judge": describe() if describe else (None if second_judge is None else repr(second_judge)),
        "benchmark": asdict(benchmark(bench)),
        "limit": limit,
        "decoding": decoding.to_dict(),
        "samples_per_prompt": samples_per_prompt,
        "seed": seed,
        "split_version": data.SPLIT_VERSION,
        "package_version": dispsafe_nb.__version__,
    }


# Prompts per journaled piece of generation: an interruption loses at most this many prompts' answers.
JOURNAL_CHUNK = 64


def _generate_all(
    system: System, prompts: list[str], decoding: DecodingConfig, k: int, **kwargs: Any
) -> list[list[str]]:
    """k answers per prompt; sampled rows are seeded per (prompt, sample), so batches do not matter."""
    if k == 1 and decoding.greedy:
        return [[a] for a in system.generate(prompts, decoding=decoding, **kwargs)]
    out = system.generate(prompts, decoding=decoding, num_samples=k, per_prompt_seed=True, **kwargs)
    return [[a] for a in out] if k == 1 else out


def _generate(
    system: System,
    prompts: list[str],
    decoding: DecodingConfig,
    k: int,
    *,
    journal: Journal | None = None,
    key: str = "",
    progress: bool = False,
    **kwargs: Any,
) -> list[list[str]]:
    """`_generate_all`, or with a journal piece by piece (`JOURNAL_CHUNK` prompts), reusing finished pieces.
    Answers do not depend on how prompts are split (greedy, or seeded per prompt), so resumed = uninterrupted."""
    if journal is None:
        return _generate_all(system, prompts, decoding, k, progress=progress, **kwargs)
    out: list[list[str]] = []
    starts = range(0, len(prompts), JOURNAL_CHUNK)
    for start in tqdm(starts, desc=f"{key} (journaled)", disable=not progress or len(starts) < 2):
        chunk = prompts[start : start + JOURNAL_CHUNK]
        piece, digest = f"{key}/answers/{start}", stable_hash(chunk)
        done = journal.get(piece)
        if done is None or done.get("prompts") != digest:
            done = {"prompts": digest, "answers": _generate_all(system, chunk, decoding, k, **kwargs)}
            journal.record(piece, done)
        out += done["answers"]
    return out


def _open_journal(path: str | Path | None, job: str, system: Any, **settings: Any) -> Journal | None:
    """The journal of one evaluation call (None without a path): its settings are everything its records depend on
    (objects with `describe()` by their description)."""
    describe = getattr(system, "describe", None)
    config = {
        "system": describe() if describe else repr(system),
        **{k: (v.describe() if hasattr(v, "describe") else v) for k, v in settings.items()},
        "split_version": data.SPLIT_VERSION,
        "package_version": dispsafe_nb.__version__,
    }
    return open_journal(path, job, config)


def _check_sampling(decoding: DecodingConfig, k: int) -> None:
    if k < 1:
        raise ValueError(f"samples_per_prompt must be at least 1, not {k}")
    if decoding.greedy and k > 1:
        raise ValueError(
            "greedy decoding gives one answer per prompt: use samples_per_prompt=1 or a temperature"
        )


def evaluate(
    system: System,
    benchmarks: Sequence[str],
    system_name: str | None = None,
    limit: int | None = None,
    decoding: DecodingConfig | None = None,
    judge: RefusalJudge | None = None,
    second_judge: Callable[[list[str], list[str]], Sequence[float]] | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    refusal_text: str | None = SYSTEM_REFUSAL,
    samples_per_prompt: int = 1,
    *,
    journal: str | Path | None = None,
    prompt_sets: Mapping[str, Sequence[data.PromptRecord]] | None = None,
) -> list[EvalRecord]:
    """Generate with `system` on each benchmark and score the answers (greedy, 64 new tokens by default).

    Every benchmark is judged with its own rule (`judges.judge_for_kind`) recognising `refusal_text` -- pass the
    dual system's y_r for students too, so all systems are judged alike -- unless `judge` overrides it. With a
    sampling `decoding` and `samples_per_prompt` = k, each prompt gets k seeded samples and a refusal rate.
    journal: a file where finished answers and records are kept as they come; rerunning resumes from it.
    prompt_sets: your own prompts for some of the named benchmarks ({benchmark: records}), judged by that
    benchmark's kind and rule in place of its prompts (`limit` then does not apply to them)."""
    data.check_seed(seed)
    if refusal_text is SYSTEM_REFUSAL:  # the system's own y_r (a dual system's), else the default one
        refusal_text = getattr(system, "refusal", None) or DEFAULT_REFUSAL
    decoding = decoding or decoding_preset("evaluation", seed=seed)
    _check_sampling(decoding, samples_per_prompt)
    name = system_name or type(system).__name__
    describe = getattr(system, "describe", None)
    stray = sorted(set(prompt_sets or {}) - set(benchmarks))
    if stray:
        raise ValueError(
            f"prompt_sets names {stray}, which are not among the benchmarks to evaluate {list(benchmarks)}"
        )
    book = _open_journal(
        journal,
        "evaluate",
        system,
        name=name,
        limit=limit,
        decoding=decoding.to_dict(),
        judge=judge,
        second_judge=second_judge,
        seed=seed,
        refusal_text=refusal_text,
        samples_per_prompt=samples_per_prompt,
        prompt_sets={k: stable_hash([r.id for r in v]) for k, v in (prompt_sets or {}).items()},
    )
    results = []
    for bench in benchmarks:
        if book is not None and f"{bench}/records" in book:
            results += [EvalRecord(**r) for r in book.get(f"{bench}/records")]
            continue
        spec = benchmark(bench)
        given = (prompt_sets or {}).get(bench)
        records = list(given) if given is not None else benchmark_records(bench, limit, seed)
        used = benchmark_judge(spec, judge, refusal_text)
        config = _record_config(
            describe() if describe else name,
            used,
            bench,
            limit,
            decoding,
            seed,
            second_judge,
            samples_per_prompt,
        )
        if given is not None:  # the caller's prompts, judged as this benchmark's kind
            config["prompt_set"] = {"n": len(records), "ids_hash": stable_hash([r.id for r in records])}
        texts = [r.text for r in records]
        answers = _generate(
            system,
            texts,
            decoding,
            samples_per_prompt,
            batch_size=batch_size,
            progress=progress,
            journal=book,
            key=bench,
        )
        if samples_per_prompt == 1 and decoding.greedy:
            rec = score_responses(
                name, bench, records, [a[0] for a in answers], used, second_judge, config, refusal_text
            )
        else:
            rec = score_samples(name, bench, records, answers, used, second_judge, config, refusal_text)
        if book is not None:
            book.record(f"{bench}/records", [asdict(rec)])
        results.append(rec)
    return results


def evaluate_base_and_dual(
    system: SafeSystem,
    benchmarks: Sequence[str],
    limit: int | None = None,
    decoding: DecodingConfig | None = None,
    judge: RefusalJudge | None = None,
    second_judge: Callable[[list[str], list[str]], Sequence[float]] | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    samples_per_prompt: int = 1,
    names: tuple[str, str] = ("base", "dual"),
    *,
    journal: str | Path | None = None,
) -> tuple[list[EvalRecord], dict[str, float]]:
    """Evaluate the base LLM and the dual system from one generation pass (the dual system's answers are the
    base answers passed through its guard), plus wall-clock time spent generating vs. guarding.

    Two forms of the dual system, chosen by the decoding:
    * greedy, one answer per prompt: the *deployed* system. With ``system.mode == "threshold"`` an answer is
      replaced when α < threshold; with ``"sample"`` it is kept with probability α (exactly, in expectation).
    * sampled (the teacher's decoding) with k = `samples_per_prompt`: the *distribution the student learns*,
      every sample kept with probability α(x, y), never thresholded -- a refusal rate per prompt.

    A `second_judge` that is the dual system's own guard is refused: the dual system would pass it by
    construction, so its SGS would measure nothing. `journal`: as in `evaluate` (the timing then covers the work
    this call did, not what it resumed)."""

    is_teacher = getattr(second_judge, "is_teacher", None)
    if is_teacher is not None and is_teacher(system.guard):
        raise ValueError(
            "the second judge is the safe system's own guard (the teacher); judge with another guard, "
            "e.g. GuardJudge(load_judge_guard())"
        )
    data.check_seed(seed)
    decoding = decoding or decoding_preset("evaluation", seed=seed)
    _check_sampling(decoding, samples_per_prompt)
    sampled = not (decoding.greedy and samples_per_prompt == 1)
    k = samples_per_prompt
    records: list[EvalRecord] = []
    timing = {"generate_s": 0.0, "guard_s": 0.0, "n": 0}
    book = _open_journal(
        journal,
        "evaluate_base_and_dual",
        system,
        names=list(names),
        limit=limit,
        decoding=decoding.to_dict(),
        judge=judge,
        second_judge=second_judge,
        seed=seed,
        samples_per_prompt=samples_per_prompt,
    )
    for bench in benchmarks:
        if book is not None and f"{bench}/records" in book:
            records += [EvalRecord(**r) for r in book.get(f"{bench}/records")]
            continue
        spec = benchmark(bench)
        prompts = benchmark_records(bench, limit, seed)
        texts = [r.text for r in prompts]
        used = benchmark_judge(spec, judge, system.refusal)
        t0 = time.perf_counter()
        answers = _generate(
            system.llm, texts, decoding, k, batch_size=batch_size, progress=progress, journal=book, key=bench
        )
        t1 = time.perf_counter()
        flat = [a for ys in answers for a in ys]
        alphas = system.guard.prob_safe([t for t, ys in zip(texts, answers, strict=True) for _ in ys], flat)
        alphas = alphas.tolist()
        bounds = [0]
        for ys in answers:
            bounds.append(bounds[-1] + len(ys))
        keep = [alphas[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        timing["generate_s"] += t1 - t0
        timing["guard_s"] += time.perf_counter() - t1
        timing["n"] += len(texts)
        base_config = _record_config(
            system.llm.describe(), used, bench, limit, decoding, seed, second_judge, samples_per_prompt
        )
        dual_form = "distribution" if sampled else "deployed"
        dual_config = {**base_config, "system": system.describe(), "dual_form": dual_form}
        if not sampled and system.mode == "threshold":
            finals = [
                a[0] if ks[0] >= system.threshold else system.refusal
                for a, ks in zip(answers, keep, strict=True)
            ]
            base = score_responses(
                names[0],
                bench,
                prompts,
                [a[0] for a in answers],
                used,
                second_judge,
                base_config,
                system.refusal,
            )
            dual = score_responses(
                names[1], bench, prompts, finals, used, second_judge, dual_config, system.refusal
            )
            for out, a in zip(dual.outputs, alphas, strict=True):
                out["alpha"] = a
        else:
            base = score_samples(
                names[0], bench, prompts, answers, used, second_judge, base_config, system.refusal
            )
            dual = score_samples(
                names[1], bench, prompts, answers, used, second_judge, dual_config, system.refusal, keep=keep
            )
        if book is not None:
            book.record(f"{bench}/records", [asdict(base), asdict(dual)])
        records += [base, dual]
    return records, timing


def evaluate_students(
    dual: SafeSystem,
    students: Mapping[str, Any],
    benchmarks: Sequence[str],
    decoding: DecodingConfig,
    *,
    student_decoding: DecodingConfig | None = None,
    names: tuple[str, str] = ("base", "dual"),
    journal: str | Path | None = None,
    **common: Any,
) -> list[EvalRecord]:
    """The base model and the dual system (`evaluate_base_and_dual`, one generation pass) and every student
    ({name: system with `generate`}) on `benchmarks`, all judged alike (each benchmark's rule recognising the dual
    system's y_r). Students decode with `student_decoding` (default: `decoding`); `common` goes to both calls
    (limit, second_judge, seed, samples_per_prompt, progress, ...). `journal`: the base and dual system's, and beside
    it one per student (`student_journal`)."""
    records, _ = evaluate_base_and_dual(
        dual, benchmarks, decoding=decoding, names=names, journal=journal, **common
    )
    for name, system in students.items():
        records += evaluate(
            system,
            benchmarks,
            system_name=name,
            decoding=student_decoding or decoding,
            refusal_text=dual.refusal,
            journal=None if journal is None else student_journal(journal, name),
            **common,
        )
    return records


def student_journal(journal: str | Path, student: str) -> Path:
    """The journal of one student beside the base-and-dual journal `journal` (`run.jsonl` -> `run.<student>.jsonl`)."""
    path = Path(journal)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in student)
    return path.with_name(f"{path.stem}.{safe}{path.suffix or '.jsonl'}")


def fidelity_record(system_name: str, llm: LLM, method: Method, base_record: EvalRecord) -> EvalRecord:
    """Fidelity on a benign benchmark: mean per-token KL(base || system) along the base model's own answers
    (taken from `base_record`, the base model's record on that benchmark); 0 means the method changes nothing."""

    pairs = [(o["prompt"], o["response"]) for o in base_record.outputs if o["response"].strip()]
    if not pairs:
        raise ValueError(f"the base model gave no non-empty answers on {base_record.benchmark}")
    kl = fidelity_kl(llm, [p for p, _ in pairs], [r for _, r in pairs], method)
    return EvalRecord(
        system_name,
        base_record.benchmark,
        "fidelity",
        len(pairs),
        None,
        "fidelity_kl",
        float(kl.mean()),
        config={**base_record.config, "system": system_name, "measure": "mean per-token KL(base || system)"},
    )
