"""Mutation score of the science-critical modules: do the fast unit tests fail when the code is broken?

Runs mutmut (https://mutmut.readthedocs.io) over `theory.py`, `objectives.py`, `judges.py`, `metrics.py` and the
loss/step functions of `train.py` (`_loss`, `BatchLoss.clipped`, `learning_rate`, `_batch_indices`,
`DistillConfig.__post_init__`, `examples_from_samples`), with only their fast unit tests (`-m "not slow"`: no real
model is loaded; the tests use a tiny random Llama stand-in). mutmut maps every mutated function to the tests that
call it, and each mutant runs only those tests.

Writes results/mutation.json: tool and version, killed / survived / timeout / total per module, the overall
score, every surviving mutant (module, function, line, diff), which survivors are equivalent mutants and why
(`EQUIVALENT` below, matched by module, function and the mutated line), the config (which tests ran), the git
commit and the wall time. Run: `make mutation` (about 30 minutes on 2 CPU cores).

mutmut works on a scratch copy (`build/mutation/`, git-ignored) so that the checkout and its pyproject.toml stay
untouched; its `[tool.mutmut]` section is written into the copy's pyproject.toml. Every subprocess runs with one
torch / OpenMP thread.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "results" / "mutation.json"
WORKDIR = REPO_ROOT / "build" / "mutation"

MODULES = ("theory", "objectives", "judges", "metrics", "train")
# train.py: only the loss/step code (mutmut's mangled names: x_<function>, xǁ<Class>ǁ<method>). A name that
# train.py no longer has simply matches no mutant.
TRAIN_FUNCTIONS = {
    "x_sequence_terms": "sequence_terms",  # the scoring half of _loss
    "x__loss": "_loss",
    "xǁBatchLossǁclipped": "BatchLoss.clipped",
    "x_learning_rate": "learning_rate",
    "x__batch_indices": "_batch_indices",
    "xǁDistillConfigǁ__post_init__": "DistillConfig.__post_init__",
    "x_examples_from_samples": "examples_from_samples",
}
# The fast unit tests of those modules. tests/test_eq4.py pins Eq. 4's clip (objectives, BatchLoss.clipped);
# tests/test_train.py's fast tests check the config and _loss on the tiny stand-in.
TESTS = (
    "tests/test_theory.py",
    "tests/test_objectives.py",
    "tests/test_judges.py",
    "tests/test_metrics.py",
    "tests/test_eq4.py",
    "tests/test_train.py",
    "tests/test_train_units.py",
)
PYTEST_ARGS = ("-m", "not slow", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning")
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

# Surviving mutants that cannot change observable behaviour, matched by (module, function, the mutated line as
# it reads after the mutation, stripped). Each entry says why; a survivor not listed here is a gap in the tests.
EQUIVALENT: list[dict[str, str]] = []


def mutant_globs(modules=MODULES) -> list[str]:
    globs = [f"dispsafe_nb.{m}.*" for m in modules if m != "train"]
    if "train" in modules:
        globs += [f"dispsafe_nb.train.{name}__mutmut_*" for name in TRAIN_FUNCTIONS]
    return globs


def mutmut_config(jobs: int) -> str:
    """The [tool.mutmut] section for the scratch copy's pyproject.toml."""

    def toml_list(items) -> str:
        return "[" + ", ".join(json.dumps(str(i)) for i in items) + "]"

    return "\n".join(
        [
            "",
            "[tool.mutmut]",
            'source_paths = ["dispsafe_nb/"]',
            f"only_mutate = {toml_list(f'dispsafe_nb/{m}.py' for m in MODULES)}",
            'also_copy = ["data/"]',
            f"pytest_add_cli_args = {toml_list(PYTEST_ARGS)}",
            f"pytest_add_cli_args_test_selection = {toml_list(TESTS)}",
            "use_git_change_detection = false",
            "",
        ]
    )


