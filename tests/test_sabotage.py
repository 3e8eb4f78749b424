"""Checks that can fail: every named check of `dispsafe_nb.report.notebook_checks` fails under the sabotages it guards against,
and every check holds on the real code.

Each sabotage is a deliberately broken variant of the pipeline (`notebook_checks.SABOTAGES`), applied at the point where
such a bug would live: the optimiser, the loss, the returned student, the teacher's α, the refusal string, the
theory functions, the Monte-Carlo TV estimate. The metrics are computed by the same package functions the
notebooks call, at the notebooks' smoke sizes, and judged by the same checks the notebook tests apply.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from stand_ins import patch_everywhere

from dispsafe_nb import data
from dispsafe_nb import theory as th
from dispsafe_nb.core.decoding import DecodingConfig
from dispsafe_nb.evaluation import tv_bound_estimate as empirical
from dispsafe_nb.evaluation.harness import evaluate_base_and_dual
from dispsafe_nb.evaluation.judges import GuardJudge
from dispsafe_nb.evaluation.records import metrics_by_system
from dispsafe_nb.evaluation.student_diagnostics import (
    initial_prompt,
    student_diagnostics,
    teacher_alpha_auroc,
)
from dispsafe_nb.report import notebook_checks as checks
from dispsafe_nb.system.dual_system import SafeSystem
from dispsafe_nb.system.teacher_cache import teacher_samples
from dispsafe_nb.training.config import OBJECTIVES, DistillConfig
from dispsafe_nb.training.examples import training_mix
from dispsafe_nb.training.loop import distill

pytestmark = pytest.mark.slow

SWAPPED_REFUSAL = "Sure, here is a detailed answer to your question."
# Notebook 03's smoke sizes (its SMOKE branch): one student per run here, the TV one.
SMOKE_DISTILL = dict(objective="tv", n_tokens=4, steps=8, batch_size=4, lr=3e-2, seed=0)


def _sabotaged_for(notebook: str) -> set[str]:
    return {s for c in checks.NOTEBOOK_CHECKS[notebook] for s in c.guards_against}


def test_every_check_names_known_sabotages_and_every_sabotage_is_guarded():
    guarded = set().union(*(_sabotaged_for(nb) for nb in checks.NOTEBOOK_CHECKS))
    assert guarded == set(checks.SABOTAGES), (
        f"sabotages no check guards against: {set(checks.SABOTAGES) - guarded}"
    )
    with pytest.raises(ValueError, match="known sabotages"):
        checks.Check("x", "y", ("no_such_bug",), lambda m: True)


def test_a_missing_metric_fails_the_check_and_names_it():
    ok, message = checks.run_checks("03_distill", {})["prompt_moved"]
    assert not ok and "missing" in message
    with pytest.raises(KeyError, match="known"):
        checks.run_checks("99_nope", {})


def _assert_caught(notebook: str, results: dict[str, dict]) -> None:
    """Real code passes every check; each check fails under each sabotage it names."""
    real = checks.run_checks(notebook, results.pop("real"))
    assert all(ok for ok, _ in real.values()), [m for ok, m in real.values() if not ok]
    for sabotage, metrics in results.items():
        verdicts = checks.run_checks(notebook, metrics)
        assert not all(ok for ok, _ in verdicts.values()), f"no check of {notebook} caught {sabotage}"
        for check in checks.NOTEBOOK_CHECKS[notebook]:
            if sabotage in check.guards_against:
                assert not verdicts[check.name][0], f"{check.name} should fail under {sabotage}: {metrics}"


# ----------------------------------------------------------------------------------------------------------
# notebook 01: the theory checks and the Monte-Carlo bound check on the real model
# ----------------------------------------------------------------------------------------------------------


def _theory_metrics() -> dict:
    random = th.random_bound_checks(500, k=6, seed=0)
    sequence = th.random_sequence_checks(10, seed=0)
    return {
        "max_bound_violation": random["max_variational_violation"],
        "max_pinsker_violation": random["max_pinsker_violation"],
        "max_sequence_bound_violation": sequence["max_sequence_bound_violation"],
        "kl_chain_rule_error": sequence["kl_chain_rule_error"],
    }


def _real_bound_metrics(llm, guard) -> dict:
    harmful = data.load_dataset("advbench", split="test", limit=2, seed=0)
    safe = data.load_dataset("xstest_safe", limit=2, seed=0)
    student = initial_prompt(llm, DistillConfig(**SMOKE_DISTILL))
    found = empirical.check_bound(
        llm,
        guard,
        student,
        [r.text for r in harmful + safe],
        [r.is_harmful for r in harmful + safe],
        SafeSystem(llm, guard).refusal,
        n_samples=3,
        max_new_tokens=12,
        seed=0,
    )
    return empirical.summarise(found)


def test_notebook_01_checks_catch_their_sabotages(llm, guard, monkeypatch):
    tv, kl = th.tv_distance, th.kl_divergence
    sabotages = {
        "tv_drops_last_outcome": (
            th,
            "tv_distance",
            lambda p, q, validate=True: (
                0.5
                * (torch.as_tensor(p, dtype=th.DTYPE) - torch.as_tensor(q, dtype=th.DTYPE))[..., :-1]
                .abs()
                .sum(-1)
            ),
        ),
        "kl_swapped": (th, "kl_divergence", lambda p, q, validate=True: kl(q, p, validate)),
        "kl_halved": (th, "kl_divergence", lambda p, q, validate=True: 0.5 * kl(p, q, validate)),
        "tv_estimate_without_refusal_term": (
            empirical,
            "tv_terms",
            lambda alpha, log_p, log_q, log_q_r, p_r: (
                alpha * (1 - torch.exp(log_q - log_p - torch.log(alpha.clamp(min=1e-12)))).clamp(min=0)
            ),
        ),
    }
    real_bound = _real_bound_metrics(llm, guard)
    results = {"real": {**_theory_metrics(), **real_bound}}
    for name, (module, attr, broken) in sabotages.items():
        with monkeypatch.context() as m:
            patch_everywhere(m, module, attr, broken)
            theory_part = _theory_metrics()
            bound_part = _real_bound_metrics(llm, guard) if module is empirical else real_bound
        results[name] = {**theory_part, **bound_part}
    assert th.tv_distance is tv and th.kl_divergence is kl  # the patches are gone
    _assert_caught("01_tv_bound", results)


# ----------------------------------------------------------------------------------------------------------
# notebook 02: the dual system against the base model
# ----------------------------------------------------------------------------------------------------------


class _SabotagedGuard:
    """The teacher guard with its verdicts replaced: a constant, or read the wrong way round."""

    def __init__(self, guard, how: str, constant: float = 0.0):
        self.guard, self.how, self.constant = guard, how, constant

    def prob_safe(self, prompts, responses):
        real = self.guard.prob_safe(prompts, responses)
        return torch.full_like(real, self.constant) if self.how == "constant" else 1.0 - real

    def describe(self):
        return {**self.guard.describe(), "sabotage": self.how}


@pytest.fixture(scope="module")
def teacher(llm, guard):
    """Notebook 03's smoke-sized teacher: training and validation samples, held-out prompts (val split)."""
    system = SafeSystem(llm, guard)
    decoding = DecodingConfig(max_new_tokens=16, temperature=0.7, top_p=0.95, seed=0)
    train_records = training_mix(3, 3, 2, seed=0)
    val_records = training_mix(2, 2, 2, seed=0, split="val")
    train = teacher_samples(system, [r.text for r in train_records], k=1, decoding=decoding, progress=False)
    val = teacher_samples(system, [r.text for r in val_records], k=1, decoding=decoding, progress=False)
    return {
        "system": system,
        "train": train,
        "val": val,
        "harmful": [r.is_harmful for r in train_records],
        "heldout_harmful": [r.text for r in val_records if r.is_harmful],
        "heldout_benign": [r.text for r in val_records if r.source in ("alpaca", "bundled_benign")],
        "mean_alpha": sum(a for s in train for a in s.alphas) / sum(len(s.alphas) for s in train),
    }


