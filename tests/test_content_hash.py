"""Caches are keyed by what the code says, not where it lives: `code_digest` survives moving definitions between
modules, a new import line, a docstring or a comment, and follows every change to what a definition does."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import torch

from dispsafe_nb.common.content_hash import code_digest, stable_hash
from dispsafe_nb.guards import guard_training
from dispsafe_nb.guards.guard_training import GuardTrainingConfig, guard_key

ONE_MODULE = '''
"""Two helpers in one module."""
import math

SCALE = 2.0


def double(x):
    """Twice x."""
    return SCALE * x  # a comment


def root(x):
    return math.sqrt(x)
'''

# The same definitions split over two modules, in another order, with other imports, docstrings and comments.
FIRST_HALF = '''
"""The root, moved here."""
from math import sqrt  # imported another way
import math


def root(x):
    """The square root."""
    return math.sqrt(x)
'''
SECOND_HALF = """
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from elsewhere import Thing

SCALE = 2.0


def double(x):
    return SCALE * x
"""


def _module(folder: Path, name: str, source: str):
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"dispsafe_nb.digest_case_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_moving_definitions_between_modules_keeps_the_digest(tmp_path):
    whole = _module(tmp_path, "whole", ONE_MODULE)
    first, second = _module(tmp_path, "first", FIRST_HALF), _module(tmp_path, "second", SECOND_HALF)
    assert code_digest(whole) == code_digest(first, second) == code_digest(second, first)


def test_lists_of_module_names_do_not_count_other_strings_do(tmp_path):
    plain = code_digest(_module(tmp_path, "plain", ONE_MODULE))
    places = 'CODE = ("dispsafe_nb.a", "dispsafe_nb.b")\n'
    assert code_digest(_module(tmp_path, "places", ONE_MODULE + places)) == plain
    words = 'CODE = ("dispsafe_nb.a", "not a module")\n'
    assert code_digest(_module(tmp_path, "words", ONE_MODULE + words)) != plain


def test_every_change_to_what_the_code_does_changes_the_digest(tmp_path):
    base = code_digest(_module(tmp_path, "base", ONE_MODULE))
    edits = {
        "a body": ONE_MODULE.replace("SCALE * x", "SCALE * x + 1"),
        "a constant": ONE_MODULE.replace("SCALE = 2.0", "SCALE = 3.0"),
        "a name": ONE_MODULE.replace("def root", "def square_root"),
        "a new definition": ONE_MODULE + "\n\ndef third(x):\n    return x\n",
        "a removed definition": ONE_MODULE.split("def root")[0],
        "a default": ONE_MODULE.replace("def double(x)", "def double(x=1)"),
    }
    for i, (what, source) in enumerate(edits.items()):
        assert code_digest(_module(tmp_path, f"edit{i}", source)) != base, what


def test_stable_hash_is_canonical():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_the_guard_key_follows_the_guard_code(monkeypatch):
    # The modules that define a trained guard: its training code, the guards and the encoders.
    assert any(name.endswith("guard_training") for name in guard_training.GUARD_CODE)
    assert any(name.endswith("encoders") for name in guard_training.GUARD_CODE)
    assert (
        code_digest(*map(importlib.import_module, guard_training.GUARD_CODE))[:12]
        == guard_training.code_version()
    )
    train = {
        "prompts": ["p"],
        "prompt_labels": torch.tensor([1.0]),
        "prompt_weights": torch.tensor([1.0]),
        "responses": ["r"],
        "response_labels": torch.tensor([0.0]),
    }
    key = guard_key(GuardTrainingConfig(), train)
    assert guard_key(GuardTrainingConfig(), train) == key
    monkeypatch.setattr(guard_training, "code_version", lambda: "edited")
    assert guard_key(GuardTrainingConfig(), train) != key
