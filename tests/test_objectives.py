"""Objectives: the distillation losses on small exact inputs, and sequence log-probs on the real model."""

from __future__ import annotations

import math

import pytest
import torch

from dispsafe_nb import theory
from dispsafe_nb.objectives import (
    kl_disp_loss,
    perplexity_loss,
    reinforce_loss,
    sequence_logprobs,
    tv_disp_loss,
)

# ----------------------------------------------------------------------------------------------------------
# losses (fast, exact)
# ----------------------------------------------------------------------------------------------------------


def _grads(loss_fn, ly, lr, a, **kw):
    ly = torch.as_tensor(ly, dtype=torch.float64).clone().requires_grad_(True)
    lr = torch.as_tensor(lr, dtype=torch.float64).clone().requires_grad_(True)
    loss = loss_fn(ly, lr, torch.as_tensor(a, dtype=torch.float64), **kw)
    gy, gr = torch.autograd.grad(loss.sum(), (ly, lr), allow_unused=True)
    return loss.detach(), gy, gr


def test_tv_gradient_vanishes_once_q_reaches_alpha_and_is_minus_alpha_below():
    f64 = torch.float64
    a = torch.tensor([0.3, 0.3, 0.3, 0.8, 0.8], dtype=f64)
    q_y = torch.tensor([0.1, 0.3, 0.6, 0.5, 0.9], dtype=f64)  # below, at, above, below, above
    q_r = torch.full_like(q_y, 1e-3)  # far below 1 - a: the refusal term stays active
    loss, gy, gr = _grads(tv_disp_loss, q_y.log(), q_r.log(), a)
    assert torch.equal(gy, torch.tensor([-0.3, 0.0, 0.0, -0.8, 0.0], dtype=f64))
    assert torch.allclose(gr, -(1 - a))
    # the clipped term itself: a * [log(a / q)]_+
    y_term = a * torch.clamp(torch.log(a / q_y), min=0)
    r_term = (1 - a) * torch.clamp(torch.log((1 - a) / q_r), min=0)
    assert torch.allclose(loss, y_term + r_term)


def test_kl_loss_is_the_alpha_weighted_nll():
    gen = torch.Generator().manual_seed(0)
    ly = -5 * torch.rand(64, generator=gen, dtype=torch.float64)
    lr = -5 * torch.rand(64, generator=gen, dtype=torch.float64)
    a = torch.rand(64, generator=gen, dtype=torch.float64)
    assert torch.allclose(kl_disp_loss(ly, lr, a), -a * ly - (1 - a) * lr)
    _, gy, gr = _grads(kl_disp_loss, ly, lr, a)
    assert torch.allclose(gy, -a) and torch.allclose(gr, -(1 - a))


@pytest.mark.parametrize("loss_fn", [tv_disp_loss, kl_disp_loss])
def test_alpha_edges_are_exact_and_nan_free(loss_fn):
    # a = 1: only y counts (even with log q_r = -inf); a = 0: only the refusal counts (log q_y = -inf).
    ly = torch.tensor([-2.0, -math.inf, -0.5, -3.0], dtype=torch.float64)
    lr = torch.tensor([-math.inf, -1.5, -4.0, -0.5], dtype=torch.float64)
    a = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    loss, gy, gr = _grads(loss_fn, ly, lr, a)
    assert torch.equal(loss, torch.tensor([2.0, 1.5, 0.5, 0.5], dtype=torch.float64))
    for g in (gy, gr):
        assert torch.isfinite(g).all()
    assert torch.equal(gy, torch.tensor([-1.0, 0.0, -1.0, 0.0], dtype=torch.float64))
    assert torch.equal(gr, torch.tensor([0.0, -1.0, 0.0, -1.0], dtype=torch.float64))
    # with hard labels the clip never engages: TV == KL
    assert torch.equal(tv_disp_loss(ly, lr, a), kl_disp_loss(ly, lr, a))


@pytest.mark.parametrize("name", ["tv", "kl"])
def test_losses_agree_with_theory_on_random_inputs(name):
    ours = {"tv": tv_disp_loss, "kl": kl_disp_loss}[name]
    exact = {"tv": theory.tv_disp_loss, "kl": theory.kl_disp_loss}[name]
    gen = torch.Generator().manual_seed(1)
    ly = torch.log(torch.rand(200, generator=gen, dtype=torch.float64))
    lr = torch.log(torch.rand(200, generator=gen, dtype=torch.float64))
    a = torch.rand(200, generator=gen, dtype=torch.float64)
    a[:10], a[10:20] = 0.0, 1.0
    assert torch.allclose(ours(ly, lr, a), exact(ly, lr, a), atol=1e-12)
    gy, gr = theory.surrogate_grads(ly, lr, a, loss=name)
    _, our_gy, our_gr = _grads(ours, ly, lr, a)
    assert torch.allclose(our_gy, gy) and torch.allclose(our_gr, gr)


