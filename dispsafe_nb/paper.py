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
