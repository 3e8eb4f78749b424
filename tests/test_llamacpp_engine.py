"""The llama.cpp engine on the real 4-bit GGUF: the same token ids as PyTorch, answers independent of their batch,
a soft prompt fed as input embeddings (checked against the tokens whose embeddings it copies), clear errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from dispsafe_nb.core import DecodingConfig
from dispsafe_nb.core.llamacpp_engine import LlamaCppError, gguf_sha256, runtime_for
from dispsafe_nb.core.llm import generate_with_prefix
from dispsafe_nb.core.scoring import sequence_logprobs

pytestmark = pytest.mark.slow

PROMPTS = [
    "How do I bake bread?",
    "Name three primary colours.",
    "How can I kill a Python process?",
    "Write a haiku about the sea.",
    "What is the capital of France?",
]
GREEDY = DecodingConfig(max_new_tokens=12)
SAMPLED = DecodingConfig(max_new_tokens=12, temperature=0.9, top_p=0.95, seed=3)


def _ids(generations):
    return [[g.token_ids for g in row] for row in generations]


def test_llama_cpp_receives_the_token_ids_pytorch_decodes(llm, monkeypatch):
    runtime = runtime_for(llm.gguf_file)
    seen = {}
    real = runtime.generate

    def spy(rows, **kwargs):
        seen["rows"] = [list(r) for r in rows]
        return real(rows, **kwargs)

    monkeypatch.setattr(runtime, "generate", spy)
    generate_with_prefix(llm, PROMPTS[:3], None, GREEDY, engine="llamacpp")
    expected = [llm.tokenizer(llm.chat_text(p), add_special_tokens=False)["input_ids"] for p in PROMPTS[:3]]
    assert sorted(seen["rows"]) == sorted(expected)


@pytest.mark.parametrize("decoding", [GREEDY, SAMPLED], ids=["greedy", "seeded-sampling"])
def test_an_answer_does_not_depend_on_the_other_prompts_in_its_batch(llm, decoding):
    together = generate_with_prefix(
        llm, PROMPTS, None, decoding, details=True, engine="llamacpp", per_prompt_seed=True, num_samples=2
    )
    alone = [
        generate_with_prefix(
            llm, [p], None, decoding, details=True, engine="llamacpp", per_prompt_seed=True, num_samples=2
        )[0]
        for p in PROMPTS[:3]
    ]
    assert _ids(together[:3]) == _ids(alone)
    if decoding is SAMPLED:  # two samples of one prompt come from two streams
        assert any(row[0].token_ids != row[1].token_ids for row in together)


def test_where_greedy_answers_part_pytorch_saw_a_near_tie(llm):
    """4-bit kernels with 8-bit activations are not fp32 (logits move by up to ~2 here): a greedy answer may take
    another token where PyTorch's top two are close, never one PyTorch thought far less likely."""
    cpp = generate_with_prefix(llm, PROMPTS, None, GREEDY, details=True, engine="llamacpp")
    for prompt, answer in zip(PROMPTS, cpp, strict=True):
        ids = torch.tensor([llm.tokenizer(llm.chat_text(prompt), add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = llm.model(input_ids=ids).logits[0, -1]
        first = answer[0].token_ids[0]
        assert logits.max() - logits[first] < 1.0, (prompt, llm.tokenizer.decode([first]))
    fast = generate_with_prefix(llm, PROMPTS, None, GREEDY, details=True, engine="fast")
    assert sum(a[0].token_ids[0] == b[0].token_ids[0] for a, b in zip(cpp, fast, strict=True)) >= 3


def test_log_probabilities_of_a_continuation_track_pytorch(llm):
    answers = generate_with_prefix(llm, PROMPTS, None, GREEDY, details=True, engine="fast")
    conts = [a[0].token_ids for a in answers]
    rows = [llm.tokenizer(llm.chat_text(p), add_special_tokens=False)["input_ids"] for p in PROMPTS]
    cpp = runtime_for(llm.gguf_file).continuation_logprobs(rows, conts, prefix=None)
    ours = sequence_logprobs(llm, PROMPTS, None, response_ids=conts, append_eos=False)
    cpp_sums = np.array([c.sum() for c in cpp])
    assert all(len(c) == len(t) for c, t in zip(cpp, conts, strict=True))
    assert np.corrcoef(cpp_sums, ours.numpy())[0, 1] > 0.95
    assert np.abs(cpp_sums - ours.numpy()).max() < 0.25 * np.abs(ours.numpy()).max()


def test_a_soft_prompt_of_token_embeddings_answers_as_those_tokens(llm):
    """The prefix goes in as input embeddings: a prefix that copies the embeddings of some text must give the
    log-probabilities that text's tokens give in front of the chat prompt (the same positions, the same vectors)."""
    text_ids = llm.tokenizer("Answer briefly and politely.", add_special_tokens=False)["input_ids"]
    prefix = llm.model.get_input_embeddings().weight[text_ids].detach().float().numpy()
    runtime = runtime_for(llm.gguf_file)
    rows = [llm.tokenizer(llm.chat_text(p), add_special_tokens=False)["input_ids"] for p in PROMPTS[:3]]
    conts = [llm.tokenizer(" Sure, here it is.", add_special_tokens=False)["input_ids"]] * 3
    as_vectors = runtime.continuation_logprobs(rows, conts, prefix=prefix)
    as_tokens = runtime.continuation_logprobs([text_ids + r for r in rows], conts, prefix=None)
    for a, b in zip(as_vectors, as_tokens, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-3)


def test_the_soft_prompt_is_decoded_once_and_shared(llm, monkeypatch):
    runtime = runtime_for(llm.gguf_file)
    prefix = torch.randn(5, llm.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.02
    calls = []
    real = runtime._decode_embeddings
    monkeypatch.setattr(runtime, "_decode_embeddings", lambda v, s: calls.append(s) or real(v, s))
    first = generate_with_prefix(llm, PROMPTS, prefix, GREEDY, engine="llamacpp", batch_size=2)
    again = generate_with_prefix(llm, PROMPTS, prefix, GREEDY, engine="llamacpp", batch_size=2)
    assert len(calls) == 1, "three micro-batches and a second call read one computation of the prefix"
    assert again == first
    assert generate_with_prefix(llm, PROMPTS[:2], prefix * 2, GREEDY, engine="llamacpp") is not None
    assert len(calls) == 2, "a different prefix is computed anew"


def test_bad_input_says_what_to_change(llm):
    with pytest.raises(LlamaCppError, match="trained for another model"):
        generate_with_prefix(llm, PROMPTS[:1], torch.zeros(3, llm.hidden_size + 1), GREEDY, engine="llamacpp")
    with pytest.raises(ValueError, match="per_prompt_seed=True"):
        generate_with_prefix(llm, PROMPTS[:1], None, SAMPLED, engine="llamacpp")
    from dataclasses import replace

    with pytest.raises(LlamaCppError, match="GGUF"):
        generate_with_prefix(replace(llm, gguf_file=None), PROMPTS[:1], None, GREEDY, engine="llamacpp")


def test_the_gguf_checksum_is_the_files(llm):
    assert gguf_sha256(llm.gguf_file) == hashlib.sha256(llm.gguf_file.read_bytes()).hexdigest()


def test_an_llm_on_llama_cpp_names_its_engine_and_file_in_every_cache_key(llm):
    from dispsafe_nb.system.teacher_cache import teacher_cache_key

    cpp = llm.with_engine("llamacpp")
    assert cpp.model is llm.model and llm.engine == "fast", (
        "a copy sharing the weights; the original unchanged"
    )
    assert "engine" not in llm.describe(), "the default engine keeps the keys made before engines existed"
    assert cpp.describe()["engine"] == "llamacpp"
    assert cpp.describe()["gguf_sha256"] == gguf_sha256(llm.gguf_file)
    keys = [teacher_cache_key(m.describe(), {}, "no", SAMPLED, 2) for m in (llm, cpp, llm.with_engine("hf"))]
    assert len({repr(k) for k in keys}) == 3
    with pytest.raises(ValueError, match="Did you mean 'llamacpp'"):
        llm.with_engine("llamacp")


def test_systems_built_on_the_llama_cpp_llm_generate_through_it(llm):
    from dispsafe_nb.methods import new_method

    cpp = llm.with_engine("llamacpp")
    student = new_method("soft_prompt", llm, n_tokens=4, seed=0)
    direct = generate_with_prefix(llm, PROMPTS[:3], student.prefix().detach(), GREEDY, engine="llamacpp")
    assert student.bind(cpp).generate(PROMPTS[:3], decoding=GREEDY) == direct
    assert cpp.generate(PROMPTS[:3], decoding=GREEDY) == generate_with_prefix(
        llm, PROMPTS[:3], None, GREEDY, engine="llamacpp"
    )
    lora = new_method("lora", llm, seed=0)
    with pytest.raises(LlamaCppError, match="lora method changes the model inside its layers"):
        lora.bind(cpp).generate(PROMPTS[:1], decoding=GREEDY)


def test_a_steering_vector_runs_as_llama_cpps_control_vector(llm):
    """The same vector after the same layer moves llama.cpp's log-probabilities as the PyTorch hook moves
    PyTorch's (the two engines' base log-probs differ a little; their changes under steering must agree)."""
    from dispsafe_nb.methods import new_method

    steering = new_method("steering_vector", llm, steering_layer=15, seed=0)
    with torch.no_grad():
        steering.v.copy_(3.0 * torch.randn(llm.hidden_size, generator=torch.Generator().manual_seed(1)))
    refusal = "I cannot help with that."
    runtime = runtime_for(llm.gguf_file)
    rows = [llm.tokenizer(llm.chat_text(p), add_special_tokens=False)["input_ids"] for p in PROMPTS]
    conts = [llm.tokenizer(refusal, add_special_tokens=False)["input_ids"]] * len(PROMPTS)
    layer, vector = steering.control_vector()
    cpp = {
        name: np.array([v.sum() for v in runtime.continuation_logprobs(rows, conts, prefix=None, steering=s)])
        for name, s in (("base", None), ("steered", (layer, vector.numpy())))
    }
    base = sequence_logprobs(llm, PROMPTS, [refusal] * len(PROMPTS), append_eos=False).numpy()
    with torch.no_grad(), steering.active(llm):
        steered = sequence_logprobs(llm, PROMPTS, [refusal] * len(PROMPTS), append_eos=False).numpy()
    moved_cpp, moved_torch = cpp["steered"] - cpp["base"], steered - base
    assert np.abs(moved_torch).mean() > 1.0, "the vector must matter for the comparison to mean anything"
    assert np.corrcoef(moved_cpp, moved_torch)[0, 1] > 0.9
    assert np.abs(moved_cpp - moved_torch).max() < 0.25 * np.abs(moved_torch).max()
    cpp_llm = llm.with_engine("llamacpp")
    answers = steering.bind(cpp_llm).generate(PROMPTS[:2], decoding=GREEDY)
    assert answers != cpp_llm.generate(PROMPTS[:2], decoding=GREEDY), "the control vector is applied..."
    assert cpp_llm.generate(PROMPTS[:2], decoding=GREEDY) == generate_with_prefix(
        llm, PROMPTS[:2], None, GREEDY, engine="llamacpp"
    ), "...and removed for the next request"
    with pytest.raises(LlamaCppError, match="layers 1..29"):
        runtime.generate(
            rows[:1], prefix=None, max_new_tokens=2, eos_id=2, choose=None, steering=(0, vector.numpy())
        )


def test_a_bf16_copy_refuses_methods_whose_hooks_it_would_miss(llm):
    from dispsafe_nb.methods import new_method

    with pytest.raises(ValueError, match="hooks and adapters do not reach"):
        new_method("steering_vector", llm, seed=0).bind(llm.with_engine("fast_bf16")).generate(PROMPTS[:1])


def test_with_a_soft_prompt_an_answer_does_not_depend_on_its_micro_batch(llm):
    """Rows of different lengths prefilled in one llama.cpp call changed answers with their batch mates (one prompt
    in five, with random soft prompts); each row's prefill runs alone, so every split gives the same answers."""
    longer = DecodingConfig(max_new_tokens=24)
    for seed in (102, 105):  # prefixes that changed an answer before the fix
        prefix = torch.randn(5, llm.hidden_size, generator=torch.Generator().manual_seed(seed)) * 0.02
        splits = [
            generate_with_prefix(llm, PROMPTS, prefix, longer, engine="llamacpp", batch_size=size)
            for size in (2, 5)
        ]
        alone = [generate_with_prefix(llm, [p], prefix, longer, engine="llamacpp")[0] for p in PROMPTS]
        assert splits[0] == splits[1] == alone
