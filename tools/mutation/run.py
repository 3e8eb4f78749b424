"""Mutation score of the science-critical code: do the fast unit tests fail when the code is broken?

Runs mutmut (https://mutmut.readthedocs.io) over the files and functions that `mutants.toml` beside this script
lists (the exact maths of Theorem 3.1 and the surrogates, scoring, the DiSP objectives, the judges, the classifier
statistics, and the loss/step code of training), with only their fast unit tests (`-m "not slow"`: no real model
is loaded; the tests use tiny random Llama / GPT-2 stand-ins). mutmut maps every mutated function to the tests that
call it, and each mutant runs only those tests.

Writes results/mutation.json (`--out`; the committed report is tools/mutation/report.json): tool and version,
killed / survived / timeout / total per file, the overall score, every surviving mutant (file, function, line,
diff), which survivors are equivalent mutants and why (`[[equivalent]]` in mutants.toml, matched by file, function
and the mutated line), the config (which tests ran), the git commit and the wall time. Run: `make mutation`
(about 10-15 minutes on 2 CPU cores).

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
import tomllib
from importlib.metadata import version
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS = REPO_ROOT / "results" / "mutation.json"
WORKDIR = REPO_ROOT / "build" / "mutation"
TABLES = Path(__file__).with_name("mutants.toml")
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def load_tables(path: Path = TABLES) -> dict:
    """mutants.toml, checked: every module exists, every equivalent survivor names a known reason."""
    tables = tomllib.loads(path.read_text(encoding="utf-8"))
    for module in tables["module"]:
        if not (REPO_ROOT / module["path"]).is_file():
            raise SystemExit(f"{path}: module {module['path']} does not exist (moved? update the table)")
    for entry in tables.get("equivalent", []):
        if entry["reason"] not in tables["reasons"]:
            raise SystemExit(f"{path}: equivalent mutant {entry} names an unknown reason")
    return tables


def mangled(function: str) -> str:
    """mutmut's name for a function (x_<function>) or a method (xǁ<Class>ǁ<method>)."""
    if "." in function:
        cls, name = function.split(".", 1)
        return f"xǁ{cls}ǁ{name}"
    return f"x_{function}"


def dotted(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def mutant_globs(modules: list[dict]) -> list[str]:
    globs = []
    for module in modules:
        if module.get("functions"):
            globs += [f"{dotted(module['path'])}.{mangled(f)}__mutmut_*" for f in module["functions"]]
        else:
            globs.append(f"{dotted(module['path'])}.*")
    return globs


def mutmut_config(tables: dict, modules: list[dict]) -> str:
    """The [tool.mutmut] section for the scratch copy's pyproject.toml."""

    def toml_list(items) -> str:
        return "[" + ", ".join(json.dumps(str(i)) for i in items) + "]"

    return "\n".join(
        [
            "",
            "[tool.mutmut]",
            'source_paths = ["dispsafe_nb/"]',
            f"only_mutate = {toml_list(m['path'] for m in modules)}",
            'also_copy = ["data/"]',
            f"pytest_add_cli_args = {toml_list(tables['pytest_args'])}",
            f"pytest_add_cli_args_test_selection = {toml_list(tables['tests'])}",
            "use_git_change_detection = false",
            "",
        ]
    )


def prepare_workdir(workdir: Path, tables: dict, modules: list[dict]) -> None:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for folder in ("dispsafe_nb", "tests", "data"):
        shutil.copytree(REPO_ROOT / folder, workdir / folder, ignore=ignore)
    text = (REPO_ROOT / "pyproject.toml").read_text()
    if "[tool.mutmut]" in text:
        raise SystemExit("pyproject.toml already has a [tool.mutmut] section: this script writes its own")
    (workdir / "pyproject.toml").write_text(text + mutmut_config(tables, modules))


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


def equivalence(tables: dict, path: str, function: str, after: str) -> dict[str, str] | None:
    """{"kind", "reason"} when this survivor is listed as equivalent in mutants.toml."""
    for entry in tables.get("equivalent", []):
        if (entry["module"], entry["function"], entry["mutated"]) == (path, function, after):
            return dict(tables["reasons"][entry["reason"]])
    return None


def collect(workdir: Path, tables: dict, modules: list[dict]) -> dict:
    """Per-file counts and every survivor, from mutmut's meta files in the scratch copy."""
    sys.path.insert(0, str(workdir))
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        from mutmut.mutation.diff_apply import get_diff_for_mutant
        from mutmut.stats import status_by_exit_code

        per_module, survivors, not_run = {}, [], []
        for module in modules:
            path = Path(module["path"])
            only = {mangled(f) for f in module.get("functions") or ()}
            meta = json.loads((Path("mutants") / f"{path}.meta").read_text())
            source = path.read_text()
            lines, spans = source.splitlines(), function_spans(source)
            counts = {"killed": 0, "survived": 0, "timeout": 0, "no_tests": 0, "other": 0, "total": 0}
            by_function: dict[str, dict[str, int]] = {}
            for key, code in sorted(meta["exit_code_by_key"].items(), key=lambda kv: _natural(kv[0])):
                name = key.rpartition(".")[2].partition("__mutmut_")[0]
                if only and name not in only:
                    continue  # a restricted file: only the listed functions count
                status = status_by_exit_code[code]
                bucket = {"killed": "killed", "survived": "survived", "timeout": "timeout"}.get(status)
                if status == "no tests":
                    bucket = "no_tests"
                if status == "not checked":
                    not_run.append(key)
                bucket = bucket or "other"
                counts[bucket] += 1
                counts["total"] += 1
                function = readable_function(name)
                fcounts = by_function.setdefault(function, {"killed": 0, "total": 0})
                fcounts["total"] += 1
                fcounts["killed"] += bucket in ("killed", "timeout")
                if bucket in ("survived", "no_tests", "other"):
                    diff = get_diff_for_mutant(key, path=path)
                    lineno, before, after = mutated_line(diff, lines, spans.get(name, (1, len(lines))))
                    survivors.append(
                        {
                            "mutant": key,
                            "module": str(path),
                            "function": function,
                            "line": lineno,
                            "status": status,
                            "original": before,
                            "mutated": after,
                            "diff": diff,
                            "equivalent": equivalence(tables, str(path), function, after),
                        }
                    )
            counts["score"] = (
                (counts["killed"] + counts["timeout"]) / counts["total"] if counts["total"] else None
            )
            counts["by_function"] = by_function
            per_module[str(path)] = counts
        return {"modules": per_module, "survivors": survivors, "not_run": not_run}
    finally:
        os.chdir(cwd)


def _natural(key: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key))