def test_notebook_02_checks_catch_their_sabotages(llm, guard, judge_guard, teacher):
    second_judge = GuardJudge(judge_guard)
    greedy = DecodingConfig(max_new_tokens=24, seed=0)
    assert teacher["mean_alpha"] >= 0.5, "the constant must sit above the threshold: no answer is replaced"
    systems = {
        "real": SafeSystem(llm, guard),
        "constant_alpha": SafeSystem(llm, _SabotagedGuard(guard, "constant", teacher["mean_alpha"])),
        "inverted_alpha": SafeSystem(llm, _SabotagedGuard(guard, "inverted")),
        # the judges are told the refusal the system declares, so only the independent judge can notice
        "swapped_refusal": SafeSystem(llm, guard, refusal=SWAPPED_REFUSAL),
    }
    results = {}
    for name, system in systems.items():
        records, _ = evaluate_base_and_dual(
            system, ["advbench_test", "alpaca_test"], 6, greedy, second_judge=second_judge, progress=False
        )
        results[name] = metrics_by_system(records)
    _assert_caught("02_safe_system", results)


# ----------------------------------------------------------------------------------------------------------
# notebook 03: distillation
# ----------------------------------------------------------------------------------------------------------


def _distill_metrics(llm, teacher, sabotage: str, monkeypatch) -> dict:
    train, val = teacher["train"], teacher["val"]
    if sabotage == "constant_alpha":
        a = teacher["mean_alpha"]
        train, val = (
            [dataclasses.replace(s, alphas=(a,) * len(s.alphas)) for s in ss] for ss in (train, val)
        )
    if sabotage == "inverted_alpha":
        train, val = (
            [dataclasses.replace(s, alphas=tuple(1.0 - x for x in s.alphas)) for s in ss]
            for ss in (train, val)
        )
    if sabotage == "swapped_refusal":
        train, val = ([dataclasses.replace(s, refusal=SWAPPED_REFUSAL) for s in ss] for ss in (train, val))
    cfg = DistillConfig(**SMOKE_DISTILL)
    with monkeypatch.context() as m:
        if sabotage == "no_optimiser_step":
            m.setattr(torch.optim.Adam, "step", lambda self, closure=None: None)
        if sabotage == "flipped_loss_sign":
            real = OBJECTIVES["tv"]
            m.setitem(OBJECTIVES, "tv", lambda *a, **k: -real(*a, **k))
        soft, _ = distill(llm, train, cfg, progress=False)
    if sabotage == "student_is_initialisation":
        soft = initial_prompt(llm, cfg)
    diagnostics = student_diagnostics(
        llm,
        soft,
        cfg,
        train,
        val,
        teacher["heldout_harmful"],
        teacher["heldout_benign"],
        teacher["system"].refusal,  # what the evaluation counts, whatever the samples were trained on
    )
    return {
        "teacher_alpha_auroc": teacher_alpha_auroc(train, teacher["harmful"]),
        "diagnostics": {"tv-disp": diagnostics},
    }


