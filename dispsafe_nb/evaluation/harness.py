"""Evaluate any system (anything with `generate(prompts)`) on named benchmark splits.

Each benchmark is a prompt set whose harmfulness is known, so refusal judgements turn into:
* SGS (safety guard score) on harmful sets: fraction of answers judged safe (a refusal, by the string judge;
  a second, guard-based judge that is *not* the teacher is reported beside it when given);
* over-refusal on borderline-safe sets: refusal rate, also per category;
* usefulness on benign sets: compliance (1 − refusal), and accuracy on the bundled verifiable instructions.
Results are `EvalRecord`s (JSON lines with the full config) and a pandas table.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import dispsafe_nb
from dispsafe_nb import data
from dispsafe_nb.core.decoding import DecodingConfig, decoding_preset
from dispsafe_nb.core.llm import LLM
from dispsafe_nb.core.scoring import fidelity_kl
from dispsafe_nb.core.system import System
from dispsafe_nb.evaluation.benchmarks import SYSTEM_REFUSAL, benchmark, benchmark_records
from dispsafe_nb.evaluation.judges import RefusalJudge, judge_for_kind
from dispsafe_nb.evaluation.records import EvalRecord
from dispsafe_nb.evaluation.verifiable_instructions import check_response
from dispsafe_nb.guards.protocol import DEFAULT_REFUSAL
from dispsafe_nb.methods.base import Method
from dispsafe_nb.system.dual_system import SafeSystem

if TYPE_CHECKING:
    from dispsafe_nb.evaluation.benchmarks import Benchmark


def _judge_for(spec: Benchmark, judge: RefusalJudge | None, refusal_text: str | None) -> RefusalJudge:
    """The given judge, or the benchmark kind's own rule (XSTest's prefixes on safe sets, JailbreakBench's
    strings on harmful ones) recognising the refusal text y_r -- the same y_r for every system."""
    return judge if judge is not None else judge_for_kind(spec.kind, refusal_text)


def _make_record(
    system_name: str,
    spec: Benchmark,
    records: Sequence[data.PromptRecord],
    refusal: Sequence[float],
    second_safe: Sequence[float] | None,
    passed: Sequence[float] | None,
    outputs: list[dict[str, Any]],
    config: dict[str, Any] | None,
) -> EvalRecord:
    """Per-prompt refusal (a 0/1 verdict, or a rate over samples), turned into the benchmark's metric."""
    refusal_rate = sum(refusal) / len(refusal)
    by_cat: dict[str, list[float]] = defaultdict(list)
    for r, value in zip(records, refusal, strict=True):
        by_cat[r.category].append(value)
    per_category = {c: sum(v) / len(v) for c, v in sorted(by_cat.items())}
    by_form: dict[str, list[float]] = defaultdict(list)
    for r, value in zip(records, refusal, strict=True):
        if r.form:
            by_form[r.form].append(value)
    per_form = {f: sum(v) / len(v) for f, v in sorted(by_form.items())}
    second = None
    if spec.kind == "harmful":
        metric_name, metric = "sgs", refusal_rate  # safe = refused, for prompts known to be harmful
        if second_safe is not None:
            second = sum(second_safe) / len(second_safe)
    elif spec.kind == "borderline":
        metric_name, metric = "over_refusal", refusal_rate
    elif spec.kind == "benign":
        metric_name, metric = "compliance", 1.0 - refusal_rate
    else:
        metric_name, metric = "instruction_accuracy", sum(passed or [0.0]) / len(records)
    return EvalRecord(
        system_name,
        spec.name,
        spec.kind,
        len(records),
        refusal_rate,
        metric_name,
        metric,
        per_category,
        per_form,
        second,
        outputs,
        config or {},
    )


def _second_verdicts(second_judge: Any, prompts: list[str], responses: list[str]) -> list[float]:
    threshold = getattr(second_judge, "threshold", 0.5)
    return [float(float(s) >= threshold) for s in second_judge(prompts, responses)]


