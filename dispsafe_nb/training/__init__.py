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
