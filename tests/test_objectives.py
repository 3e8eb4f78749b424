"""Objectives: the distillation losses on small exact inputs, and sequence log-probs on the real model."""

from __future__ import annotations

import math

import pytest
import stand_ins
import torch
from stand_ins import BOS, EOS, PAD

from dispsafe_nb import theory
from dispsafe_nb.core.scoring import sequence_logprobs
from dispsafe_nb.training.objectives import kl_disp_loss, perplexity_loss, reinforce_loss, tv_disp_loss

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
    from dispsafe_nb.core.scoring import fidelity_kl
    from dispsafe_nb.methods import init_soft_prompt

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


# ----------------------------------------------------------------------------------------------------------
# sequence log-probs on tiny stand-in models (random 1-layer Llama and GPT-2 with a character tokenizer): fast
# ----------------------------------------------------------------------------------------------------------


class _CharTokenizer(stand_ins.CharTokenizer):
    """The stand-in tokenizer that, like a Hugging Face one, adds BOS unless told add_special_tokens=False."""

    def __init__(self):
        super().__init__(bos=BOS)


def _tiny_llama(seed: int = 0):
    # larger than the default 0.02: a prefix or a padding slip shows in the log-probs
    return stand_ins.tiny_llama(seed, initializer_range=0.3)


