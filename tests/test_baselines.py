"""The baselines: LoRA (peft) and steering vectors behind the method interface, the perplexity / REINFORCE / PPO
objectives, and the difference-in-means refusal direction.

Fast tests run on the tiny stand-in Llama (exact arithmetic against hand-written formulas); the slow ones on the
real model (generation round trips, the nf4 backbone, the refusal-direction fit, the reward loops end to end)."""

from __future__ import annotations

import copy

import pytest
import stand_ins
import torch

from dispsafe_nb.common.artifacts import ArtifactError
from dispsafe_nb.core.decoding import DecodingConfig
from dispsafe_nb.core.model_parts import decoder_layers
from dispsafe_nb.core.scoring import sequence_logprobs
from dispsafe_nb.methods import (
    LoRA,
    LoraBudgetError,
    SoftPrompt,
    SteeringLayerError,
    SteeringVector,
    init_lora,
    init_soft_prompt,
    init_steering,
    load_method,
    match_budget,
    new_method,
)
from dispsafe_nb.training import rl
from dispsafe_nb.training.batch_loss import batch_loss_of
from dispsafe_nb.training.config import DistillConfig
from dispsafe_nb.training.examples import Example
from dispsafe_nb.training.objectives import reinforce_loss

PROMPTS = ["abc", "hello there"]
RESPONSES = ["yes", "no way"]


@pytest.fixture(scope="module")
def tiny():
    return stand_ins.tiny_llm(initializer_range=0.3, layers=4)


def _logq(llm, method=None):
    with torch.no_grad():
        return sequence_logprobs(llm, PROMPTS, RESPONSES, method=method)


def _randomise_b(lora: LoRA, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.B.values():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def _no_adapters_left(llm) -> bool:
    from peft.tuners.lora import LoraLayer

    return not any(isinstance(m, LoraLayer) for m in llm.model.modules()) and not hasattr(
        llm.model, "peft_config"
    )


# ---- parameter budgets ----------------------------------------------------------------------------------------
def test_lora_rank_and_layers_match_the_soft_prompt_budget(tiny):
    # per layer at rank 1: q_proj (16 -> 16) + v_proj (16 -> 8) = 32 + 24 = 56; 4 layers: 224
    assert match_budget(tiny, 224) == (1, None, 224)
    assert match_budget(tiny, 448) == (2, None, 448)
    assert match_budget(tiny, 500) == (2, None, 448)  # 448 is within 25 % of 500
    assert match_budget(tiny, 112) == (1, (0, 3), 112)  # rank 1 on two evenly spaced layers
    lora = init_lora(tiny, budget=16 * 7)
    soft = init_soft_prompt(tiny, n_tokens=7)
    assert soft.n_parameters() == 112 and lora.n_parameters() == 112
    assert lora.describe()["layers"] == [0, 3] and lora.describe()["n_parameters"] == 112
    assert new_method("steering_vector", tiny).n_parameters() == 16


def test_a_lora_rank_that_cannot_match_the_budget_is_refused(tiny):
    with pytest.raises(
        LoraBudgetError, match=r"rank 5 .* 1,120 trainable parameters, 500% of the budget of 224"
    ):
        match_budget(tiny, 224, rank=5)
    with pytest.raises(LoraBudgetError, match="one layer at rank 1 has 56"):
        match_budget(tiny, 10)
    with pytest.raises(ValueError, match=r"no linear layer .* matches target modules \['qkv'\]"):
        match_budget(tiny, 224, target_modules=("qkv",))
    with pytest.raises(ValueError, match="Did you mean 'lora'"):
        new_method("lroa", tiny)


# ---- LoRA through peft -------------------------------------------------------------------------------------------
def test_lora_starts_as_the_base_model_and_applies_exactly_w_plus_scaled_ba(tiny):
    lora = init_lora(tiny, rank=2, seed=0)
    assert lora.alpha == 4.0  # default alpha = 2 x rank: scaling 2
    torch.testing.assert_close(_logq(tiny, lora), _logq(tiny), rtol=0, atol=0)  # B = 0
    _randomise_b(lora)
    got = _logq(tiny, lora)
    # The same model with the update merged into its weights by hand: W + (alpha / r) B A.
    merged = copy.deepcopy(tiny)
    for name in lora.module_names:
        key = name.replace(".", "__")
        linear = merged.model.get_submodule(name)
        linear.weight.data += (lora.alpha / lora.rank) * lora.B[key].detach() @ lora.A[key].detach()
    torch.testing.assert_close(got, _logq(merged), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, _logq(tiny))


def test_lora_adapters_are_removed_after_use_even_after_an_error(tiny):
    before = _logq(tiny)
    flags = {n: p.requires_grad for n, p in tiny.model.named_parameters()}
    lora = init_lora(tiny, rank=1)
    _randomise_b(lora)
    with lora.active(tiny):
        assert not _no_adapters_left(tiny)
    assert _no_adapters_left(tiny)
    with pytest.raises(RuntimeError, match="boom"), lora.active(tiny):
        raise RuntimeError("boom")
    assert _no_adapters_left(tiny)
    torch.testing.assert_close(_logq(tiny), before, rtol=0, atol=0)
    assert {n: p.requires_grad for n, p in tiny.model.named_parameters()} == flags
    assert all(type(m).__module__.startswith("torch") for m in decoder_layers(tiny)[0].self_attn.children())


def test_gradients_reach_lora_and_never_the_backbone(tiny):
    lora = init_lora(tiny, rank=1)
    _randomise_b(lora)
    sequence_logprobs(tiny, PROMPTS, RESPONSES, method=lora).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.trainable_parameters())
    assert all(p.grad is None for p in tiny.model.parameters())
    assert len(lora.trainable_parameters()) == 2 * len(lora.module_names)


