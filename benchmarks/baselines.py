"""Baselines benchmark: notebook 04's comparison (every method under TV-DiSP, every objective with the soft
prompt, each at every learning rate of the grid) repeated over training seeds.

Per seed: a seed-chosen training mix and teacher samples, every run trained with the same budget, the refusal
direction fitted, everything evaluated greedily on fixed evaluation prompts beside the base model and the dual
system. Writes results/baselines.json: per seed the full table and each (method, objective)'s best learning rate;
over seeds the mean and standard deviation of its SGS and benign compliance (n seeds stated), which run reaches the
best SGS at benign compliance >= 90 %, notebook 04's claims (the paper's orderings) judged on the seed means, the
full config, machine and versions. Answers go to results/baselines.records.jsonl.
Run: `make benchmark-baselines` (3 seeds), or `--seeds 0 --smoke` for a look at the plumbing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

import dispsafe_nb
from dispsafe_nb.common.paths import RESULTS_DIR
from dispsafe_nb.common.provenance import git_commit
from dispsafe_nb.core.decoding import DecodingConfig, decoding_preset
from dispsafe_nb.core.loading import load_llm
from dispsafe_nb.evaluation.harness import evaluate_students
from dispsafe_nb.evaluation.records import write_records
from dispsafe_nb.guards.guard_training import load_embedding_guard
from dispsafe_nb.methods.refusal_direction import fit_refusal_direction
from dispsafe_nb.report.claims import run_claims
from dispsafe_nb.study import baselines
from dispsafe_nb.system.dual_system import SafeSystem
from dispsafe_nb.system.teacher_cache import teacher_samples
from dispsafe_nb.training.config import DistillConfig
from dispsafe_nb.training.examples import prompt_labels, training_mix

BENCHES = ("advbench_test", "jbb_harmful", "xstest_safe", "alpaca_test", "bundled_verifiable_test")


def over_seeds(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """{"method/objective": {"mean", "sd", "n_seeds"}} of one best-per-group metric over seeds."""
    keys = sorted(set().union(*per_seed))
    out = {}
    for key in keys:
        values = [s[key] for s in per_seed if s.get(key) is not None]  # None: no usable run in that seed
        mean = statistics.fmean(values) if values else None
        sd = statistics.stdev(values) if len(values) > 1 else None
        out[key] = {"mean": mean, "sd": sd, "n_seeds": len(values)}
    return out


def one_seed(llm, guard, system, args, seed: int) -> tuple[list, dict]:
    teacher = decoding_preset("teacher", max_new_tokens=args.max_new_tokens, seed=seed)
    train_records = training_mix(*args.mix, seed=seed)
    val_records = training_mix(args.n_val, args.n_val, args.n_val, seed=seed, split="val")
    train = teacher_samples(system, [r.text for r in train_records], k=args.k, decoding=teacher)
    val = teacher_samples(system, [r.text for r in val_records], k=args.k, decoding=teacher)
    labels = {**prompt_labels(train_records), **prompt_labels(val_records)}
    base = DistillConfig(
        n_tokens=args.n_tokens,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=seed,
        rl_samples=args.k,
        rl_max_new_tokens=args.rl_max_new_tokens,
        ppo_beta=args.ppo_beta,
        eval_every=args.steps,  # validation at the start and the end, as notebook 04
    )
    runs = baselines.default_runs(args.lrs, (seed,), args.extra_ppo_betas)
    trained = baselines.train_runs(llm, guard, runs, base, train, val, labels)
    train_texts, val_texts = baselines.texts_by_label(train_records), baselines.texts_by_label(val_records)
    direction, fit = fit_refusal_direction(llm, *train_texts, *val_texts, system.refusal)
    students = {name: m.bind(llm) for name, (m, _) in trained.items()} | {
        "refusal direction": direction.bind(llm)
    }
    greedy = DecodingConfig(
        max_new_tokens=args.max_new_tokens, seed=0
    )  # evaluation prompts fixed across seeds
    records = evaluate_students(system, students, list(BENCHES), greedy, limit=args.limit, seed=0)
    methods = {name: m for name, (m, _) in trained.items()} | {"refusal direction": direction}
    table = baselines.comparison_table(records, runs, methods)
    for r in records:  # in the records file, every system of every seed under its own name
        r.system = r.system if r.system in {run.name for run in runs} else f"{r.system} [seed {seed}]"
    return records, {
        "table": table.astype(object).where(table.notna(), None).to_dict(orient="records"),
        **baselines.best_metrics(table),
        "best_at_compliance": baselines.best_at_compliance(table),
        "refusal_direction": fit.to_dict(),
        "budget": baselines.budget(base, args.k),
        "run_configs": {run.name: baselines.run_config(run, base) for run in runs},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-2, 3e-2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--n-tokens", type=int, default=20)
    parser.add_argument("--k", type=int, default=2, help="teacher (and student) samples per prompt")
    parser.add_argument("--mix", type=int, nargs=3, default=[32, 32, 16])
    parser.add_argument("--n-val", type=int, default=6)
    parser.add_argument("--limit", type=int, default=20, help="prompts per evaluation set")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rl-max-new-tokens", type=int, default=16)
    parser.add_argument("--ppo-beta", type=float, default=0.05)
    parser.add_argument(
        "--extra-ppo-betas",
        type=float,
        nargs="*",
        default=[0.0],
        help="further PPO runs with these KL coefficients (the paper needed beta ~ 0)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks the plumbing in a few minutes"
    )
    parser.add_argument("--out", default=str(RESULTS_DIR / "baselines.json"))
    parser.add_argument(
        "--report", action="store_true", help="print --out's results as a Markdown table and stop"
    )
    parser.add_argument(
        "--merge", nargs="+", help="result files of other seeds to pool into --out, then stop"
    )
    args = parser.parse_args()
    if args.merge:
        results = [json.loads(Path(p).read_text(encoding="utf-8")) for p in args.merge]
        Path(args.out).write_text(json.dumps(merge(results), indent=2, default=str), encoding="utf-8")
        records = [Path(p).with_suffix(".records.jsonl") for p in args.merge]
        text = "".join(r.read_text(encoding="utf-8") for r in records if r.is_file())
        Path(args.out).with_suffix(".records.jsonl").write_text(text, encoding="utf-8")
        print(f"merged {len(results)} runs into {args.out}")
        return
    if args.report:
        print(report(json.loads(Path(args.out).read_text(encoding="utf-8"))))
        return
    if args.smoke:
        args.steps, args.batch_size, args.n_tokens, args.lrs, args.mix = 2, 2, 4, [3e-2], [2, 2, 1]
        args.n_val, args.limit, args.max_new_tokens, args.rl_max_new_tokens = 1, 2, 12, 8
    torch.manual_seed(0)
    started, commit = time.time(), git_commit()  # the code this run imports: the commit at its start
    llm, guard = load_llm(), load_embedding_guard()
    system = SafeSystem(llm, guard)
    per_seed, all_records, claims = {}, [], {}
    for seed in tqdm(args.seeds, desc="seeds"):
        records, per_seed[seed] = one_seed(llm, guard, system, args, seed)
        all_records += records
        per_seed[seed]["wall_s"] = time.time() - started
        # written after every seed, so an interrupted run keeps the seeds it finished
        claims = write_results(args, per_seed, all_records, started, commit)
    print(f"wrote {args.out} in {(time.time() - started) / 60:.1f} min")
    for name, c in claims.items():
        print(("✓ " if c["reproduced"] else "✗ ") + f"{name}: {c['statement']}")


def summarise(per_seed: dict) -> tuple[dict, dict]:
    """Over the seeds: each group's mean and spread, and the paper's orderings judged on the means."""
    summary = {
        key: over_seeds([s[key] for s in per_seed.values()])
        for key in ("best_sgs", "best_compliance", "sgs_at_compliance")
    }
    means = {key: {k: v["mean"] for k, v in summary[key].items()} for key in summary}
    claims = {
        name: {"reproduced": ok, "statement": text.removeprefix(f"{name}: ")}
        for name, (ok, text) in run_claims("04_baselines", means).items()
    }
    return summary, claims


# Settings that may differ between runs merged into one result (everything else must match).
MERGE_FREE = {"seeds", "out", "report", "merge", "distill_defaults"}


def merge(results: list[dict]) -> dict:
    """Several runs of this benchmark (other seeds, same settings) as one result: seeds pooled, summary and claims
    recomputed; each run's commit and wall time kept."""
    base = {k: v for k, v in results[0]["config"].items() if k not in MERGE_FREE}
    for other in results[1:]:
        config = {k: v for k, v in other["config"].items() if k not in MERGE_FREE}
        if config != base:
            changed = sorted(k for k in set(config) | set(base) if config.get(k) != base.get(k))
            raise ValueError(f"runs with other settings cannot be merged (they differ in {changed})")
        overlap = set(other["per_seed"]) & set(results[0]["per_seed"])
        if overlap:
            raise ValueError(f"seed(s) {sorted(overlap)} appear in more than one run")
    per_seed = {k: v for r in results for k, v in r["per_seed"].items()}
    summary, claims = summarise(per_seed)
    return {
        **results[0],
        "summary": summary,
        "claims_on_seed_means": claims,
        "per_seed": per_seed,
        "seeds_finished": list(per_seed),
        "merged_runs": [
            {"seeds": r["seeds_finished"], "machine": r["machine"], "wall_s": r["wall_s"]} for r in results
        ],
        "wall_s": sum(r["wall_s"] for r in results),
    }


