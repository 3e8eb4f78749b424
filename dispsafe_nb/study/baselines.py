"""The baseline comparison under one harness (notebook 04, `benchmarks/baselines.py`).

One *run* is a (method, objective, learning rate, seed); every run trains with the same budget (steps × batch ×
samples per prompt) on the same teacher samples and is evaluated with the same records and judges as the base
model and the dual system. The paper's two comparisons:

* methods under the TV-DiSP loss: soft prompt, LoRA (parameter-matched), steering vector (+ the untrained
  difference-in-means refusal direction as a reference);
* objectives with the soft prompt: TV-DiSP, KL-DiSP, perplexity, REINFORCE, PPO.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import pandas as pd
import torch

from dispsafe_nb.core.llm import LLM
from dispsafe_nb.core.scoring import sequence_logprobs
from dispsafe_nb.evaluation.benchmarks import BENCHMARKS
from dispsafe_nb.evaluation.records import EvalRecord
from dispsafe_nb.guards.protocol import Guard
from dispsafe_nb.methods import Method
from dispsafe_nb.system.teacher_cache import TeacherSample
from dispsafe_nb.training.config import DistillConfig
from dispsafe_nb.training.history import History
from dispsafe_nb.training.loop import distill, make_method

METHOD_RUNS = (("soft_prompt", "tv"), ("lora", "tv"), ("steering_vector", "tv"))
OBJECTIVE_RUNS = (
    ("soft_prompt", "kl"),
    ("soft_prompt", "perplexity"),
    ("soft_prompt", "reinforce"),
    ("soft_prompt", "ppo"),
)
SHORT = {"soft_prompt": "SP", "lora": "LoRA", "steering_vector": "SV"}


@dataclass(frozen=True)
class Run:
    """One point of the comparison."""

    method: str
    objective: str
    lr: float
    seed: int = 0
    ppo_beta: float | None = None  # PPO only: replaces the config's KL coefficient β (None: keep it)

    @property
    def label(self) -> str:
        """The objective as the comparison groups it: "ppo_beta0" for a PPO run with its own β."""
        return self.objective if self.ppo_beta is None else f"{self.objective}_beta{self.ppo_beta:g}"

    @property
    def name(self) -> str:
        return f"{SHORT.get(self.method, self.method)}/{self.label}/lr={self.lr:g}/s{self.seed}"

    def config(self, base: DistillConfig) -> DistillConfig:
        """`base` with this run's method, objective, learning rate, seed (and β) in place."""
        cfg = replace(base, method=self.method, objective=self.objective, lr=self.lr, seed=self.seed)
        return cfg if self.ppo_beta is None else replace(cfg, ppo_beta=self.ppo_beta)


def default_runs(
    lrs: Sequence[float], seeds: Sequence[int] = (0,), extra_ppo_betas: Sequence[float] = ()
) -> list[Run]:
    """Every method under TV and every objective with the soft prompt, at each learning rate and seed; plus a
    soft-prompt PPO run per β in `extra_ppo_betas` (the paper needed β ≈ 0)."""
    pairs = [(m, o, None) for m, o in (*METHOD_RUNS, *OBJECTIVE_RUNS)]
    pairs += [("soft_prompt", "ppo", beta) for beta in extra_ppo_betas]
    return [Run(m, o, lr, s, beta) for m, o, beta in pairs for lr in lrs for s in seeds]


def train_runs(
    llm: LLM,
    guard: Guard,
    runs: Sequence[Run],
    base: DistillConfig,
    train_samples: Sequence[TeacherSample],
    val_samples: Sequence[TeacherSample],
    labels: Mapping[str, bool] | None,
    progress: bool = True,
) -> dict[str, tuple[Method, History]]:
    """Train every run with `base`'s budget and settings (its method, objective, lr and seed replaced)."""
    out = {}
    for run in runs:
        out[run.name] = distill(
            llm,
            train_samples,
            run.config(base),
            val_samples=val_samples,
            labels=labels,
            guard=guard,
            progress=progress,
        )
    return out


def texts_by_label(records: Sequence[Any]) -> tuple[list[str], list[str]]:
    """(harmful prompts, harmless prompts) of a mix's records: what the refusal direction is fitted on."""
    return [r.text for r in records if r.is_harmful], [r.text for r in records if not r.is_harmful]


def budget(cfg: DistillConfig, k_teacher: int) -> dict[str, int]:
    """The training budget every run shares: steps, prompts per step and answers per prompt."""
    return {
        "steps": cfg.steps,
        "prompts_per_step": cfg.batch_size * cfg.grad_accum,
        "teacher_samples_per_prompt": k_teacher,
        "student_samples_per_prompt": cfg.rl_samples,
    }


def _kind_mean(metrics: Mapping[str, Mapping[str, Any]], kind: str, key: str) -> float | None:
    values = [
        m[key] for bench, m in metrics.items() if BENCHMARKS[bench].kind == kind and m.get(key) is not None
    ]
    return statistics.fmean(values) if values else None


