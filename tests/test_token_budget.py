"""The token budget (`core.batching`): every forward pass stays within it whatever the number of prompts, results do
not depend on how prompts are split, and a budget or prompt that cannot work says so before any work."""

from __future__ import annotations

import pytest
import torch
from stand_ins import WordGuard

from dispsafe_nb.core.batching import (
    DEFAULT_TOKEN_BUDGET,
    TOKEN_BUDGET_ENV,
    TokenBudgetError,
    current_token_budget,
    padded_tokens,
    plan_batches,
    token_budget,
)
from dispsafe_nb.core.decoding import DecodingConfig
from dispsafe_nb.core.llm import PromptError, generate_with_prefix
from dispsafe_nb.core.scoring import fidelity_kl, sequence_logprobs

LENGTHS = [5, 40, 12, 40, 3, 30, 7, 7, 25]


@pytest.mark.parametrize("budget", [40, 64, 100, 1000])
@pytest.mark.parametrize("max_rows", [None, 1, 2, 3])
def test_batches_cover_every_item_once_within_the_budget_and_the_row_cap(budget, max_rows):
    batches = plan_batches(LENGTHS, budget=budget, max_rows=max_rows)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    assert padded_tokens(LENGTHS, batches) <= budget
    assert max_rows is None or max(len(b) for b in batches) <= max_rows
    if budget == 1000 and max_rows is None:
        assert len(batches) == 1  # everything fits: one pass
    samples = plan_batches(LENGTHS, budget=budget * 4, max_rows=max_rows, rows_per_item=4)
    assert padded_tokens(LENGTHS, samples, rows_per_item=4) <= budget * 4


def test_a_budget_too_small_for_one_item_names_it_and_the_way_out():
    with pytest.raises(
        TokenBudgetError, match=r"prompt 1 needs 40 tokens.*token budget of 30.*raise the budget"
    ):
        plan_batches([5, 40], budget=30)
    with pytest.raises(TokenBudgetError, match=r"40 tokens x 2 samples"):
        plan_batches([5, 40], budget=70, rows_per_item=2)


def test_the_budget_has_one_default_and_three_ways_to_change_it(monkeypatch):
    monkeypatch.delenv(TOKEN_BUDGET_ENV, raising=False)
    assert current_token_budget() == DEFAULT_TOKEN_BUDGET
    monkeypatch.setenv(TOKEN_BUDGET_ENV, "500")
    assert current_token_budget() == 500
    with token_budget(300):
        assert current_token_budget() == 300 and current_token_budget(100) == 100
        assert padded_tokens(LENGTHS, plan_batches(LENGTHS)) <= 300
    assert current_token_budget() == 500
    monkeypatch.setenv(TOKEN_BUDGET_ENV, "lots")
    with pytest.raises(TokenBudgetError, match="not an int"):
        current_token_budget()
    for bad in (0, -5, 1.5, True, "8"):
        with pytest.raises(TokenBudgetError, match="int >= 1"):
            current_token_budget(bad)


class _Widths:
    """The padded tokens (rows x attention width, cache included) of every pass through the model's backbone."""

    def __init__(self, llm):
        self.seen: list[int] = []
        self.handle = llm.model.model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None:  # a pass without padding (the soft prompt's own keys and values): its rows x length
            x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
            self.seen.append(int(x.shape[0] * x.shape[1]))
        else:
            self.seen.append(int(mask.numel()))


PROMPTS = [
    ("word " * n).strip() + f" {i}" for i, n in enumerate([3, 60, 10, 45, 1, 80, 20, 5, 33, 70, 2, 15])
]
RESPONSES = [("yes " * (i % 5 + 1)).strip() for i in range(len(PROMPTS))]


@pytest.fixture
def widths(tiny_chat_llm):
    w = _Widths(tiny_chat_llm)
    yield w
    w.handle.remove()


def _reorder(items, order):
    return [items[i] for i in order]


ORDER = [7, 3, 11, 0, 5, 9, 1, 10, 2, 8, 4, 6]


