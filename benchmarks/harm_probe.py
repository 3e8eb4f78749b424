"""Does the frozen model already tell apart what the dual system refuses? A linear probe beside the students.

The training mix of `benchmarks/generalise.py` (same size, shares and seed), labelled by the teacher's own decision
on its cached samples (α(x, y) < 0.5); per decoder layer a logistic-regression probe on the model's activations
at the post-instruction positions, the layer chosen on a held-out fifth of the mix. Off-distribution, the *probe
system* keeps the base model's greedy answer unless the probe flags the prompt, and is scored like a student
against the deployed dual system on the generalisation sets (same cached base/dual records), with the same targets.
Also per layer: the probe's AUROC between XSTest's unsafe and safe prompts and between the bundled forms' harmful
requests and their safe twins (reported, never used to choose). `dispsafe_nb.evaluation.linear_harm_probe` says what it does and
does not bound. Writes JSON with its config.
Run: `make benchmark-harm-probe` (about 7 minutes on 2 cores once `make benchmark-generalise` has cached the teacher
samples and reference records; without them it computes both first), `--smoke` to check the plumbing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import dispsafe_nb
from dispsafe_nb.common.classifier_stats import auroc
from dispsafe_nb.common.paths import RESULTS_DIR
from dispsafe_nb.common.provenance import git_commit, machine_info
from dispsafe_nb.core.decoding import DecodingConfig, decoding_preset
from dispsafe_nb.core.loading import load_llm
from dispsafe_nb.data.mixes import MixConfig, mix_summary, scale_mix
from dispsafe_nb.evaluation.benchmarks import benchmark_records
from dispsafe_nb.evaluation.generalisation import BENCHES, cached_reference, compare, targets
from dispsafe_nb.evaluation.linear_harm_probe import choose_layer, probe_record, prompt_activations
from dispsafe_nb.guards.guard_training import load_embedding_guard
from dispsafe_nb.report.harm_probe_tables import harm_probe_markdown
from dispsafe_nb.study.paper_scale import teach
from dispsafe_nb.system.dual_system import SafeSystem

# Off-distribution contrasts (harmful set, its safe counterpart) whose separation each layer's probe reports.
CONTRASTS = {
    "xstest": ("xstest_unsafe", "xstest_safe"),
    "bundled_forms": ("bundled_forms_test", "bundled_forms_borderline_test"),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=5000, help="training-mix size (generalise's --sizes)")
    parser.add_argument("--harmful-share", type=float, default=MixConfig.harmful_share)
    parser.add_argument("--borderline-share", type=float, default=MixConfig.borderline_share)
    parser.add_argument("--seed", type=int, default=0, help="mix, teacher and held-out split seed")
    parser.add_argument(
        "--max-new-tokens", type=int, default=48, help="teacher samples' length (generalise's)"
    )
    parser.add_argument("--eval-tokens", type=int, default=32, help="greedy answers' length (generalise's)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many prompts per set")
    parser.add_argument(
        "--l2", type=float, default=1e-2, help="the probe's L2 penalty (standardised features)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the plumbing")
    parser.add_argument("--out", default=str(RESULTS_DIR / "harm_probe.json"))
    args = parser.parse_args()
    if args.smoke:
        args.size, args.limit, args.max_new_tokens, args.eval_tokens = 60, 6, 6, 6
    started, commit = time.time(), git_commit()
    llm, guard = load_llm(), load_embedding_guard()
    system = SafeSystem(llm, guard)
    cfg = MixConfig(
        size=args.size,
        harmful_share=args.harmful_share,
        borderline_share=args.borderline_share,
        seed=args.seed,
    )
    mix = scale_mix(cfg)
    teacher = decoding_preset("teacher", max_new_tokens=args.max_new_tokens, seed=args.seed)
    samples, teacher_s = teach(system, mix, 1, teacher)
    labels = [statistics.fmean(s.alphas) < 0.5 for s in samples]
    t0 = time.time()
    features = prompt_activations(llm, [r.text for r in mix], progress=True)
    best, probes, table = choose_layer(features, labels, seed=args.seed, l2=args.l2)
    fit_s = time.time() - t0
    greedy = DecodingConfig(max_new_tokens=args.eval_tokens, seed=0)
    reference, cached = cached_reference(system, dict.fromkeys(BENCHES, args.limit), decoding=greedy)
    base = {r.benchmark: r for r in reference if r.system == "base"}
    dual = {r.benchmark: r for r in reference if r.system == "dual"}
    probs: dict[str, torch.Tensor] = {}  # (n_layers, n) per set
    for bench in BENCHES:
        text_of = {p.id: p.text for p in benchmark_records(bench, limit=args.limit)}
        texts = [text_of[o["id"]] for o in base[bench].outputs]
        feats = prompt_activations(llm, texts)
        probs[bench] = torch.stack([probe.probabilities(feats[i]) for i, probe in enumerate(probes)])
    for row in table:
        for name, (harmful, safe) in CONTRASTS.items():
            scores = torch.cat([probs[harmful][row["layer"]], probs[safe][row["layer"]]])
            truth = [True] * probs[harmful].shape[1] + [False] * probs[safe].shape[1]
            row[f"{name}_auroc"] = auroc(scores, truth)
    probe_records = {b: probe_record(base[b], probs[b][best].tolist(), f"probe-L{best}") for b in BENCHES}
    comparison = compare(probe_records, dual)
    result = {
        "mix": mix_summary(mix, cfg),
        "teacher": {"decoding": teacher.to_dict(), "refused_share": statistics.fmean(labels)},
        "layer": best,
        "layers": table,
        "comparison": comparison,
        "targets": targets(comparison),
        "flag_rate": {b: float((probs[b][best] >= 0.5).double().mean()) for b in BENCHES},
        "reference_cached": cached,
        "config": {
            **vars(args),
            "features": "decoder-layer output averaged over the post-instruction positions",
            "labels": "teacher α(x, y) < 0.5 on its cached sample (k = 1)",
            "held_out_fraction": 0.2,
            "greedy_decoding": greedy.to_dict(),
            "model": llm.describe(),
            "teacher_guard": guard.describe(),
        },
        "machine": machine_info(commit, dispsafe_nb.__version__),
        "teacher_s": round(teacher_s, 1),
        "fit_s": round(fit_s, 1),
        "wall_s": round(time.time() - started, 1),
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print(report(result))
    print("wrote", path)


def report(result: dict) -> str:
    """A written result as Markdown (`harm_probe_tables.harm_probe_markdown`)."""
    return harm_probe_markdown(result)


if __name__ == "__main__":
    main()
