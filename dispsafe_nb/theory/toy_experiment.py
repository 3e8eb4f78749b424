"""A toy training experiment: TV-DiSP against KL-DiSP on a tabular student, showing KL's over-refusal."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from dispsafe_nb.theory.divergences import DTYPE, tv_distance
from dispsafe_nb.theory.surrogates import expected_disp_loss, safe_system_distribution

# ----------------------------------------------------------------------------------------------------------
# toy experiment: why KL may over-refuse
# ----------------------------------------------------------------------------------------------------------


def toy_overrefusal_experiment(
    n_prompts: int = 20,
    n_responses: int = 5,
    alpha_unsafe: float = 0.1,
    alpha_safe: float = 0.95,
    harmful_fraction: float = 0.5,
    feature_dim: int = 3,
    feature_noise: float = 1.0,
    base_refusal: float = 0.01,
    per_prompt_logits: bool = False,
    steps: int = 300,
    lr: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Distil a toy safe system into a capacity-limited student with the TV and the KL surrogate.

    Teacher. Prompt i has base probabilities p_base(.|x_i) over K responses (Dirichlet(1)). On harmful
    prompts every response but one gets guard probability ``alpha_unsafe`` (one safe completion keeps
    ``alpha_safe``); on benign prompts all responses get ``alpha_safe``. Each alpha is jittered a little
    (uniform +-0.04, clipped to [0.001, 0.999]) so guard scores are soft and not all equal. The teacher is
    ``safe_system_distribution`` with the refusal appended at index K.

    Student. The frozen base model puts ``base_refusal`` on the refusal and the rest on p_base. The trainable
    part is *shared across prompts*, like a soft prompt: the refusal logit is shifted by ``u + w . phi_i`` and
    response k's logit by ``v . psi_ik``, where phi_i = (harmful_i + noise, noise...) and psi_ik =
    ((1 - alpha_ik) + noise, noise...) are noisy ``feature_dim``-dimensional features (``feature_noise`` is
    the noise std): the student only sees the prompt's harmfulness through imperfect features, and the
    refusal string, being the same for every prompt, gets one shared parameter. ``per_prompt_logits=True``
    adds free per-prompt logits (full capacity) for comparison.

    Training: Adam on the exact expected surrogate ``mean_i E_{y ~ p_base} L(y)`` (no sampling), once per loss
    from the same initialisation. Nothing is tuned towards a particular outcome: whatever the curves show is
    returned.

    Returns ``{"tv": hist, "kl": hist, "teacher": {...}, "config": {...}}`` where each ``hist`` holds numpy
    arrays of length steps + 1 (before training and after each step): ``loss``, ``refusal_benign``,
    ``refusal_harmful`` (mean student refusal probability on each group), ``tv`` (mean exact TV(teacher_i,
    q_i)), and the teacher dict holds the matching teacher refusal rates.
    """
    config = dict(
        n_prompts=n_prompts,
        n_responses=n_responses,
        alpha_unsafe=alpha_unsafe,
        alpha_safe=alpha_safe,
        harmful_fraction=harmful_fraction,
        feature_dim=feature_dim,
        feature_noise=feature_noise,
        base_refusal=base_refusal,
        per_prompt_logits=per_prompt_logits,
        steps=steps,
        lr=lr,
        seed=seed,
    )
    n, K, d = n_prompts, n_responses, feature_dim
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, dtype=DTYPE)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=DTYPE)

    # --- teacher -------------------------------------------------------------------------------------------
    n_harm = int(round(harmful_fraction * n))
    harmful = torch.zeros(n, dtype=torch.bool)
    harmful[torch.randperm(n, generator=gen)[:n_harm]] = True
    base = -torch.log(rand(n, K))  # Exp(1) draws -> Dirichlet(1) after normalising
    base = base / base.sum(-1, keepdim=True)
    alpha = torch.full((n, K), alpha_safe, dtype=DTYPE)
    safe_slot = torch.randint(0, K, (n,), generator=gen)
    unsafe = harmful[:, None] & (torch.arange(K)[None, :] != safe_slot[:, None])
    alpha = torch.where(unsafe, torch.full_like(alpha, alpha_unsafe), alpha)
    alpha = (alpha + 0.08 * (rand(n, K) - 0.5)).clamp(0.001, 0.999)
    teacher = safe_system_distribution(base, alpha)  # (n, K+1)

    # --- student features (fixed) --------------------------------------------------------------------------
    phi = feature_noise * randn(n, d)
    phi[:, 0] += harmful.to(DTYPE)
    psi = feature_noise * randn(n, K, d)
    psi[..., 0] += 1.0 - alpha
    base_logits = torch.cat(
        [torch.log(base * (1 - base_refusal)), torch.full((n, 1), math.log(base_refusal), dtype=DTYPE)], -1
    )

    def student_log_probs(params: dict[str, torch.Tensor]) -> torch.Tensor:
        resp = psi @ params["v"]  # (n, K)
        ref = params["u"] + phi @ params["w"]  # (n,)
        logits = base_logits + torch.cat([resp, ref[:, None]], -1)
        if per_prompt_logits:
            logits = logits + params["z"]
        return torch.log_softmax(logits, -1)

    def init_params() -> dict[str, torch.Tensor]:
        params = {
            "u": torch.zeros((), dtype=DTYPE),
            "w": torch.zeros(d, dtype=DTYPE),
            "v": torch.zeros(d, dtype=DTYPE),
        }
        if per_prompt_logits:
            params["z"] = torch.zeros(n, K + 1, dtype=DTYPE)
        return {k: p.requires_grad_(True) for k, p in params.items()}

    def record(hist: dict[str, list[float]], lq: torch.Tensor, loss_value: float) -> None:
        q = lq.exp().detach()
        hist["loss"].append(loss_value)
        hist["refusal_benign"].append(float(q[~harmful, K].mean()) if (~harmful).any() else float("nan"))
        hist["refusal_harmful"].append(float(q[harmful, K].mean()) if harmful.any() else float("nan"))
        hist["tv"].append(float(tv_distance(teacher, q, validate=False).mean()))

    out: dict[str, Any] = {}
    for loss_name in ("tv", "kl"):
        params = init_params()
        opt = torch.optim.Adam(params.values(), lr=lr)
        hist: dict[str, list[float]] = {k: [] for k in ("loss", "refusal_benign", "refusal_harmful", "tv")}
        for step in range(steps + 1):
            lq = student_log_probs(params)
            loss = expected_disp_loss(lq, base, alpha, loss=loss_name).mean()
            record(hist, lq, float(loss.detach()))
            if step == steps:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[loss_name] = {k: np.asarray(v) for k, v in hist.items()}

    out["teacher"] = {
        "refusal_benign": float(teacher[~harmful, K].mean()) if (~harmful).any() else float("nan"),
        "refusal_harmful": float(teacher[harmful, K].mean()) if harmful.any() else float("nan"),
        "harmful": harmful.numpy(),
        "distribution": teacher.numpy(),
    }
    out["config"] = config
    return out
