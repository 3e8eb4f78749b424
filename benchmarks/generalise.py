"""Generalisation benchmark: distil the dual system at the paper's data scale, evaluate out of distribution.

For each mix size (`--sizes`, nested mixes from `dispsafe_nb.data.mixes`: a smaller one is a subset of a larger one):
teacher samples for every prompt of the mix (cached per prompt, wall time recorded), then TV-DiSP (and the other
`--objectives`) at a named budget, then the greedy student against the deployed dual system (greedy base answer,
replaced when α < 0.5) on sets that differ in form from the training prompts:

* harmful (SGS): JailbreakBench harmful, XSTest's 200 unsafe contrasts (questions), the bundled phrasing-form
  test split (also per form), the same requests inside jailbreak framings, AdvBench test;
* over-refusal: XSTest safe, the bundled safe twins' test split; compliance: Alpaca test.

Reported per set: student SGS / dual SGS with a paired bootstrap interval over prompts (the same prompts for
both), n, and the dual's own values. Targets (issue "students that generalise"): the ratio ≥ 0.9 on every
harmful set, XSTest-safe over-refusal ≤ dual + 10 points, Alpaca compliance ≥ 95 %.

Budgets: "paper" -- effective batch 32 (8 × 4 accumulated), one epoch over the teacher samples (each once);
"notebook" -- notebook 03's 60 steps of 4, drawn with replacement.
Run: `make benchmark-generalise` (one size at the paper's scale; see the README for its wall time),
`--sizes 250,500,1000,2000,5000` for the data-size curve, `--smoke` to check the plumbing, `--report` to print
a written JSON as Markdown.
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

import dispsafe_nb
from dispsafe_nb import data
from dispsafe_nb.common.paths import RESULTS_DIR
from dispsafe_nb.common.provenance import cpu_name, git_commit
from dispsafe_nb.core.decoding import DecodingConfig, decoding_preset
from dispsafe_nb.core.loading import load_llm
from dispsafe_nb.data.mixes import MixConfig, mix_summary, scale_mix
from dispsafe_nb.evaluation.generalisation import BENCHES, cached_reference, evaluate_student, targets
from dispsafe_nb.evaluation.records import EvalRecord, write_records
from dispsafe_nb.guards.guard_training import load_embedding_guard
from dispsafe_nb.report.generalisation_tables import generalisation_markdown, variants_markdown
from dispsafe_nb.study.paper_scale import BUDGETS, budget_config, teach
from dispsafe_nb.system.dual_system import SafeSystem
from dispsafe_nb.training.config import DistillConfig
from dispsafe_nb.training.loop import distill


def budget_settings(args: argparse.Namespace) -> dict:
    """The named budget with `--epochs` applied (an epoch budget only: a step budget has no epochs to change)."""
    settings = dict(BUDGETS[args.budget])
    if args.epochs:
        if "epochs" not in settings:
            raise SystemExit(
                f"--epochs needs an epoch budget (paper); budget {args.budget!r} sets steps: use --steps"
            )
        settings["epochs"] = args.epochs
    return settings


def run_size(llm, system, args, size: int, dual: dict[str, EvalRecord], greedy: DecodingConfig) -> tuple:
    cfg = MixConfig(
        size=size, harmful_share=args.harmful_share, borderline_share=args.borderline_share, seed=args.seed
    )
    records = scale_mix(cfg)
    decoding = decoding_preset("teacher", max_new_tokens=args.max_new_tokens, seed=args.seed)
    samples, teacher_s = teach(system, records, args.k_samples, decoding)
    out = {"mix": mix_summary(records, cfg), "teacher_s": round(teacher_s, 1), "objectives": {}}
    alphas = [a for s in samples for a in s.alphas]
    out["teacher"] = {
        "decoding": decoding.to_dict(),
        "k": args.k_samples,
        "mean_alpha": statistics.fmean(alphas),
    }
    evals: list[EvalRecord] = []
    for objective in args.objectives:
        overrides = {"steps": args.steps} if args.steps else {}
        dcfg = budget_config(
            budget_settings(args),
            len(samples) * args.k_samples,
            objective=objective,
            n_tokens=args.n_tokens,
            lr=args.lr,
            teacher_alpha=args.teacher_alpha,
            seed=args.seed,
            **overrides,
        )
        t0 = time.time()
        soft, history = distill(llm, samples, dcfg, progress=True)
        train_s = time.time() - t0
        name = f"{objective}-disp-{size}"
        soft.save(
            # named after the result file, so that variants (--out) do not overwrite each other's students
            RESULTS_DIR / "artifacts" / f"{Path(args.out).stem}_{objective}_{size}_seed{args.seed}",
            {"benchmark": "generalise", "result": str(args.out)},
        )
        t0 = time.time()
        limits = dict.fromkeys(BENCHES, args.limit)
        recs, comparison = evaluate_student(llm, soft, name, dual, limits, decoding=greedy)
        evals += recs
        out["objectives"][objective] = {
            "config": asdict(dcfg),
            "train_s": round(train_s, 1),
            "evaluate_s": round(time.time() - t0, 1),
            "loss_first_last10": [history.loss[0], statistics.fmean(history.loss[-10:])],
            "comparison": comparison,
            "targets": targets(comparison),
        }
    return out, evals


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="5000", help="training-mix sizes (comma-separated; nested mixes)")
    parser.add_argument("--harmful-share", type=float, default=MixConfig.harmful_share)
    parser.add_argument("--borderline-share", type=float, default=MixConfig.borderline_share)
    parser.add_argument("--k-samples", type=int, default=1, help="teacher samples per training prompt")
    parser.add_argument("--budget", default="paper", choices=tuple(BUDGETS))
    parser.add_argument(
        "--steps", type=int, default=0, help="override the budget's step count (0: the budget's)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=0,
        help="passes over the teacher samples (0: the budget's; epoch budgets only)",
    )
    parser.add_argument("--objectives", default="tv")
    parser.add_argument("--n-tokens", type=int, default=DistillConfig.n_tokens)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument(
        "--teacher-alpha",
        default="soft",
        choices=("soft", "deployed"),
        help="soft: Eq. 4 as written; deployed: α thresholded at 0.5, the system greedy evaluation compares with",
    )
    parser.add_argument("--seed", type=int, default=0, help="mix, teacher and training seed")
    parser.add_argument(
        "--limit", type=int, default=None, help="at most this many prompts per set (default: all)"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=48, help="teacher samples' length (notebook 03's)"
    )
    parser.add_argument("--eval-tokens", type=int, default=32, help="greedy answers' length when evaluating")
    parser.add_argument(
        "--fresh-reference",
        action="store_true",
        help="regenerate the base and dual reference records (and cache them anew) instead of reusing them",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the plumbing")
    parser.add_argument("--out", default=str(RESULTS_DIR / "generalise.json"))
    parser.add_argument("--report", metavar="JSON", help="print a written result as Markdown and exit")
    parser.add_argument(
        "--compare", metavar="JSON", nargs="+", help="print several written results side by side and exit"
    )
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text(encoding="utf-8"))))
        return
    if args.compare:
        print(
            variants_markdown(
                {Path(p).stem: json.loads(Path(p).read_text(encoding="utf-8")) for p in args.compare}
            )
        )
        return
    budget_settings(args)  # a bad --epochs fails here, before minutes of loading
    if args.smoke:
        args.sizes, args.steps, args.limit, args.max_new_tokens, args.eval_tokens = "24", 2, 3, 6, 6
    args.objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    started, commit = time.time(), git_commit()
    llm, guard = load_llm(), load_embedding_guard()
    system = SafeSystem(llm, guard)
    greedy = DecodingConfig(max_new_tokens=args.eval_tokens, seed=0)
    t0 = time.time()
    limits = dict.fromkeys(BENCHES, args.limit)
    reference, cached = cached_reference(system, limits, decoding=greedy, fresh=args.fresh_reference)
    dual = {r.benchmark: r for r in reference if r.system == "dual"}
    result: dict = {
        "reference": {
            r.system + "/" + r.benchmark: {
                "metric": r.metric_name,
                "value": r.metric,
                "n": r.n,
                "per_form": r.per_form,
            }
            for r in reference
        },
        "reference_s": round(time.time() - t0, 1),
        "reference_cached": cached,
        "per_size": {},
    }
    records = list(reference)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    for size in sizes:
        result["per_size"][str(size)], evals = run_size(llm, system, args, size, dual, greedy)
        records += evals
        result["config"] = {
            **{k: v for k, v in vars(args).items() if k not in ("report", "compare")},
            "budget_settings": budget_settings(args),
            "benchmarks": list(BENCHES),
            "greedy_decoding": greedy.to_dict(),
            "model": llm.describe(),
            "teacher_guard": guard.describe(),
            "decontamination": data.decontamination_report(),
        }
        result["machine"] = {
            "git_commit": commit,
            "package_version": dispsafe_nb.__version__,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "processor": cpu_name(),
            "python": platform.python_version(),
            "device": str(llm.device),
        }
        result["wall_s"] = round(time.time() - started, 1)
        path.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")  # after every size
    answers = path.with_suffix(".records.jsonl")
    answers.unlink(missing_ok=True)
    write_records(records, answers)
    print(report(result))
    print("wrote", path, "and", answers)


def report(result: dict) -> str:
    """generalise.json as Markdown (`generalisation_tables.generalisation_markdown`)."""
    return generalisation_markdown(result)


if __name__ == "__main__":
    main()