def test_tv_on_a_small_categorical_student_upper_bounds_tv():
    # Student: softmax over 4 outcomes, outcome 3 = refusal; teacher two-point a*delta_y + (1-a)*delta_r.
    gen = torch.Generator().manual_seed(2)
    for _ in range(50):
        logits = torch.randn(4, generator=gen, dtype=torch.float64)
        lq = torch.log_softmax(logits, -1)
        y, a = int(torch.randint(0, 3, (1,), generator=gen)), float(torch.rand(1, generator=gen))
        teacher = torch.zeros(4, dtype=torch.float64)
        teacher[y], teacher[3] = a, 1 - a
        loss = tv_disp_loss(lq[y : y + 1], lq[3:], torch.tensor([a]))
        assert float(loss) >= float(theory.tv_distance(teacher, lq.exp())) - 1e-12


def test_same_as_refusal_merges_the_atoms():
    ly = torch.log(torch.tensor([0.5, 0.5, 0.2]))
    lr = torch.log(torch.tensor([0.5, 0.5, 0.3]))
    a = torch.tensor([0.5, 0.5, 0.9])
    same = torch.tensor([True, False, True])
    for fn in (tv_disp_loss, kl_disp_loss):
        loss = fn(ly, lr, a, same_as_refusal=same)
        assert torch.allclose(loss[[0, 2]], -lr[[0, 2]])
        assert torch.allclose(loss[1], fn(ly[1:2], lr[1:2], a[1:2])[0])
    # the theory module's counterexample: a = 0.5, q_r = 0.5 gives L_TV = 0 unless the atoms are merged
    assert float(tv_disp_loss(ly[:1], lr[:1], a[:1])) == 0.0
    assert float(tv_disp_loss(ly[:1], lr[:1], a[:1], same_as_refusal=torch.tensor([True]))) > 0.6
    _, gy, gr = _grads(tv_disp_loss, ly, lr, a, same_as_refusal=same)
    assert gy[0] == 0 and gy[2] == 0 and gr[0] == -1 and gr[2] == -1