def prepare_workdir(workdir: Path, jobs: int) -> None:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for folder in ("dispsafe_nb", "tests", "data"):
        shutil.copytree(REPO_ROOT / folder, workdir / folder, ignore=ignore)
    text = (REPO_ROOT / "pyproject.toml").read_text()
    if "[tool.mutmut]" in text:
        raise SystemExit("pyproject.toml already has a [tool.mutmut] section: this script writes its own")
    (workdir / "pyproject.toml").write_text(text + mutmut_config(jobs))


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(THREAD_ENV)
    env.setdefault("TQDM_DISABLE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    shared = REPO_ROOT.parent / "shared" / "datasets"
    if not env.get("DISPSAFE_DATA") and shared.is_dir():
        env["DISPSAFE_DATA"] = str(shared)
    return env


def run_mutmut(workdir: Path, jobs: int, globs: list[str], log: Path) -> int:
    exe = Path(sys.executable).parent / "mutmut"
    cmd = [str(exe), "run", "--max-children", str(jobs), *globs]
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=workdir, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
    return proc.returncode


# ----------------------------------------------------------------------------------------------------------
# reading mutmut's results
# ----------------------------------------------------------------------------------------------------------


def function_spans(source: str) -> dict[str, tuple[int, int]]:
    """mutmut's mangled name -> (first, last) line of that function or method in the original source."""
    spans = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            spans[f"x_{node.name}"] = (node.lineno, node.end_lineno)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    spans[f"xǁ{node.name}ǁ{item.name}"] = (item.lineno, item.end_lineno)
    return spans


def readable_function(mangled: str) -> str:
    if mangled.startswith("xǁ"):
        _, cls, name = mangled.split("ǁ")
        return f"{cls}.{name}"
    return mangled[2:]


def mutated_line(diff: str, source_lines: list[str], span: tuple[int, int]) -> tuple[int | None, str, str]:
    """(line number in the source, the original line, the mutated line) of a one-hunk mutant diff."""
    removed = [line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    before = removed[0] if removed else ""
    after = added[0] if added else ""
    lineno = None
    first, last = span
    for n in range(first, last + 1):  # a method's diff is dedented: compare without indentation
        if before.strip() and source_lines[n - 1].strip() == before.strip():
            lineno = n
            break
    return lineno, before.strip(), after.strip()


def equivalence_reason(module: str, function: str, after: str) -> str | None:
    for entry in EQUIVALENT:
        if entry["module"] == module and entry["function"] == function and entry["mutated"] == after:
            return entry["reason"]
    return None


def collect(workdir: Path, modules=MODULES) -> dict:
    """Per-module counts and every survivor, from mutmut's meta files in the scratch copy."""
    sys.path.insert(0, str(workdir))
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        from mutmut.mutation.diff_apply import get_diff_for_mutant
        from mutmut.stats import status_by_exit_code

        per_module, survivors, not_run = {}, [], []
        for module in modules:
            path = Path("dispsafe_nb") / f"{module}.py"
            meta = json.loads((Path("mutants") / f"{path}.meta").read_text())
            source = path.read_text()
            lines, spans = source.splitlines(), function_spans(source)
            counts = {"killed": 0, "survived": 0, "timeout": 0, "no_tests": 0, "other": 0, "total": 0}
            by_function: dict[str, dict[str, int]] = {}
            for key, code in sorted(meta["exit_code_by_key"].items(), key=lambda kv: _natural(kv[0])):
                mangled = key.rpartition(".")[2].partition("__mutmut_")[0]
                if module == "train" and mangled not in TRAIN_FUNCTIONS:
                    continue  # train.py: only the loss/step functions count
                status = status_by_exit_code[code]
                bucket = {"killed": "killed", "survived": "survived", "timeout": "timeout"}.get(status)
                if status == "no tests":
                    bucket = "no_tests"
                if status == "not checked":
                    not_run.append(key)
                bucket = bucket or "other"
                counts[bucket] += 1
                counts["total"] += 1
                function = readable_function(mangled)
                fcounts = by_function.setdefault(function, {"killed": 0, "total": 0})
                fcounts["total"] += 1
                fcounts["killed"] += bucket in ("killed", "timeout")
                if bucket in ("survived", "no_tests", "other"):
                    diff = get_diff_for_mutant(key, path=path)
                    lineno, before, after = mutated_line(diff, lines, spans.get(mangled, (1, len(lines))))
                    survivors.append(
                        {
                            "mutant": key,
                            "module": f"dispsafe_nb/{module}.py",
                            "function": function,
                            "line": lineno,
                            "status": status,
                            "original": before,
                            "mutated": after,
                            "diff": diff,
                            "equivalent": equivalence_reason(module, function, after),
                        }
                    )
            counts["score"] = (
                (counts["killed"] + counts["timeout"]) / counts["total"] if counts["total"] else None
            )
            counts["by_function"] = by_function
            per_module[f"dispsafe_nb/{module}.py"] = counts
        return {"modules": per_module, "survivors": survivors, "not_run": not_run}
    finally:
        os.chdir(cwd)


def _natural(key: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key))


def git_commit() -> dict[str, object]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    tracked = ["dispsafe_nb", "tests", "benchmarks/mutation.py"]
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", *tracked))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested in parallel (default 2)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--workdir", default=str(WORKDIR))
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the scratch copy's earlier results (mutmut re-tests only changed functions)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=MODULES,
        help="mutate only this module (repeatable; for development)",
    )
    args = parser.parse_args()
    modules = tuple(args.only or MODULES)
    os.environ.update(THREAD_ENV)

    workdir = Path(args.workdir)
    started = time.time()
    if not (args.reuse and (workdir / "mutants").is_dir()):
        prepare_workdir(workdir, args.jobs)
    else:  # refresh sources and tests; mutmut notices the changed functions
        for folder in ("dispsafe_nb", "tests"):
            shutil.copytree(REPO_ROOT / folder, workdir / folder, dirs_exist_ok=True)
    log = workdir / "mutmut.log"
    rc = run_mutmut(workdir, args.jobs, mutant_globs(modules), log)
    if rc != 0:
        print(log.read_text()[-4000:])
        raise SystemExit(f"mutmut run exited with {rc}; its log is {log}")
    wall = time.time() - started

    found = collect(workdir, modules)
    totals = {
        k: sum(m[k] for m in found["modules"].values()) for k in ("killed", "survived", "timeout", "total")
    }
    totals["no_tests"] = sum(m["no_tests"] for m in found["modules"].values())
    totals["score"] = (totals["killed"] + totals["timeout"]) / totals["total"]
    equivalent = [
        {"module": s["module"], "function": s["function"], "line": s["line"], "reason": s["equivalent"]}
        for s in found["survivors"]
        if s["equivalent"]
    ]
    n_eq = len(equivalent)
    totals["score_excluding_equivalent"] = (totals["killed"] + totals["timeout"]) / (totals["total"] - n_eq)
    report = {
        "tool": {"name": "mutmut", "version": version("mutmut")},
        "score": totals["score"],
        "target": 0.85,
        "met": totals["score"] >= 0.85,
        "totals": totals,
        "modules": found["modules"],
        "survivors": found["survivors"],
        "equivalent": equivalent,
        "not_equivalent_survivors": [s["mutant"] for s in found["survivors"] if not s["equivalent"]],
        "not_run": found["not_run"],
        "config": {
            "modules": [f"dispsafe_nb/{m}.py" for m in modules],
            "train_functions": list(TRAIN_FUNCTIONS.values()),
            "mutant_globs": mutant_globs(modules),
            "tests": list(TESTS),
            "pytest_args": list(PYTEST_ARGS),
            "jobs": args.jobs,
            "threads_per_process": 1,
            "score": "(killed + timeout) / total; 'no tests' and survivors count against it",
        },
        "git": git_commit(),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "wall_time_s": round(wall, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"mutation score {totals['score']:.1%} ({totals['killed'] + totals['timeout']}/{totals['total']})")
    for name, m in found["modules"].items():
        print(
            f"  {name}: {m['score']:.1%} killed {m['killed']}, survived {m['survived']}, total {m['total']}"
        )
    print(f"{len(found['survivors'])} survivors ({n_eq} equivalent); wall time {wall / 60:.1f} min -> {out}")


if __name__ == "__main__":
    main()
