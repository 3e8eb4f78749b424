"""Memory under load: peak resident memory and wall time of `probe()` and of `evaluate` as prompts pile up.

Long prompts are what a user pastes into the prober's batch mode, about 2,000 characters each: a pasted list of
Alpaca test-split instructions, then a held-out harmful request (AdvBench test split) inside one of the bundled
jailbreak framings (the in-the-wild templates are not in the offline mirror); short ones are Alpaca test-split
instructions alone. Grid: `probe()` (base, dual and a soft-prompt student) and `evaluate` (the dual
system) on --sizes long prompts and on --short-size short ones. Every measurement runs in its own process, so its
peak is its own: the process loads the default model, teacher guard and second judge, notes its peak so far
(`loaded`), runs the call and reports its peak (`peak`, ru_maxrss) and the call's wall time.

Targets (issue #27): the peak is flat in the number of prompts (the largest long run within 10 % of the smallest)
and under 4 GB for the default model. Finished measurements are journaled beside --out, so a rerun resumes.
Run: `python benchmarks/load.py` (hours on 2 cores at the defaults; `--max-new-tokens 16` for a shorter look),
`--smoke` to check the plumbing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dispsafe_nb
from dispsafe_nb.common.journal import Journal
from dispsafe_nb.common.paths import RESULTS_DIR
from dispsafe_nb.common.provenance import cpu_name, git_commit
from dispsafe_nb.core.batching import current_token_budget

CALLS = ("probe", "evaluate")
PEAK_LIMIT_BYTES = 4e9
FLAT_TOLERANCE = 0.10
LONG_CHARS = 2000


def peak_bytes() -> int:
    """This process's peak resident memory so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def long_prompts(n: int, seed: int = 0, chars: int = LONG_CHARS) -> list:
    """n prompts of about `chars` characters: a pasted list of Alpaca test-split instructions, then a held-out harmful
    request (AdvBench test split) inside one of the bundled jailbreak framings (taken in turn); all distinct."""
    from dispsafe_nb.data import PromptRecord, load_dataset
    from dispsafe_nb.data.bundled import load_jailbreak_wrappers
    from dispsafe_nb.data.public import apply_jailbreak

    wrappers = load_jailbreak_wrappers()
    requests = load_dataset("advbench", split="test", seed=seed)
    fillers = load_dataset("alpaca", split="test", seed=seed)
    out = []
    for i in range(n):
        request = requests[i % len(requests)]
        ask = apply_jailbreak(wrappers[i % len(wrappers)]["template"], request.text)
        lines, j = [], i * 7
        while sum(len(x) + 3 for x in lines) + len(ask) < chars - 60:
            lines.append(fillers[j % len(fillers)].text)
            j += 1
        text = "Here is the list of tasks I am working through:\n" + "\n".join(f"- {x}" for x in lines)
        out.append(
            PromptRecord(f"load-{i}-{request.id}", f"{text}\n\nNow: {ask}", True, "load", "load", "test")
        )
    return out


def short_prompts(n: int, seed: int = 0) -> list:
    from dispsafe_nb.data import load_dataset

    records = load_dataset("alpaca", split="test", limit=n, seed=seed)
    if len(records) < n:
        raise SystemExit(f"the Alpaca test split holds {len(records)} prompts, fewer than {n}")
    return records


def worker(args: argparse.Namespace) -> dict:
    """One measurement, in this process: load, note the peak, run the call, note the peak and the time."""
    from dispsafe_nb.core.decoding import decoding_preset
    from dispsafe_nb.core.loading import load_llm
    from dispsafe_nb.evaluation.harness import evaluate
    from dispsafe_nb.evaluation.judges import GuardJudge
    from dispsafe_nb.guards.guard_training import load_embedding_guard, load_judge_guard
    from dispsafe_nb.methods import init_soft_prompt
    from dispsafe_nb.system.dual_system import SafeSystem
    from dispsafe_nb.ui.prober import ProbeDecoding, ProbeSession, probe

    records = long_prompts(args.n) if args.kind == "long" else short_prompts(args.n)
    llm, guard, judge_guard = (
        load_llm(),
        load_embedding_guard(progress=False),
        load_judge_guard(progress=False),
    )
    with tempfile.TemporaryDirectory() as folder:
        init_soft_prompt(llm).save(Path(folder) / "student")
        loaded = peak_bytes()
        started = time.perf_counter()
        if args.worker == "probe":
            session = ProbeSession(llm, guard, judge_guard, artifacts_dir=folder)
            decoding = ProbeDecoding(max_new_tokens=args.max_new_tokens)
            result = probe(session, [r.text for r in records], ["base", "dual", "student"], decoding)
            done = {"answers": len(result.answers), "errors": result.errors}
        else:
            bench = "jailbreak_wrapped" if args.kind == "long" else "alpaca_test"
            decoding = decoding_preset("evaluation", max_new_tokens=args.max_new_tokens)
            (record,) = evaluate(
                SafeSystem(llm, guard),
                [bench],
                system_name="dual",
                decoding=decoding,
                second_judge=GuardJudge(judge_guard),
                progress=False,
                prompt_sets={bench: records},
            )
            done = {"answers": record.n, "metric": {record.metric_name: record.metric}}
    wall = time.perf_counter() - started
    lengths = llm.chat_lengths([r.text for r in records])
    return {
        "call": args.worker,
        "kind": args.kind,
        "n": args.n,
        "mean_chars": sum(len(r.text) for r in records) / len(records),
        "mean_tokens": sum(lengths) / len(lengths),
        "max_tokens": max(lengths),
        "loaded_bytes": loaded,
        "peak_bytes": peak_bytes(),
        "wall_s": wall,
        **done,
    }