def test_loss_inputs_are_validated_and_dtype_kept():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tv_disp_loss(torch.zeros(2), torch.zeros(2), torch.tensor([0.5, 1.2]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        kl_disp_loss(torch.zeros(2), torch.zeros(2), torch.tensor([float("nan"), 0.5]))
    out = tv_disp_loss(torch.zeros(3, dtype=torch.float32), torch.zeros(3), 0.5)
    assert out.dtype == torch.float32 and out.shape == (3,)


def test_perplexity_and_reinforce_losses():
    logq = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    assert torch.equal(perplexity_loss(logq), -logq)
    rewards = torch.tensor([1.0, 0.0, 0.5])
    loss = reinforce_loss(logq, rewards)  # b = 0.5
    assert torch.allclose(loss, torch.tensor([0.5, -1.0, 0.0]))
    (g,) = torch.autograd.grad(loss.sum(), logq)
    assert torch.allclose(g, -(rewards - 0.5))
    assert torch.allclose(reinforce_loss(logq, rewards, baseline="none"), -rewards * logq)
    assert torch.allclose(reinforce_loss(logq, rewards, baseline=1.0), -(rewards - 1.0) * logq)
    with pytest.raises(ValueError):
        reinforce_loss(logq, rewards, baseline="median")
    # rewards are constants: no gradient flows into them
    r = rewards.clone().requires_grad_(True)
    reinforce_loss(logq, r).sum().backward()
    assert r.grad is None


# ----------------------------------------------------------------------------------------------------------
# sequence log-probs on the real model
# ----------------------------------------------------------------------------------------------------------

PROMPTS = ["What is 2 + 2?", "Name a colour of the sky on a clear day, please."]
RESPONSES = ["4", "Blue."]
REFUSAL = "I'm sorry, I can't help."


def _brute_force(llm, prompt, response, prefix=None, append_eos=True):
    """Sum of per-token log-softmax from one plain, unpadded full-logits forward pass."""
    tok = llm.tokenizer
    p_ids = tok(llm.chat_text(prompt), add_special_tokens=False)["input_ids"]
    r_ids = tok(response, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if append_eos else [])
    ids = torch.tensor([p_ids + r_ids])
    embeds = llm.model.get_input_embeddings()(ids)
    if prefix is not None:
        embeds = torch.cat([prefix[None].to(embeds.dtype), embeds], dim=1)
    logp = torch.log_softmax(llm.model(inputs_embeds=embeds).logits.float(), -1)[0]
    start = embeds.shape[1] - len(r_ids)
    return sum(float(logp[start + j - 1, t]) for j, t in enumerate(r_ids)), len(r_ids)


@pytest.mark.slow
def test_sequence_logprobs_match_brute_force_batched_and_mean(llm):
    gen = torch.Generator().manual_seed(0)
    prefix = 0.02 * torch.randn(4, llm.hidden_size, generator=gen)
    with torch.no_grad():
        for pre in (None, prefix):
            # batched rows are left-padded (the prompts differ in length); brute force is one unpadded row
            batched = sequence_logprobs(llm, PROMPTS, RESPONSES, prefix=pre)
            assert batched.shape == (2,) and torch.isfinite(batched).all()
            counts = []
            for i in range(2):
                expected, n = _brute_force(llm, PROMPTS[i], RESPONSES[i], pre)
                counts.append(n)
                assert abs(float(batched[i]) - expected) < 1e-4, (i, float(batched[i]), expected)
        # with the prefix: one row at a time (batch_size=1) == batched, and mean == sum / n_tokens
        single = sequence_logprobs(llm, PROMPTS, RESPONSES, prefix=prefix, batch_size=1)
        assert torch.allclose(single, batched, atol=1e-4)
        means = sequence_logprobs(llm, PROMPTS, RESPONSES, prefix=prefix, reduction="mean")
        assert torch.allclose(means, batched / torch.tensor(counts, dtype=batched.dtype), atol=1e-6)
        no_eos = sequence_logprobs(llm, PROMPTS[1:], RESPONSES[1:], append_eos=False)
        expected, n = _brute_force(llm, PROMPTS[1], RESPONSES[1], append_eos=False)
        assert n == counts[1] - 1 and abs(float(no_eos[0]) - expected) < 1e-4


@pytest.mark.slow
def test_sequence_logprobs_validates_inputs(llm):
    with pytest.raises(ValueError, match="2 prompts but 1"):
        sequence_logprobs(llm, PROMPTS, RESPONSES[:1])
    with pytest.raises(ValueError, match="reduction"):
        sequence_logprobs(llm, PROMPTS, RESPONSES, reduction="max")
    with pytest.raises(ValueError, match="empty"):
        sequence_logprobs(llm, PROMPTS[:1], [""], append_eos=False)
    with pytest.raises(TypeError):
        sequence_logprobs(llm, "a prompt", "a response")


@pytest.mark.slow
def test_prefix_gets_gradients_and_kl_steps_raise_refusal_logprob(llm):
    from dispsafe_nb.methods import init_soft_prompt

    soft = init_soft_prompt(llm, n_tokens=4)
    opt = torch.optim.Adam(soft.trainable_parameters(), lr=1e-2, eps=1e-7)
    refusals = [REFUSAL, REFUSAL]
    alpha = torch.tensor([0.2, 0.2])  # the guard mostly rejects the sampled answers
    history = []
    for _ in range(3):
        # one forward for both: rows 0-1 score the sampled answers, rows 2-3 the refusal
        logq = sequence_logprobs(llm, PROMPTS * 2, RESPONSES + refusals, method=soft)
        logq_y, logq_r = logq[:2], logq[2:]
        history.append(logq_r.detach())
        loss = kl_disp_loss(logq_y, logq_r, alpha).mean()
        opt.zero_grad()
        loss.backward()
        assert soft.W.grad is not None and torch.isfinite(soft.W.grad).all() and soft.W.grad.abs().sum() > 0
        assert all(p.grad is None for p in llm.model.parameters())
        opt.step()
    with torch.no_grad():
        final = sequence_logprobs(llm, PROMPTS, refusals, prefix=soft.W)
    assert (final > history[0]).all(), (history[0], final)


@pytest.mark.slow
def test_fidelity_is_zero_for_the_base_and_positive_for_a_soft_prompt(llm):
    from dispsafe_nb.methods import init_soft_prompt
    from dispsafe_nb.objectives import fidelity_kl

    prompts = ["What is the capital of France?", "Name a primary colour."]
    answers = ["The capital of France is Paris.", "Red is a primary colour."]

    class Identity:
        def apply(self, llm, input_ids, attention_mask):
            return llm.model.get_input_embeddings()(input_ids), attention_mask

    zero = fidelity_kl(llm, prompts, answers, Identity())
    assert torch.allclose(zero, torch.zeros(2), atol=1e-6)
    soft = init_soft_prompt(llm, n_tokens=4, init="random_vocab", seed=1)
    kl = fidelity_kl(llm, prompts, answers, soft)
    assert (kl > 1e-3).all()
    single = torch.cat([fidelity_kl(llm, [p], [a], soft) for p, a in zip(prompts, answers, strict=True)])
    torch.testing.assert_close(kl, single, atol=1e-4, rtol=1e-3)
