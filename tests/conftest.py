"""Shared fixtures: the real default model and guard, loaded once per test session.

Tests run offline: datasets come from the mirror ($DISPSAFE_DATA, set here to ../shared/datasets when present)
and everything computed (guard, teacher samples) goes to a fresh cache folder unless DISPSAFE_TEST_CACHE names
one to reuse between runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from stand_ins import patch_everywhere

ROOT = Path(__file__).resolve().parents[1]
MIRROR = ROOT.parent / "shared" / "datasets"


# Fixtures that load the real model, guard or encoder (seconds to minutes): a test using them must be marked slow.
SLOW_FIXTURES = {"llm", "encoder", "guard", "judge_guard", "tiny_llama_dir"}


def pytest_collection_modifyitems(config, items):
    unmarked = [
        item.nodeid
        for item in items
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests load the real model or guard but are not marked @pytest.mark.slow: "
            + ", ".join(unmarked)
        )


@pytest.fixture(autouse=True)
def _fast_tests_load_nothing(request, monkeypatch):
    """A test not marked slow that loads the real model or guard by calling a loader fails, saying what to do.
    (A loader that raises -- the error paths tests check -- is let through.)"""
    if request.node.get_closest_marker("slow") is not None:
        return
    from dispsafe_nb.core import loading as models
    from dispsafe_nb.guards import encoders, guard_training

    def guarded(real):
        def load(*args, **kwargs):
            loaded = real(*args, **kwargs)
            del loaded
            raise RuntimeError(
                f"{request.node.nodeid} loads the real model or guard: mark it @pytest.mark.slow"
            )

        return load

    for module, name in (
        (models, "load_llm"),
        (encoders, "load_minilm"),
        (encoders, "load_mpnet"),
        (guard_training, "load_embedding_guard"),
        (guard_training, "load_judge_guard"),
    ):
        patch_everywhere(monkeypatch, module, name, guarded(getattr(module, name)))


@pytest.fixture(scope="session", autouse=True)
def _offline_environment(tmp_path_factory):
    if not os.environ.get("DISPSAFE_DATA") and MIRROR.is_dir():
        os.environ["DISPSAFE_DATA"] = str(MIRROR)
    os.environ["DISPSAFE_CACHE"] = os.environ.get("DISPSAFE_TEST_CACHE") or str(
        tmp_path_factory.mktemp("cache")
    )
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TQDM_DISABLE", "1")
    yield


@pytest.fixture(scope="session")
def llm(_offline_environment):
    from dispsafe_nb.core.loading import load_llm

    return load_llm()


@pytest.fixture(scope="session")
def encoder(_offline_environment):
    from dispsafe_nb.guards.encoders import load_minilm

    return load_minilm()


@pytest.fixture(scope="session")
def guard(encoder):
    if not MIRROR.is_dir() and not os.environ.get("DISPSAFE_DATA"):
        pytest.skip("the guard trains on public sets: set DISPSAFE_DATA to the dataset mirror")
    from dispsafe_nb.guards.guard_training import load_embedding_guard

    return load_embedding_guard(encoder=encoder)


@pytest.fixture(scope="session")
def judge_guard(encoder):
    """The evaluation's second judge (another seed, MLP head, frozen encoder)."""
    if not MIRROR.is_dir() and not os.environ.get("DISPSAFE_DATA"):
        pytest.skip("the judge guard trains on public sets: set DISPSAFE_DATA to the dataset mirror")
    from dispsafe_nb.guards.guard_training import load_judge_guard

    return load_judge_guard(encoder=encoder)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, llm):
    """A tiny randomly initialised Llama with the default model's tokenizer, saved as an HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(llm.tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=llm.tokenizer.pad_token_id,
        eos_token_id=llm.tokenizer.eos_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    llm.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_chat_llm():
    """A tiny random 3-layer Llama behind the default model's real tokenizer and chat template, as an `LLM`
    (the tokenizer is read from the embedded GGUF file; no weights are loaded, so fast tests may use it)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from dispsafe_nb.core.llm import LLM
    from dispsafe_nb.core.loading import EMBEDDED_MODELS, embedded_model_folder

    entry = EMBEDDED_MODELS["smollm2-135m"]
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_folder()), gguf_file=entry.gguf_file)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.2,
    )
    return LLM(LlamaForCausalLM(config).eval().requires_grad_(False), tokenizer, "tiny-llama")
