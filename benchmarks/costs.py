"""On-device costs and the fast engine, measured side by side in one run -> results/bench.json.

In one process on this machine: its matmul peak (fp32, bf16) and read bandwidth; a TV-DiSP training step, the
naive reference (Eq. 4 computed the obvious way: two full passes, full-vocabulary logits everywhere, fp32) against ours (one pass
over the shared prompt, logits at response positions only; fp32 and bf16 autocast); batch-1 decoding against the
memory-bandwidth bound; batched generation, our decoding loop against transformers' generate(); per-token latency
at context 512 with a soft prompt read from its prefix KV cache and with the guard of the dual system; memory and
FLOPs per token against the paper's. Every figure carries its config; each target says whether it was met.
Run: `make benchmark-costs`; `--smoke` for a quick look at the plumbing (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import dispsafe_nb
from dispsafe_nb import costs
from dispsafe_nb.common.paths import RESULTS_DIR
from dispsafe_nb.common.provenance import cpu_name, git_commit
from dispsafe_nb.costs import speed
from dispsafe_nb.costs.flops import Architecture, decode_flops, method_decode_flops
from dispsafe_nb.report import paper

TARGETS = {
    "training_speedup_vs_naive": (">=", 3.0),
    "training_fraction_of_bf16_peak": (">=", 0.5),
    "decode_fraction_of_bandwidth_bound": (">=", 0.6),
    "batched_generation_speedup": (">=", 2.0),
    "soft_prompt_latency_ratio": ("<=", 1.05),
    "soft_prompt_parameter_share": ("<", 0.001),
}


def training_examples(llm, system, n_prompts: int, max_new_tokens: int, seed: int):
    """Real training examples: teacher samples (2 per prompt, cached) of a small train-split mix."""
    from dispsafe_nb.core.decoding import decoding_preset
    from dispsafe_nb.system.teacher_cache import teacher_samples
    from dispsafe_nb.training.examples import examples_from_samples, training_mix

    records = training_mix(n_prompts // 2, n_prompts - n_prompts // 2, 0, seed=seed)
    decoding = decoding_preset("teacher", max_new_tokens=max_new_tokens, seed=seed)
    samples = teacher_samples(system, [r.text for r in records], k=2, decoding=decoding)
    return examples_from_samples(samples)


def measure_training(llm, system, args) -> dict:
    from dispsafe_nb.training.config import DistillConfig
    from dispsafe_nb.training.loop import make_method

    examples = training_examples(llm, system, args.train_prompts, args.max_new_tokens, seed=0)
    out = {}
    for batch_size in args.batch_sizes:
        cfg = DistillConfig(n_tokens=args.n_tokens, batch_size=batch_size)
        method = make_method(llm, cfg)
        batch = examples[:batch_size]
        out[f"batch_{batch_size}"] = speed.training_throughput(llm, method, batch, cfg, repeats=args.repeats)
    return out


def measure_bucketing(llm, system, args) -> dict:
    """Length bucketing: one step over every example of the mix, cut into micro-batches of the smallest batch size."""
    from dispsafe_nb.training.config import DistillConfig
    from dispsafe_nb.training.loop import make_method

    examples = training_examples(llm, system, args.train_prompts, args.max_new_tokens, seed=0)
    size = args.batch_sizes[0]
    cfg = DistillConfig(n_tokens=args.n_tokens, batch_size=size, grad_accum=len(examples) // size)
    return speed.bucketing_gain(llm, make_method(llm, cfg), examples, cfg, repeats=args.repeats)


def measure_decoding(llm, args, bandwidth: float) -> dict:
    from dispsafe_nb.evaluation.benchmarks import benchmark_records

    prompts = [r.text for r in benchmark_records("alpaca_test", limit=args.gen_batch)]
    weight_bytes = costs.module_bytes(llm.model)  # what one decode step reads (every weight once, in memory)
    step_s = speed.decode_step_seconds(llm, args.short_context, repeats=args.repeats)
    batched = {
        engine: speed.generation_speed(llm, prompts, args.gen_tokens, engine, repeats=args.repeats)
        for engine in ("hf", "fast", "fast_bf16")
    }
    agreement = speed.engine_agreement(llm, prompts, args.gen_tokens, "fast_bf16", "fast")
    best = max(("fast", "fast_bf16"), key=lambda e: batched[e]["tokens_per_s"])
    return {
        "batch1_step_s_at_short_context": step_s,
        "batch1_tokens_per_s": 1 / step_s,
        "weight_bytes_in_memory": weight_bytes,
        "bandwidth_bound_tokens_per_s": bandwidth / weight_bytes,
        "decode_fraction_of_bandwidth_bound": (1 / step_s) / (bandwidth / weight_bytes),
        "batched": batched,
        "batched_generation_speedup_fp32": batched["fast"]["tokens_per_s"] / batched["hf"]["tokens_per_s"],
        "batched_fastest_engine": best,
        "bf16_greedy_agreement_with_fp32": agreement,
        "batched_config": {"batch": len(prompts), "max_new_tokens": args.gen_tokens, "set": "alpaca_test"},
    }


def measure_latency(llm, guard, args) -> dict:
    prefix = (
        torch.randn(args.paper_n_tokens, llm.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.02
    )
    return speed.per_token_latency(llm, guard, prefix, args.context, args.response_tokens, args.repeats)


def flops_and_memory(llm, guard, args) -> dict:
    ours = Architecture.from_config(llm.model.config, name=llm.name)
    paper_arch = costs.PAPER_ARCHITECTURES[paper.SOFT_PROMPT_FLOPS["model"]]
    ctx, n = paper.SOFT_PROMPT_FLOPS["context"], paper.SOFT_PROMPT_FLOPS["n_tokens"]
    measured = costs.measured_decode_flops(llm.model, args.context)
    llm_bytes = costs.llm_weight_bytes(llm)
    guard_bytes = costs.module_bytes(*costs.guard_modules(guard))
    return {
        "ours": {
            "model": llm.name,
            "gflops_per_token_analytic": decode_flops(ours, args.context) / 1e9,
            "gflops_per_token_flop_counter": measured / 1e9,
            "soft_prompt_gflops_per_token": method_decode_flops(ours, "soft_prompt", args.context, n_tokens=n)
            / 1e9,
            "context": args.context,
        },
        "paper_model_by_our_formula": {
            "model": paper_arch.name,
            "gflops_per_token": decode_flops(paper_arch, ctx) / 1e9,
            "soft_prompt_gflops_per_token": method_decode_flops(paper_arch, "soft_prompt", ctx, n_tokens=n)
            / 1e9,
        },
        "paper_reported": paper.SOFT_PROMPT_FLOPS,
        "soft_prompt_parameter_share": n * llm.hidden_size / costs.count_parameters(llm.model),
        "llm_bytes_real_precision": llm_bytes,
        "guard_bytes_real_precision": guard_bytes,
        "dual_memory_ratio": (llm_bytes + guard_bytes) / llm_bytes,
        "paper_table": costs.flops.paper_flops_table(ctx, n),
    }


def judge_targets(result: dict, judge_batch: str) -> dict:
    """Each target on like-for-like numbers: the trainer and the generator in float32 against their float32
    references (bf16 is reported beside them, not judged: it changes the numbers), the trainer's bf16 FLOP/s
    against the bf16 peak, at the trainer's default batch."""
    t = result["training"][judge_batch]
    values = {
        "training_speedup_vs_naive": t["ours_fp32"]["tokens_per_s"] / t["naive_fp32"]["tokens_per_s"],
        "training_fraction_of_bf16_peak": t["ours_bf16"]["achieved_flops_per_s"]
        / result["machine_limits"]["bf16_peak"],
        "decode_fraction_of_bandwidth_bound": result["decoding"]["decode_fraction_of_bandwidth_bound"],
        "batched_generation_speedup": result["decoding"]["batched_generation_speedup_fp32"],
        "soft_prompt_latency_ratio": result["latency"]["soft_prompt_latency_ratio"],
        "soft_prompt_parameter_share": result["flops_and_memory"]["soft_prompt_parameter_share"],
    }
    ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}
    return {
        k: {
            "value": v,
            "target": f"{TARGETS[k][0]} {TARGETS[k][1]}",
            "met": bool(ops[TARGETS[k][0]](v, TARGETS[k][1])),
        }
        for k, v in values.items()
    }


