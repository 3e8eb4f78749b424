"""The soft prompt: initialisation, the method interface, artifacts, frozen backbone, batched generation."""

from __future__ import annotations

import json

import pytest
import torch

from dispsafe_nb.common.artifacts import CONFIG_FILE, ArtifactError
from dispsafe_nb.core.decoding import DecodingConfig
from dispsafe_nb.core.llm import prepend_prefix
from dispsafe_nb.core.loading import load_llm
from dispsafe_nb.methods import (
    DEFAULT_INIT_TEXT,
    SoftPrompt,
    SoftPromptSystem,
    init_soft_prompt,
)

pytestmark = pytest.mark.slow  # every test here needs the real model (or its tokenizer)

PROMPTS = ["What is the capital of France?", "How do I kill a Python process that hangs forever?"]


@pytest.fixture(scope="module")
def tiny_nf4(tiny_llama_dir):
    return load_llm(str(tiny_llama_dir), quantization="nf4", device="cpu")


def _embed_rows(llm, ids):
    with torch.no_grad():
        return llm.model.get_input_embeddings()(torch.tensor(ids, device=llm.device)).float()


def test_text_init_repeats_and_truncates_the_init_text(llm):
    ids = llm.tokenizer("Hello world", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2
    soft = init_soft_prompt(llm, n_tokens=5, init="text", init_text="Hello world")
    assert soft.W.shape == (5, llm.hidden_size) and soft.W.dtype == torch.float32
    assert torch.equal(soft.W.detach(), _embed_rows(llm, (ids * 3)[:5]))
    long_ids = llm.tokenizer(DEFAULT_INIT_TEXT, add_special_tokens=False)["input_ids"]
    short = init_soft_prompt(llm, n_tokens=3)
    assert torch.equal(short.W.detach(), _embed_rows(llm, long_ids[:3]))
    assert short.W.requires_grad and short.trainable_parameters() == [short.W]
    assert short.describe()["init_text"] == DEFAULT_INIT_TEXT


def test_random_vocab_init_is_seeded_rows_of_the_vocabulary(llm):
    a = init_soft_prompt(llm, n_tokens=6, init="random_vocab", seed=3)
    b = init_soft_prompt(llm, n_tokens=6, init="random_vocab", seed=3)
    c = init_soft_prompt(llm, n_tokens=6, init="random_vocab", seed=4)
    assert torch.equal(a.W, b.W) and not torch.equal(a.W, c.W)
    table = llm.model.get_input_embeddings().weight.detach().float()
    nearest = torch.cdist(a.W.detach(), table, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1)
    assert torch.all(nearest.values == 0)
    assert not set(nearest.indices.tolist()) & set(llm.tokenizer.all_special_ids)
    with pytest.raises(ValueError, match="init"):
        init_soft_prompt(llm, n_tokens=2, init="zeros")
    with pytest.raises(ValueError, match="n_tokens"):
        init_soft_prompt(llm, n_tokens=0)


def test_apply_inserts_the_prefix_after_left_padding(llm):
    soft = init_soft_prompt(llm, n_tokens=3)
    batch = llm.encode_chat(["Hi", "A somewhat longer prompt here"])
    embeds, mask = soft.apply(llm, batch["input_ids"], batch["attention_mask"])
    ref_embeds, ref_mask = prepend_prefix(llm, batch["input_ids"], batch["attention_mask"], soft.W)
    assert torch.equal(embeds, ref_embeds) and torch.equal(mask, ref_mask)
    n_pad = int((batch["attention_mask"][0] == 0).sum())
    assert n_pad > 0
    assert torch.equal(embeds[0, n_pad : n_pad + 3], soft.W)
    assert mask[0, :n_pad].sum() == 0 and mask[0, n_pad:].all()


def _backward_through(llm, soft):
    from dispsafe_nb.core.scoring import sequence_logprobs

    logq = sequence_logprobs(
        llm, ["Hi there", "Say something nice"], ["Hello!", "You are kind."], method=soft
    )
    assert torch.isfinite(logq).all()
    (-logq.mean()).backward()


def test_backbone_stays_frozen_only_the_soft_prompt_gets_gradients(llm):
    soft = init_soft_prompt(llm, n_tokens=2)
    _backward_through(llm, soft)
    assert soft.W.grad is not None and soft.W.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in llm.model.parameters())


