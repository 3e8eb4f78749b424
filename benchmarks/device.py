"""The on-device runtime against PyTorch: agreement of the evaluation and what the runtime buys in time.

The same evaluation (greedy, the generalisation sets, every set's own judge) runs on two engines: "fast" (PyTorch,
the GGUF dequantised to fp32) and "llamacpp" (the GGUF's 4-bit kernels). For the base model, the deployed dual
system (its answers through the guard) and a soft-prompt student, per set: verdict agreement, Cohen's κ, the
refusal-rate difference with a paired 95 % interval, identical answers, where answers part, and the correlation of
log q(y_r | x) between the engines. Then batch-1 decoding speed on both engines and, on llama.cpp, the latency a
100-vector soft prompt adds. Writes JSON with its config and a `targets` block ({"value", "target", "met"}).

The student: `--artifact` (a trained soft prompt, e.g. from `benchmarks/generalise.py`), else the project's
text-initialised soft prompt, untrained (labelled so in the report). Evaluations are journaled in a folder beside
the output (`<out>.journals/`): a rerun with the same arguments resumes.
Run: `make benchmark-device` (or `python benchmarks/device.py --limit 100 --out benchmarks/reports/device_cpu.json`);
`--smoke` checks the plumbing in a minute.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import dispsafe_nb
from dispsafe_nb.common.paths import RESULTS_DIR
from dispsafe_nb.common.provenance import git_commit, machine_info
from dispsafe_nb.core.decoding import DecodingConfig
from dispsafe_nb.core.llamacpp_engine import runtime_for
from dispsafe_nb.core.llm import generate_with_prefix
from dispsafe_nb.core.loading import load_llm
from dispsafe_nb.core.scoring import sequence_logprobs
from dispsafe_nb.evaluation.benchmarks import benchmark_records
from dispsafe_nb.evaluation.engine_agreement import agreement_summary, engine_agreement
from dispsafe_nb.evaluation.generalisation import BENCHES
from dispsafe_nb.evaluation.harness import evaluate, evaluate_base_and_dual
from dispsafe_nb.guards.guard_training import load_embedding_guard
from dispsafe_nb.methods import load_method, new_method
from dispsafe_nb.system.dual_system import SafeSystem

ENGINES = ("fast", "llamacpp")
# The sets evaluation speed is timed on (afresh, one engine after the other): a harmful and a benign set.
TIMED_SETS = ("jbb_harmful", "alpaca_test")
SPEED_PROMPTS = [
    "Explain how a bicycle gear works.",
    "Write a short poem about autumn leaves.",
    "What are three tips for studying well?",
    "Describe the water cycle in simple words.",
]


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def evaluate_on(llm, guard, student, engine: str, args, greedy: DecodingConfig) -> list:
    """Base, dual and student records on `engine` (journaled: a rerun resumes, so nothing here is timed)."""
    on = llm.with_engine(engine)
    journals = Path(args.out).with_suffix(".journals") / engine
    common = {"limit": args.limit, "decoding": greedy, "batch_size": args.batch_size, "progress": True}
    records, _ = evaluate_base_and_dual(
        SafeSystem(on, guard), args.sets, journal=f"{journals}_dual.jsonl", **common
    )
    return records + evaluate(
        student.bind(on), args.sets, system_name="soft_prompt", journal=f"{journals}_student.jsonl", **common
    )


def evaluation_seconds(llm, student, engine: str, args, greedy: DecodingConfig) -> dict:
    """Wall seconds of a fresh (unjournaled) evaluation of the base model and the student on TIMED_SETS."""
    on = llm.with_engine(engine)
    common = {"limit": args.limit, "decoding": greedy, "batch_size": args.batch_size, "progress": False}
    _, base_s = _timed(lambda: evaluate(on, TIMED_SETS, system_name="base", **common))
    _, student_s = _timed(lambda: evaluate(student.bind(on), TIMED_SETS, system_name="soft_prompt", **common))
    return {"base_s": round(base_s, 1), "student_s": round(student_s, 1), "sets": list(TIMED_SETS)}


def refusal_logprob_correlation(llm, student, sets, limit: int, refusal: str) -> dict:
    """Pearson r of log q(y_r | x) on the two engines, per set, for the base model and the student."""
    runtime = runtime_for(llm.gguf_file)
    refusal_ids = llm.tokenizer(refusal, add_special_tokens=False)["input_ids"] + [llm.tokenizer.eos_token_id]
    out = {}
    for system, prefix in (("base", None), ("soft_prompt", student.prefix().detach())):
        for bench in sets:
            prompts = [r.text for r in benchmark_records(bench, limit=limit)]
            torch_lp = sequence_logprobs(llm, prompts, [refusal] * len(prompts), prefix=prefix).numpy()
            rows = [llm.tokenizer(llm.chat_text(p), add_special_tokens=False)["input_ids"] for p in prompts]
            vectors = None if prefix is None else prefix.float().numpy()
            cpp_lp = np.array(
                [
                    v.sum()
                    for start in range(0, len(rows), 16)  # 16 rows a call: llama.cpp's context stays small
                    for v in runtime.continuation_logprobs(
                        rows[start : start + 16],
                        [refusal_ids] * len(rows[start : start + 16]),
                        prefix=vectors,
                    )
                ]
            )
            r = float(np.corrcoef(torch_lp, cpp_lp)[0, 1]) if len(prompts) > 2 else None
            out[f"{system}/{bench}"] = {
                "pearson_r": r,
                "mean_abs_difference": float(np.abs(torch_lp - cpp_lp).mean()),
                "n": len(prompts),
            }
    return out


def batch1_speed(llm, engine: str, max_new_tokens: int, prefix: torch.Tensor | None = None) -> dict:
    """Greedy decoding one prompt at a time: generated tokens per second and median seconds per answer."""
    greedy = DecodingConfig(max_new_tokens=max_new_tokens)
    generate_with_prefix(llm, SPEED_PROMPTS[:1], prefix, greedy, engine=engine)  # warm (prefix KV, threads)
    seconds, tokens = [], 0
    for prompt in SPEED_PROMPTS:
        gen, s = _timed(
            lambda p=prompt: generate_with_prefix(llm, [p], prefix, greedy, engine=engine, details=True)
        )
        seconds.append(s)
        tokens += len(gen[0][0].token_ids) + int(gen[0][0].finished)
    return {"tokens_per_s": tokens / sum(seconds), "median_s": statistics.median(seconds), "tokens": tokens}


def target(value, goal: float, higher_is_better: bool = True) -> dict:
    met = None if value is None else (value >= goal if higher_is_better else value < goal)
    return {"value": value, "target": goal, "met": met}


def _num(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def report(result: dict) -> str:
    """device.json as Markdown: the targets, then agreement per system and set."""
    lines = ["| target | value | goal | met |", "|---|---|---|---|"]
    for name, t in result["targets"].items():
        met = {True: "yes", False: "no", None: "–"}[t["met"]]
        lines.append(f"| {name.replace('_', ' ')} | {_num(t['value'], 4)} | {t['target']} | {met} |")
    lines += [
        "",
        "| system | set | n | verdicts agree | κ | refusal rate fast → llamacpp | difference [95 % CI] "
        "| identical answers | answers part at token (median) | r of log q(y_r) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["agreement"]:
        d = row["rate_difference"]
        lp = result["refusal_logprob"].get(f"{row['system']}/{row['benchmark']}", {})
        lines.append(
            f"| {row['system']} | {row['benchmark']} | {row['n']} | {row['agreement']:.2f} | {_num(row['kappa'], 2)} "
            f"| {row['rate_a']:.2f} → {row['rate_b']:.2f} | {d['difference']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] "
            f"| {row['identical_share']:.2f} | {_num(row['first_divergence_median'], 3)} | {_num(lp.get('pearson_r'), 3)} |"
        )
    b, t = result["batch1_decode"], result["evaluation_s"]
    lines += [
        "",
        f"Batch-1 greedy decoding: fast {b['fast']['tokens_per_s']:.1f} tokens/s, llamacpp "
        f"{b['llamacpp']['tokens_per_s']:.1f} tokens/s; with a 100-vector soft prompt on llamacpp "
        f"{result['batch1_decode_soft_prompt_100']['tokens_per_s']:.1f} tokens/s. Evaluation of the base model "
        f"and the student on {', '.join(t['fast']['sets'])} (timed afresh): fast "
        f"{t['fast']['base_s'] + t['fast']['student_s']:.0f} s, llamacpp "
        f"{t['llamacpp']['base_s'] + t['llamacpp']['student_s']:.0f} s. Student: {result['config']['student']}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--report", default=None, help="print a written JSON as Markdown and stop")
    parser.add_argument("--limit", type=int, default=100, help="prompts per set")
    parser.add_argument("--sets", default=",".join(BENCHES))
    parser.add_argument("--artifact", default=None, help="a trained soft prompt (default: text-initialised)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--smoke", action="store_true", help="3 prompts, 2 sets, 8 tokens: the plumbing only")
    parser.add_argument("--out", default=str(Path(RESULTS_DIR) / "device.json"))
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text(encoding="utf-8"))))
        return
    if args.smoke:
        args.limit, args.sets, args.max_new_tokens = 3, "jbb_harmful,xstest_safe", 8
    args.sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    started, commit = time.time(), git_commit()
    llm, guard = load_llm(), load_embedding_guard()
    if args.artifact:
        student, student_kind = load_method(args.artifact, llm), "trained"
    else:
        student, student_kind = new_method("soft_prompt", llm, seed=0), "text-initialised, untrained"
    greedy = DecodingConfig(max_new_tokens=args.max_new_tokens, seed=0)
    runs = {engine: evaluate_on(llm, guard, student, engine, args, greedy) for engine in ENGINES}
    times = {engine: evaluation_seconds(llm, student, engine, args, greedy) for engine in ENGINES}
    tokenize = lambda text: llm.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows = engine_agreement(runs["fast"], runs["llamacpp"], tokenize)
    summary = agreement_summary(rows)
    refusal = SafeSystem(llm, guard).refusal
    logprobs = refusal_logprob_correlation(llm, student, args.sets, args.limit, refusal)
    speed_tokens = 16 if args.smoke else 64
    batch1 = {e: batch1_speed(llm, e, speed_tokens) for e in ENGINES}
    prefix100 = new_method("soft_prompt", llm, n_tokens=100, seed=0).prefix().detach()
    with_prompt = batch1_speed(llm, "llamacpp", speed_tokens, prefix100)
    eval_s = {e: t["base_s"] + t["student_s"] for e, t in times.items()}
    result = {
        "config": {
            **vars(args),
            "engines": list(ENGINES),
            "student": student_kind,
            "greedy_decoding": greedy.to_dict(),
            "model": llm.describe(),
            "model_on_llamacpp": llm.with_engine("llamacpp").describe(),
            "teacher_guard": guard.describe(),
        },
        "agreement": rows,
        "agreement_summary": summary,
        "refusal_logprob": logprobs,
        "evaluation_s": times,
        "batch1_decode": batch1,
        "batch1_decode_soft_prompt_100": with_prompt,
        "targets": {
            "eval_speedup": target(eval_s["fast"] / eval_s["llamacpp"], 2.0),
            "batch1_decode_speedup": target(
                batch1["llamacpp"]["tokens_per_s"] / batch1["fast"]["tokens_per_s"], 3.0
            ),
            "min_verdict_agreement": target(summary["min_verdict_agreement"], 0.95),
            "min_verdict_kappa": target(summary["min_verdict_kappa"], 0.8),
            "soft_prompt_latency_ratio": target(
                with_prompt["median_s"] / batch1["llamacpp"]["median_s"], 1.10, higher_is_better=False
            ),
        },
        "not_measured_yet": [
            "teacher_sampling_speedup",
            "decode_fraction_of_bandwidth_bound",
            "trainer_speedup",
            "resident memory (LLM, + soft prompt, dual system)",
        ],
        "machine": machine_info(commit, dispsafe_nb.__version__),
        "wall_s": round(time.time() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print(report(result))
    print("wrote", out)


if __name__ == "__main__":
    main()