def reported_beside(result: dict) -> dict:
    """What the targets leave out, for the record: bf16 against the naive reference and against our fp32 step, our
    scorer against the previous one, the bf16 generator (with how often its answers match fp32's)."""
    out = {}
    for batch, t in result["training"].items():
        out[batch] = {
            "ours_bf16_vs_naive": t["ours_bf16"]["tokens_per_s"] / t["naive_fp32"]["tokens_per_s"],
            "ours_bf16_vs_ours_fp32": t["ours_bf16"]["tokens_per_s"] / t["ours_fp32"]["tokens_per_s"],
            "ours_fp32_vs_separate": t["ours_fp32"]["tokens_per_s"] / t["separate_fp32"]["tokens_per_s"],
            "separate_vs_naive": t["separate_fp32"]["tokens_per_s"] / t["naive_fp32"]["tokens_per_s"],
        }
    d = result["decoding"]
    out["generation_bf16_vs_hf"] = (
        d["batched"]["fast_bf16"]["tokens_per_s"] / d["batched"]["hf"]["tokens_per_s"]
    )
    out["generation_bf16_agreement"] = d["bf16_greedy_agreement_with_fp32"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-tokens", type=int, default=20, help="soft-prompt length of the training step")
    parser.add_argument(
        "--paper-n-tokens", type=int, default=100, help="soft-prompt length of the latency check"
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[4, 16],
        help="the first is where the targets are judged",
    )
    parser.add_argument("--train-prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--gen-batch", type=int, default=16)
    parser.add_argument("--gen-tokens", type=int, default=48)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--short-context", type=int, default=32)
    parser.add_argument("--response-tokens", type=int, default=128)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks the plumbing")
    parser.add_argument("--out", default=str(RESULTS_DIR / "bench.json"))
    parser.add_argument("--report", action="store_true", help="print --out's results as Markdown and stop")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(Path(args.out).read_text(encoding="utf-8"))))
        return
    if args.smoke:
        args.repeats, args.batch_sizes, args.train_prompts, args.max_new_tokens = 1, [2], 2, 8
        args.gen_batch, args.gen_tokens, args.context, args.paper_n_tokens = 2, 4, 64, 8
    from dispsafe_nb.core.loading import load_llm
    from dispsafe_nb.guards.guard_training import load_embedding_guard
    from dispsafe_nb.system.dual_system import SafeSystem

    started, commit = time.time(), git_commit()
    llm, guard = load_llm(), load_embedding_guard()
    system = SafeSystem(llm, guard)
    limits = speed.machine_limits(
        args.repeats, 256 if args.smoke else 1024, (32 if args.smoke else 512) * 2**20
    )
    result = {"machine_limits": limits}
    result["training"] = measure_training(llm, system, args)
    result["training_bucketing"] = measure_bucketing(llm, system, args)
    result["decoding"] = measure_decoding(llm, args, limits["read_bandwidth"])
    result["latency"] = measure_latency(llm, guard, args)
    result["flops_and_memory"] = flops_and_memory(llm, guard, args)
    result["targets"] = judge_targets(result, f"batch_{args.batch_sizes[0]}")
    result["reported_beside_targets"] = reported_beside(result)
    result["config"] = vars(args)
    result["machine"] = {
        "package_version": dispsafe_nb.__version__,
        "git_commit": commit,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": cpu_name(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(llm.device),
    }
    result["wall_s"] = time.time() - started
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print(f"wrote {path} in {result['wall_s']:.0f} s")
    for name, t in result["targets"].items():
        print(("✓ " if t["met"] else "✗ ") + f"{name}: {t['value']:.4g} (target {t['target']})")


