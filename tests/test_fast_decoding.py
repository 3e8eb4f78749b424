"""The decoding loop and the soft prompt's prefix KV cache against transformers' generate() and the uncached
scoring path, on a tiny random Llama with the default model's tokenizer (no weights loaded)."""

from __future__ import annotations

import pytest
import torch

from dispsafe_nb.core.decoding import DecodingConfig, RowSeededSampler
from dispsafe_nb.core.fast_decoding import decode
from dispsafe_nb.core.llm import _generate_batch
from dispsafe_nb.core.prefix_cache import PrefixCache, StalePrefixCacheError
from dispsafe_nb.core.scoring import sequence_logprobs

PROMPTS = ["Hello there", "a", "What is the capital of France? Tell me more about it, please."]


@pytest.fixture(scope="module")
def tiny(tiny_chat_llm):
    return tiny_chat_llm


@pytest.fixture(scope="module")
def batch(tiny):
    return tiny.encode_chat(PROMPTS)


@pytest.fixture(scope="module")
def prefix():
    return torch.randn(5, 64, generator=torch.Generator().manual_seed(1))


class EosAt:
    """A logits processor that forces end-of-turn in row r at step s ({r: s}), greedy otherwise."""

    def __init__(self, eos: int, steps: dict[int, int]):
        self.eos, self.steps, self.calls = eos, steps, 0

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for row, step in self.steps.items():
            if step == self.calls:
                scores[row] = float("-inf")
                scores[row, self.eos] = 0.0
        self.calls += 1
        return scores


def test_greedy_tokens_equal_generate_s(tiny, batch):
    ours = decode(tiny, batch["input_ids"], batch["attention_mask"], 12)
    assert torch.equal(ours, _generate_batch(tiny, batch, None, DecodingConfig(max_new_tokens=12), 1))


def test_a_cached_prefix_gives_the_tokens_of_the_prefix_inside_the_prompt(tiny, batch, prefix):
    greedy = DecodingConfig(max_new_tokens=12)
    ours = decode(
        tiny, batch["input_ids"], batch["attention_mask"], 12, prefix_cache=PrefixCache(tiny, prefix)
    )
    assert torch.equal(ours, _generate_batch(tiny, batch, prefix, greedy, 1))  # [pad | prefix | chat] there


def test_row_seeded_sampling_draws_the_same_tokens(tiny, batch, prefix):
    sampled, seeds = DecodingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3), [11, 12, 13]
    ours = decode(
        tiny,
        batch["input_ids"],
        batch["attention_mask"],
        10,
        prefix_cache=PrefixCache(tiny, prefix),
        processor=RowSeededSampler(seeds, 1.0, 0.9),
    )
    assert torch.equal(ours, _generate_batch(tiny, batch, prefix, sampled, 1, seeds))


def test_finished_rows_are_padded_and_decoding_stops_when_all_have_finished(tiny, batch):
    from transformers import LogitsProcessorList

    eos, pad = tiny.tokenizer.eos_token_id, tiny.tokenizer.pad_token_id
    ours = decode(
        tiny, batch["input_ids"], batch["attention_mask"], 20, processor=EosAt(eos, {0: 2, 1: 4, 2: 5})
    )
    assert ours.shape == (3, 6)
    assert ours[0, 2] == eos and (ours[0, 3:] == pad).all() and ours[2, 5] == eos
    theirs = tiny.model.generate(
        **batch,
        max_new_tokens=20,
        do_sample=False,
        pad_token_id=pad,
        eos_token_id=eos,
        logits_processor=LogitsProcessorList([EosAt(eos, {0: 2, 1: 4, 2: 5})]),
    )
    assert torch.equal(ours, theirs[:, batch["input_ids"].shape[1] :])


def test_scoring_with_the_cache_matches_the_prefix_in_the_prompt(tiny, prefix):
    responses = ["Paris is the capital.", "No.", "It is a city of about two million people."]
    with torch.no_grad():
        inline = sequence_logprobs(tiny, PROMPTS, responses, prefix=prefix)
        cached = sequence_logprobs(tiny, PROMPTS, responses, prefix_cache=PrefixCache(tiny, prefix))
    torch.testing.assert_close(cached, inline, atol=1e-5, rtol=1e-6)  # float32 sums of ~100 log-probs
    with pytest.raises(ValueError, match="at most one of prefix, method and prefix_cache"):
        sequence_logprobs(tiny, PROMPTS, responses, prefix=prefix, prefix_cache=PrefixCache(tiny, prefix))


