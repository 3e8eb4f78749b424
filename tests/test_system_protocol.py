"""One `System` interface: the base LLM, the dual system and every bound method answer the same
`generate(prompts, *, decoding, batch_size, num_samples, progress, per_prompt_seed)` with keyword-only options and
the same defaults, and describe themselves. Nothing here loads a model."""

from __future__ import annotations

import inspect

import pytest

from dispsafe_nb.core.llm import LLM
from dispsafe_nb.core.system import System
from dispsafe_nb.methods.base import MethodSystem
from dispsafe_nb.system.dual_system import SafeSystem

SYSTEMS = (LLM, SafeSystem, MethodSystem)


def _options(fn) -> dict[str, inspect.Parameter]:
    params = list(inspect.signature(fn).parameters.values())[1:]  # after self
    assert params[0].name == "prompts" and params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    return {p.name: p for p in params[1:]}


@pytest.mark.parametrize("cls", SYSTEMS, ids=lambda c: c.__name__)
def test_every_system_answers_the_protocol_with_keyword_only_options(cls):
    ours, protocol = _options(cls.generate), _options(System.generate)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours.values()), (
        f"{cls.__name__}.generate: options after prompts must be keyword-only"
    )
    for name, expected in protocol.items():
        assert name in ours, f"{cls.__name__}.generate lacks {name}"
        assert ours[name].default == expected.default, f"{cls.__name__}.generate: {name} defaults differ"
    assert callable(getattr(cls, "describe", None))


def test_a_positional_decoding_is_refused_with_a_clear_error():
    system = MethodSystem.__new__(MethodSystem)
    with pytest.raises(TypeError, match="positional"):
        system.generate(["hi"], None)