def git_commit() -> dict[str, object]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    tracked = ["dispsafe_nb", "tests", "tools/mutation"]
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", *tracked))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested in parallel (default 2)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--workdir", default=str(WORKDIR))
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the report from the last run's results in the scratch copy (e.g. after editing mutants.toml)",
    )
    parser.add_argument(
        "--only",
        action="append",
        help="mutate only the files whose path contains this text (repeatable; for development)",
    )
    args = parser.parse_args()
    tables = load_tables()
    modules = [m for m in tables["module"] if not args.only or any(o in m["path"] for o in args.only)]
    if not modules:
        raise SystemExit(f"--only {args.only} matches no module of {TABLES}")
    os.environ.update(THREAD_ENV)

    workdir = Path(args.workdir)
    run_info = workdir / "run.json"
    if not args.report_only:
        started = time.time()
        prepare_workdir(workdir, tables, modules)
        log = workdir / "mutmut.log"
        rc = run_mutmut(workdir, args.jobs, mutant_globs(modules), log)
        if rc != 0:
            print(log.read_text()[-4000:])
            raise SystemExit(f"mutmut run exited with {rc}; its log is {log}")
        info = {"wall_time_s": round(time.time() - started, 1), "git": git_commit(), "jobs": args.jobs}
        run_info.write_text(json.dumps(info))
    if not run_info.exists():
        raise SystemExit(f"no finished run in {workdir}: run without --report-only first")
    info = json.loads(run_info.read_text())
    wall = info["wall_time_s"]

    found = collect(workdir, tables, modules)
    survivors = found["survivors"]
    totals = {
        k: sum(m[k] for m in found["modules"].values())
        for k in ("killed", "survived", "timeout", "no_tests", "other", "total")
    }
    caught = totals["killed"] + totals["timeout"]
    totals["score"] = caught / totals["total"]
    equivalent = [
        {
            "module": s["module"],
            "function": s["function"],
            "line": s["line"],
            "mutated": s["mutated"],
            **s["equivalent"],
        }
        for s in survivors
        if s["equivalent"]
    ]
    by_kind = {k: sum(e["kind"] == k for e in equivalent) for k in sorted({e["kind"] for e in equivalent})}
    never = len(equivalent) - by_kind.get("equivalent on CPU", 0)
    totals["equivalent_by_kind"] = by_kind
    totals["score_excluding_equivalent"] = caught / (totals["total"] - never)
    totals["score_excluding_equivalent_and_cpu_only"] = caught / (totals["total"] - len(equivalent))
    for name, m in found["modules"].items():
        kinds = [e["kind"] for e in equivalent if e["module"] == name]
        m_never = sum(k != "equivalent on CPU" for k in kinds)
        m["equivalent_by_kind"] = {k: kinds.count(k) for k in sorted(set(kinds))}
        m["score_excluding_equivalent"] = (m["killed"] + m["timeout"]) / (m["total"] - m_never)
        m["score_excluding_equivalent_and_cpu_only"] = (m["killed"] + m["timeout"]) / (
            m["total"] - len(kinds)
        )
    open_survivors = [s for s in survivors if not s["equivalent"]]
    report = {
        "tool": {"name": "mutmut", "version": version("mutmut")},
        "score": totals["score"],
        "target": tables["target"],
        "met": totals["score"] >= tables["target"],
        "totals": totals,
        "modules": found["modules"],
        "equivalent": equivalent,
        "not_equivalent_survivors": [
            {k: s[k] for k in ("mutant", "module", "function", "line", "status", "mutated")}
            for s in open_survivors
        ],
        "survivors": survivors,
        "not_run": found["not_run"],
        "config": {
            "modules": modules,
            "tables": str(TABLES.relative_to(REPO_ROOT)),
            "mutant_globs": mutant_globs(modules),
            "tests": tables["tests"],
            "pytest_args": tables["pytest_args"],
            "jobs": info["jobs"],
            "threads_per_process": 1,
            "score": "(killed + timeout) / total; survivors and mutants no test reaches count against it",
        },
        "git": info["git"],
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "wall_time_s": round(wall, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"mutation score {totals['score']:.1%} ({caught}/{totals['total']}), target {tables['target']:.0%}")
    for name, m in found["modules"].items():
        print(
            f"  {name}: {m['score']:.1%} (killed {m['killed']}, timeout {m['timeout']}, survived {m['survived']}, "
            f"no tests {m['no_tests']}, total {m['total']}; equivalent survivors {m['equivalent_by_kind']})"
        )
    print(
        f"{len(survivors)} survivors: {len(equivalent)} judged equivalent {by_kind}, {len(open_survivors)} open; "
        f"wall time {wall / 60:.1f} min -> {out}"
    )
    for s in open_survivors:
        print(f"  open: {s['module']}:{s['line']} {s['function']}: {s['mutated']}")


if __name__ == "__main__":
    main()
