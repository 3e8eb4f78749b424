"""Foundation benchmark: base model vs the dual (LLM + guard) system, and the guard's own quality.

Writes results/foundation_benchmark.json with every number and the full config. Run: `make benchmark`
(or `python benchmarks/foundation.py --limit 20` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

import dispsafe_nb
from dispsafe_nb import data
from dispsafe_nb.common.paths import RESULTS_DIR
from dispsafe_nb.core.decoding import DecodingConfig
from dispsafe_nb.core.loading import load_llm
from dispsafe_nb.evaluation.judges import judge_for_kind
from dispsafe_nb.guards.guard_training import GuardTrainingConfig, load_embedding_guard
from dispsafe_nb.system.dual_system import SafeSystem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=None, help="at most this many prompts per benchmark set")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS_DIR / "foundation_benchmark.json"))
    args = parser.parse_args()

    started = time.time()
    llm = load_llm()
    guard_cfg = GuardTrainingConfig(seed=args.seed)
    guard = load_embedding_guard(guard_cfg)
    system = SafeSystem(llm, guard)
    decoding = DecodingConfig(max_new_tokens=args.max_new_tokens, seed=args.seed)

    sets = {
        "advbench_test": data.load_dataset("advbench", split="test", limit=args.limit, seed=args.seed),
        "xstest_safe": data.load_dataset("xstest_safe", limit=args.limit, seed=args.seed),
    }
    results: dict = {"sets": {}}
    kinds = {"advbench_test": "harmful", "xstest_safe": "borderline"}
    judges = {name: judge_for_kind(kind, system.refusal) for name, kind in kinds.items()}
    for name, records in sets.items():
        judge = judges[name]  # each benchmark's own rule (JailbreakBench's strings / XSTest's prefixes)
        prompts = [r.text for r in records]
        outputs = system.respond(prompts, decoding=decoding, progress=True)
        base_refused = judge.refusals([o.response for o in outputs])
        dual_refused = judge.refusals([o.final for o in outputs])
        complies = guard.prob_complies([o.response for o in outputs])
        results["sets"][name] = {
            "n": len(prompts),
            "base_refusal_rate": base_refused.float().mean().item(),
            "dual_refusal_rate": dual_refused.float().mean().item(),
            "guard_replaced_rate": sum(o.replaced for o in outputs) / len(outputs),
            "mean_alpha": float(torch.tensor([o.alpha for o in outputs]).mean()),
            # Does the guard's compliance head agree with the string judge on the model's real answers?
            "response_head_agreement_with_judge": ((complies < 0.5) == base_refused).float().mean().item(),
        }
    results["guard_report"] = guard.report
    results["config"] = {
        "model": llm.describe(),
        "guard": guard.describe(),
        "judges": {name: j.describe() for name, j in judges.items()},
        "decoding": decoding.to_dict(),
        "system": {"refusal": system.refusal, "threshold": system.threshold, "mode": system.mode},
        "splits": {
            "advbench_test": f"advbench split=test (hash split {data.SPLIT_VERSION})",
            "xstest_safe": "all 250",
        },
        "decontamination": data.decontamination_report(),
        "limit": args.limit,
        "seed": args.seed,
        "package_version": dispsafe_nb.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(llm.device),
    }
    results["wall_seconds"] = round(time.time() - started, 1)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2, sort_keys=True, default=str)
    summary = {
        k: {m: round(v, 3) for m, v in s.items() if isinstance(v, float)} for k, s in results["sets"].items()
    }
    print(json.dumps(summary, indent=2))
    print("guard:", {k: guard.report.get(k) for k in ("contrast_auroc", "xstest_safe_flag_rate")})
    print("wrote", args.out)


if __name__ == "__main__":
    main()
