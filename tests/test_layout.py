"""The package's layout stays readable: the README's package map and each folder's docstring match the tree,
modules stay small, and no module imports another module's private names. (Layers and cycles: import-linter's
contracts in pyproject.toml, run by `make test`.)"""

from __future__ import annotations

import ast
import re

import pytest

from dispsafe_nb.common.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "dispsafe_nb"
MAX_LINES = 500
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


def _tree() -> dict[str, set[str]]:
    """folder -> its modules (without __init__), for every subpackage of dispsafe_nb."""
    return {
        folder.name: {f.stem for f in folder.glob("*.py") if f.name != "__init__.py"}
        for folder in PACKAGE.iterdir()
        if (folder / "__init__.py").is_file()
    }


def _readme_map() -> dict[str, set[str]]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Package map", 1)[1].split("```", 2)[1]
    found: dict[str, set[str]] = {}
    folder = None
    for line in block.splitlines():
        if match := re.match(r"^  ([a-z_]+)/\s", line + " "):
            folder = match.group(1)
            found[folder] = set()
        elif line.startswith("    ") and not line.startswith("     ") and folder is not None:
            found[folder] |= {tok for tok in re.split(r"\s{2,}", line.strip()) if IDENTIFIER.match(tok)}
        elif not line.startswith("  "):
            folder = None  # a top-level entry (notebooks/, tests/ ...)
    return found


def test_the_readme_package_map_matches_the_tree():
    tree, readme = _tree(), _readme_map()
    assert set(readme) == set(tree), (
        f"folders: README only {set(readme) - set(tree)}, tree only {set(tree) - set(readme)}"
    )
    for folder, modules in tree.items():
        assert readme[folder] == modules, (
            f"{folder}/: README only {readme[folder] - modules}, tree only {modules - readme[folder]}"
        )
    top = (PACKAGE / "__init__.py").read_text(encoding="utf-8")
    assert not [f for f in PACKAGE.glob("*.py") if f.name != "__init__.py"], (
        "modules belong in a layer's folder"
    )
    for folder in tree:
        assert f"{folder}/" in top, f"the package docstring (the map) does not name {folder}/"


@pytest.mark.parametrize("folder", sorted(_tree()))
def test_each_folder_docstring_names_its_modules(folder):
    doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text(encoding="utf-8"))) or ""
    missing = [m for m in sorted(_tree()[folder]) if not re.search(rf"\b{m}\b", doc)]
    assert not missing, f"dispsafe_nb/{folder}/__init__.py's docstring does not say what {missing} hold"


def test_modules_stay_small():
    long = {
        str(f.relative_to(REPO_ROOT)): n
        for f in PACKAGE.rglob("*.py")
        if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concept): {long}"


def test_no_private_name_is_imported_across_modules():
    found = []
    for f in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dispsafe_nb"):
                found += [
                    f"{f.relative_to(REPO_ROOT)}:{node.lineno} {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not found, (
        "private names imported across modules (make them public or move the code):\n" + "\n".join(found)
    )


def test_notebook_code_cells_stay_short():
    """Notebooks teach in short cells (at most 15 lines) between markdown; the package computes."""
    import json

    long = []
    for path in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            n = len("".join(cell["source"]).splitlines())
            if cell["cell_type"] == "code" and n > 15:
                long.append(f"{path.name} cell {i}: {n} lines")
    assert not long, "code cells over 15 lines (move code into the package): " + ", ".join(long)