@pytest.mark.parametrize("engine", ["fast", "hf"])
def test_generation_stays_within_the_budget_and_its_answers_do_not_depend_on_the_split(
    tiny_chat_llm, widths, engine
):
    llm, dec = tiny_chat_llm, DecodingConfig(max_new_tokens=6)
    prefix = torch.randn(4, llm.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.1
    one = generate_with_prefix(llm, PROMPTS, prefix, dec, batch_size=None, token_budget=10**6, engine=engine)
    assert max(widths.seen) > 1000  # everything in one pass: the budget is what bounds the others
    widths.seen.clear()
    split = generate_with_prefix(
        llm, _reorder(PROMPTS, ORDER), prefix, dec, batch_size=None, token_budget=400, engine=engine
    )
    assert 0 < max(widths.seen) <= 400
    assert [split[ORDER.index(i)] for i in range(len(PROMPTS))] == one


def test_seeded_samples_do_not_depend_on_the_split(tiny_chat_llm, widths):
    llm, dec = tiny_chat_llm, DecodingConfig(max_new_tokens=5, temperature=1.0, seed=3)
    one = llm.generate(
        PROMPTS, decoding=dec, num_samples=3, per_prompt_seed=True, batch_size=None, token_budget=10**6
    )
    widths.seen.clear()
    with token_budget(900):
        split = llm.generate(_reorder(PROMPTS, ORDER), decoding=dec, num_samples=3, per_prompt_seed=True)
    assert 0 < max(widths.seen) <= 900
    assert [split[ORDER.index(i)] for i in range(len(PROMPTS))] == one


def test_scores_stay_within_the_budget_and_do_not_depend_on_the_split(tiny_chat_llm, widths):
    llm = tiny_chat_llm
    prefix = torch.randn(4, llm.hidden_size, generator=torch.Generator().manual_seed(1)) * 0.1
    one = sequence_logprobs(llm, PROMPTS, RESPONSES, prefix=prefix, token_budget=10**6)
    assert max(widths.seen) > 1000
    widths.seen.clear()
    split = sequence_logprobs(
        llm,
        _reorder(PROMPTS, ORDER),
        _reorder(RESPONSES, ORDER),
        prefix=prefix,
        token_budget=300,
        batch_size=3,
    )
    assert 0 < max(widths.seen) <= 300
    torch.testing.assert_close(
        split[torch.tensor([ORDER.index(i) for i in range(len(PROMPTS))])], one, atol=1e-4, rtol=0
    )
    # gradients still reach the prefix through every micro-batch
    trainable = prefix.clone().requires_grad_(True)
    sequence_logprobs(llm, PROMPTS, RESPONSES, prefix=trainable, token_budget=300).sum().backward()
    assert trainable.grad is not None and trainable.grad.abs().sum() > 0


def test_fidelity_kl_stays_within_the_budget_and_does_not_depend_on_the_split(tiny_chat_llm, widths):
    from dispsafe_nb.methods import init_soft_prompt

    llm = tiny_chat_llm
    soft = init_soft_prompt(llm, n_tokens=3, seed=0)
    one = fidelity_kl(llm, PROMPTS, RESPONSES, soft, token_budget=10**6)
    widths.seen.clear()
    split = fidelity_kl(llm, PROMPTS, RESPONSES, soft, token_budget=250)
    assert 0 < max(widths.seen) <= 250
    torch.testing.assert_close(split, one, atol=1e-5, rtol=1e-4)


def test_bad_lengths_fail_before_any_work(tiny_chat_llm, widths):
    llm, dec = tiny_chat_llm, DecodingConfig(max_new_tokens=6)
    with pytest.raises(TokenBudgetError, match=r"prompt 1 needs \d+ tokens.*token budget of 50"):
        llm.generate(PROMPTS[:2], decoding=dec, token_budget=50)
    with pytest.raises(TokenBudgetError, match="prompt \\+ response 1 needs"):
        sequence_logprobs(llm, PROMPTS[:2], RESPONSES[:2], token_budget=50)
    too_long = "word " * (llm.context_length + 10)
    with pytest.raises(
        PromptError, match=rf"prompt 0 has \d+ tokens but the model's context \({llm.context_length}\)"
    ):
        llm.generate([too_long], decoding=dec)
    with pytest.raises(PromptError, match="prompt 0 has"):
        sequence_logprobs(llm, [too_long], ["yes"])
    assert widths.seen == []


class _Passes(_Widths):
    """Also whether autograd was recording during each pass (a graph keeps all of a pass's activations alive)."""

    def __init__(self, llm):
        super().__init__(llm)
        self.with_grad: list[bool] = []

    def __call__(self, module, args, kwargs):
        super().__call__(module, args, kwargs)
        self.with_grad.append(torch.is_grad_enabled())


def test_a_probe_of_many_prompts_keeps_every_pass_small_and_builds_no_graph(tiny_chat_llm, tmp_path):
    """What made 80 long prompts exhaust 24 GB: passes sized by prompt count, and scoring through a trainable soft
    prompt with autograd on (each micro-batch's graph, all its activations, alive until the end). With the budget,
    every pass of a probe stays within it and none records a graph, however many prompts there are."""
    from dispsafe_nb.methods import init_soft_prompt
    from dispsafe_nb.ui.prober import ProbeDecoding, ProbeSession, probe

    init_soft_prompt(tiny_chat_llm, n_tokens=4).save(tmp_path / "student")
    session = ProbeSession(tiny_chat_llm, WordGuard(), artifacts_dir=tmp_path, use_second_judge=False)
    passes = _Passes(tiny_chat_llm)
    try:
        with token_budget(400):
            result = probe(session, PROMPTS * 3, ["base", "dual", "student"], ProbeDecoding(max_new_tokens=4))
    finally:
        passes.handle.remove()
    assert not result.errors and len(result.answers) == 3 * len(PROMPTS) * 3
    assert passes.seen and max(passes.seen) <= 400
    assert not any(passes.with_grad)