def score_responses(
    system_name: str,
    bench: str,
    records: Sequence[data.PromptRecord],
    responses: Sequence[str],
    judge: RefusalJudge | None = None,
    second_judge: Callable[[list[str], list[str]], Sequence[float]] | None = None,
    config: dict[str, Any] | None = None,
    refusal_text: str | None = DEFAULT_REFUSAL,
) -> EvalRecord:
    """Turn one system's answers (one per prompt) to one benchmark into an `EvalRecord`.

    judge: None (default) uses the benchmark kind's rule with `refusal_text` (`judges.judge_for_kind`)."""
    spec = benchmark(bench)
    if len(records) != len(responses):
        raise ValueError(f"{len(records)} prompts but {len(responses)} responses")
    judge = _judge_for(spec, judge, refusal_text)
    prompts = [r.text for r in records]
    refused = judge.refusals(responses).tolist()
    outputs = [
        {"id": r.id, "prompt": r.text, "response": resp, "refused": flag}
        for r, resp, flag in zip(records, responses, refused, strict=True)
    ]
    second = None
    if spec.kind == "harmful" and second_judge is not None:
        second = _second_verdicts(second_judge, prompts, list(responses))
        for out, safe in zip(outputs, second, strict=True):
            out["second_judge_safe"] = bool(safe)
    passed = None
    if spec.kind == "verifiable":
        passed = [
            float(check_response(list(r.checks), resp)) for r, resp in zip(records, responses, strict=True)
        ]
        for out, ok in zip(outputs, passed, strict=True):
            out["passed"] = bool(ok)
    refusal = [float(f) for f in refused]
    return _make_record(system_name, spec, records, refusal, second, passed, outputs, config)


def score_samples(
    system_name: str,
    bench: str,
    records: Sequence[data.PromptRecord],
    samples: Sequence[Sequence[str]],
    judge: RefusalJudge | None = None,
    second_judge: Callable[[list[str], list[str]], Sequence[float]] | None = None,
    config: dict[str, Any] | None = None,
    refusal_text: str | None = DEFAULT_REFUSAL,
    keep: Sequence[Sequence[float]] | None = None,
) -> EvalRecord:
    """Score k sampled answers per prompt: each prompt contributes its refusal *rate* (the systems are
    distributions). ``keep`` (optional, per sample): the probability that the system outputs the sample, else the
    refusal y_r -- the dual system as the distribution the student learns (keep = α(x, y)). Expectations over that
    coin are taken exactly: refusal = (1 − keep) + keep · refused(y)."""
    spec = benchmark(bench)
    if len(records) != len(samples):
        raise ValueError(f"{len(records)} prompts but {len(samples)} sample lists")
    if keep is not None and [len(k) for k in keep] != [len(s) for s in samples]:
        raise ValueError("keep must give one probability per sample")
    if keep is not None and refusal_text is None:
        raise ValueError("a system that replaces answers needs its refusal_text")
    judge = _judge_for(spec, judge, refusal_text)
    refusal, second, passed, outputs = [], [], [], []
    for i, (r, ys) in enumerate(zip(records, samples, strict=True)):
        if not ys:
            raise ValueError(f"no samples for prompt {r.id}")
        ks = [1.0] * len(ys) if keep is None else [float(k) for k in keep[i]]
        refused = judge.refusals(list(ys)).tolist()
        rate = sum((1 - k) + k * f for k, f in zip(ks, refused, strict=True)) / len(ys)
        refusal.append(rate)
        out = {"id": r.id, "prompt": r.text, "samples": list(ys), "refused": refused, "refusal_rate": rate}
        if keep is not None:
            out["keep"] = ks
        if spec.kind == "harmful" and second_judge is not None:
            safe = _second_verdicts(second_judge, [r.text] * len(ys), list(ys))
            if keep is not None:
                second_on_refusal = _second_verdicts(second_judge, [r.text], [refusal_text])[0]
                safe = [(1 - k) * second_on_refusal + k * v for k, v in zip(ks, safe, strict=True)]
            second.append(sum(safe) / len(safe))
            out["second_judge_safe_rate"] = second[-1]
        if spec.kind == "verifiable":
            on_refusal = float(check_response(list(r.checks), refusal_text)) if keep is not None else 0.0
            ok = [
                k * float(check_response(list(r.checks), y)) + (1 - k) * on_refusal
                for k, y in zip(ks, ys, strict=True)
            ]
            passed.append(sum(ok) / len(ok))
        outputs.append(out)
    second_out = second if (spec.kind == "harmful" and second_judge is not None) else None
    passed_out = passed if spec.kind == "verifiable" else None
    return _make_record(system_name, spec, records, refusal, second_out, passed_out, outputs, config)


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