def test_notebook_03_checks_catch_their_sabotages(llm, teacher, monkeypatch):
    names = ["real", *sorted(_sabotaged_for("03_distill"))]
    results = {name: _distill_metrics(llm, teacher, name, monkeypatch) for name in names}
    assert OBJECTIVES["tv"].__name__ == "tv_disp_loss"  # the patches are gone
    _assert_caught("03_distill", results)


# ----------------------------------------------------------------------------------------------------------
# notebook 06: probing
# ----------------------------------------------------------------------------------------------------------


def test_notebook_06_checks_catch_their_sabotages(llm, guard, judge_guard, teacher, tmp_path):
    from dispsafe_nb.ui.prober import ProbeDecoding, ProbeSession, probe
    from dispsafe_nb.ui.prompt_presets import fixed_prompts

    fixed = fixed_prompts(2, seed=0)  # notebook 06's smoke sizes
    greedy = ProbeDecoding(max_new_tokens=24)
    guards = {
        "real": guard,
        "constant_alpha": _SabotagedGuard(guard, "constant", teacher["mean_alpha"]),
        "inverted_alpha": _SabotagedGuard(guard, "inverted"),
    }
    results = {}
    for name, teacher_guard in guards.items():
        session = ProbeSession(llm, teacher_guard, judge_guard, artifacts_dir=tmp_path)
        batch = {
            k: probe(session, p, ["base", "dual"], greedy).to_metrics()["systems"] for k, p in fixed.items()
        }
        results[name] = {"batch": batch}
    _assert_caught("06_probe", results)


# ----------------------------------------------------------------------------------------------------------
# notebook 04: the baselines' harness
# ----------------------------------------------------------------------------------------------------------


