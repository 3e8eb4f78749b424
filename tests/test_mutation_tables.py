"""The mutation tool's tables (tools/mutation/mutants.toml) stay true to the tree: every file and function it
mutates exists, every survivor judged equivalent names a known reason and a function of its file, and the mutant
names mutmut is asked for are the ones it makes. (`make mutation` runs the tool itself; not part of the suite.)"""

from __future__ import annotations

import ast
import importlib.util

from dispsafe_nb.common.paths import REPO_ROOT

TOOL = REPO_ROOT / "tools" / "mutation" / "run.py"


def _tool():
    spec = importlib.util.spec_from_file_location("mutation_run", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _functions(path) -> set[str]:
    names = set()
    for node in ast.parse((REPO_ROOT / path).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{f.name}" for f in node.body if isinstance(f, ast.FunctionDef)}
    return names


def test_every_module_function_and_equivalent_survivor_exists():
    tool = _tool()
    tables = tool.load_tables()
    assert tables["module"] and tables["tests"]
    for module in tables["module"]:
        missing = set(module.get("functions") or ()) - _functions(module["path"])
        assert not missing, f"{module['path']} has no {missing}"
    for test in tables["tests"]:
        assert (REPO_ROOT / test).is_file(), test
    for entry in tables["equivalent"]:
        assert entry["function"] in _functions(entry["module"]), entry
        assert entry["reason"] in tables["reasons"], entry


def test_mutant_names_follow_mutmut():
    tool = _tool()
    assert tool.mangled("BatchLoss.clipped") == "xǁBatchLossǁclipped"
    assert tool.mangled("learning_rate") == "x_learning_rate"
    globs = tool.mutant_globs(
        [
            {"path": "dispsafe_nb/theory/divergences.py"},
            {"path": "dispsafe_nb/training/config.py", "functions": ["learning_rate"]},
        ]
    )
    assert globs == [
        "dispsafe_nb.theory.divergences.*",
        "dispsafe_nb.training.config.x_learning_rate__mutmut_*",
    ]