def test_backbone_stays_frozen_in_nf4(tiny_nf4):
    assert tiny_nf4.quantization == "nf4"
    assert any("4bit" in type(m).__name__ for m in tiny_nf4.model.modules())
    soft = init_soft_prompt(tiny_nf4, n_tokens=4, init="random_vocab")
    assert soft.hidden_size == 64
    _backward_through(tiny_nf4, soft)
    assert soft.W.grad is not None and torch.isfinite(soft.W.grad).all() and soft.W.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_nf4.model.parameters())


def test_save_load_roundtrip_keeps_tensor_and_config(llm, tmp_path):
    soft = init_soft_prompt(llm, n_tokens=4)
    with torch.no_grad():
        soft.W.add_(0.5)  # as if trained
    train_cfg = {"objective": "tv", "lr": 1e-3, "steps": 200, "seed": 7, "data_hash": "abc123"}
    folder = soft.save(tmp_path / "sp", train_cfg)
    config = json.loads((folder / CONFIG_FILE).read_text())
    for key, value in {
        "kind": "soft_prompt",
        "model_name": llm.name,
        "hidden_size": llm.hidden_size,
        "n_tokens": 4,
        "init": "text",
        **train_cfg,
    }.items():
        assert config[key] == value, key
    loaded = SoftPrompt.load(folder, llm)
    assert torch.equal(loaded.W, soft.W) and loaded.W.requires_grad
    assert loaded.metadata == train_cfg and loaded.n_tokens == 4 and loaded.init == "text"
    # re-saving a loaded prompt keeps its training config
    again = json.loads((loaded.save(tmp_path / "sp2") / CONFIG_FILE).read_text())
    assert again == config
    with pytest.raises(ValueError, match="n_tokens"):
        soft.save(tmp_path / "bad", {"n_tokens": 99})


def test_loading_onto_another_hidden_size_names_both_sizes(llm, tiny_nf4, tmp_path):
    folder = init_soft_prompt(llm, n_tokens=2).save(tmp_path / "sp")
    with pytest.raises(ArtifactError) as err:
        SoftPrompt.load(folder, tiny_nf4)
    message = str(err.value)
    assert "576" in message and "64" in message
    assert llm.name in message and tiny_nf4.name in message
    with pytest.raises(ValueError, match="hidden size 576"):
        init_soft_prompt(llm, n_tokens=2).bind(tiny_nf4)


def test_loading_onto_another_model_name_fails_unless_not_strict(llm, tmp_path):
    soft = init_soft_prompt(llm, n_tokens=2)
    soft.model_name = "some-other-model"
    folder = soft.save(tmp_path / "sp")
    with pytest.raises(ArtifactError, match="some-other-model") as err:
        SoftPrompt.load(folder, llm)
    assert llm.name in str(err.value)
    with pytest.warns(UserWarning, match="some-other-model"):
        loaded = SoftPrompt.load(folder, llm, strict=False)
    assert torch.equal(loaded.W, soft.W)
    with pytest.raises(ArtifactError, match="missing"):
        SoftPrompt.load(tmp_path / "nowhere", llm)


def test_batched_generation_with_soft_prompt_equals_single_prompt_calls(llm):
    system = init_soft_prompt(llm, n_tokens=8).bind(llm)
    assert isinstance(system, SoftPromptSystem)
    decoding = DecodingConfig(max_new_tokens=12)
    batched = system.generate(PROMPTS, decoding=decoding, batch_size=2)
    single = [system.generate([p], decoding=decoding)[0] for p in PROMPTS]
    assert batched == single
    assert all(isinstance(a, str) and a for a in batched)
    info = system.describe()
    assert info["system"] == "soft_prompt" and info["soft_prompt"]["n_tokens"] == 8
    assert info["model"]["name"] == llm.name