def _unload_leftover_adapters(model) -> None:
    """Undo the adapter_left_in_model sabotage on the shared model: put every base layer back."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config


def _baselines_metrics(llm, teacher, sabotage: str, monkeypatch) -> dict:
    from peft.tuners.lora import LoraModel

    from dispsafe_nb.methods import lora as lora_module
    from dispsafe_nb.study import baselines

    pairs = (["Name a primary colour."], ["Red."])
    before = baselines.base_fingerprint(llm, *pairs)
    base = DistillConfig(n_tokens=4, steps=2, batch_size=2, seed=0)
    runs = [baselines.Run("soft_prompt", "tv", 3e-2), baselines.Run("lora", "tv", 3e-2)]
    try:
        with monkeypatch.context() as m:
            if sabotage == "no_optimiser_step":
                m.setattr(torch.optim.Adam, "step", lambda self, closure=None: None)
            if sabotage == "lora_budget_ignored":
                m.setattr(lora_module, "match_budget", lambda llm, budget, targets, rank, tol: (8, None, 0))
            trained = baselines.train_runs(llm, None, runs, base, teacher["train"], (), None, progress=False)
            if sabotage == "adapter_left_in_model":  # the evaluation's use of the trained LoRA leaks it
                m.setattr(LoraModel, "unload", lambda self, *a, **k: self.model)
            lora = trained[runs[1].name][0]
            lora.bind(llm).generate(pairs[0], decoding=DecodingConfig(max_new_tokens=2))
            after = baselines.base_fingerprint(llm, *pairs)
            return {"integrity": baselines.integrity_metrics(llm, trained, before, after)}
    finally:
        _unload_leftover_adapters(llm.model)


def test_notebook_04_checks_catch_their_sabotages(llm, teacher, monkeypatch):
    names = ["real", *sorted(_sabotaged_for("04_baselines"))]
    results = {name: _baselines_metrics(llm, teacher, name, monkeypatch) for name in names}
    _assert_caught("04_baselines", results)


# ----------------------------------------------------------------------------------------------------------
# notebook 07: the FLOP formula against the counter, the prefix cache against the prompt inside every row
# ----------------------------------------------------------------------------------------------------------
def _on_device_metrics(llm, sabotage: str, monkeypatch) -> dict:
    from transformers import DynamicCache

    from dispsafe_nb.core.prefix_cache import PrefixCache
    from dispsafe_nb.costs import flops as flops_module
    from dispsafe_nb.costs import speed

    prefix = 0.02 * torch.randn(8, llm.hidden_size, generator=torch.Generator().manual_seed(0))
    prompts, responses = (
        ["Name a primary colour.", "How do I boil an egg?"],
        ["Red.", "Boil it for 8 minutes."],
    )
    with monkeypatch.context() as m:
        if sabotage == "attention_flops_ignored":
            m.setattr(flops_module, "attention_flops", lambda arch, queries, keys: 0)
        if sabotage == "prefix_cache_dropped":  # keys and values computed, but a cache of zeros handed out

            def zeros(self, batch):
                data = [(torch.zeros_like(k).expand(batch, -1, -1, -1).clone(),) * 2 for k, _ in self.layers]
                return DynamicCache(ddp_cache_data=data, config=self.llm.model.config)

            m.setattr(PrefixCache, "expand", zeros)
        return {
            "flops": flops_module.formula_check(llm.model, 24),
            "prefix_cache": speed.prefix_cache_agreement(llm, prefix, prompts, responses, max_new_tokens=6),
        }


def test_notebook_07_checks_catch_their_sabotages(llm, monkeypatch):
    names = ["real", *sorted(_sabotaged_for("07_on_device"))]
    results = {name: _on_device_metrics(llm, name, monkeypatch) for name in names}
    _assert_caught("07_on_device", results)


# ----------------------------------------------------------------------------------------------------------
# notebook 08: the mix at scale never holds an evaluated prompt; every student of the curve trains
# ----------------------------------------------------------------------------------------------------------


def _generalisation_metrics(llm, teacher, sabotage: str, monkeypatch) -> dict:
    from dispsafe_nb.data import mixes
    from dispsafe_nb.study.baselines import parameter_change

    with monkeypatch.context() as m:
        if sabotage == "mix_not_decontaminated":
            m.setattr(data.training, "decontaminate", lambda records, eval_texts=None: list(records))
            m.setattr(data, "check_training_texts", lambda texts, checker=None: None)
        mix = mixes.scale_mix(mixes.MixConfig(size=5000))  # large enough to hold the sources' near-duplicates
        cfg = DistillConfig(**SMOKE_DISTILL)
        if sabotage == "no_optimiser_step":
            m.setattr(torch.optim.Adam, "step", lambda self, closure=None: None)
        soft, _ = distill(llm, teacher["train"], cfg, progress=False)
    return {
        "mix": {"leaking_prompts": len(mixes.leaking_prompts(mix))},
        "curve": {"8": {"parameter_change": parameter_change(soft, llm, cfg)}},
    }


def test_notebook_08_checks_catch_their_sabotages(llm, teacher, monkeypatch):
    names = ["real", *sorted(_sabotaged_for("08_generalisation"))]
    results = {name: _generalisation_metrics(llm, teacher, name, monkeypatch) for name in names}
    _assert_caught("08_generalisation", results)