# ---- steering ----------------------------------------------------------------------------------------------------
def test_steering_adds_the_scaled_vector_to_one_layer_output_and_removes_its_hook(tiny):
    steer = init_steering(tiny, layer=2, scale=3.0)
    assert steer.layer == 2 and init_steering(tiny).layer == 2  # the middle of 4 layers
    torch.testing.assert_close(_logq(tiny, steer), _logq(tiny), rtol=0, atol=0)  # v = 0
    with torch.no_grad():
        steer.v.copy_(torch.linspace(-1, 1, 16))
    seen = {}
    hook = decoder_layers(tiny)[3].register_forward_pre_hook(
        lambda m, args: seen.setdefault("in", args[0].clone())
    )
    try:
        _logq(tiny)
        plain = seen.pop("in")
        _logq(tiny, steer)
        steered = seen.pop("in")
    finally:
        hook.remove()
    # layer 3 receives layer 2's output: shifted by exactly 3 v at every position
    torch.testing.assert_close(
        steered - plain, (3.0 * steer.v.detach()).expand_as(plain), rtol=1e-5, atol=1e-5
    )
    assert all(not layer._forward_hooks for layer in decoder_layers(tiny))
    with pytest.raises(RuntimeError, match="boom"), steer.active(tiny):
        raise RuntimeError("boom")
    assert all(not layer._forward_hooks for layer in decoder_layers(tiny))


def test_a_steering_layer_out_of_range_is_refused(tiny):
    with pytest.raises(
        SteeringLayerError, match=r"steering layer 4 is out of range: .* 4 decoder layers, 0 \.\.\. 3"
    ):
        init_steering(tiny, layer=4)
    with pytest.raises(SteeringLayerError, match="-1"):
        new_method("steering_vector", tiny, steering_layer=-1)
    with pytest.raises(ValueError, match="origin"):
        SteeringVector(torch.zeros(16), 0, 4, "m", origin="random")
    fitted = SteeringVector(torch.ones(16), 1, 4, "m", origin="diff_in_means")
    assert fitted.trainable_parameters() == [] and fitted.n_parameters() == 16


# ---- artifacts ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lora", "steering_vector"])
def test_artifacts_round_trip_and_refuse_the_wrong_model_or_class(tiny, tmp_path, kind):
    method = new_method(kind, tiny, n_tokens=14, seed=3)
    with torch.no_grad():
        for p in method.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * 0.3)
    folder = method.save(tmp_path / kind, {"objective": "tv"})
    loaded = load_method(folder, tiny)
    assert type(loaded) is type(method) and loaded.describe() == method.describe()
    assert loaded.metadata == {"objective": "tv"}
    torch.testing.assert_close(_logq(tiny, loaded), _logq(tiny, method), rtol=0, atol=0)
    other = stand_ins.tiny_llm(initializer_range=0.3, layers=2)
    other.name = "another-model"
    with pytest.raises(ArtifactError, match="another-model"):
        load_method(folder, other)
    with pytest.raises(ArtifactError, match=r"not a 'soft_prompt' one: .*load_method"):
        SoftPrompt.load(folder, tiny)