def test_the_cache_holds_n_keys_and_values_per_layer_and_refuses_a_changed_prompt(tiny, prefix):
    weight = prefix.clone()
    cache = PrefixCache(tiny, weight)
    assert (
        cache.n_tokens == 5 and cache.nbytes() == 2 * 3 * (2 * 16) * 5 * 4
    )  # (k, v) x layers x (K x h) x N x fp32
    assert cache.expand(3).layers[0].keys.shape == (3, 2, 5, 16)
    weight.add_(0.1)  # a training step, in place
    with pytest.raises(StalePrefixCacheError, match="build a new PrefixCache"):
        cache.expand(1)


def test_bad_prefixes_and_lengths_say_what_to_fix(tiny, batch, prefix):
    with pytest.raises(ValueError, match="N x d with N >= 1"):
        PrefixCache(tiny, prefix[0])
    with pytest.raises(ValueError, match="width 32 but model 'tiny-llama' has hidden size 64"):
        PrefixCache(tiny, torch.zeros(4, 32))
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        decode(tiny, batch["input_ids"], batch["attention_mask"], 0)


@pytest.mark.parametrize("with_prefix", [False, True])
def test_both_engines_give_the_same_answers(tiny, prefix, with_prefix):
    from dispsafe_nb.core.llm import generate_with_prefix

    p = prefix if with_prefix else None
    for decoding, samples, kwargs in (
        (DecodingConfig(max_new_tokens=8), 1, {}),
        (DecodingConfig(max_new_tokens=8, temperature=0.7, top_p=0.95, seed=2), 2, {"per_prompt_seed": True}),
    ):
        runs = [
            generate_with_prefix(tiny, PROMPTS, p, decoding, 2, samples, details=True, engine=e, **kwargs)
            for e in ("fast", "hf")
        ]
        assert runs[0] == runs[1]
    with pytest.raises(ValueError, match="Unknown generation engine 'vllm'"):
        generate_with_prefix(tiny, PROMPTS, p, engine="vllm")


def test_bf16_decoding_runs_on_a_copy_and_refuses_hooks(tiny, prefix):
    from dispsafe_nb.core.fast_decoding import bf16_twin
    from dispsafe_nb.core.llm import generate_with_prefix

    twin = bf16_twin(tiny)
    assert twin.model.dtype == torch.bfloat16 and tiny.model.dtype == torch.float32
    assert bf16_twin(tiny).model is twin.model  # made once per model
    out = generate_with_prefix(
        tiny, PROMPTS, prefix, DecodingConfig(max_new_tokens=6), details=True, engine="fast_bf16"
    )
    assert len(out) == 3 and all(len(g[0].token_ids) <= 6 for g in out)
    with pytest.raises(ValueError, match="per_prompt_seed=True only"):
        generate_with_prefix(tiny, PROMPTS, None, DecodingConfig(temperature=1.0), engine="fast_bf16")
    handle = tiny.model.model.layers[0].register_forward_hook(lambda module, args, output: output)
    try:
        with pytest.raises(ValueError, match="hooks or adapters"):
            bf16_twin(tiny)
    finally:
        handle.remove()


def test_a_generation_config_with_logits_processors_decodes_through_generate(tiny):
    from dispsafe_nb.core.fast_decoding import plain_generation_config
    from dispsafe_nb.core.llm import generate_with_prefix

    assert plain_generation_config(tiny.model)
    greedy = DecodingConfig(max_new_tokens=8)
    tiny.model.generation_config.repetition_penalty = 1.5
    try:
        assert not plain_generation_config(tiny.model)
        runs = [
            generate_with_prefix(tiny, PROMPTS, None, greedy, details=True, engine=e) for e in ("fast", "hf")
        ]
        assert runs[0] == runs[1]  # the penalty applies on both: "fast" handed the batch to generate()
        with pytest.raises(ValueError, match="adds no logits processor"):
            generate_with_prefix(tiny, PROMPTS, None, greedy, engine="fast_bf16")
    finally:
        tiny.model.generation_config.repetition_penalty = None
