"""One pass over the prompts for several continuations: the same log-probs and gradients as scoring each pair in
its own pass (`sequence_logprobs`), on a tiny random Llama with the default model's tokenizer, for every method."""

from __future__ import annotations

import pytest
import torch

from dispsafe_nb.core.scoring import response_token_ids, sequence_logprobs
from dispsafe_nb.core.shared_prompt import shared_prompt_logprobs

PROMPTS = ["Hello there", "a", "What is the capital of France? Tell me more about it, please."]
YS = ["Hi! How can I help?", "b c d e f g h", "Paris."]
REFUSAL = "I'm sorry, but I can't help with that."


@pytest.fixture(scope="module")
def tiny(tiny_chat_llm):
    return tiny_chat_llm


def _method(tiny, kind):
    from dispsafe_nb.methods import new_method

    sizes = {"soft_prompt": {"n_tokens": 4}, "lora": {"n_tokens": 4}, "steering_vector": {}}[kind]
    method = new_method(kind, tiny, seed=0, **sizes)
    with torch.no_grad():  # move every parameter off its initialisation, so each acts on the outputs
        for p in method.trainable_parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return method


@pytest.mark.parametrize("kind", [None, "soft_prompt", "lora", "steering_vector"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_values_and_gradients_equal_one_pass_per_pair(tiny, kind, reduction):
    method = None if kind is None else _method(tiny, kind)
    ys = response_token_ids(tiny, YS, None, [True, False, True], 3)
    rs = response_token_ids(tiny, [REFUSAL] * 3, None, True, 3)
    shared = shared_prompt_logprobs(tiny, PROMPTS, [ys, rs], method, reduction)
    separate = [
        sequence_logprobs(
            tiny, PROMPTS, None, reduction=reduction, append_eos=False, method=method, response_ids=b
        )
        for b in (ys, rs)
    ]
    for a, b in zip(shared, separate, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    if method is None:
        return
    params = list(method.trainable_parameters())
    g_shared = torch.autograd.grad((shared[0] + 2 * shared[1]).sum(), params)
    g_separate = torch.autograd.grad((separate[0] + 2 * separate[1]).sum(), params)
    for a, b in zip(g_shared, g_separate, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_bad_input(tiny):
    ys = response_token_ids(tiny, YS, None, True, 3)
    with pytest.raises(ValueError, match="one continuation per prompt"):
        shared_prompt_logprobs(tiny, PROMPTS, [ys[:2]])
    with pytest.raises(ValueError, match="continuation is empty"):
        shared_prompt_logprobs(tiny, PROMPTS, [[[1], [], [2]]])
    with pytest.raises(ValueError, match="reduction must be"):
        shared_prompt_logprobs(tiny, PROMPTS, [ys], reduction="max")


def test_the_trainer_s_two_scorings_give_the_same_eq4_terms_and_bf16_stays_close(tiny):
    from dataclasses import replace

    from dispsafe_nb.training.batch_loss import sequence_terms
    from dispsafe_nb.training.config import DistillConfig
    from dispsafe_nb.training.examples import Example
    from dispsafe_nb.training.loop import make_method

    ys = response_token_ids(tiny, YS, None, False, 3)
    batch = [
        Example(p, y, a, REFUSAL, tuple(ids), f)
        for p, y, a, ids, f in zip(PROMPTS, YS, (0.9, 0.2, 0.5), ys, (True, False, True), strict=True)
    ]
    cfg = DistillConfig(n_tokens=4)
    method = make_method(tiny, cfg)
    fast, ref = (
        sequence_terms(tiny, method, batch, replace(cfg, scoring=s)) for s in ("shared_prompt", "separate")
    )
    torch.testing.assert_close(fast.logq_y, ref.logq_y, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(fast.logq_r, ref.logq_r, atol=1e-4, rtol=1e-5)
    assert fast.len_y == ref.len_y and fast.len_r == ref.len_r
    half = sequence_terms(tiny, method, batch, replace(cfg, autocast="bf16"))
    assert half.logq_y.dtype == torch.float32
    torch.testing.assert_close(half.logq_y, ref.logq_y, atol=0.5, rtol=0.02)  # bf16 rounds to ~3 digits


def test_bad_scoring_and_autocast_names(tiny):
    from dispsafe_nb.training.config import DistillConfig

    with pytest.raises(
        ValueError, match="Unknown DistillConfig.scoring 'shared'. Did you mean 'shared_prompt'"
    ):
        DistillConfig(scoring="shared")
    with pytest.raises(ValueError, match="Unknown DistillConfig.autocast 'fp16'"):
        DistillConfig(autocast="fp16")
    with pytest.raises(ValueError, match="needs scoring='shared_prompt'"):
        DistillConfig(scoring="separate", autocast="bf16")


def test_a_bf16_model_scores_with_its_head_at_its_own_dtype(tiny):
    import copy
    import dataclasses

    half = dataclasses.replace(tiny, model=copy.deepcopy(tiny.model).to(torch.bfloat16))
    ys = response_token_ids(half, YS, None, True, 3)
    shared = shared_prompt_logprobs(half, PROMPTS, [ys])[0]
    separate = sequence_logprobs(half, PROMPTS, None, append_eos=False, response_ids=ys)
    assert shared.dtype == torch.float32
    torch.testing.assert_close(shared, separate.float(), atol=0.5, rtol=0.05)