# ---- objectives on a fixed batch -----------------------------------------------------------------------------------
def _examples(llm) -> list[Example]:
    refusal = "no."
    ids = lambda text: tuple(llm.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    return [
        Example("make a bomb", "ok here", 0.1, refusal, ids("ok here"), True, True),
        Example("bake a cake", "sure!", 0.95, refusal, ids("sure!"), True, False),
        Example("say hi", "hi hi", 0.9, refusal, ids("hi hi"), False, False),
    ]


@pytest.mark.parametrize(
    "method, objective",
    [
        ("soft_prompt", "tv"),
        ("lora", "tv"),
        ("steering_vector", "tv"),
        ("soft_prompt", "kl"),
        ("soft_prompt", "perplexity"),
        ("lora", "perplexity"),
    ],
)
def test_the_loss_falls_over_a_few_steps_on_a_fixed_batch(tiny, method, objective):
    cfg = DistillConfig(objective=objective, method=method, n_tokens=14, lr=3e-2)
    m = new_method(method, tiny, n_tokens=14)
    batch = _examples(tiny)
    opt = torch.optim.Adam(m.trainable_parameters(), lr=cfg.lr)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        out = batch_loss_of(tiny, m, batch, cfg)
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0], losses


def test_perplexity_fits_the_refusal_on_harmful_and_the_base_answer_on_the_rest(tiny):
    cfg = DistillConfig(objective="perplexity", n_tokens=3)
    soft = init_soft_prompt(tiny, 3)
    batch = _examples(tiny)
    got = batch_loss_of(tiny, soft, batch, cfg).loss
    with torch.no_grad():
        refusal = sequence_logprobs(tiny, ["make a bomb"], ["no."], method=soft)
        answers = sequence_logprobs(
            tiny, ["bake a cake", "say hi"], ["sure!", "hi hi"], append_eos=[True, False], method=soft
        )
    torch.testing.assert_close(got, -(refusal.sum() + answers.sum()) / 3)
    unlabelled = [
        Example(e.prompt, e.response, e.alpha, e.refusal, e.response_ids, e.finished) for e in batch
    ]
    with pytest.raises(ValueError, match="needs each prompt's label"):
        batch_loss_of(tiny, soft, unlabelled, cfg)


# ---- REINFORCE and PPO on hand-made numbers ------------------------------------------------------------------------
def test_rloo_advantages_and_the_reinforce_surrogate():
    adv = rl.rloo_advantages(torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.2, 0.2]]))
    torch.testing.assert_close(adv, torch.tensor([[0.75, -0.75, 0.0], [0.0, 0.0, 0.0]]))
    logq = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    loss = reinforce_loss(logq, torch.tensor([0.75, -0.75, 0.0]), baseline="none").mean()  # as rl.py uses it
    torch.testing.assert_close(loss, torch.tensor(-(0.75 * -1.0 + -0.75 * -2.0) / 3))
    loss.backward()
    torch.testing.assert_close(logq.grad, torch.tensor([-0.25, 0.25, 0.0]))
    with pytest.raises(ValueError, match="k >= 2"):
        rl.rloo_advantages(torch.tensor([[1.0], [0.0]]))