def report(result: dict) -> str:
    """bench.json as Markdown: the targets, then the measurements behind them."""
    m, limits = result["machine"], result["machine_limits"]
    lines = [
        f"One run on {m['processor']} ({m['threads']} threads, torch {m['torch']}, device {m['device']}), "
        f"{result['wall_s'] / 60:.1f} min. Peaks measured in the same run: fp32 {limits['fp32_peak'] / 1e9:.0f} and "
        f"bf16 {limits['bf16_peak'] / 1e9:.0f} GFLOP/s ({limits['matmul_size']}² matrix products), read bandwidth "
        f"{limits['read_bandwidth'] / 1e9:.1f} GB/s.",
        "",
        "| target | value | goal | met |",
        "|---|---|---|---|",
    ]
    for name, t in result["targets"].items():
        lines.append(
            f"| {name.replace('_', ' ')} | {t['value']:.4g} | {t['target']} | {'yes' if t['met'] else 'no'} |"
        )
    lines += [
        "",
        "| training step (TV-DiSP, forward + backward) | batch | response tokens/s | GFLOP/s achieved | loss |",
        "|---|---|---|---|---|",
    ]
    for batch, variants in result["training"].items():
        for name, v in variants.items():
            lines.append(
                f"| {name} | {batch.removeprefix('batch_')} | {v['tokens_per_s']:.0f} | "
                f"{v['achieved_flops_per_s'] / 1e9:.1f} | {v['loss']:.4f} |"
            )
    d, lat, fm = result["decoding"], result["latency"], result["flops_and_memory"]
    agree = d["bf16_greedy_agreement_with_fp32"]
    cfg = d["batched_config"]
    lines += [""]
    if "training_bucketing" in result:  # runs before length bucketing have no such entry
        b = result["training_bucketing"]
        lines.append(
            f"- Length bucketing (one step of {b['grad_accum']} micro-batches of {b['batch_size']}, ours fp32): "
            f"{b['speedup']:.2f}× the step as drawn; padded tokens {b['none']['padded_share']:.0%} → "
            f"{b['length']['padded_share']:.0%}; loss {b['none']['loss']:.4f} vs {b['length']['loss']:.4f}."
        )
    lines += [
        f"- Batched generation ({cfg['batch']} Alpaca prompts, up to {cfg['max_new_tokens']} new tokens, greedy): "
        + ", ".join(f"{e} {v['tokens_per_s']:.0f} tokens/s" for e, v in d["batched"].items())
        + f"; bf16 answers identical to fp32's on {agree['identical_share']:.0%} of prompts (mean agreeing prefix "
        f"{agree['mean_agreeing_prefix_share']:.0%}).",
        f"- Batch-1 decoding: {d['batch1_tokens_per_s']:.1f} tokens/s against a bound of "
        f"{d['bandwidth_bound_tokens_per_s']:.1f} (fp32 weights, {d['weight_bytes_in_memory'] / 1e6:.0f} MB read per token).",
        f"- Per generated token at context {lat['context']}: base {1000 * lat['base_step_s']:.1f} ms, soft prompt "
        f"(N = {lat['n_tokens']}, prefix cache) {1000 * lat['soft_prompt_step_s']:.1f} ms; re-encoding the prompt "
        f"would cost {1000 * lat['inline_prefix_s']:.0f} ms per request. Dual system per request "
        f"({lat['context']}-token prompt, {lat['response_tokens']}-token answer): {lat['dual_latency_ratio']:.3f}× the base.",
        f"- FLOPs per token: {fm['ours']['model']} {fm['ours']['gflops_per_token_analytic']:.3f} GFLOPs at context "
        f"{fm['ours']['context']} (flop counter: {fm['ours']['gflops_per_token_flop_counter']:.3f}); "
        f"{fm['paper_model_by_our_formula']['model']} by our formula {fm['paper_model_by_our_formula']['gflops_per_token']:.2f} "
        f"→ {fm['paper_model_by_our_formula']['soft_prompt_gflops_per_token']:.2f} with a cached soft prompt, the paper "
        f"{fm['paper_reported']['base_gflops']} → {fm['paper_reported']['soft_gflops']}.",
        f"- Memory: soft prompt / model parameters {fm['soft_prompt_parameter_share']:.3%}; dual / base bytes at real "
        f"precision {fm['dual_memory_ratio']:.2f}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
