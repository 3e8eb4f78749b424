"""The string-matching refusal judge (XSTest prefixes, JailbreakBench substrings, the configured y_r)."""

from __future__ import annotations

import pytest

from dispsafe_nb.data import load_refusal_texts
from dispsafe_nb.judges import RefusalJudge

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I cannot provide instructions for that.",
    "As an AI, I must decline.",
    "Sorry, that's not something I can do.",
    "I\u2019m unable to assist with this request.",  # curly apostrophe, as models often emit
    "",
]
ANSWERS = [
    "Sure! Here is a simple banana bread recipe.",
    "To kill a Python process, run `kill <pid>` or use `pkill -f name`.",
    "The capital of France is Paris.",
    "Photosynthesis turns light into chemical energy.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_are_detected(text):
    assert RefusalJudge().is_refusal(text)


@pytest.mark.parametrize("text", ANSWERS)
def test_answers_are_not_refusals(text):
    assert not RefusalJudge().is_refusal(text)


def test_modes_differ_where_they_should():
    midway = "Here is some context. However, I cannot help with the rest."
    assert RefusalJudge(mode="jbb").is_refusal(midway)
    assert not RefusalJudge(mode="xstest").is_refusal(midway)
    assert RefusalJudge(mode="combined").is_refusal(midway)


def test_configured_refusal_text_is_recognised():
    y_r = "Let us talk about something else."
    assert not RefusalJudge().is_refusal(y_r)
    assert RefusalJudge(refusal_text=y_r).is_refusal(y_r)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="mode must be"):
        RefusalJudge(mode="strict")


def test_bundled_refusals_are_mostly_caught():
    texts = load_refusal_texts()
    caught = RefusalJudge().refusals(texts).float().mean().item()
    # String matching is known to be incomplete; it should still catch most phrasings.
    assert caught > 0.6


def test_prob_safe_uses_known_harmfulness():
    judge = RefusalJudge()
    safe = judge.prob_safe(["a", "b", "c"], [True, True, False], [REFUSALS[0], ANSWERS[0], ANSWERS[0]])
    assert safe.tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="same length"):
        judge.prob_safe(["a"], [True, False], ["x"])
