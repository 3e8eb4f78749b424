"""The reward objectives (the paper's baselines): REINFORCE with a leave-one-out baseline (RLOO) and PPO.

Both sample answers from the *student* (the frozen LLM with its method, temperature 1: the policy itself) and
reward each with the teacher guard's α(x, y) = p(safe | x, y). Neither sees the teacher's answers or its refusal:
the reward alone must teach the method what to do, which is what distillation is compared against.

* REINFORCE (RLOO): ``L = −mean_i (r_i − mean_{j≠i} r_j) · log q(y_i | x)`` over k samples per prompt.
* PPO: per-token rewards ``−β (log q(y_t) − log p_base(y_t))`` plus α at each answer's last token; advantages by
  GAE (γ = 1, λ) from a value head (one linear layer on the final hidden state, trained beside the method, its
  input detached so only the policy loss moves the method); the clipped surrogate
  ``−mean_t min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t)`` with ``ρ_t = q_new(y_t) / q_old(y_t)``, over
  ``ppo_epochs`` passes per batch of samples. trl's PPO trainer is gone (2026) and never supported prompt
  tuning, so this is a compact implementation of its textbook form, checked on hand-made numbers in the tests.

The pure functions (advantages, rewards, losses) take tensors and are exact; `optimise` is the loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from dispsafe_nb.core.decoding import DecodingConfig
from dispsafe_nb.core.llm import LLM
from dispsafe_nb.core.scoring import sequence_logprobs, token_logprobs
from dispsafe_nb.guards.protocol import Guard
from dispsafe_nb.training.config import learning_rate
from dispsafe_nb.training.examples import batch_indices
from dispsafe_nb.training.history import History, record_validation
from dispsafe_nb.training.objectives import reinforce_loss

if TYPE_CHECKING:
    from dispsafe_nb.methods import Method
    from dispsafe_nb.system.teacher_cache import TeacherSample
    from dispsafe_nb.training.config import DistillConfig
    from dispsafe_nb.training.history import History


# ---- pure functions ---------------------------------------------------------------------------------------
def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """``r_i − mean_{j≠i} r_j`` within each row of a (prompts, k) reward matrix (k ≥ 2)."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (prompts, k) with k >= 2, got shape {tuple(rewards.shape)}")
    k = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return rewards - others