def comparison_table(
    records: Sequence[EvalRecord], runs: Sequence[Run], methods: Mapping[str, Method]
) -> pd.DataFrame:
    """One row per system: SGS (mean over the harmful sets), XSTest-style over-refusal, benign compliance and
    verifiable-instruction accuracy, with the run's config and trainable-parameter count."""
    by_system: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records:
        by_system.setdefault(r.system, {})[r.benchmark] = {
            "metric": r.metric,
            "refusal_rate": r.refusal_rate,
            "n": r.n,
        }
    run_of = {run.name: run for run in runs}
    rows = []
    for system, metrics in by_system.items():
        run = run_of.get(system)
        method = methods.get(system)
        rows.append(
            {
                "system": system,
                "method": run.method if run else ("steering_vector" if method is not None else system),
                "objective": run.label if run else ("diff_in_means" if method is not None else None),
                "lr": run.lr if run else None,
                "seed": run.seed if run else None,
                "n_parameters": method.n_parameters() if method is not None else 0,
                "sgs": _kind_mean(metrics, "harmful", "metric"),
                "over_refusal": _kind_mean(metrics, "borderline", "refusal_rate"),
                "benign_compliance": _kind_mean(metrics, "benign", "metric"),
                "verifiable_accuracy": _kind_mean(metrics, "verifiable", "metric"),
                "n_per_set": min(m["n"] for m in metrics.values()),
            }
        )
    return pd.DataFrame(rows)


def best_at_compliance(table: pd.DataFrame, min_compliance: float = 0.9) -> dict[str, Any] | None:
    """The trained run with the highest SGS among those with benign compliance ≥ `min_compliance` (None if none)."""
    trained = table[table["lr"].notna() & (table["benign_compliance"] >= min_compliance)]
    if trained.empty:
        return None
    return trained.sort_values("sgs", ascending=False).iloc[0].to_dict()


def best_per_group(table: pd.DataFrame, min_compliance: float = 0.9) -> pd.DataFrame:
    """Per (method, objective): the learning rate with the best SGS at compliance ≥ `min_compliance` (else the
    best SGS overall, flagged), as the paper reports each method at its best swept learning rate."""
    rows = []
    for _, group in table[table["lr"].notna()].groupby(["method", "objective"], sort=False):
        ok = group[group["benign_compliance"] >= min_compliance]
        pick = (ok if not ok.empty else group).sort_values("sgs", ascending=False).iloc[0]
        rows.append({**pick.to_dict(), "meets_compliance": not ok.empty})
    return pd.DataFrame(rows)


def run_config(run: Run, base: DistillConfig) -> dict[str, Any]:
    return asdict(run.config(base))


# ---- integrity of the comparison (notebook 04's checks) -----------------------------------------------------------
def parameter_change(method: Method, llm: LLM, cfg: DistillConfig) -> float:
    """‖θ_trained − θ_init‖ over the method's trainable parameters (the init rebuilt from the same seeded config)."""

    start = make_method(llm, cfg).named_trainable_parameters()
    now = method.named_trainable_parameters()
    with torch.no_grad():
        return float(sum(((now[k] - start[k].to(now[k].device)) ** 2).sum() for k in now) ** 0.5)


def base_fingerprint(llm: LLM, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """The base model's log q(response | prompt) on fixed pairs: equal before and after every run when every
    method removed its hooks and adapters."""

    with torch.no_grad():
        return sequence_logprobs(llm, list(prompts), list(responses)).tolist()


def integrity_metrics(
    llm: LLM,
    trained: Mapping[str, tuple[Method, History]],
    before: Sequence[float],
    after: Sequence[float],
) -> dict[str, float]:
    """{"min_parameter_change": the smallest ‖θ_trained − θ_init‖ over the runs, "lora_budget_ratio": the
    largest |LoRA parameters / soft-prompt parameters − 1| (0 without LoRA runs), "base_logprob_drift": the
    largest change of the base model's fingerprint}."""
    changes, ratios = [], []
    for method, _ in trained.values():
        cfg = DistillConfig(**method.metadata["distill_config"])
        changes.append(parameter_change(method, llm, cfg))
        if method.kind == "lora":
            ratios.append(abs(method.n_parameters() / (cfg.n_tokens * llm.hidden_size) - 1))
    drift = max((abs(a - b) for a, b in zip(before, after, strict=True)), default=0.0)
    return {
        "min_parameter_change": min(changes) if changes else 0.0,
        "lora_budget_ratio": max(ratios, default=0.0),
        "base_logprob_drift": drift,
    }


def best_metrics(table: pd.DataFrame, min_compliance: float = 0.9) -> dict[str, dict[str, float]]:
    """{"best_sgs": {"method/objective": SGS}, "best_compliance": {...}} at each group's chosen learning rate
    (`best_per_group`): what notebook 04's findings compare."""
    best = best_per_group(table, min_compliance)
    keys = [f"{r.method}/{r.objective}" for r in best.itertuples()]
    return {
        "best_sgs": dict(zip(keys, best["sgs"].astype(float), strict=True)),
        "best_compliance": dict(zip(keys, best["benign_compliance"].astype(float), strict=True)),
        "best_lr": dict(zip(keys, best["lr"].astype(float), strict=True)),
        "meets_compliance": dict(zip(keys, best["meets_compliance"].astype(bool), strict=True)),
        # what the paper's orderings compare: SGS at a usable benign compliance (None: no such run)
        "sgs_at_compliance": {
            k: float(v) if ok else None
            for k, v, ok in zip(keys, best["sgs"], best["meets_compliance"], strict=True)
        },
    }
