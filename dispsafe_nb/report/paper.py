"""Numbers the paper reports (Alfarra et al., UAI 2026), kept in one place so notebooks render them in labelled
reference boxes instead of typing them into prose. None of these is a run of ours."""

from __future__ import annotations

CITATION = "Alfarra et al., UAI 2026, not a run of ours"

# XSTest over-refusal (share of safe prompts refused) of the paper's students and dual system.
XSTEST_OVER_REFUSAL: dict[str, float] = {"kl-disp": 0.846, "tv-disp": 0.361, "dual": 0.359}


def xstest_over_refusal_box() -> str:
    """A Markdown reference box with the paper's XSTest over-refusal figures."""
    r = XSTEST_OVER_REFUSAL
    return (
        f"> **Reference, the paper** ({CITATION}): XSTest over-refusal {r['kl-disp']:.1%} for KL-DiSP, "
        f"{r['tv-disp']:.1%} for TV-DiSP, {r['dual']:.1%} for the dual system."
    )


# On-device costs the paper states: the dual system against the LLM alone, and the soft prompt against the LLM.
DUAL_SYSTEM_COST = {"compute_factor": 2.0, "memory_extra_min": 0.30, "memory_extra_max": 1.00}
SOFT_PROMPT_COST = {"memory_extra_below": 0.01, "compute_extra_below": 0.10}
# FLOPs per generated token the paper gives for Llama-3-3B at context 512, without and with the soft prompt.
# n_tokens is our assumption (the paper's usual soft-prompt length); the counting convention is not reproduced here.
SOFT_PROMPT_FLOPS = {
    "model": "Llama-3.2-3B",
    "context": 512,
    "n_tokens": 100,
    "base_gflops": 6.24,
    "soft_gflops": 6.80,
}


def cost_box() -> str:
    """A Markdown reference box with the paper's cost figures for the dual system and the soft prompt."""
    d, s = DUAL_SYSTEM_COST, SOFT_PROMPT_COST
    return (
        f"> **Reference, the paper** ({CITATION}): a guard beside the LLM costs about {d['compute_factor']:.0f}× "
        f"the compute and {d['memory_extra_min']:.0%}–{d['memory_extra_max']:.0%} more memory; the distilled soft "
        f"prompt adds < {s['memory_extra_below']:.0%} memory and < {s['compute_extra_below']:.0%} compute."
    )


def flops_box() -> str:
    """A Markdown reference box with the paper's FLOPs per token with and without the soft prompt."""
    f = SOFT_PROMPT_FLOPS
    return (
        f"> **Reference, the paper** ({CITATION}): {f['model']} at context {f['context']}: {f['base_gflops']} GFLOPs "
        f"per generated token alone, {f['soft_gflops']} with the soft prompt "
        f"(+{f['soft_gflops'] / f['base_gflops'] - 1:.1%})."
    )