def test_ppo_rewards_gae_clipping_and_value_loss():
    row_of = torch.tensor([0, 0, 0, 1, 1])
    logq_old = torch.tensor([-1.0, -2.0, -1.0, -0.5, -0.5])
    logp_base = torch.tensor([-1.5, -2.0, -0.5, -0.5, -1.0])
    rewards = rl.token_rewards(logq_old, logp_base, row_of, torch.tensor([1.0, 0.0]), beta=0.1)
    torch.testing.assert_close(rewards, torch.tensor([-0.05, 0.0, 1.05, 0.0, -0.05]))
    values = torch.tensor([0.5, 0.2, 0.1, 0.3, 0.4])
    # lambda = 1, gamma = 1: A_t = (sum of the rewards from t on) - V_t; lambda = 0: the one-step TD error
    adv, ret = rl.gae(rewards, values, row_of, lam=1.0)
    torch.testing.assert_close(
        adv, torch.tensor([1.0 - 0.5, 1.05 - 0.2, 1.05 - 0.1, -0.05 - 0.3, -0.05 - 0.4])
    )
    torch.testing.assert_close(ret, adv + values)
    td, _ = rl.gae(rewards, values, row_of, lam=0.0)
    torch.testing.assert_close(
        td, torch.tensor([-0.05 + 0.2 - 0.5, 0.1 - 0.2, 1.05 - 0.1, 0.4 - 0.3, -0.05 - 0.4])
    )
    # ratios 2 and 0.5 against advantages +1 and -1: both clipped (min picks the clipped term); a ratio of 1 not
    new, old = torch.log(torch.tensor([2.0, 0.5, 1.0, 2.0])), torch.zeros(4)
    loss, fraction = rl.ppo_policy_loss(new, old, torch.tensor([1.0, -1.0, 1.0, -1.0]), clip=0.2)
    torch.testing.assert_close(loss, -torch.tensor([1.2, -0.8, 1.0, -2.0]).mean())
    assert fraction == 0.5
    torch.testing.assert_close(
        rl.value_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])), torch.tensor(1.25)
    )
    w = rl.whiten(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(w.mean(), torch.tensor(0.0)) and torch.testing.assert_close(
        w.std(unbiased=False), torch.tensor(1.0)
    )
    assert rl.ValueHead(4)(torch.ones(3, 4)).tolist() == [0.0, 0.0, 0.0]


def test_a_reinforce_step_moves_probability_toward_the_rewarded_answer(tiny):
    soft = init_soft_prompt(tiny, 3)
    cfg = DistillConfig(objective="reinforce", n_tokens=3, rl_samples=2)
    ids = [list(tiny.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ("no.", "ok here")]
    rows, finished = ["make a bomb"] * 2, [True, True]
    before = sequence_logprobs(tiny, rows, None, append_eos=finished, method=soft, response_ids=ids).detach()
    opt = torch.optim.SGD(soft.trainable_parameters(), lr=0.01)
    rl._reinforce_step(tiny, soft, rows, ids, finished, torch.tensor([1.0, 0.0]), cfg).backward()
    opt.step()
    after = sequence_logprobs(tiny, rows, None, append_eos=finished, method=soft, response_ids=ids).detach()
    # to first order the step raises log q(rewarded) - log q(other) (both share the prompt, so both may move)
    assert after[0] - before[0] > after[1] - before[1], (before, after)


def test_a_ppo_update_raises_the_rewarded_answer_and_fits_the_value_head(tiny):
    soft = init_soft_prompt(tiny, 3)
    cfg = DistillConfig(objective="ppo", n_tokens=3, lr=0.05, ppo_beta=0.1, ppo_epochs=3, value_lr=0.1)
    head = rl.ValueHead(tiny.hidden_size)
    opt = torch.optim.Adam(
        [
            {"params": soft.trainable_parameters(), "lr": cfg.lr},
            {"params": head.parameters(), "lr": cfg.value_lr},
        ]
    )
    ids = [list(tiny.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ("no.", "ok here")]
    rows, finished = ["make a bomb"] * 2, [True, True]
    before = sequence_logprobs(tiny, rows, None, append_eos=finished, method=soft, response_ids=ids).detach()
    loss, fraction = rl._ppo_step(tiny, soft, head, opt, rows, ids, finished, torch.tensor([1.0, 0.0]), cfg)
    after = sequence_logprobs(tiny, rows, None, append_eos=finished, method=soft, response_ids=ids).detach()
    assert after[0] - before[0] > after[1] - before[1], (before, after)
    assert 0.0 <= fraction <= 1.0 and torch.isfinite(torch.tensor(loss))
    assert head.linear.bias.item() != 0.0  # the critic moved toward the returns


# ---- the real model ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lora", "steering_vector"])
def test_generation_round_trips_through_the_artifact_and_leaves_the_base_model_intact(llm, tmp_path, kind):
    prompts = ["Name a primary colour.", "How do I kill a Python process?"]
    greedy = DecodingConfig(max_new_tokens=12)
    base = llm.generate(prompts, decoding=greedy)
    method = new_method(kind, llm, n_tokens=20)
    assert (
        method.bind(llm).generate(prompts, decoding=greedy) == base
    )  # LoRA's B = 0 and v = 0: the base model
    with torch.no_grad():
        for p in method.trainable_parameters():
            p.add_(
                torch.randn(p.shape, generator=torch.Generator().manual_seed(0))
                * (0.5 if kind == "lora" else 2.0)
            )
    answers = method.bind(llm).generate(prompts, decoding=greedy)
    assert answers != base
    loaded = load_method(method.save(tmp_path / kind), llm)
    assert loaded.bind(llm).generate(prompts, decoding=greedy) == answers
    assert llm.generate(prompts, decoding=greedy) == base
    assert abs(method.n_parameters() - 20 * llm.hidden_size) <= 0.25 * 20 * llm.hidden_size or kind != "lora"


@pytest.mark.slow
def test_lora_on_an_nf4_backbone(tiny_llama_dir):
    from bitsandbytes.nn import Linear4bit

    from dispsafe_nb.core.loading import load_llm

    nf4 = load_llm(str(tiny_llama_dir), quantization="nf4", device="cpu")
    lora = init_lora(nf4, rank=2)
    assert isinstance(nf4.model.get_submodule(lora.module_names[0]), Linear4bit)
    prompts, responses = ["Hi"], ["Hello!"]
    base = sequence_logprobs(nf4, prompts, responses).detach()
    _randomise_b(lora)
    steered = sequence_logprobs(nf4, prompts, responses, method=lora)
    steered.sum().backward()
    assert not torch.allclose(steered.detach(), base)
    assert all(p.grad is not None for p in lora.B.values())
    assert _no_adapters_left(nf4)
    assert isinstance(nf4.model.get_submodule(lora.module_names[0]), Linear4bit)
    torch.testing.assert_close(sequence_logprobs(nf4, prompts, responses).detach(), base, rtol=0, atol=0)
    # A soft prompt trained after the model has run without gradients (as after teacher sampling) still gets its
    # gradient: bitsandbytes' CPU inference kernel, which has no backward, stays switched off (models.py).
    soft = init_soft_prompt(nf4, 3)
    sequence_logprobs(nf4, prompts, responses, method=soft).sum().backward()
    assert soft.W.grad is not None and soft.W.grad.abs().sum() > 0


@pytest.mark.slow
def test_the_refusal_direction_is_fitted_on_train_prompts_and_chosen_on_validation(llm, tmp_path):
    from dispsafe_nb.methods.refusal_direction import (
        diff_in_means,
        fit_refusal_direction,
        post_instruction_length,
    )

    assert post_instruction_length(llm) == 6  # <|im_end|> \n <|im_start|> assistant \n
    harmful = [
        "Write a threatening letter to my neighbour.",
        "Explain how to pick a lock to break into a house.",
    ]
    harmless = ["Write a letter to my neighbour.", "Explain how a lock works."]
    directions = diff_in_means(llm, harmful, harmless)
    assert directions.shape == (30, llm.hidden_size)
    assert torch.count_nonzero(diff_in_means(llm, harmful, harmful)) == 0
    vector, fit = fit_refusal_direction(
        llm,
        harmful,
        harmless,
        harmful[:1],
        harmless[:1],
        "I can't help with that.",
        layers=[3, 9],
        scales=(1.0, 4.0),
        progress=False,
    )
    assert [r["layer"] for r in fit.layers] == [3, 9] and [r["scale"] for r in fit.scales] == [1.0, 4.0]
    within = [r for r in fit.layers if r["kl"] <= fit.max_kl]
    assert fit.layer == max(within, key=lambda r: r["refusal"])["layer"]
    torch.testing.assert_close(vector.v.detach(), directions[fit.layer].to(vector.v.device))
    assert (
        vector.origin == "diff_in_means" and vector.scale == fit.scale and vector.trainable_parameters() == []
    )
    loaded = load_method(vector.save(tmp_path / "rd"), llm)
    assert loaded.metadata["refusal_direction_fit"]["layer"] == fit.layer


class _SorryGuard:
    """Reward 1 for an answer that apologises, else 0 (a transparent stand-in for the teacher guard)."""

    def prob_safe(self, prompts, responses):
        return torch.tensor([1.0 if "sorry" in r.lower() else 0.0 for r in responses])


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["reinforce", "ppo"])
def test_the_reward_objectives_train_end_to_end(llm, objective):
    from dispsafe_nb.system.teacher_cache import sample_from_texts
    from dispsafe_nb.training.loop import distill

    samples = [
        sample_from_texts(llm, p, ["Sure."], [0.5], "I'm sorry, I can't.") for p in ("Hi!", "Help me cheat.")
    ]
    cfg = DistillConfig(
        objective=objective, n_tokens=4, steps=2, batch_size=2, rl_samples=2, rl_max_new_tokens=6
    )
    method, history = distill(llm, samples, cfg, val_samples=samples[:1], guard=_SorryGuard(), progress=False)
    assert history.step == [1, 2] and len(history.mean_alpha) == 2
    assert len(history.ppo_clip_fraction) == (2 if objective == "ppo" else 0)
    assert history.val_step == [0, 2] and method.metadata["objective"] == objective
    with pytest.raises(ValueError, match="needs guard="):
        distill(llm, samples, cfg, progress=False)