def _tiny_gpt2(seed: int = 0):
    """Absolute position embeddings: a row scored at shifted positions (padding counted) would show."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=64,
        n_positions=256,
        n_embd=16,
        n_layer=1,
        n_head=2,
        initializer_range=0.3,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    return GPT2LMHeadModel(config).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tiny_llm():
    from dispsafe_nb.core.llm import LLM

    return LLM(_tiny_llama(), _CharTokenizer(), "tiny-stand-in")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny_any(request):
    """Both stand-ins: rotary positions (Llama) and absolute positions (GPT-2)."""
    from dispsafe_nb.core.llm import LLM

    model = _tiny_llama() if request.param == "llama" else _tiny_gpt2()
    return LLM(model, _CharTokenizer(), f"tiny-{request.param}")


def _tiny_brute_force(llm, prompt, ids, prefix=None, cap=None):
    """log q(ids | [prefix | chat(prompt)]) per token, from one unpadded full-logits forward pass."""
    prompt_ids = llm.tokenizer(llm.chat_text(prompt), add_special_tokens=False)["input_ids"]
    row = torch.tensor(prompt_ids + list(ids))
    embeds = llm.model.get_input_embeddings()(row)
    if prefix is not None:
        embeds = torch.cat([prefix.detach().to(embeds.dtype), embeds])
    logits = llm.model(inputs_embeds=embeds[None]).logits[0].float()
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    logp = logits.log_softmax(-1)
    start = embeds.shape[0] - len(ids)
    return [float(logp[start + i - 1, t]) for i, t in enumerate(ids)]


TINY_PROMPTS = ["Say hi", "What is the capital of France?", "Ok"]  # different lengths: left padding
TINY_RESPONSES = ["hi there", "Paris.", "x"]


def _ids(llm, text, eos=True):
    return llm.tokenizer(text, add_special_tokens=False)["input_ids"] + ([EOS] if eos else [])


def test_tiny_sequence_logprobs_match_brute_force_sum_and_mean(tiny_any):
    expected = [
        _tiny_brute_force(tiny_any, p, _ids(tiny_any, r))
        for p, r in zip(TINY_PROMPTS, TINY_RESPONSES, strict=True)
    ]
    total = sequence_logprobs(tiny_any, TINY_PROMPTS, TINY_RESPONSES)
    assert total.shape == (3,) and total.dtype == torch.float32
    torch.testing.assert_close(total, torch.tensor([sum(e) for e in expected]), rtol=1e-5, atol=1e-5)
    mean = sequence_logprobs(tiny_any, TINY_PROMPTS, TINY_RESPONSES, reduction="mean")
    torch.testing.assert_close(mean, torch.tensor([sum(e) / len(e) for e in expected]), rtol=1e-5, atol=1e-5)
    # a tuple of prompts is as good as a list
    torch.testing.assert_close(sequence_logprobs(tiny_any, tuple(TINY_PROMPTS), TINY_RESPONSES), total)


def test_tiny_sequence_logprobs_eos_flags_per_row_and_given_ids(tiny_any):
    flags = [True, False, True]
    got = sequence_logprobs(tiny_any, TINY_PROMPTS, TINY_RESPONSES, append_eos=flags)
    expected = [
        sum(_tiny_brute_force(tiny_any, p, _ids(tiny_any, r, f)))
        for p, r, f in zip(TINY_PROMPTS, TINY_RESPONSES, flags, strict=True)
    ]
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    no_eos = sequence_logprobs(tiny_any, TINY_PROMPTS, TINY_RESPONSES, append_eos=False)
    assert float(no_eos[0]) != pytest.approx(float(got[0]), abs=1e-4)  # eos is a scored token
    torch.testing.assert_close(no_eos[1], got[1])
    # token ids instead of texts: exactly those ids are scored (eos appended where flagged)
    ids = [[10, 11, 12], [40], [5, 6]]
    by_ids = sequence_logprobs(
        tiny_any, TINY_PROMPTS, None, response_ids=ids, append_eos=[False, True, False]
    )
    expected = [
        sum(_tiny_brute_force(tiny_any, TINY_PROMPTS[0], [10, 11, 12])),
        sum(_tiny_brute_force(tiny_any, TINY_PROMPTS[1], [40, EOS])),
        sum(_tiny_brute_force(tiny_any, TINY_PROMPTS[2], [5, 6])),
    ]
    torch.testing.assert_close(by_ids, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert ids == [[10, 11, 12], [40], [5, 6]]  # the caller's lists are not extended with eos


def test_tiny_sequence_logprobs_with_a_prefix_or_a_method_and_in_chunks(tiny_any):
    from dispsafe_nb.methods import SoftPrompt

    gen = torch.Generator().manual_seed(3)
    soft = SoftPrompt(0.5 * torch.randn(3, 16, generator=gen), model_name="tiny-stand-in")
    expected = torch.tensor(
        [
            sum(_tiny_brute_force(tiny_any, p, _ids(tiny_any, r), soft.W))
            for p, r in zip(TINY_PROMPTS, TINY_RESPONSES, strict=True)
        ]
    )
    plain = sequence_logprobs(tiny_any, TINY_PROMPTS, TINY_RESPONSES)
    with_prefix = sequence_logprobs(tiny_any, TINY_PROMPTS, TINY_RESPONSES, prefix=soft.W)
    with_method = sequence_logprobs(tiny_any, TINY_PROMPTS, TINY_RESPONSES, method=soft)
    torch.testing.assert_close(with_prefix.detach(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(with_method.detach(), expected, rtol=1e-5, atol=1e-5)
    assert (with_method.detach() - plain).abs().min() > 1e-3  # the prefix is really there
    for bs in (1, 2, 3, 10):
        chunked = sequence_logprobs(tiny_any, TINY_PROMPTS, TINY_RESPONSES, method=soft, batch_size=bs)
        torch.testing.assert_close(chunked.detach(), expected, rtol=1e-5, atol=1e-5)
        flags = [False, True, False]  # eos flags survive the chunking (each chunk gets its rows' ids)
        chunked = sequence_logprobs(
            tiny_any,
            TINY_PROMPTS,
            TINY_RESPONSES,
            prefix=soft.W,
            append_eos=flags,
            batch_size=bs,
            reduction="mean",
        )
        want = [
            _tiny_brute_force(tiny_any, p, _ids(tiny_any, r, f), soft.W)
            for p, r, f in zip(TINY_PROMPTS, TINY_RESPONSES, flags, strict=True)
        ]
        torch.testing.assert_close(
            chunked.detach(), torch.tensor([sum(w) / len(w) for w in want]), rtol=1e-5, atol=1e-5
        )
    # gradients reach the soft prompt, through every chunk
    sequence_logprobs(tiny_any, TINY_PROMPTS, TINY_RESPONSES, method=soft, batch_size=2).sum().backward()
    assert soft.W.grad is not None and soft.W.grad.abs().sum() > 0


def test_tiny_sequence_logprobs_apply_the_final_logit_softcap():
    from dispsafe_nb.core.llm import LLM

    model = _tiny_llama(seed=1)
    with torch.no_grad():  # large logits, so that the cap matters
        model.lm_head.weight.mul_(40.0)
    llm = LLM(model, _CharTokenizer(), "tiny-softcap")
    uncapped = sequence_logprobs(llm, TINY_PROMPTS, TINY_RESPONSES)
    model.config.final_logit_softcapping = 3.0
    capped = sequence_logprobs(llm, TINY_PROMPTS, TINY_RESPONSES)
    expected = [
        sum(_tiny_brute_force(llm, p, _ids(llm, r), cap=3.0))
        for p, r in zip(TINY_PROMPTS, TINY_RESPONSES, strict=True)
    ]
    torch.testing.assert_close(capped, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert (capped - uncapped).abs().min() > 1e-2
    # a multimodal-style config keeps the cap in its text_config
    model.config.final_logit_softcapping = None
    model.config.text_config = type("TextConfig", (), {"final_logit_softcapping": 3.0})()
    torch.testing.assert_close(sequence_logprobs(llm, TINY_PROMPTS, TINY_RESPONSES), capped)
    model.config.text_config = None
    torch.testing.assert_close(sequence_logprobs(llm, TINY_PROMPTS, TINY_RESPONSES), uncapped)


def test_tiny_sequence_logprobs_validates_inputs(tiny_llm):
    p, r = TINY_PROMPTS[:2], TINY_RESPONSES[:2]
    with pytest.raises(TypeError, match="^pass lists of prompts and responses, not single strings$"):
        sequence_logprobs(tiny_llm, "a prompt", ["x"])
    with pytest.raises(TypeError, match="^pass lists of prompts and responses, not single strings$"):
        sequence_logprobs(tiny_llm, ["a prompt"], "x")
    with pytest.raises(ValueError, match=r"^reduction must be one of \('sum', 'mean'\), not 'max'$"):
        sequence_logprobs(tiny_llm, p, r, reduction="max")
    with pytest.raises(ValueError, match="^pass at most one of prefix, method and prefix_cache$"):
        sequence_logprobs(tiny_llm, p, r, prefix=torch.zeros(2, 16), method=object())
    with pytest.raises(ValueError, match="^no prompts given$"):
        sequence_logprobs(tiny_llm, [], [])
    with pytest.raises(ValueError, match="^got 2 prompts but 1 responses$"):
        sequence_logprobs(tiny_llm, p, r[:1])
    with pytest.raises(ValueError, match="^got 3 responses but 2 id lists$"):
        sequence_logprobs(tiny_llm, p, TINY_RESPONSES, response_ids=[[5], [6]])
    with pytest.raises(ValueError, match="^pass responses \\(texts\\) or response_ids$"):
        sequence_logprobs(tiny_llm, p, None)
    with pytest.raises(TypeError, match="^response 1 is a int, not a str$"):
        sequence_logprobs(tiny_llm, p, ["ok", 7])
    with pytest.raises(ValueError, match="^got 2 prompts but 3 append_eos flags$"):
        sequence_logprobs(tiny_llm, p, r, append_eos=[True, True, False])
    with pytest.raises(
        ValueError, match="^response 1 is empty and append_eos=False: there is no token to score$"
    ):
        sequence_logprobs(tiny_llm, p, ["ok", ""], append_eos=False)
    with pytest.raises(ValueError, match=r"^prefix must be N x d, got shape \(16,\)$"):
        sequence_logprobs(tiny_llm, p, r, prefix=torch.zeros(16))
    # an empty response with eos scores the eos alone
    only_eos = sequence_logprobs(tiny_llm, p[:1], [""])
    assert float(only_eos[0]) == pytest.approx(_tiny_brute_force(tiny_llm, p[0], [EOS])[0], abs=1e-5)


def test_tiny_response_token_ids():
    from dispsafe_nb.core.llm import LLM
    from dispsafe_nb.core.scoring import response_token_ids

    llm = LLM(None, _CharTokenizer(), "tokenizer-only")
    assert response_token_ids(llm, ["ab", "c"], None, True, 2) == [
        [3 + 97 % 61, 3 + 98 % 61, EOS],
        [3 + 99 % 61, EOS],
    ]
    assert response_token_ids(llm, ["ab", "c"], None, [False, True], 2) == [[39, 40], [41, EOS]]
    # ids win over texts; ids are converted to ints and copied
    ids = [(5.0, 6), [7]]
    assert response_token_ids(llm, ["x", "y"], ids, False, 2) == [[5, 6], [7]]
    assert response_token_ids(llm, None, ids, [True, False], 2) == [[5, 6, EOS], [7]]
    assert all(type(t) is int for row in response_token_ids(llm, None, ids, False, 2) for t in row)
    with pytest.raises(ValueError, match="^got 3 prompts but 2 responses$"):
        response_token_ids(llm, None, ids, False, 3)


def test_backbone_and_head_split_and_its_errors(tiny_llm):
    from dispsafe_nb.core.model_parts import backbone_and_head as _backbone_and_head

    backbone, head = _backbone_and_head(tiny_llm.model)
    assert backbone is tiny_llm.model.model and head is tiny_llm.model.lm_head

    class NoDecoder:  # falls back to .model, then .base_model
        def __init__(self, **parts):
            self.__dict__.update(parts)

        def get_output_embeddings(self):
            return "head"

    assert _backbone_and_head(NoDecoder(model="stack")) == ("stack", "head")
    assert _backbone_and_head(NoDecoder(model=None, base_model="base")) == ("base", "head")
    with pytest.raises(TypeError, match="^cannot split NoDecoder into a backbone and an lm_head$"):
        _backbone_and_head(NoDecoder(model=None, base_model=None))

    class NoneDecoder(NoDecoder):
        def get_decoder(self):
            return None

    assert _backbone_and_head(NoneDecoder(model="stack")) == ("stack", "head")

    class SelfDecoder(NoDecoder):
        def get_decoder(self):
            return self

    with pytest.raises(TypeError, match="^cannot split SelfDecoder into a backbone and an lm_head$"):
        _backbone_and_head(SelfDecoder())

    class NoHead(NoDecoder):
        def get_output_embeddings(self):
            return None

    with pytest.raises(TypeError, match="^cannot split NoHead"):
        _backbone_and_head(NoHead(model="stack"))


def test_n_prefix_counts_prefix_rows_or_the_method_tokens():
    from dispsafe_nb.core.scoring import _n_prefix

    assert _n_prefix(None, None) == 0
    assert _n_prefix(torch.zeros(5, 3), None) == 5
    assert _n_prefix(None, type("M", (), {"n_tokens": 4})()) == 4
    assert _n_prefix(None, object()) == 0  # a method without soft tokens
    with pytest.raises(ValueError, match=r"^prefix must be N x d, got shape \(1, 2, 3\)$"):
        _n_prefix(torch.zeros(1, 2, 3), None)


def test_prompt_budget_reserves_room_for_the_prefix_and_the_longest_response(tiny_llm):
    from dispsafe_nb.core.llm import PromptError

    # context 256: chat overhead len("<user><assistant>") = 17 characters, so a prompt may have 256 - 17 - reserve
    overhead = len(tiny_llm.chat_text(""))
    prompt = "p" * (256 - overhead - 10)  # leaves exactly 10 tokens
    ids = [[5] * 7]  # 7 response tokens + 3 prefix rows = 10: fits
    sequence_logprobs(tiny_llm, [prompt], None, response_ids=ids, append_eos=False, prefix=torch.zeros(3, 16))
    with pytest.raises(PromptError):  # one more prefix row does not
        sequence_logprobs(
            tiny_llm, [prompt], None, response_ids=ids, append_eos=False, prefix=torch.zeros(4, 16)
        )
    with pytest.raises(PromptError):  # nor does one more response token (eos)
        sequence_logprobs(
            tiny_llm, [prompt], None, response_ids=ids, append_eos=True, prefix=torch.zeros(3, 16)
        )


def test_tiny_sequence_logprobs_pad_with_eos_when_the_tokenizer_has_no_pad_token(tiny_any):
    from dispsafe_nb.core.llm import LLM

    class NoPad(_CharTokenizer):
        pad_token_id = None

    llm = LLM(tiny_any.model, NoPad(), "no-pad")
    expected = [
        sum(_tiny_brute_force(llm, p, _ids(llm, r)))
        for p, r in zip(TINY_PROMPTS, TINY_RESPONSES, strict=True)
    ]
    torch.testing.assert_close(
        sequence_logprobs(llm, TINY_PROMPTS, TINY_RESPONSES), torch.tensor(expected), rtol=1e-5, atol=1e-5
    )


def test_tiny_sequence_logprobs_keep_every_tensor_on_the_model_device(tiny_any):
    """Scoring must not depend on torch's default device (e.g. set to cuda while the model sits on the CPU):
    every tensor is made on the model's device. Under a 'meta' default device, a tensor made without an
    explicit device would be a meta tensor and the forward pass would fail."""
    from dispsafe_nb.methods import SoftPrompt

    soft = SoftPrompt(0.5 * torch.randn(2, 16, generator=torch.Generator().manual_seed(4)))
    reference = sequence_logprobs(tiny_any, TINY_PROMPTS, TINY_RESPONSES, method=soft).detach()
    with torch.device("meta"):
        got = sequence_logprobs(tiny_any, TINY_PROMPTS, TINY_RESPONSES, method=soft, reduction="mean")
        chunked = sequence_logprobs(tiny_any, TINY_PROMPTS, TINY_RESPONSES, prefix=soft.W, batch_size=2)
    assert got.device.type == "cpu" and chunked.device.type == "cpu"
    counts = torch.tensor([len(_ids(tiny_any, r)) for r in TINY_RESPONSES], dtype=torch.float32)
    torch.testing.assert_close(got.detach(), reference / counts, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked.detach(), reference, rtol=1e-5, atol=1e-5)


def test_a_methods_soft_tokens_count_against_the_prompt_budget(tiny_llm):
    from dispsafe_nb.core.llm import PromptError
    from dispsafe_nb.methods import SoftPrompt

    overhead = len(tiny_llm.chat_text(""))
    prompt = "p" * (256 - overhead - 10)  # leaves exactly 10 tokens
    ids = [[5] * 7]
    fits = SoftPrompt(torch.zeros(3, 16))
    sequence_logprobs(tiny_llm, [prompt], None, response_ids=ids, append_eos=False, method=fits)
    with pytest.raises(PromptError):
        sequence_logprobs(
            tiny_llm,
            [prompt],
            None,
            response_ids=ids,
            append_eos=False,
            method=SoftPrompt(torch.zeros(4, 16)),
        )


def test_backbone_prefers_the_models_own_decoder():
    from dispsafe_nb.core.model_parts import backbone_and_head as _backbone_and_head

    class WithDecoder:
        model = "the .model attribute"

        def get_decoder(self):
            return "the decoder"

        def get_output_embeddings(self):
            return "head"

    assert _backbone_and_head(WithDecoder()) == ("the decoder", "head")

    class Bare:  # neither get_decoder nor .model nor .base_model
        def get_output_embeddings(self):
            return "head"

    with pytest.raises(TypeError, match="^cannot split Bare into a backbone and an lm_head$"):
        _backbone_and_head(Bare())

    class BaseOnly(Bare):
        base_model = "base"

    assert _backbone_and_head(BaseOnly()) == ("base", "head")


def test_loss_dtypes_flags_and_weights_are_checked():
    # integer log-probs (e.g. exact zeros) are computed in torch's default float dtype
    out = tv_disp_loss(torch.tensor([0, -1]), torch.tensor([-2, 0]), 0.5)
    assert out.dtype == torch.get_default_dtype()
    assert out.tolist() == pytest.approx(
        [0.5 * math.log(0.5 / math.exp(-2)), 0.5 * math.log(0.5 / math.exp(-1))]
    )
    # same_as_refusal may be 0/1 integers
    ly, lr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -4.0])
    merged = kl_disp_loss(ly, lr, 0.5, same_as_refusal=[1, 0])
    assert merged.tolist() == pytest.approx([3.0, 3.0])
    # weights: zero is allowed (switches a term off), negative or non-finite is not
    assert kl_disp_loss(ly, lr, 0.5, weight_y=0.0, weight_r=[1.0, 0.0]).tolist() == pytest.approx([1.5, 0.0])
    for bad in (-0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"^term weights must be finite and >= 0$"):
            tv_disp_loss(ly, lr, 0.5, weight_y=bad)
        with pytest.raises(ValueError, match=r"^term weights must be finite and >= 0$"):
            kl_disp_loss(ly, lr, 0.5, weight_r=[1.0, bad])
    with pytest.raises(
        ValueError, match=r"^alpha must lie in \[0, 1\] \(a probability that the exchange is safe\)$"
    ):
        tv_disp_loss(ly, lr, [0.5, -0.1])


def test_reinforce_loss_works_in_the_log_probs_dtype():
    logq = torch.tensor([-1.0, -2.0], dtype=torch.float32)
    out = reinforce_loss(logq, torch.tensor([1.0, 0.0], dtype=torch.float64), baseline="none")
    assert out.dtype == torch.float32
    logq64 = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    out = reinforce_loss(logq64, [1.0, 0.25], baseline=0.1)  # 0.1 kept in float64, not rounded to float32
    assert out.tolist() == [0.9 * 1.0 + 0.0 * 1.0, (0.25 - 0.1) * 2.0]
    assert reinforce_loss(logq64, [1.0, 0.25], baseline=1).tolist() == [0.0, -1.5]  # an int baseline
    with pytest.raises(ValueError, match=r"^baseline must be 'mean', 'none' or a number, not 'median'$"):
        reinforce_loss(logq, [1.0, 0.0], baseline="median")


def test_a_float32_alpha_is_cast_to_the_log_probs_dtype_before_its_log():
    # α as a float32 tensor is 0.0500000007...; with float64 log-probs the clip sits at log of that value in float64
    alpha32 = torch.tensor([0.05, 0.05], dtype=torch.float32)
    threshold = torch.log(alpha32.double())
    below = torch.nextafter(threshold[1], torch.tensor(-math.inf, dtype=torch.float64))
    log_q_y = torch.stack([threshold[0], below]).requires_grad_(True)
    log_q_r = torch.full((2,), -50.0, dtype=torch.float64)
    (gy,) = torch.autograd.grad(tv_disp_loss(log_q_y, log_q_r, alpha32).sum(), log_q_y)
    assert gy.tolist() == [0.0, -float(alpha32[0])]  # clipped exactly from the threshold on
    # integer log-probs: α follows torch's default dtype, whatever α's own dtype
    out = kl_disp_loss(torch.tensor([0, -1]), torch.tensor([-1, 0]), torch.tensor(0.25, dtype=torch.float64))
    assert out.dtype == torch.get_default_dtype() and out.tolist() == pytest.approx([0.75, 0.25])


def test_sampling_log_probs_is_the_distribution_the_row_sampler_draws_from():
    from dispsafe_nb.core.decoding import RowSeededSampler, sampling_log_probs

    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(0)) * 3
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.95), (1.3, 0.5), (0.5, 0.01)):
        probs = sampling_log_probs(logits, temperature, top_p).exp()
        assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-6)
        # the sampler's (unnormalised) nucleus probabilities, renormalised
        sampler = RowSeededSampler([0, 1, 2], temperature, top_p)
        raw = torch.softmax(logits / temperature, -1)
        if top_p < 1:
            sorted_p, order = raw.sort(-1, descending=True)
            sorted_p[sorted_p.cumsum(-1) - sorted_p > top_p] = 0.0
            raw = torch.zeros_like(raw).scatter(-1, order, sorted_p)
        assert torch.allclose(probs, raw / raw.sum(-1, keepdim=True), atol=1e-6)
        # and every token the sampler draws lies in that support
        chosen = sampler(None, logits).argmax(-1)
        assert torch.isfinite(sampling_log_probs(logits, temperature, top_p)[torch.arange(3), chosen]).all()
    assert (
        sampling_log_probs(logits, 1.0, 0.01).isfinite().sum(-1) == 1
    ).all()  # the nucleus keeps one token
    kept = sampling_log_probs(logits, 1.0, 0.01, keep=logits.argmin(-1))
    assert (kept.isfinite().sum(-1) == 2).all()  # a sampled token is never cut
    with pytest.raises(ValueError, match="temperature"):
        sampling_log_probs(logits, 0.0)


def test_tiny_sequence_logprobs_under_a_tempered_truncated_sampler(tiny_llm):
    from dispsafe_nb.core.decoding import sampling_log_probs

    prompt, ids = TINY_PROMPTS[1], _ids(tiny_llm, TINY_RESPONSES[1])
    prompt_ids = tiny_llm.tokenizer(tiny_llm.chat_text(prompt), add_special_tokens=False)["input_ids"]
    logits = tiny_llm.model(torch.tensor([prompt_ids + ids])).logits[0].float()
    start = len(prompt_ids)
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.95), (2.0, 0.9)):
        lp = sampling_log_probs(logits[start - 1 : -1], temperature, top_p, keep=torch.tensor(ids))
        want = float(lp[torch.arange(len(ids)), torch.tensor(ids)].sum())
        got = sequence_logprobs(
            tiny_llm,
            [prompt],
            None,
            response_ids=[ids],
            append_eos=False,
            temperature=temperature,
            top_p=top_p,
            keep_targets=True,
        )
        assert float(got) == pytest.approx(want, abs=1e-4)
    # without keep_targets a token outside the nucleus has probability 0
    tight = sequence_logprobs(tiny_llm, [prompt], None, response_ids=[ids], append_eos=False, top_p=1e-6)
    lp = sampling_log_probs(logits[start - 1 : -1], 1.0, 1e-6)
    outside = bool(torch.isinf(lp[torch.arange(len(ids)), torch.tensor(ids)]).any())
    assert outside and float(tight) == float("-inf")
    plain = sequence_logprobs(tiny_llm, [prompt], None, response_ids=[ids], append_eos=False)
    assert float(plain) == pytest.approx(sum(_tiny_brute_force(tiny_llm, prompt, ids)), abs=1e-4)


def test_tiny_tempered_scoring_is_the_same_in_chunks(tiny_llm):
    ids = [_ids(tiny_llm, r) for r in TINY_RESPONSES]
    kwargs = dict(response_ids=ids, append_eos=False, temperature=0.7, top_p=0.6)
    whole = sequence_logprobs(tiny_llm, TINY_PROMPTS, None, keep_targets=True, **kwargs)
    chunked = sequence_logprobs(tiny_llm, TINY_PROMPTS, None, keep_targets=True, batch_size=1, **kwargs)
    torch.testing.assert_close(chunked, whole)
    assert torch.isfinite(whole).all()  # every target kept
    cut = sequence_logprobs(tiny_llm, TINY_PROMPTS, None, batch_size=1, **kwargs)
    assert torch.isinf(cut).any()  # without keep_targets some target falls outside the 0.6 nucleus
    plain = sequence_logprobs(tiny_llm, TINY_PROMPTS, None, response_ids=ids, append_eos=False, batch_size=1)
    assert not torch.allclose(plain, whole)  # the temperature reaches the chunks


# ----------------------------------------------------------------------------------------------------------
# per-token and next-token scoring (PPO's ratios and value head; the refusal direction's KL budget)
# ----------------------------------------------------------------------------------------------------------


def test_token_logprobs_sum_to_the_sequence_logprob_row_by_row(tiny_any):
    from dispsafe_nb.core.scoring import token_logprobs
    from dispsafe_nb.methods import init_soft_prompt

    prompts = ["Hi there.", "What is two plus two?"]
    ids = [[5, 7, 9], [11, 4]]
    for method in (None, init_soft_prompt(tiny_any, 3, seed=0)):
        per_token, row_of, hidden = token_logprobs(tiny_any, prompts, ids, [True, False], method)
        assert row_of.tolist() == [0, 0, 0, 0, 1, 1]  # row 0 scores its eos too, row 1 (cut) does not
        assert hidden.shape == (6, tiny_any.hidden_size) and bool((per_token <= 0).all())
        whole = sequence_logprobs(
            tiny_any, prompts, None, append_eos=[True, False], method=method, response_ids=ids
        )
        sums = torch.zeros(2).index_add(0, row_of, per_token)
        torch.testing.assert_close(sums, whole, atol=1e-4, rtol=1e-5)


def test_next_token_log_probs_is_the_first_answer_token_distribution(tiny_any):
    from dispsafe_nb.core.scoring import next_token_log_probs
    from dispsafe_nb.methods import init_soft_prompt

    prompts = ["Hi there.", "What is two plus two?"]
    soft = init_soft_prompt(tiny_any, 3, seed=0)
    for method in (None, soft):
        dist = next_token_log_probs(tiny_any, prompts, method=method)
        torch.testing.assert_close(dist.logsumexp(-1), torch.zeros(2), atol=1e-5, rtol=0)
        first = sequence_logprobs(
            tiny_any, prompts, None, append_eos=False, method=method, response_ids=[[7], [3]]
        )
        torch.testing.assert_close(torch.stack([dist[0, 7], dist[1, 3]]), first, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(
        next_token_log_probs(tiny_any, prompts), next_token_log_probs(tiny_any, prompts, method=soft)
    )
