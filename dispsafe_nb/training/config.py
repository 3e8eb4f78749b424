"""What a distillation run is: `DistillConfig` (method, objective, optimiser, batching) and its schedule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dispsafe_nb import data
from dispsafe_nb.common.names import unknown_name_message
from dispsafe_nb.common.validation import check_field, is_int, is_real
from dispsafe_nb.core.scoring import REDUCTIONS
from dispsafe_nb.methods import DEFAULT_INIT_TEXT, DEFAULT_N_TOKENS, DEFAULT_TARGETS, INITS, check_method_name
from dispsafe_nb.training.objectives import kl_disp_loss, tv_disp_loss

OBJECTIVES = {"tv": tv_disp_loss, "kl": kl_disp_loss}  # the distillation losses on teacher samples
TARGET_OBJECTIVES = ("perplexity",)  # fixed targets from labels, no teacher α
REWARD_OBJECTIVES = ("reinforce", "ppo")  # samples from the student, reward = the teacher guard's p(safe)
ALL_OBJECTIVES = (*OBJECTIVES, *TARGET_OBJECTIVES, *REWARD_OBJECTIVES)
LR_SCHEDULES = ("linear", "constant")
WEIGHTINGS = ("none", "per_token")
TEACHER_ALPHAS = ("soft", "deployed")
SCORINGS = ("shared_prompt", "separate")
AUTOCASTS = ("none", "bf16")
BUCKETINGS = ("length", "none")
SAMPLINGS = ("replacement", "epoch")


@dataclass
class DistillConfig:
    """Hyperparameters of one distillation run (saved with the artifact). Paper settings in comments."""

    objective: str = "tv"  # "tv" (TV-DiSP), "kl" (KL-DiSP); baselines "perplexity", "reinforce", "ppo"
    # "soft_prompt", "lora" (parameter-matched to the soft prompt at n_tokens) or "steering_vector"
    method: str = "soft_prompt"
    n_tokens: int = (
        DEFAULT_N_TOKENS  # paper: 100 (ablation 10-200); LoRA's parameter budget is n_tokens x hidden
    )
    init: str = "text"
    init_text: str = DEFAULT_INIT_TEXT
    # paper: 6e-4 ... 3e-3 over about 200 iterations at effective batch 32 on 1-3B models. With ~60 small steps
    # on a 135M model 3e-3 barely moves the prompt (AdvBench SGS 17 % after 30 steps); 3e-2 does.
    lr: float = 3e-2
    steps: int = 60  # paper: about 200 iterations
    batch_size: int = 4  # paper: effective batch 32
    grad_accum: int = 1
    # "sum": whole-sequence log-probs, Eq. 4 as written (clip thresholds log a and log(1 - a)). "mean": per-token
    # means, a named ablation only -- it moves the thresholds to a^T and (1 - a)^T (for a harmful prompt with
    # a = 0.05 and a 13-token refusal, the refusal stops being pushed at q(y_r) ~ 0.51 instead of 0.95).
    reduction: str = "sum"
    # "none": Eq. 4's weights a and 1 - a. "per_token": each term's weight divided by its token count (balances a
    # 48-token answer against a 13-token refusal for the optimiser; the clip thresholds stay where Eq. 4 puts them).
    weighting: str = "none"
    # "constant": lr throughout (the paper does not state its schedule); "linear": decays linearly to 0. In one
    # benchmark-sized run each, linear decay did not change the safety/usefulness trade-off beyond run-to-run noise.
    lr_schedule: str = "constant"
    # Which teacher Eq. 4 distils. "soft" (default, as written): the dual system that keeps y with probability α.
    # "deployed": α thresholded at 0.5 (1 if the deployed system keeps y, else 0) -- the system greedy evaluation
    # compares the student with; a named variant, not the paper's objective.
    teacher_alpha: str = "soft"
    seed: int = 0
    eval_every: int = 10
    checkpoint_every: int = 0  # 0: no periodic checkpoints
    lora_rank: int | None = None  # None: the rank (and layers) matching the soft prompt's parameters
    lora_targets: str = ",".join(DEFAULT_TARGETS)  # comma-separated module names
    steering_layer: int | None = None  # None: the middle decoder layer
    # Reward objectives (dispsafe_nb.training.rl): per prompt of a batch, `rl_samples` answers of up to
    # `rl_max_new_tokens` tokens sampled from the student at temperature 1 (the budget's "teacher samples").
    rl_samples: int = 2
    rl_max_new_tokens: int = 32
    ppo_beta: float = 0.05  # KL penalty to the base model (the paper found PPO unstable and needed beta ~ 0)
    ppo_clip: float = 0.2
    ppo_epochs: int = 2  # optimisation passes over each batch of samples
    gae_lambda: float = 0.95
    value_coef: float = 0.5
    value_lr: float = 1e-3  # the value head's own learning rate
    # How Eq. 4's two log-probs are computed (the same values up to rounding, a test checks): "shared_prompt"
    # encodes soft prompt + chat prompt once for y and y_r (dispsafe_nb.core.shared_prompt); "separate" runs one full
    # pass per (prompt, response) pair, the reference.
    scoring: str = "shared_prompt"
    # "bf16": the model's matrix products in bfloat16 under torch.autocast (the vocabulary head runs at its own
    # dtype, the losses in float32); "none": the model's own dtype throughout. Only with scoring="shared_prompt".
    autocast: str = "none"
    # How a step's batch_size x grad_accum drawn examples are cut into its grad_accum micro-batches: "length" sorts
    # them by token length first, so each micro-batch pads less; "none" keeps the order they were drawn in. Each
    # micro-batch still holds batch_size examples at weight 1/grad_accum, so the step's gradient is the same mean
    # over the same examples (a test checks). Batches are not drawn by length: length follows the label here
    # (refusals are short), and length-grouped batches would be all-harmful or all-benign.
    bucketing: str = "length"
    # "replacement": every micro-batch drawn uniformly with replacement (examples may repeat or be missed);
    # "epoch": a seeded permutation per epoch, consumed in order (the paper's "one epoch" sees each example once;
    # with `steps = steps_per_epoch(...)`).
    sampling: str = "replacement"

    def __post_init__(self) -> None:
        """Every field checked where it is defined: a bad value names the field, the value and what is allowed."""
        for name, known in (
            ("objective", ALL_OBJECTIVES),
            ("init", INITS),
            ("reduction", REDUCTIONS),
            ("weighting", WEIGHTINGS),
            ("lr_schedule", LR_SCHEDULES),
            ("teacher_alpha", TEACHER_ALPHAS),
            ("scoring", SCORINGS),
            ("autocast", AUTOCASTS),
            ("bucketing", BUCKETINGS),
            ("sampling", SAMPLINGS),
        ):
            if getattr(self, name) not in known:
                raise ValueError(unknown_name_message(f"DistillConfig.{name}", getattr(self, name), known))
        check_method_name(self.method)
        data.check_seed(self.seed)
        for name in (
            "n_tokens",
            "steps",
            "batch_size",
            "grad_accum",
            "rl_samples",
            "rl_max_new_tokens",
            "ppo_epochs",
        ):
            _check_distill(name, getattr(self, name), "an int >= 1", is_int(lambda x: x >= 1))
        for name in ("eval_every", "checkpoint_every"):
            _check_distill(name, getattr(self, name), "an int >= 0 (0: never)", is_int(lambda x: x >= 0))
        _check_distill(
            "lora_rank",
            self.lora_rank,
            "None or an int >= 1",
            lambda x: x is None or is_int(lambda v: v >= 1)(x),
        )
        _check_distill(
            "steering_layer",
            self.steering_layer,
            "None or an int >= 0",
            lambda x: x is None or is_int(lambda v: v >= 0)(x),
        )
        for name in ("lr", "value_lr"):
            _check_distill(name, getattr(self, name), "a finite number > 0", is_real(lambda x: x > 0))
        for name in ("ppo_beta", "value_coef"):
            _check_distill(name, getattr(self, name), "a finite number >= 0", is_real(lambda x: x >= 0))
        _check_distill("ppo_clip", self.ppo_clip, "a number in (0, 1)", is_real(lambda x: 0 < x < 1))
        _check_distill("gae_lambda", self.gae_lambda, "a number in [0, 1]", is_real(lambda x: 0 <= x <= 1))
        if not isinstance(self.init_text, str) or not self.init_text.strip():
            raise ValueError(f"DistillConfig.init_text must be a non-empty string, not {self.init_text!r}")
        if self.objective in REWARD_OBJECTIVES and self.rl_samples < 2:
            raise ValueError("reward objectives need rl_samples >= 2 (the leave-one-out baseline needs two)")
        if self.weighting != "none" and self.reduction != "sum":
            raise ValueError(
                "weighting='per_token' rescales whole-sequence terms: use it with reduction='sum'"
            )
        if self.autocast != "none" and self.scoring != "shared_prompt":
            raise ValueError(
                "autocast='bf16' needs scoring='shared_prompt' (the reference path stays float32)"
            )


def _check_distill(name: str, value: Any, allowed: str, ok: Callable[[Any], bool]) -> None:
    check_field("DistillConfig", name, value, allowed, ok)


def learning_rate(cfg: DistillConfig, step: int) -> float:
    """The learning rate of (0-based) `step` under the config's schedule."""
    if cfg.lr_schedule == "linear":
        return cfg.lr * (1.0 - step / cfg.steps)
    return cfg.lr