def judge(results: dict[str, dict], sizes: list[int]) -> dict[str, dict]:
    """The targets, from the finished measurements (a target whose runs are missing is left out)."""
    targets = {}
    for call in CALLS:
        small, large = results.get(f"{call}/long/{min(sizes)}"), results.get(f"{call}/long/{max(sizes)}")
        if small and large and min(sizes) != max(sizes):
            ratio = large["peak_bytes"] / small["peak_bytes"]
            targets[f"{call}_peak_flat_in_prompts"] = {
                "value": ratio,
                "target": f"<= {1 + FLAT_TOLERANCE:.2f} (peak at {max(sizes)} long prompts / at {min(sizes)})",
                "met": ratio <= 1 + FLAT_TOLERANCE,
            }
        peaks = [r["peak_bytes"] for k, r in results.items() if k.startswith(f"{call}/")]
        if peaks:
            targets[f"{call}_peak_under_4gb"] = {
                "value": max(peaks) / 1e9,
                "target": f"< {PEAK_LIMIT_BYTES / 1e9:.0f} GB (largest peak, GB)",
                "met": max(peaks) < PEAK_LIMIT_BYTES,
            }
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[50, 200, 800], help="numbers of long prompts"
    )
    parser.add_argument("--short-size", type=int, default=800, help="number of short prompts (0: none)")
    parser.add_argument("--calls", nargs="+", default=list(CALLS), choices=CALLS)
    parser.add_argument("--max-new-tokens", type=int, default=48, help="the prober's default is 48")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and answers: checks the plumbing")
    parser.add_argument("--out", default=str(RESULTS_DIR / "load.json"))
    parser.add_argument("--worker", choices=CALLS, help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=("long", "short"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.smoke:
        args.sizes, args.short_size, args.max_new_tokens = [2, 4], 4, 4
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "worker", "kind", "n")}
    config["token_budget"] = current_token_budget()
    journal = Journal(out.with_suffix(".journal.jsonl"), "load benchmark", config)
    # the smallest and the largest long run first (the flatness target compares them), then the rest
    sizes = sorted(set(args.sizes))
    sizes = [sizes[0], sizes[-1], *sizes[1:-1]] if len(sizes) > 1 else sizes
    grid = [(call, "long", n) for n in sizes for call in args.calls]
    grid += [(call, "short", args.short_size) for call in args.calls if args.short_size > 0]
    started, commit = time.time(), git_commit()
    for call, kind, n in grid:
        key = f"{call}/{kind}/{n}"
        if key in journal:
            print(f"{key}: kept from {journal.path.name}")
            continue
        command = [sys.executable, __file__, "--worker", call, "--kind", kind, "--n", str(n)]
        command += ["--max-new-tokens", str(args.max_new_tokens)]
        print(f"{key}: running", flush=True)
        run = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), check=False)
        if run.returncode != 0:
            raise SystemExit(f"{key} failed (exit {run.returncode}):\n{run.stderr[-4000:]}")
        journal.record(key, json.loads(run.stdout.strip().splitlines()[-1]))
        r = journal.get(key)
        print(
            f"{key}: peak {r['peak_bytes'] / 1e9:.2f} GB (loaded {r['loaded_bytes'] / 1e9:.2f}), {r['wall_s']:.0f} s"
        )
    results = {k: journal.get(k) for k in journal.keys()}
    result = {
        "results": results,
        "targets": judge(results, args.sizes),
        "config": config,
        "machine": {
            "package_version": dispsafe_nb.__version__,
            "git_commit": commit,
            "processor": cpu_name(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "wall_s_this_run": time.time() - started,
    }
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {out}")
    for name, t in result["targets"].items():
        print(("✓ " if t["met"] else "✗ ") + f"{name}: {t['value']:.3g} (target {t['target']})")


if __name__ == "__main__":
    main()