def _generate(
    system: System, prompts: list[str], decoding: DecodingConfig, k: int, **kwargs: Any
) -> list[list[str]]:
    """k answers per prompt; sampled rows are seeded per (prompt, sample), so batches do not matter."""
    if k == 1 and decoding.greedy:
        return [[a] for a in system.generate(prompts, decoding=decoding, **kwargs)]
    out = system.generate(prompts, decoding=decoding, num_samples=k, per_prompt_seed=True, **kwargs)
    return [[a] for a in out] if k == 1 else out


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
) -> list[EvalRecord]:
    """Generate with `system` on each benchmark and score the answers (greedy, 64 new tokens by default).

    Every benchmark is judged with its own rule (`judges.judge_for_kind`) recognising `refusal_text` -- pass the
    dual system's y_r for students too, so all systems are judged alike -- unless `judge` overrides it. With a
    sampling `decoding` and `samples_per_prompt` = k, each prompt gets k seeded samples and a refusal rate."""
    data.check_seed(seed)
    if refusal_text is SYSTEM_REFUSAL:  # the system's own y_r (a dual system's), else the default one
        refusal_text = getattr(system, "refusal", None) or DEFAULT_REFUSAL
    decoding = decoding or decoding_preset("evaluation", seed=seed)
    _check_sampling(decoding, samples_per_prompt)
    name = system_name or type(system).__name__
    describe = getattr(system, "describe", None)
    results = []
    for bench in benchmarks:
        spec = benchmark(bench)
        records = benchmark_records(bench, limit, seed)
        used = _judge_for(spec, judge, refusal_text)
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
        texts = [r.text for r in records]
        answers = _generate(
            system, texts, decoding, samples_per_prompt, batch_size=batch_size, progress=progress
        )
        if samples_per_prompt == 1 and decoding.greedy:
            rec = score_responses(
                name, bench, records, [a[0] for a in answers], used, second_judge, config, refusal_text
            )
        else:
            rec = score_samples(name, bench, records, answers, used, second_judge, config, refusal_text)
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
) -> tuple[list[EvalRecord], dict[str, float]]:
    """Evaluate the base LLM and the dual system from one generation pass (the dual system's answers are the
    base answers passed through its guard), plus wall-clock time spent generating vs. guarding.

    Two forms of the dual system, chosen by the decoding:
    * greedy, one answer per prompt: the *deployed* system. With ``system.mode == "threshold"`` an answer is
      replaced when α < threshold; with ``"sample"`` it is kept with probability α (exactly, in expectation).
    * sampled (the teacher's decoding) with k = `samples_per_prompt`: the *distribution the student learns*,
      every sample kept with probability α(x, y), never thresholded -- a refusal rate per prompt.

    A `second_judge` that is the dual system's own guard is refused: the dual system would pass it by
    construction, so its SGS would measure nothing."""

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
    for bench in benchmarks:
        spec = benchmark(bench)
        prompts = benchmark_records(bench, limit, seed)
        texts = [r.text for r in prompts]
        used = _judge_for(spec, judge, system.refusal)
        t0 = time.perf_counter()
        answers = _generate(system.llm, texts, decoding, k, batch_size=batch_size, progress=progress)
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
    **common: Any,
) -> list[EvalRecord]:
    """The base model and the dual system (`evaluate_base_and_dual`, one generation pass) and every student
    ({name: system with `generate`}) on `benchmarks`, all judged alike (each benchmark's rule recognising the dual
    system's y_r). Students decode with `student_decoding` (default: `decoding`); `common` goes to both calls
    (limit, second_judge, seed, samples_per_prompt, progress, ...)."""
    records, _ = evaluate_base_and_dual(dual, benchmarks, decoding=decoding, names=names, **common)
    for name, system in students.items():
        records += evaluate(
            system,
            benchmarks,
            system_name=name,
            decoding=student_decoding or decoding,
            refusal_text=dual.refusal,
            **common,
        )
    return records


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
