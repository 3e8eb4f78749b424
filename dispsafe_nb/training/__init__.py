"""Distillation: turn teacher samples into a trained method.

config       `DistillConfig` (method, objective, optimiser, batching) and the learning-rate schedule
examples     training examples from teacher samples, the training mix, their order and micro-batches
objectives   the sequence-level losses: TV-DiSP (Eq. 4), KL-DiSP, perplexity, REINFORCE
batch_loss   the loss of a batch under any objective, with its per-sequence terms
history      what a run records: losses, clip fractions, the validation gap
checkpoints  save and resume a run
loop         distill(): any method with any target objective; reward objectives go to rl
rl           REINFORCE (leave-one-out baseline) and PPO (value head, GAE, clipped surrogate, KL to the base)
"""

# The layer's face: what notebooks and the layers above use most, importable as dispsafe_nb.training.X
from dispsafe_nb.training.config import DistillConfig
from dispsafe_nb.training.examples import prompt_kinds, prompt_labels, training_mix
from dispsafe_nb.training.history import History, history_summary
from dispsafe_nb.training.loop import distill

__all__ = [
    "DistillConfig",
    "History",
    "distill",
    "history_summary",
    "prompt_kinds",
    "prompt_labels",
    "training_mix",
]
