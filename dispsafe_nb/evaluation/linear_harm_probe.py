"""Does the frozen model already tell apart what the dual system refuses? A linear probe on its own activations.

A soft prompt only steers the frozen model: if the model's representation of a prompt does not carry the guard's
notion of harm, no prompt makes the student refuse exactly where the dual system does. This module measures that
readiness with the simplest reader there is:

1. Features: each decoder layer's output averaged over the post-instruction positions (the chat-template tokens
   where the answer starts; `refusal_direction.post_instruction_length`), per prompt.
2. Labels: the teacher's own decision on its sampled answer, α(x, y) < 0.5 (the deployed guard replaced it) -- the
   signal the student distils, not a benchmark label.
3. A logistic-regression probe per layer on part of the training mix; the layer with the best AUROC on the
   held-out rest of the mix (no evaluated prompt chooses it).
4. Off-distribution, the *probe system* keeps the base model's greedy answer unless the probe flags the prompt: a
   linear student that decides from the prompt alone, scored like the trained student against the dual system.

It is a reference, not a bound: a soft prompt can do more than one linear read-out (it changes every attention),
and less (it has to act through the answer's first tokens). `benchmarks/harm_probe.py` runs it at scale.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from dispsafe_nb.common.classifier_stats import auroc
from dispsafe_nb.core.llm import LLM
from dispsafe_nb.methods.base import layer_count
from dispsafe_nb.methods.refusal_direction import post_instruction_outputs


def prompt_activations(
    llm: LLM, prompts: Sequence[str], batch_size: int = 16, progress: bool = False
) -> torch.Tensor:
    """(n_layers, n, d): each decoder layer's output averaged over each prompt's post-instruction positions."""

    out = torch.zeros(layer_count(llm), len(prompts), llm.hidden_size, dtype=torch.float64)
    for start, outputs in post_instruction_outputs(llm, prompts, batch_size, progress):
        for i, hidden in enumerate(outputs):
            out[i, start : start + len(hidden)] = hidden.mean(dim=1)
    return out.float()


@dataclass
class LinearProbe:
    """Logistic regression on standardised features: P(refuse | x) = σ(w·(x − mean)/scale + b)."""

    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(((features - self.mean) / self.scale) @ self.weight + self.bias)


def fit_probe(
    features: torch.Tensor, labels: Sequence[bool] | torch.Tensor, l2: float = 1e-2, max_iter: int = 100
) -> LinearProbe:
    """A logistic-regression probe (L2 penalty `l2` on the weights, full-batch L-BFGS) of `labels` from `features`
    (n, d). Needs both classes."""
    y = torch.as_tensor(labels, dtype=torch.float64).flatten()
    x = features.double()
    if x.ndim != 2 or x.shape[0] != y.numel():
        raise ValueError(f"features {tuple(x.shape)} do not match {y.numel()} labels (want (n, d))")
    if int(y.sum()) in (0, y.numel()):
        raise ValueError("a probe needs examples of both classes (refused and answered)")
    mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / scale
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ weight + bias, y)
        loss = loss + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return LinearProbe(mean.float(), scale.float(), weight.detach().float(), bias.detach().float())


def held_out_split(
    labels: Sequence[bool], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[int], list[int]]:
    """A seeded (fit, held-out) split of labelled examples, stratified: each class gives `val_fraction` of its
    examples (at least one) to the held-out part, so both parts hold both classes."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng, held = random.Random(seed), []
    for cls in (True, False):
        members = [i for i, y in enumerate(labels) if bool(y) == cls]
        if len(members) < 2:
            raise ValueError(
                f"{len(members)} example(s) labelled {'refused' if cls else 'answered'}: a probe needs at least two "
                "of each class (use a larger training mix)"
            )
        rng.shuffle(members)
        held += members[: max(1, round(len(members) * val_fraction))]
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


def choose_layer(
    features: torch.Tensor, labels: Sequence[bool], val_fraction: float = 0.2, seed: int = 0, l2: float = 1e-2
) -> tuple[int, list[LinearProbe], list[dict[str, float]]]:
    """Per layer of `features` (n_layers, n, d): a probe fitted on the fit part, its AUROC and accuracy on the
    held-out part. Returns the layer with the best held-out AUROC, every layer's probe, and the table."""
    fit, held = held_out_split(list(labels), val_fraction, seed)
    y = torch.as_tensor(labels, dtype=torch.bool)
    table, probes = [], []
    for layer in range(features.shape[0]):
        probe = fit_probe(features[layer, fit], y[fit], l2=l2)
        p = probe.probabilities(features[layer, held])
        table.append(
            {
                "layer": layer,
                "held_out_auroc": auroc(p, y[held]),
                "held_out_accuracy": float(((p >= 0.5) == y[held]).double().mean()),
            }
        )
        probes.append(probe)
    best = max(range(len(table)), key=lambda i: table[i]["held_out_auroc"])
    return best, probes, table


def probe_system_refusals(flags: Sequence[bool], base_refused: Sequence[float]) -> list[float]:
    """The probe system's per-prompt refusals: the base model's own refusal, or the probe's flag replacing its
    answer by y_r."""
    if len(flags) != len(base_refused):
        raise ValueError(f"{len(flags)} probe flags but {len(base_refused)} base verdicts")
    return [max(float(f), float(b)) for f, b in zip(flags, base_refused, strict=True)]


def probe_record(base: Any, probabilities: Sequence[float], name: str = "probe") -> Any:
    """The probe system's `EvalRecord` on a benchmark, from the base model's record there (same prompts, in order)
    and the probe's P(refuse | x) per prompt: refused where the base refused or the probe says ≥ 0.5, scored with
    the base record's metric (SGS and over-refusal: the refusal rate; compliance: one minus it)."""
    if base.metric_name not in ("sgs", "over_refusal", "compliance"):
        raise ValueError(f"a probe system is scored by refusals; {base.benchmark} uses {base.metric_name}")
    if len(probabilities) != len(base.outputs):
        raise ValueError(
            f"{len(probabilities)} probe scores for {len(base.outputs)} prompts of {base.benchmark}"
        )
    verdicts = probe_system_refusals([p >= 0.5 for p in probabilities], [o["refused"] for o in base.outputs])
    rate = sum(verdicts) / len(verdicts)
    metric = 1.0 - rate if base.metric_name == "compliance" else rate
    outputs = [
        {"id": o["id"], "refused": v, "base_refused": o["refused"], "probe_p": float(p)}
        for o, v, p in zip(base.outputs, verdicts, probabilities, strict=True)
    ]
    return replace(
        base,
        system=name,
        refusal_rate=rate,
        metric=metric,
        per_category={},
        per_form={},
        second_judge_metric=None,
        outputs=outputs,
    )
