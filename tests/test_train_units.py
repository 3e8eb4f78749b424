"""Unit tests of train.py's loss/step code: the config checks, the learning-rate schedule, the batch draw, the
flattening of teacher samples, the TV clip fractions and `batch_loss_of` on a tiny random Llama stand-in (fast; no real
model is loaded)."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
import stand_ins
import torch
from stand_ins import EOS

from dispsafe_nb.system.teacher_cache import TeacherSample, TeacherSampleError
from dispsafe_nb.training.batch_loss import BatchLoss, batch_loss_of
from dispsafe_nb.training.config import DistillConfig, learning_rate
from dispsafe_nb.training.examples import Example, batch_indices, examples_from_samples
from dispsafe_nb.training.objectives import kl_disp_loss, tv_disp_loss

F64 = torch.float64


def _raises(exc, message):
    """pytest.raises for exactly this message (not just a part of it)."""
    return pytest.raises(exc, match="^" + re.escape(message) + "$")


# ----------------------------------------------------------------------------------------------------------
# DistillConfig.__post_init__
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"objective": "js"},
            "Unknown DistillConfig.objective 'js'. Known: kl, perplexity, ppo, reinforce, tv.",
        ),
        (
            {"reduction": "max"},
            "Unknown DistillConfig.reduction 'max'. Did you mean 'mean'? Known: mean, sum.",
        ),
        ({"weighting": "per_char"}, "Unknown DistillConfig.weighting 'per_char'. Known: none, per_token."),
        (
            {"weighting": "per_token", "reduction": "mean"},
            "weighting='per_token' rescales whole-sequence terms: use it with reduction='sum'",
        ),
        (
            {"lr_schedule": "cosine"},
            "Unknown DistillConfig.lr_schedule 'cosine'. Did you mean 'linear'? Known: constant, linear.",
        ),
        ({"teacher_alpha": "hard"}, "Unknown DistillConfig.teacher_alpha 'hard'. Known: deployed, soft."),
        ({"n_tokens": 0}, "DistillConfig.n_tokens must be an int >= 1, not 0"),
        ({"steps": 0}, "DistillConfig.steps must be an int >= 1, not 0"),
        ({"batch_size": -1}, "DistillConfig.batch_size must be an int >= 1, not -1"),
        ({"grad_accum": 0}, "DistillConfig.grad_accum must be an int >= 1, not 0"),
    ],
)
def test_config_errors_say_what_is_wrong(kwargs, message):
    with _raises(ValueError, message):
        DistillConfig(**kwargs)


def test_config_accepts_every_valid_choice_and_the_smallest_sizes():
    for objective in ("tv", "kl"):
        for reduction in ("sum", "mean"):
            for schedule in ("linear", "constant"):
                DistillConfig(objective=objective, reduction=reduction, lr_schedule=schedule)
    DistillConfig(weighting="per_token", reduction="sum")
    DistillConfig(weighting="none", reduction="mean")
    smallest = DistillConfig(n_tokens=1, steps=1, batch_size=1, grad_accum=1)
    assert (smallest.n_tokens, smallest.steps, smallest.batch_size, smallest.grad_accum) == (1, 1, 1, 1)
    with _raises(TypeError, "seed must be an int, got 1.0 (float)"):
        DistillConfig(seed=1.0)
    with _raises(TypeError, "seed must be an int, got True (bool)"):
        DistillConfig(seed=True)
    # replace() re-runs the checks
    with _raises(ValueError, "DistillConfig.steps must be an int >= 1, not 0"):
        replace(DistillConfig(), steps=0)


# ----------------------------------------------------------------------------------------------------------
# learning_rate and batch_indices
# ----------------------------------------------------------------------------------------------------------


def test_linear_schedule_decays_from_lr_towards_zero():
    cfg = DistillConfig(lr=0.3, steps=3, lr_schedule="linear")
    assert [learning_rate(cfg, s) for s in range(3)] == pytest.approx([0.3, 0.2, 0.1], abs=1e-15)
    assert learning_rate(cfg, 3) == pytest.approx(0.0, abs=1e-15)  # 1 - step / steps at the end
    one = DistillConfig(lr=0.5, steps=1, lr_schedule="linear")
    assert learning_rate(one, 0) == 0.5  # a one-step run trains at the full rate
    constant = DistillConfig(lr=0.3, steps=3, lr_schedule="constant")
    assert [learning_rate(constant, s) for s in (0, 1, 2, 10)] == [0.3] * 4


def _reference_batch(n: int, seed: int, step: int, micro: int, batch_size: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step * 97 + micro)
    return torch.randint(0, n, (batch_size,), generator=gen).tolist()


def test_epoch_sampling_visits_every_example_once_per_epoch():
    from dispsafe_nb.training.examples import steps_per_epoch

    cfg = DistillConfig(seed=2, batch_size=3, grad_accum=2, sampling="epoch")
    n = 10
    steps = steps_per_epoch(n, cfg)
    assert steps == 2  # 10 examples at an effective batch of 6
    drawn = [i for step in range(4) for micro in range(2) for i in batch_indices(n, cfg, step, micro)]
    assert sorted(drawn[:n]) == list(range(n)) and sorted(drawn[n : 2 * n]) == list(range(n))
    assert drawn[:n] != drawn[n : 2 * n]  # each epoch in its own order
    assert drawn == [i for step in range(4) for micro in range(2) for i in batch_indices(n, cfg, step, micro)]
    other = DistillConfig(seed=3, batch_size=3, grad_accum=2, sampling="epoch")
    assert batch_indices(n, other, 0, 0) != batch_indices(n, cfg, 0, 0)
    with pytest.raises(ValueError, match="Did you mean 'epoch'"):
        DistillConfig(sampling="epochs")


def test_batch_indices_are_a_pure_function_of_seed_step_and_micro_batch():
    cfg = DistillConfig(seed=3, batch_size=5)
    for step in (0, 1, 7):
        for micro in (0, 1):
            got = batch_indices(11, cfg, step, micro)
            # the documented stream: published runs (and resumed ones) draw exactly these batches
            assert got == _reference_batch(11, 3, step, micro, 5)
            assert got == batch_indices(11, cfg, step, micro)  # again, the same
            assert len(got) == 5 and all(0 <= i < 11 for i in got)
    draws = {tuple(batch_indices(1000, cfg, step, micro)) for step in range(4) for micro in range(3)}
    assert len(draws) == 12  # every (step, micro-batch) gets its own batch
    other_seed = replace(cfg, seed=4)
    assert batch_indices(1000, other_seed, 0, 0) != batch_indices(1000, cfg, 0, 0)
    # every example can be drawn, the first and the last included
    seen = {i for step in range(50) for i in batch_indices(4, cfg, step, 0)}
    assert seen == {0, 1, 2, 3}
    assert batch_indices(1, cfg, 0, 0) == [0] * 5


# ----------------------------------------------------------------------------------------------------------
# examples_from_samples
# ----------------------------------------------------------------------------------------------------------


def test_examples_flatten_samples_in_order_with_plain_types():
    first = TeacherSample("p1", ("a", "b"), (0.25, 1), "No.", ((5,), (6, 7)), (True, False))
    second = TeacherSample("p2", ("c",), (0,), "Nope.", ((),), (1,))
    examples = examples_from_samples([first, second])
    assert examples == [
        Example("p1", "a", 0.25, "No.", (5,), True),
        Example("p1", "b", 1.0, "No.", (6, 7), False),
        Example("p2", "c", 0.0, "Nope.", (), True),
    ]
    assert all(type(e.alpha) is float and type(e.finished) is bool for e in examples)
    assert examples_from_samples([]) == []


def test_examples_refuse_samples_without_ids_and_count_them():
    with_ids = TeacherSample("fine", ("a",), (0.5,), "No.", ((5,),), (True,))
    long_prompt = "x" * 70
    missing = [
        TeacherSample(long_prompt, ("a",), (0.5,), "No."),
        TeacherSample("short", ("b",), (0.5,), "No."),
    ]
    message = (
        f"2 teacher sample(s) lack the sampled token ids (first: {'x' * 60!r}); build them with "
        "safe_system.teacher_samples(), which keeps the ids and finish flags generate() gave"
    )
    with _raises(TeacherSampleError, message):
        examples_from_samples([with_ids, *missing])


# ----------------------------------------------------------------------------------------------------------
# BatchLoss.clipped: the fractions of terms the TV clip switched off
# ----------------------------------------------------------------------------------------------------------


def _clipped(log_q_y, log_q_r, alpha, dtype=F64):
    t = lambda v: torch.tensor(v, dtype=dtype)  # noqa: E731
    return BatchLoss(torch.tensor(0.0), t(log_q_y), t(log_q_r), t(alpha)).clipped()


def test_clipped_counts_terms_at_or_above_their_teacher_mass():
    a = 0.25
    log_a, log_1ma = math.log(a), math.log(1 - a)
    # y: below, exactly at, above log a; y_r: above, below, exactly at log(1 - a)
    frac_y, frac_r = _clipped(
        [log_a - 0.1, log_a, log_a + 0.1], [log_1ma + 0.1, log_1ma - 0.1, log_1ma], [a] * 3
    )
    assert (frac_y, frac_r) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert _clipped([-50.0], [-50.0], [0.5]) == (0.0, 0.0)
    assert _clipped([0.0], [0.0], [0.5]) == (1.0, 1.0)
    assert all(type(f) is float for f in _clipped([0.0], [0.0], [0.5]))


def test_clipped_each_names_the_clipped_examples():
    a = 0.25
    t = lambda v: torch.tensor(v, dtype=F64)  # noqa: E731
    batch = BatchLoss(
        torch.tensor(0.0),
        t([math.log(a), math.log(a) - 1e-9, 0.0, 0.0]),
        t([math.log(1 - a), 0.0, math.log(1 - a) - 1e-9, 0.0]),
        t([a, a, a, 0.0]),
    )
    each_y, each_r = batch.clipped_each()
    assert each_y == [True, False, True, False]  # the a = 0 term is never clipped
    assert each_r == [True, True, False, True]
    assert all(type(v) is bool for v in each_y + each_r)
    assert batch.clipped() == (0.5, 0.75)


def test_clipped_ignores_zero_weight_terms():
    # a = 0: the y term has weight 0 and is never "clipped", however large q(y); a = 1: same for y_r.
    assert _clipped([0.0, 0.0], [0.0, 0.0], [0.0, 1.0]) == (0.5, 0.5)
    assert _clipped([-math.inf], [-math.inf], [1.0]) == (0.0, 0.0)
    assert _clipped([-math.inf], [0.0], [0.0]) == (0.0, 1.0)
    # a tiny but positive a keeps its own threshold (log a, not the clamp)
    tiny = 1e-20
    assert _clipped([math.log(tiny) + 1e-3], [-1.0], [tiny]) == (1.0, 0.0)
    assert _clipped([math.log(tiny) - 1e-3], [-1.0], [tiny]) == (0.0, 0.0)
    near_one = 1 - 1e-12
    assert _clipped([-1.0], [math.log(1 - near_one) + 1e-3], [near_one]) == (0.0, 1.0)
    assert _clipped([-1.0], [math.log(1 - near_one) - 1e-3], [near_one]) == (0.0, 0.0)


def test_clipped_compares_in_the_log_probs_dtype():
    # α = 0.05 as float32 is 0.0500000007...; in float64 log q(y) = log(0.05) sits just *below* that threshold
    alpha32 = torch.tensor([0.05], dtype=torch.float32)
    log_q = torch.log(torch.tensor([0.05], dtype=F64))
    clipped = BatchLoss(torch.tensor(0.0), log_q, torch.tensor([-5.0], dtype=F64), alpha32).clipped()
    assert clipped == (float(log_q >= torch.log(alpha32.double())), 0.0) == (0.0, 0.0)


def test_clipped_agrees_with_the_tv_gradient_being_zero():
    gen = torch.Generator().manual_seed(5)
    alpha = torch.rand(300, generator=gen, dtype=F64)
    alpha[:20], alpha[20:40] = 0.0, 1.0
    ly = torch.log(torch.rand(300, generator=gen, dtype=F64)).requires_grad_(True)
    lr = torch.log(torch.rand(300, generator=gen, dtype=F64)).requires_grad_(True)
    gy, gr = torch.autograd.grad(tv_disp_loss(ly, lr, alpha).sum(), (ly, lr))
    frac_y, frac_r = BatchLoss(torch.tensor(0.0), ly.detach(), lr.detach(), alpha).clipped()
    # zero gradient = clipped or zero weight; clipped() counts only the clipped ones
    assert frac_y == pytest.approx(float(((gy == 0) & (alpha > 0)).double().mean()), abs=1e-6)
    assert frac_r == pytest.approx(float(((gr == 0) & (alpha < 1)).double().mean()), abs=1e-6)


# ----------------------------------------------------------------------------------------------------------
# batch_loss_of on a tiny stand-in model (a random 1-layer Llama with a character tokenizer)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llm():
    # a larger init than the default: the soft prompt visibly moves the log-probs
    return stand_ins.tiny_llm(initializer_range=0.3)


@pytest.fixture
def soft():
    from dispsafe_nb.methods import SoftPrompt

    gen = torch.Generator().manual_seed(1)
    return SoftPrompt(0.5 * torch.randn(3, 16, generator=gen), model_name="tiny-stand-in")


def _logprob(llm, soft, prompt: str, ids: list[int]) -> float:
    """log q(ids | [W | chat(prompt)]) from one unpadded forward pass, summed token by token."""
    prompt_ids = llm.tokenizer(llm.chat_text(prompt))["input_ids"]
    row = torch.tensor(prompt_ids + ids)
    embeds = torch.cat([soft.W.detach(), llm.model.get_input_embeddings()(row)])[None]
    logits = llm.model(inputs_embeds=embeds).logits[0].float().log_softmax(-1)
    start = soft.n_tokens + len(prompt_ids)
    return sum(float(logits[start + i - 1, t]) for i, t in enumerate(ids))


BATCH = [
    Example("Say hi", "hi", 0.9, "No.", (10, 11), True),
    Example("Make a bomb", "Sure, here", 0.05, "No.", (20, 21, 22, 23), False),
    Example("Hello there", "Hey", 0.5, "Sorry, no.", (30,), True),
]


def _expected(llm, soft, batch, reduction="sum"):
    """(log q(y), log q(y_r)) per example by brute force; eos after y only where the sample finished."""
    ly, lr = [], []
    for e in batch:
        y_ids = list(e.response_ids) + ([EOS] if e.finished else [])
        r_ids = llm.tokenizer(e.refusal)["input_ids"] + [EOS]
        y, r = _logprob(llm, soft, e.prompt, y_ids), _logprob(llm, soft, e.prompt, r_ids)
        if reduction == "mean":
            y, r = y / len(y_ids), r / len(r_ids)
        ly.append(y)
        lr.append(r)
    return torch.tensor(ly), torch.tensor(lr)


@pytest.mark.parametrize("objective, loss_fn", [("tv", tv_disp_loss), ("kl", kl_disp_loss)])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_is_the_objective_on_the_batch_mean(tiny_llm, soft, objective, loss_fn, reduction):
    out = batch_loss_of(tiny_llm, soft, BATCH, DistillConfig(objective=objective, reduction=reduction))
    ly, lr = _expected(tiny_llm, soft, BATCH, reduction)
    torch.testing.assert_close(out.logq_y.detach(), ly, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logq_r.detach(), lr, rtol=1e-5, atol=1e-5)
    alpha = torch.tensor([e.alpha for e in BATCH])
    assert torch.equal(out.alpha, alpha) and out.alpha.dtype == out.logq_y.dtype
    expected = loss_fn(ly, lr, alpha).mean()  # the mean over the batch, not the sum
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert out.loss.shape == ()


def test_tv_and_kl_losses_differ_by_the_teacher_entropy_while_nothing_is_clipped(tiny_llm, soft):
    # unclipped, a [log(a / q_y)] + (1 - a) [log((1 - a) / q_r)] - (-a log q_y - (1 - a) log q_r) = -H(a)
    tv = batch_loss_of(tiny_llm, soft, BATCH, DistillConfig(objective="tv"))
    kl = batch_loss_of(tiny_llm, soft, BATCH, DistillConfig(objective="kl"))
    assert tv.clipped() == (0.0, 0.0)
    a = torch.tensor([e.alpha for e in BATCH], dtype=F64)
    neg_entropy = float((a * a.log() + (1 - a) * (1 - a).log()).mean())
    assert float(tv.loss.detach() - kl.loss.detach()) == pytest.approx(neg_entropy, abs=1e-5)


def test_loss_merges_the_atoms_when_the_sample_is_the_refusal(tiny_llm, soft):
    # the sampled answer is the refusal text (up to surrounding whitespace): the loss is -log q(y_r)
    batch = [Example("Say hi", "  No. ", 0.3, "No.", (10, 11), True), BATCH[0]]
    out = batch_loss_of(tiny_llm, soft, batch, DistillConfig())
    ly, lr = _expected(tiny_llm, soft, batch)
    per_example = tv_disp_loss(ly, lr, torch.tensor([0.3, 0.9]), same_as_refusal=torch.tensor([True, False]))
    torch.testing.assert_close(per_example[0], -lr[0])
    torch.testing.assert_close(out.loss.detach(), per_example.mean(), rtol=1e-5, atol=1e-6)
    # not merged when the texts differ
    plain = batch_loss_of(tiny_llm, soft, [replace(batch[0], response="No")], DistillConfig()).loss
    torch.testing.assert_close(
        plain.detach(), tv_disp_loss(ly[:1], lr[:1], torch.tensor([0.3]))[0], rtol=1e-5, atol=1e-6
    )


def test_loss_per_token_weights_use_the_scored_token_counts(tiny_llm, soft):
    out = batch_loss_of(tiny_llm, soft, BATCH, DistillConfig(weighting="per_token"))
    ly, lr = _expected(tiny_llm, soft, BATCH)
    n_y = torch.tensor([3.0, 4.0, 2.0])  # ids + eos for the finished samples only
    n_r = torch.tensor([4.0, 4.0, 11.0])  # refusal characters + eos
    expected = tv_disp_loss(ly, lr, torch.tensor([0.9, 0.05, 0.5]), weight_y=1 / n_y, weight_r=1 / n_r).mean()
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-5, atol=1e-7)


def test_loss_scores_an_empty_finished_answer_as_eos_and_refuses_an_empty_unfinished_one(tiny_llm, soft):
    empty = Example("Say hi", "", 0.4, "No.", (), True)
    out = batch_loss_of(tiny_llm, soft, [empty], DistillConfig())
    assert float(out.logq_y[0].detach()) == pytest.approx(_logprob(tiny_llm, soft, "Say hi", [EOS]), abs=1e-5)
    broken = Example("Say hi", "", 0.4, "No.", (), False)
    message = "an example has no token ids; build examples with examples_from_samples()"
    with _raises(TeacherSampleError, message):
        batch_loss_of(tiny_llm, soft, [BATCH[0], broken], DistillConfig())


def test_loss_gradient_reaches_the_soft_prompt_only(tiny_llm, soft):
    out = batch_loss_of(tiny_llm, soft, BATCH, DistillConfig(objective="kl"))
    out.loss.backward()
    assert soft.W.grad is not None and torch.isfinite(soft.W.grad).all() and soft.W.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_llm.model.parameters())
