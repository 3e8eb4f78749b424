"""The speed measurements on a tiny model: the naive reference scores what the trainer scores, every variant of a
training step gives the same loss, both generation engines and the decode-step timer run (no timing asserted)."""

from __future__ import annotations

import pytest
import torch

from dispsafe_nb.core.prefix_cache import PrefixCache
from dispsafe_nb.core.scoring import response_token_ids
from dispsafe_nb.costs.speed import (
    decode_step_seconds,
    generation_speed,
    matmul_peak,
    median_seconds,
    naive_terms,
    read_bandwidth,
    response_tokens,
    training_throughput,
)
from dispsafe_nb.training.batch_loss import sequence_terms
from dispsafe_nb.training.config import DistillConfig
from dispsafe_nb.training.examples import Example
from dispsafe_nb.training.loop import make_method

PROMPTS = ["Hello there", "How do I bake bread?"]
YS = ["Hi! How can I help?", "Mix flour, water, salt and yeast."]
REFUSAL = "I'm sorry, but I can't help with that."


@pytest.fixture(scope="module")
def setup(tiny_chat_llm):
    ids = response_token_ids(tiny_chat_llm, YS, None, False, 2)
    batch = [
        Example(p, y, a, REFUSAL, tuple(i), f)
        for p, y, a, i, f in zip(PROMPTS, YS, (0.9, 0.3), ids, (True, False), strict=True)
    ]
    cfg = DistillConfig(n_tokens=3)
    return tiny_chat_llm, make_method(tiny_chat_llm, cfg), batch, cfg


def test_the_naive_reference_scores_what_the_trainer_scores(setup):
    llm, method, batch, cfg = setup
    logq_y, logq_r = naive_terms(llm, method, batch)
    ours = sequence_terms(llm, method, batch, cfg)
    torch.testing.assert_close(logq_y, ours.logq_y, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(logq_r, ours.logq_r, atol=1e-4, rtol=1e-5)
    refusal = len(llm.tokenizer(REFUSAL, add_special_tokens=False)["input_ids"]) + 1
    assert (
        response_tokens(llm, batch)
        == len(batch[0].response_ids) + 1 + len(batch[1].response_ids) + 2 * refusal
    )


def test_every_training_variant_gives_the_same_loss_and_counts_its_flops(setup):
    llm, method, batch, cfg = setup
    out = training_throughput(llm, method, batch, cfg, repeats=1)
    assert set(out) == {"naive_fp32", "separate_fp32", "ours_fp32", "ours_bf16"}
    assert out["separate_fp32"]["loss"] == pytest.approx(out["naive_fp32"]["loss"], rel=1e-4)
    assert out["ours_fp32"]["loss"] == pytest.approx(out["naive_fp32"]["loss"], rel=1e-4)
    assert out["ours_bf16"]["loss"] == pytest.approx(out["naive_fp32"]["loss"], rel=0.05)
    # the reference computes vocabulary logits at every position and the prompt twice: more FLOPs than ours
    assert out["naive_fp32"]["step_flops"] > out["ours_fp32"]["step_flops"] > 0
    assert all(
        v["tokens_per_s"] > 0 and v["response_tokens"] == out["ours_fp32"]["response_tokens"]
        for v in out.values()
    )


def test_generation_and_decode_timers_run_on_both_engines(setup):
    llm, method, _, _ = setup
    prefix = method.prefix().detach()
    for engine in ("fast", "hf"):
        speed = generation_speed(llm, PROMPTS, 4, engine, prefix=prefix, repeats=1)
        assert speed["tokens"] > 0 and speed["tokens_per_s"] > 0
    assert decode_step_seconds(llm, 16, repeats=1) > 0
    assert decode_step_seconds(llm, 16, prefix_cache=PrefixCache(llm, prefix), batch=2, repeats=1) > 0


def test_machine_limits_are_positive_and_bad_repeats_fail():
    assert matmul_peak(torch.float32, size=64, repeats=1) > 0
    assert read_bandwidth(2**20, repeats=1) > 0
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        median_seconds(lambda: None, repeats=0)


def test_engine_agreement_of_an_engine_with_itself_is_complete(setup):
    from dispsafe_nb.costs.speed import engine_agreement

    llm = setup[0]
    same = engine_agreement(llm, PROMPTS, 5, "fast", "hf")
    assert same == {"identical_share": 1.0, "mean_agreeing_prefix_share": 1.0, "n_prompts": 2}
    bf16 = engine_agreement(llm, PROMPTS, 5, "fast_bf16", "fast")
    assert 0.0 <= bf16["mean_agreeing_prefix_share"] <= 1.0
