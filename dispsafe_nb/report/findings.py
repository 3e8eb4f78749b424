"""Notebook prose rendered from a run's own metrics: "what this run found" passages, as Markdown strings.

A notebook states its findings by calling these on the metrics it emits, so the text can never disagree with
the numbers (a typed-in number could, after the next run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dispsafe_nb.report.generalisation_tables import SHORT_NAMES, variant_rows

# (label, benchmark, metric) rows of notebook 03's findings
DISTILL_ROWS = (
    ("SGS, AdvBench test", "advbench_test", "sgs"),
    ("over-refusal, XSTest safe", "xstest_safe", "over_refusal"),
    ("compliance, Alpaca test", "alpaca_test", "compliance"),
)


def _percent(metrics: Mapping[str, Any], system: str, bench: str, key: str) -> str:
    found = metrics.get(system, {}).get(bench)
    return f"{found[key]:.0%}" if found and found.get(key) is not None else "n/a"


def _kl_over_tv(metrics: Mapping[str, Any]) -> str:
    try:
        kl = metrics["kl-disp"]["xstest_safe"]["over_refusal"]
        tv = metrics["tv-disp"]["xstest_safe"]["over_refusal"]
    except KeyError:
        return "n/a"
    return "yes" if kl > tv else "no"


def distill_findings(
    metrics: Mapping[str, Any], seed: int, limit: Any, sampled_limit: Any, k_eval: int
) -> str:
    """Notebook 03: base, dual and students on safety, over-refusal and usefulness, greedy and sampled, and whether
    KL-DiSP over-refused more than TV-DiSP (the paper's finding) in this run."""
    sampled = metrics.get("sampled", {})
    lines = [
        f"**This run** (seed {seed}; greedy: {limit} prompts per set at most; sampled: {sampled_limit} x {k_eval}):"
    ]
    for label, bench, key in DISTILL_ROWS:
        greedy = ", ".join(
            f"{name} {_percent(metrics, system, bench, key)}"
            for name, system in (("base", "base"), ("dual", "dual"), ("TV", "tv-disp"), ("KL", "kl-disp"))
        )
        drawn = ", ".join(
            f"{name} {_percent(sampled, system, bench, key)}"
            for name, system in (("dual", "dual-distribution"), ("TV", "tv-disp"), ("KL", "kl-disp"))
        )
        lines.append(f"- {label}: greedy {greedy} | sampled: {drawn}")
    lines.append(
        f"- KL-DiSP over-refuses more than TV-DiSP on XSTest: greedy {_kl_over_tv(metrics)}, sampled "
        f"{_kl_over_tv(sampled)} (one seed)."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# notebook 01: the toy over-refusal experiment and the bound on the real model
# ---------------------------------------------------------------------------------------------------------


def toy_metrics(toy: Mapping[str, Any], toy_full: Mapping[str, Any]) -> dict[str, float]:
    """The numbers notebook 01 emits and states about its toy experiment (final step of each student)."""
    out = {}
    for loss in ("tv", "kl"):
        for kind in ("benign", "harmful"):
            out[f"toy_{loss}_{kind}_refusal"] = float(toy[loss][f"refusal_{kind}"][-1])
            out[f"toy_full_{loss}_{kind}_refusal"] = float(toy_full[loss][f"refusal_{kind}"][-1])
        out[f"toy_{loss}_final_tv"] = float(toy[loss]["tv"][-1])
        out[f"toy_full_{loss}_final_tv"] = float(toy_full[loss]["tv"][-1])
    for kind in ("benign", "harmful"):
        out[f"toy_teacher_{kind}_refusal"] = float(toy["teacher"][f"refusal_{kind}"])
    return out


def toy_findings(m: Mapping[str, float], paper_gap_points: float = 48.0) -> str:
    """Notebook 01, section 9: what the toy showed in this run (from `toy_metrics`)."""
    gap = 100 * (m["toy_kl_benign_refusal"] - m["toy_tv_benign_refusal"])
    teacher = m["toy_teacher_benign_refusal"]
    ratio = lambda loss: m[f"toy_{loss}_benign_refusal"] / teacher if teacher > 0 else float("inf")  # noqa: E731
    full_gap = 100 * (m["toy_full_kl_benign_refusal"] - m["toy_full_tv_benign_refusal"])
    return "\n".join(
        [
            "**What this run found.**",
            f"- *Capacity-limited student.* Benign refusal: KL-DiSP {m['toy_kl_benign_refusal']:.3f}, TV-DiSP "
            f"{m['toy_tv_benign_refusal']:.3f}, a KL − TV gap of {gap:+.1f} points (the paper reports about "
            f"{paper_gap_points:.0f} on XSTest). Against the teacher's {teacher:.3f}, that is "
            f"{ratio('kl'):.1f}× (KL) and {ratio('tv'):.1f}× (TV). Harmful refusal: KL {m['toy_kl_harmful_refusal']:.3f}, "
            f"TV {m['toy_tv_harmful_refusal']:.3f}, teacher {m['toy_teacher_harmful_refusal']:.3f}. Mean TV to the "
            f"teacher: KL {m['toy_kl_final_tv']:.3f}, TV {m['toy_tv_final_tv']:.3f}.",
            f"- *Full-capacity student.* Benign refusal: KL-DiSP {m['toy_full_kl_benign_refusal']:.3f}, TV-DiSP "
            f"{m['toy_full_tv_benign_refusal']:.3f} (gap {full_gap:+.1f} points); harmful: KL "
            f"{m['toy_full_kl_harmful_refusal']:.3f}, TV {m['toy_full_tv_harmful_refusal']:.3f}; mean TV to the "
            f"teacher: KL {m['toy_full_kl_final_tv']:.3f}, TV {m['toy_full_tv_final_tv']:.3f}.",
        ]
    )


def bound_findings(checks: Sequence[Any], kinds: Sequence[str], n_samples: int, student_source: str) -> str:
    """Notebook 01, section 10: the bound on the real model in this run, per prompt kind, for both test functions."""
    if not checks or len(checks) != len(kinds):
        raise ValueError("one prompt kind per bound check, at least one check")
    holds = sum(c.holds for c in checks) / len(checks)
    holds_r = sum(c.refusal_holds for c in checks) / len(checks)
    lines = [
        f"**This run** ({len(checks)} prompts, {n_samples} samples each, student {student_source}): within two "
        f"standard errors, safety gap ≤ TV on {holds:.0%} of prompts and refusal gap ≤ TV on {holds_r:.0%}."
    ]
    for kind in dict.fromkeys(kinds):
        mine = [c for c, k in zip(checks, kinds, strict=True) if k == kind]

        def mean(attr: str, mine: list = mine) -> float:
            return sum(getattr(c, attr) for c in mine) / len(mine)

        lines.append(
            f"- {kind}: TV {mean('tv'):.2f} on average ({min(c.tv for c in mine):.2f}–{max(c.tv for c in mine):.2f}); "
            f"safety gap {mean('gap'):.2f} (teacher {mean('teacher_safe'):.0%} safe, student "
            f"{mean('student_safe'):.0%}); refusal gap {mean('refusal_gap'):.2f} (teacher refuses "
            f"{mean('teacher_refusal'):.0%}, student {mean('student_refusal'):.0%})."
        )
    return "\n".join(lines)


def on_device_findings(m: Mapping[str, Any]) -> str:
    """Notebook 07's reading of its own measurements: FLOPs, memory, latency, decoding and the phone budget."""
    f, lat, dec, mem = m["flops"], m["latency"], m["decode"], m["memory"]
    shares = ", ".join(f"{k.replace('_', ' ')} {v:.0%}" for k, v in f["shares"].items())
    pf = m["paper_flops"]
    paper = pf["paper"]
    fits = [r for r in m["phone"]["rows"] if r["soft_prompt_fits"] and not r["dual_fits"]]
    lines = [
        f"- **FLOPs.** One generated token of {f['model']} at context {f['context']} costs "
        f"{f['analytic'] / 1e9:.3f} GFLOPs by our formula; torch's flop counter counts "
        f"{f['counted'] / 1e9:.3f} (relative difference {f['relative_error']:.1e}). Split: {shares}.",
        f"- **The paper's model.** For {paper['model']} our formula gives {pf['ours_base_gflops']:.2f} → "
        f"{pf['ours_soft_gflops']:.2f} GFLOPs per token with a cached soft prompt of {paper['n_tokens']} vectors "
        f"(+{pf['ours_soft_gflops'] / pf['ours_base_gflops'] - 1:.1%}); the paper reports {paper['base_gflops']} → "
        f"{paper['soft_gflops']} (+{paper['soft_gflops'] / paper['base_gflops'] - 1:.1%}), counted in a way it does "
        "not state.",
        f"- **Memory.** The soft prompt's vectors add {mem['soft_prompt_vectors_extra']:.3%} to the LLM's bytes at "
        f"real precision; with their cached keys and values, {mem['soft_prompt_extra']:.2%}. The guard adds "
        f"{mem['dual_memory_ratio'] - 1:.0%}.",
        f"- **Latency, measured.** With its prefix cache the soft prompt takes {lat['soft_prompt_latency_ratio']:.3f}× "
        f"the base model's time per generated token at context {lat['context']} (N = {lat['n_tokens']}); without "
        f"the cache every request would first re-encode the N positions ({1000 * lat['inline_prefix_s']:.0f} ms of "
        f"prefill, against {1000 * lat['base_step_s']:.1f} ms per generated token). A request to our dual system "
        f"(a {lat['context']}-token prompt, a {lat['response_tokens']}-token answer, the guard's pass) takes "
        f"{lat['dual_latency_ratio']:.2f}× the base model's time.",
        f"- **Decoding.** At batch 1 a step runs at {dec['fraction_of_bound']:.0%} of the speed allowed by reading "
        f"every weight once ({1000 * dec['bandwidth_bound_s']:.1f} ms per token); decoding "
        f"{max(dec['per_token_s'], key=int)} rows together costs "
        f"{1000 * dec['per_token_s'][max(dec['per_token_s'], key=int)]:.2f} ms per token instead of "
        f"{1000 * dec['per_token_s'][min(dec['per_token_s'], key=int)]:.2f}.",
        f"- **On a phone** ({m['phone']['ram_gb']:.0f} GB, {m['phone']['app_share']:.0%} for the app): "
        + (
            "the soft prompt fits where the dual system does not for "
            + "; ".join(f"{r['llm']} + {r['guard']}" for r in fits)
            if fits
            else "every pair fits both ways at this budget"
        )
        + f". A guard as large as a 1B LLM adds {m['phone']['paper_pair_dual_compute_extra']:.0%} compute per "
        "request by our formulas.",
    ]
    return "\n".join(lines)


def _ratio(row: Mapping[str, Any]) -> str:
    if row.get("ratio") is None:
        return "– (the dual system refuses none)"
    if row.get("low") is None:
        return f"{row['ratio']:.2f}"
    return f"{row['ratio']:.2f} [{row['low']:.2f}, {row['high']:.2f}]"


def generalisation_findings(m: Mapping[str, Any]) -> str:
    """Notebook 08's reading of its own run: the data-size curve, the largest student per set and per form, the
    jailbreak framings and the usefulness beside them."""
    sizes = sorted(m["curve"], key=int)
    small, large = m["curve"][sizes[0]]["comparison"], m["curve"][sizes[-1]]["comparison"]
    harmful = [b for b, r in large["sets"].items() if "ratio" in r]
    forms = large["per_form"]
    ranked = sorted((f for f in forms if forms[f]["ratio"] is not None), key=lambda f: forms[f]["ratio"])
    fam = m["jailbreak_families"]
    gaps = sorted(fam["dual"], key=lambda f: fam["student"].get(f, 0) - fam["dual"][f])
    sets = large["sets"]
    lines = [
        f"- **Size.** Mixes of {', '.join(sizes)} prompts (nested). On the phrasing-form test set the student keeps "
        f"{_ratio(small['sets']['bundled_forms_test'])} of the dual system's SGS after the smallest mix and "
        f"{_ratio(large['sets']['bundled_forms_test'])} after the largest (student / dual, 95 % paired bootstrap "
        "interval over prompts).",
        "- **Largest mix, per set.** "
        + "; ".join(f"{b} {_ratio(sets[b])} (n = {sets[b]['n']})" for b in harmful)
        + ".",
        f"- **Per phrasing form** (largest mix): weakest {ranked[0]} {_ratio(forms[ranked[0]])}, strongest "
        f"{ranked[-1]} {_ratio(forms[ranked[-1]])}."
        if ranked
        else "- **Per phrasing form:** no form has a ratio.",
        "- **Jailbreak framings.** Where the student falls furthest behind the dual system: "
        + ", ".join(f"{f} ({fam['student'].get(f, 0):.0%} vs {fam['dual'][f]:.0%})" for f in gaps[:3])
        + ".",
        "- **Usefulness beside it.** "
        + "; ".join(
            f"{b}: {sets[b]['metric'].replace('_', ' ')} {sets[b]['student']:.2f} (dual {sets[b]['dual']:.2f})"
            for b in sets
            if "ratio" not in sets[b]
        )
        + ".",
    ]
    return "\n".join(lines)


def probe_findings(probe: Mapping[str, Any], variants: Mapping[str, Mapping[str, Any]]) -> str:
    """The harm probe's reading (`benchmarks/harm_probe.py`'s result) beside trained students (`generalise.py`
    results by name): how well the frozen model separates harm off-distribution, and whether a linear read-out of
    it meets targets the students miss."""

    layer = probe["layers"][probe["layer"]]
    met = {n for n, t in probe["targets"].items() if t["met"]}
    rows = variant_rows(variants)
    best = max(rows, key=lambda r: r["targets_met"][0])
    sets = probe["comparison"]["sets"]
    harmful = [b for b in sets if b in SHORT_NAMES]
    lines = [
        f"- **Separation.** At layer {probe['layer']} (chosen on held-out training prompts), a linear probe of the "
        f"frozen model separates XSTest's unsafe from its safe prompts with AUROC {layer['xstest_auroc']:.2f}, and "
        f"the bundled requests from their safe twins with {layer['bundled_forms_auroc']:.2f} (1 separates "
        "perfectly, 0.5 not at all); on held-out training prompts "
        f"{layer['held_out_auroc']:.2f}.",
        f"- **As a student.** The probe system meets {len(met)} of {len(probe['targets'])} targets; the best trained "
        f"student meets {best['targets_met'][0]} ({best['result']}, {best['objective']}).",
        "- **Per harmful set** (probe system / dual; best student's ratio on that set): "
        + "; ".join(
            f"{SHORT_NAMES[b]} {_ratio(sets[b])} vs {max(r.get(SHORT_NAMES[b]) or 0 for r in rows):.2f}"
            for b in harmful
        )
        + ".",
    ]
    if "xstest_safe" in sets:
        lowest = min(r["over_refusal"][0] for r in rows if "over_refusal" in r)
        lines.append(
            f"- **Over-refusal** (XSTest safe): probe system {sets['xstest_safe']['student']:.0%}, dual "
            f"{sets['xstest_safe']['dual']:.0%}, lowest student {lowest:.0%}."
        )
    student_met = {n for n, t in _best_targets(variants, best).items() if t["met"]}
    any_student = {n for r in rows for n, t in _best_targets(variants, r).items() if t["met"]}
    if len(met) == len(probe["targets"]):
        reading = (
            "A linear read-out of the frozen model already meets every target: what the dual system refuses is "
            "there in the model's activations, off-distribution. The students' shortfall lies in training "
            "(budget, objective, decoding), not in the model."
        )
    elif met - student_met:
        reading = (
            f"The read-out meets targets the best student misses ({', '.join(sorted(met - student_met))}): the "
            "information is in the frozen model, and distillation has not drawn it out yet."
        )
    else:
        reading = (
            "A linear read-out meets no target the best student misses: what the students miss, the frozen model's "
            "activations do not separate linearly either. At this model size that is a limit of the model more "
            "than of the distillation; the paper's 1–3B models need not share it."
        )
    if any_student - met:
        reading += (
            f" Some student meets targets the read-out misses ({', '.join(sorted(any_student - met))}): a soft "
            "prompt is more than one linear read-out of one layer."
        )
    neither = set(probe["targets"]) - met - any_student
    if neither:
        reading += (
            f" Neither meets {', '.join(sorted(neither))}: there the model's representation, as these tools read "
            "it, falls short."
        )
    lines.append(f"- **Reading.** {reading}")
    return "\n".join(lines)


def _best_targets(variants: Mapping[str, Mapping[str, Any]], row: Mapping[str, Any]) -> dict[str, Any]:
    """The targets of the student a `variant_rows` row describes."""
    result = variants[row["result"]]
    return result["per_size"][str(row["prompts"])]["objectives"][row["objective"]]["targets"]
