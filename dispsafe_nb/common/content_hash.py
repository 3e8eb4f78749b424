"""Content hashes: a stable hash of JSON-able data (checksums, cache keys) and a digest of code by what it says.

`code_digest` keys a cache by the code it depends on, read as Python reads it: every top-level definition by its
name, without docstrings, comments, formatting, import lines or lists of module names (the constants that say where
code lives, such as `guard_training.GUARD_CODE`). Moving a definition to another module, renaming or
reordering modules, or changing how a name is imported keeps the digest; changing what any definition does, adding
or removing one, gives a new digest. So a cached guard, teacher sample or evaluation record survives a
reorganisation of the package and is recomputed after a real change to its code.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
from pathlib import Path
from types import ModuleType
from typing import Any


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stable_hash(obj: Any) -> str:
    """SHA-256 of the canonical JSON of `obj` (sorted keys): the same data gives the same hash in every run."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class _StripNonCode(ast.NodeTransformer):
    """Removes docstrings and import statements, the parts of a module that a move or a doc edit changes."""

    def _strip_docstring(self, node: Any) -> Any:
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            if isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> Any:
        return self._strip_docstring(self.generic_visit(node))

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815

    def visit_ClassDef(self, node: ast.ClassDef) -> Any:
        return self._strip_docstring(self.generic_visit(node))

    def visit_Import(self, node: ast.Import) -> Any:
        return None

    def visit_ImportFrom(self, node: ast.ImportFrom) -> Any:
        return None

    def generic_visit(self, node: ast.AST) -> ast.AST:
        node = super().generic_visit(node)
        if getattr(node, "body", None) == []:  # a block left empty by its removed imports stays valid
            node.body = [ast.Pass()]
        return node


def _is_type_checking_block(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.If) and ast.unparse(stmt.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _is_module_list(stmt: ast.stmt, package: str) -> bool:
    """`NAME = ("package.a", "package.b")`: a list of places, which a move changes and what the code does does not."""
    value = stmt.value if isinstance(stmt, (ast.Assign, ast.AnnAssign)) else None
    if not isinstance(value, (ast.Tuple, ast.List)) or not value.elts:
        return False
    return all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value.startswith(f"{package}.")
        for e in value.elts
    )


def _definitions(module: ModuleType) -> list[tuple[str, str]]:
    """(name, normalised code) of every top-level statement of `module` that is not an import or a docstring."""
    tree = ast.parse(inspect.getsource(module))
    out = []
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)) or _is_type_checking_block(stmt):
            continue
        if _is_module_list(stmt, module.__name__.split(".")[0]):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(
            stmt.value, ast.Constant
        ):  # module docstring, bare strings
            continue
        stripped = _StripNonCode().visit(stmt)
        if stripped is None:
            continue
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = stmt.name
        else:
            name = ",".join(sorted(n.id for n in ast.walk(stmt) if isinstance(n, ast.Name)))
        out.append((name, ast.unparse(stripped)))
    return out


def code_digest(*modules: ModuleType) -> str:
    """A 16-hex digest of the code of `modules`, by content (see the module docstring): the definitions of all
    `modules` together, sorted by name, so the digest does not depend on which module holds which definition."""
    definitions = sorted(d for module in modules for d in _definitions(module))
    return stable_hash(definitions)[:16]
