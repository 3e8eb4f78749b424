"""Engine agreement on hand-made records: the paired interval, where answers part, κ only where both refuse."""

from __future__ import annotations

import pytest

from dispsafe_nb.evaluation.engine_agreement import (
    agreement_summary,
    compare_records,
    engine_agreement,
    first_divergence,
    paired_rate_difference,
)
from dispsafe_nb.evaluation.records import EvalRecord


def _record(system, bench, answers):
    outputs = [
        {"id": f"p{i}", "prompt": f"prompt {i}", "response": text, "refused": float(refused)}
        for i, (text, refused) in enumerate(answers)
    ]
    rate = sum(r for _, r in answers) / len(answers)
    return EvalRecord(system, bench, "harmful", len(answers), rate, "sgs", rate, outputs=outputs)


def _words(text):
    return text.split()


def test_the_paired_interval_widens_with_discordant_pairs_and_is_zero_without():
    same = paired_rate_difference([1, 0, 1, 0], [1, 0, 1, 0])
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0, "discordant": 0}
    one_way = paired_rate_difference([0] * 10, [1, 1] + [0] * 8)
    assert one_way["difference"] == pytest.approx(0.2) and one_way["low"] < 0.2 < one_way["high"]
    both_ways = paired_rate_difference([1, 0] + [0] * 8, [0, 1] + [0] * 8)
    assert both_ways["difference"] == 0.0 and both_ways["high"] > 0, (
        "flips both ways: rate equal, not certain"
    )
    with pytest.raises(ValueError, match="same non-zero number"):
        paired_rate_difference([1], [1, 0])


def test_first_divergence_is_the_first_differing_token_or_the_shorter_length():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2


def test_records_of_two_engines_compare_per_system_and_set():
    ref = _record("base", "jbb", [("I cannot help", 1), ("Sure here it is", 0), ("No", 1), ("ok then", 0)])
    oth = _record("base", "jbb", [("I cannot help", 1), ("Sure there it is", 0), ("No", 1), ("I refuse", 1)])
    row = compare_records(ref, oth, _words)
    assert row["agreement"] == 0.75 and row["n"] == 4 and row["identical_share"] == 0.5
    assert row["rate_difference"]["difference"] == 0.25 and row["first_divergence_median"] == 0.5
    rows = engine_agreement([ref, _record("dual", "jbb", [("x", 0)] * 4)], [oth], _words)
    assert len(rows) == 1, "only the pairs both runs hold"
    summary = agreement_summary(rows)
    assert summary["min_verdict_agreement"] == 0.75 and summary["min_agreement_at"] == "base/jbb"
    assert summary["kappa_rows"] == 1 and summary["min_verdict_kappa"] == pytest.approx(row["kappa"])
    rare = compare_records(
        *(_record("s", "b", [("a", 0)] * 19 + [(t, v)]) for t, v in (("a", 0), ("r", 1))), _words
    )
    assert agreement_summary([rare])["min_verdict_kappa"] is None, (
        "κ is not judged where nearly nothing is refused"
    )


def test_runs_on_different_prompts_are_refused():
    ref = _record("base", "jbb", [("a", 0), ("b", 1)])
    with pytest.raises(ValueError, match="different prompts"):
        compare_records(ref, _record("base", "jbb", [("a", 0)]), _words)
