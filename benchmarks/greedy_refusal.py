"""Does greedy decoding amplify a student's refusals? Its refusal mass q(y_r | x) beside its greedy verdicts.

For a student of `benchmarks/generalise.py` (its artifact and the records file of the same run), per set: the
greedy refusal rate, the mean q(y_r | x) of the refusal text, and the share of greedy refusals whose q(y_r | x) was
below one half (refused only because y_r's path beat every single answer). Writes JSON with its config.
Run: `python benchmarks/greedy_refusal.py --artifact results/artifacts/<run>_tv_5000_seed0
--records results/<run>.records.jsonl --out results/greedy_refusal_<run>.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import dispsafe_nb
from dispsafe_nb.common.provenance import cpu_name, git_commit
from dispsafe_nb.core.loading import load_llm
from dispsafe_nb.evaluation.benchmarks import benchmark_records
from dispsafe_nb.evaluation.generalisation import greedy_amplification, refusal_mass
from dispsafe_nb.evaluation.records import read_records
from dispsafe_nb.guards.protocol import DEFAULT_REFUSAL
from dispsafe_nb.methods import load_method


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifact", required=True, help="the student's artifact folder")
    parser.add_argument(
        "--records", required=True, help="the records (.records.jsonl) of the run that trained it"
    )
    parser.add_argument("--sets", default="xstest_safe,xstest_unsafe,jbb_harmful,alpaca_test")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    started = time.time()
    llm = load_llm()
    method = load_method(args.artifact, llm)
    students = [r for r in read_records(args.records) if r.system not in ("base", "dual")]
    if not students:
        raise SystemExit(f"{args.records} holds no student records (only base/dual)")
    by_set = {r.benchmark: r for r in students}
    result: dict = {
        "config": vars(args),
        "student": students[0].system,
        "refusal": DEFAULT_REFUSAL,
        "sets": {},
    }
    for bench in [b.strip() for b in args.sets.split(",") if b.strip()]:
        prompts = benchmark_records(bench)
        verdicts = {o["id"]: float(o["refused"]) for o in by_set[bench].outputs}
        if set(verdicts) != {p.id for p in prompts}:
            raise SystemExit(f"the records of {bench} were scored on other prompts; rerun with the same data")
        mass = refusal_mass(llm, method, [p.text for p in prompts], DEFAULT_REFUSAL)
        summary = greedy_amplification(mass["q_refusal"], [verdicts[p.id] for p in prompts])
        summary["first_token_greedy_is_refusal"] = sum(mass["first_is_greedy"]) / len(prompts)
        result["sets"][bench] = summary
        print(bench, json.dumps(summary))
    result["machine"] = {
        "git_commit": git_commit(),
        "package_version": dispsafe_nb.__version__,
        "torch": torch.__version__,
        "processor": cpu_name(),
        "wall_s": round(time.time() - started, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