def token_rewards(
    logq_old: torch.Tensor,
    logp_base: torch.Tensor,
    row_of: torch.Tensor,
    final_reward: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """PPO's per-token rewards: ``−β (log q − log p_base)`` at every token, plus the row's reward at its last."""
    rewards = -beta * (logq_old - logp_base)
    last = _last_token_index(row_of, len(final_reward))
    return rewards.index_add(
        0, last, torch.as_tensor(final_reward, dtype=rewards.dtype, device=rewards.device)
    )


def gae(
    rewards: torch.Tensor, values: torch.Tensor, row_of: torch.Tensor, lam: float, gamma: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation per row (tokens row by row, left to right); the value after an
    answer's last token is 0. Returns (advantages, returns = advantages + values)."""
    advantages = torch.zeros_like(rewards)
    for row in row_of.unique(sorted=True).tolist():
        idx = (row_of == row).nonzero()[:, 0]
        running = 0.0
        for pos in reversed(range(len(idx))):
            t = idx[pos]
            next_value = values[idx[pos + 1]] if pos + 1 < len(idx) else 0.0
            delta = rewards[t] + gamma * next_value - values[t]
            running = delta + gamma * lam * running
            advantages[t] = running
    return advantages, advantages + values


def whiten(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / std (population std); left unchanged when there is a single value."""
    if x.numel() < 2:
        return x
    return (x - x.mean()) / (x.std(unbiased=False) + eps)


def ppo_policy_loss(
    logq_new: torch.Tensor, logq_old: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, float]:
    """The clipped surrogate ``−mean min(ρ A, clip(ρ, 1 − ε, 1 + ε) A)``, ρ = exp(log q_new − log q_old);
    also the fraction of tokens where the clip is active (the unclipped term is not the minimum)."""
    ratio = torch.exp(logq_new - logq_old.detach())
    adv = advantages.detach()
    unclipped, clipped = ratio * adv, torch.clamp(ratio, 1 - clip, 1 + clip) * adv
    fraction = float((clipped < unclipped).float().mean()) if ratio.numel() else 0.0
    return -torch.minimum(unclipped, clipped).mean(), fraction


def value_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """``0.5 · mean (V − R)²``."""
    return 0.5 * ((values - returns.detach()) ** 2).mean()


def _last_token_index(row_of: torch.Tensor, n_rows: int) -> torch.Tensor:
    positions = torch.arange(len(row_of), device=row_of.device)
    last = torch.full((n_rows,), -1, dtype=torch.long, device=row_of.device)
    last = last.scatter_reduce(0, row_of, positions, reduce="amax")
    if (last < 0).any():
        raise ValueError("every answer needs at least one scored token")
    return last


class ValueHead(nn.Module):
    """PPO's critic: one linear layer on the final hidden state (zero-initialised: V = 0 at the start)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.detach().float())[..., 0]


# ---- the loop ---------------------------------------------------------------------------------------------
def student_samples(
    llm: LLM, method: Method, prompts: Sequence[str], cfg: DistillConfig, step: int
) -> tuple[list[str], list[str], list[list[int]], list[bool]]:
    """k answers per prompt sampled from the student at temperature 1 (seeded per step): (prompts repeated,
    answers, token ids, finished flags), prompt by prompt."""
    decoding = DecodingConfig(
        cfg.rl_max_new_tokens, temperature=1.0, top_p=1.0, seed=cfg.seed * 1_000_003 + step
    )
    generations = method.bind(llm).generate(
        list(prompts), decoding=decoding, batch_size=len(prompts), num_samples=cfg.rl_samples, details=True
    )
    rows = [(p, g) for p, gens in zip(prompts, generations, strict=True) for g in gens]
    return (
        [p for p, _ in rows],
        [g.text for _, g in rows],
        [list(g.token_ids) for _, g in rows],
        [g.finished for _, g in rows],
    )


def optimise(
    llm: LLM,
    guard: Guard,
    method: Method,
    train_samples: Sequence[TeacherSample],
    cfg: DistillConfig,
    val_samples: Sequence[TeacherSample] = (),
    progress: bool = True,
) -> History:
    """Train `method` with REINFORCE (RLOO) or PPO (`cfg.objective`) on the prompts of `train_samples`.

    Budget, as for distillation: `cfg.steps` steps of `cfg.batch_size` prompts × `cfg.grad_accum`, with
    `cfg.rl_samples` answers per prompt drawn from the student (where distillation reads teacher samples)."""

    if cfg.objective not in ("reinforce", "ppo"):
        raise ValueError(f"optimise trains the reward objectives, not {cfg.objective!r}")
    prompts = list(dict.fromkeys(s.prompt for s in train_samples))
    value_head = ValueHead(llm.hidden_size).to(llm.device) if cfg.objective == "ppo" else None
    groups = [{"params": method.trainable_parameters(), "lr": cfg.lr}]
    if value_head is not None:
        groups.append({"params": list(value_head.parameters()), "lr": cfg.value_lr})
    opt = torch.optim.Adam(groups, eps=1e-7)
    history = History()
    if val_samples:
        record_validation(llm, method, val_samples, cfg, history, 0)
    bar = tqdm(range(cfg.steps), desc=f"{cfg.objective}/{cfg.method}", disable=not progress)
    for step in bar:
        opt.param_groups[0]["lr"] = learning_rate(cfg, step)
        total, rewards_seen, clip_fraction = 0.0, [], 0.0
        for micro in range(cfg.grad_accum):
            batch = [prompts[i] for i in batch_indices(len(prompts), cfg, step, micro)]
            rows, texts, ids, finished = student_samples(
                llm, method, batch, cfg, step * cfg.grad_accum + micro
            )
            reward = guard.prob_safe(rows, texts).detach().float().to(llm.device)
            rewards_seen += reward.tolist()
            if value_head is None:
                loss = _reinforce_step(llm, method, rows, ids, finished, reward, cfg)
                (loss / cfg.grad_accum).backward()
                if micro == cfg.grad_accum - 1:
                    opt.step()
                    opt.zero_grad()
            else:  # PPO takes its own optimiser steps per micro-batch (its epochs reuse the samples)
                loss, fraction = _ppo_step(llm, method, value_head, opt, rows, ids, finished, reward, cfg)
                clip_fraction += fraction / cfg.grad_accum
            total += float(loss.detach() if isinstance(loss, torch.Tensor) else loss) / cfg.grad_accum
        history.step.append(step + 1)
        history.loss.append(total)
        history.mean_alpha.append(sum(rewards_seen) / len(rewards_seen))
        if value_head is not None:
            history.ppo_clip_fraction.append(clip_fraction)
        postfix = {"loss": f"{total:.3f}", "reward": f"{history.mean_alpha[-1]:.3f}"}
        if val_samples and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            postfix["val"] = f"{record_validation(llm, method, val_samples, cfg, history, step + 1):.3f}"
        bar.set_postfix(postfix)
        if not math.isfinite(total):
            raise FloatingPointError(f"loss became {total} at step {step + 1}; lower the learning rate")
    return history


def _reinforce_step(
    llm: LLM,
    method: Method,
    rows: list[str],
    ids: list[list[int]],
    finished: list[bool],
    reward: torch.Tensor,
    cfg: DistillConfig,
) -> torch.Tensor:
    logq = sequence_logprobs(
        llm, rows, None, reduction="sum", append_eos=finished, method=method, response_ids=ids
    )
    advantages = rloo_advantages(reward.view(-1, cfg.rl_samples).cpu()).flatten().to(logq.device)
    # the surrogate -A log q(y) with the leave-one-out advantages as rewards (their baseline is already in)
    return reinforce_loss(logq, advantages, baseline="none").mean()


def _ppo_step(
    llm: LLM,
    method: Method,
    value_head: ValueHead,
    opt: torch.optim.Optimizer,
    rows: list[str],
    ids: list[list[int]],
    finished: list[bool],
    reward: torch.Tensor,
    cfg: DistillConfig,
) -> tuple[float, float]:
    """One PPO update on one batch of samples: rollout statistics once, then `ppo_epochs` clipped steps."""
    with torch.no_grad():
        logq_old, row_of, hidden = token_logprobs(llm, rows, ids, finished, method)
        # the KL penalty's reference: the base model on the same tokens (not needed when beta = 0)
        logp_base = token_logprobs(llm, rows, ids, finished, None)[0] if cfg.ppo_beta > 0 else logq_old
        rewards = token_rewards(logq_old, logp_base, row_of, reward.to(logq_old.dtype), cfg.ppo_beta)
        advantages, returns = gae(rewards, value_head(hidden), row_of, cfg.gae_lambda)
        advantages = whiten(advantages)
    losses, fractions = [], []
    for _ in range(cfg.ppo_epochs):
        logq_new, _, hidden_new = token_logprobs(llm, rows, ids, finished, method)
        policy, fraction = ppo_policy_loss(logq_new, logq_old, advantages, cfg.ppo_clip)
        loss = policy + cfg.value_coef * value_loss(value_head(hidden_new), returns)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        fractions.append(fraction)
    return sum(losses) / len(losses), sum(fractions) / len(fractions)