def write_results(args, per_seed: dict, all_records: list, started: float, commit: str | None) -> dict:
    """Summarise the finished seeds, judge the claims on their means, write the JSON and records; the claims."""
    summary, claims = summarise(per_seed)
    out = {
        "summary": summary,
        "claims_on_seed_means": claims,
        "per_seed": per_seed,
        "seeds_finished": list(per_seed),
        "config": {**vars(args), "benchmarks": list(BENCHES), "distill_defaults": asdict(DistillConfig())},
        "machine": {
            "package_version": dispsafe_nb.__version__,
            "git_commit": commit,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "wall_s": time.time() - started,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str), encoding="utf-8")
    write_records(all_records, path.with_suffix(".records.jsonl"))
    return claims


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def _count(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def report(result: dict) -> str:
    """The benchmark's JSON as a Markdown table: per (method, objective) over seeds, SGS at the best learning
    rate keeping benign compliance >= 0.9 and that compliance; the base model, the dual system and the refusal
    direction beside them; then the paper's orderings judged on the seed means."""
    seeds = result["per_seed"]
    n_seeds = len(seeds)
    first = next(iter(seeds.values()))
    n = min(r["n_per_set"] for r in first["table"])
    params = {
        f"{r['method']}/{r['objective']}": r["n_parameters"]
        for r in first["table"]
        if r.get("lr") == r.get("lr") and r.get("lr") is not None
    }
    lines = [
        f"{n_seeds} training seed(s); every system evaluated greedily on the same prompts, up to "
        f"{result.get('config', {}).get('limit', '?')} per set (the smallest set has {n}). SGS: mean "
        "over AdvBench-test and JBB-harmful; compliance: benign sets. Per seed, each group's learning rate is the "
        "one with the best SGS among those keeping compliance ≥ 0.9 (mean ± sd over the seeds where one did).",
        "",
        "| system | trainable parameters | SGS at compliance ≥ 0.9 | seeds meeting it | benign compliance (chosen lr) | lr chosen per seed |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("base", "dual"):
        rows = [r for s in seeds.values() for r in s["table"] if r["system"] == name]
        lines.append(
            f"| {name} | 0 | {_mean_sd([r['sgs'] for r in rows])} | — | "
            f"{_mean_sd([r['benign_compliance'] for r in rows])} | — |"
        )
    for key in sorted(result["summary"]["sgs_at_compliance"]):
        per = [s for s in seeds.values() if key in s["best_sgs"]]
        met = [s["sgs_at_compliance"][key] for s in per if s["sgs_at_compliance"][key] is not None]
        comp = [s["best_compliance"][key] for s in per]
        lrs = ", ".join(f"{s['best_lr'][key]:g}" for s in per)
        lines.append(
            f"| {key} | {_count(params.get(key))} | {_mean_sd(met)} | {len(met)}/{len(per)} | {_mean_sd(comp)} | {lrs} |"
        )
    direction = [r for s in seeds.values() for r in s["table"] if r["system"].startswith("refusal direction")]
    lines.append(
        f"| refusal direction (untrained) | 0 | {_mean_sd([r['sgs'] for r in direction])} | — | "
        f"{_mean_sd([r['benign_compliance'] for r in direction])} | — |"
    )
    lines += ["", "The paper's orderings on the seed means:"]
    for name, c in result["claims_on_seed_means"].items():
        lines.append(f"- {'reproduced' if c['reproduced'] else 'NOT reproduced'}: {name} — {c['statement']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
