"""Tests for ``dispsafe_nb.evaluation.verifiable_instructions``: every check type passes and fails where it should."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dispsafe_nb.evaluation.verifiable_instructions import (
    CHECKS,
    PARAMS,
    check_response,
    check_results,
    count_words,
    run_check,
    split_paragraphs,
    split_sentences,
    strip_code_fence,
    validate_check,
    validate_checks,
)

VERIFIABLE = Path(__file__).resolve().parents[1] / "data" / "bundled" / "verifiable.jsonl"

# (check, a response that passes, a response that fails)
CASES: list[tuple[dict, str, str]] = [
    ({"type": "max_words", "n": 5}, "Water rises, then falls.", "one two three four five six"),
    ({"type": "min_words", "n": 5}, "one two three four five", "too short"),
    (
        {"type": "include_keywords", "keywords": ["Sunlight", "soil"]},
        "Plenty of sunlight and rich SOIL help.",
        "Plenty of sunlight helps.",
    ),
    (
        {"type": "exclude_keywords", "keywords": ["blue", "sea breeze"]},
        "The waves are bluish-grey; a database of tides.",
        "The Blue waves roll in.",
    ),
    ({"type": "bullet_count", "n": 3}, "Intro:\n- a\n* b\n  - c\nDone.", "- a\n- b"),
    (
        {"type": "numbered_list", "n": 3},
        "Steps:\n1. Boil\n2. Pour\n3. Steep",
        "1. Boil\n2. Pour\nThat's 3.5 steps.",
    ),
    (
        {"type": "json_object", "keys": ["name", "capital"]},
        '```json\n{"name": "France", "capital": "Paris"}\n```',
        '{"name": "France"}',
    ),
    ({"type": "all_lowercase"}, "- a quiet morning, 7 am.", "A quiet morning."),
    ({"type": "all_uppercase"}, "GO TEAM GO! 2024", "GO TEAM go!"),
    ({"type": "starts_with", "prefix": "Coffee is"}, "  Coffee is a drink.", "Tea and coffee is fine."),
    ({"type": "ends_with", "suffix": "The End."}, "They slept. The End.  \n", "The End. They slept."),
    ({"type": "max_sentences", "n": 2}, "Gravity pulls. It is 9.8 m/s^2 here!", "One. Two? Three!"),
    (
        {"type": "num_paragraphs", "n": 2},
        "First part.\nStill first.\n\n  \nSecond part.",
        "Only one paragraph.",
    ),
    ({"type": "no_commas"}, "Rain falls and the roof sings", "Rain falls, softly."),
    ({"type": "wrapped_in_quotes"}, '  "Keep learning every day."  ', 'He said "learn" today.'),
]


def test_cases_cover_every_check_type() -> None:
    assert {c["type"] for c, _, _ in CASES} == set(CHECKS)
    assert set(PARAMS) == set(CHECKS)


@pytest.mark.parametrize(("check", "passing", "failing"), CASES, ids=[c["type"] for c, _, _ in CASES])
def test_check_passes_and_fails(check: dict, passing: str, failing: str) -> None:
    assert run_check(check, passing) is True
    assert run_check(check, failing) is False
    assert check_response([check], passing) is True
    assert check_response([check], failing) is False
    assert check_results([check], failing) == {check["type"]: False}


def test_unknown_type_names_it_and_lists_known() -> None:
    with pytest.raises(ValueError, match=r"unknown check type 'max_emojis'") as info:
        check_response([{"type": "max_emojis", "n": 2}], "hi")
    message = str(info.value)
    assert "known types" in message
    assert all(kind in message for kind in CHECKS)


def test_missing_type_key() -> None:
    with pytest.raises(ValueError, match="no 'type'.*known types"):
        validate_check({"n": 3})


def test_missing_parameter() -> None:
    with pytest.raises(ValueError, match=r"'max_words' is missing parameter 'n'"):
        check_response([{"type": "max_words"}], "hi")
    with pytest.raises(ValueError, match=r"'starts_with' is missing parameter 'prefix'"):
        check_results([{"type": "starts_with"}], "hi")


@pytest.mark.parametrize(
    "check",
    [
        {"type": "max_words", "n": -1},
        {"type": "max_words", "n": "40"},
        {"type": "max_words", "n": True},
        {"type": "include_keywords", "keywords": "soil"},
        {"type": "include_keywords", "keywords": []},
        {"type": "json_object", "keys": ["a", 3]},
        {"type": "ends_with", "suffix": ""},
    ],
)
def test_bad_parameter_values(check: dict) -> None:
    with pytest.raises(ValueError, match=f"check '{check['type']}': parameter"):
        validate_check(check)


def test_unexpected_parameter() -> None:
    with pytest.raises(ValueError, match="unexpected parameter"):
        validate_check({"type": "no_commas", "n": 1})
    with pytest.raises(ValueError, match="unexpected parameter"):
        validate_check({"type": "include_keywords", "keywords": ["a"], "keyword": "b"})


def test_checks_must_be_a_list() -> None:
    with pytest.raises(ValueError, match="list of dicts"):
        validate_checks({"type": "no_commas"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be a dict"):
        validate_checks(["no_commas"])  # type: ignore[list-item]


def test_results_per_type_and_all_must_pass() -> None:
    checks = [
        {"type": "max_words", "n": 10},
        {"type": "include_keywords", "keywords": ["rain"]},
        {"type": "include_keywords", "keywords": ["snow"]},
        {"type": "no_commas"},
    ]
    response = "Rain today and sun tomorrow"
    assert check_results(checks, response) == {
        "max_words": True,
        "include_keywords": False,
        "no_commas": True,
    }
    assert check_response(checks, response) is False
    assert check_response(checks, "Rain then snow") is True
    assert check_response([], "anything") is True


def test_json_object_edge_cases() -> None:
    check = {"type": "json_object", "keys": ["a"]}
    assert run_check(check, '{"a": 1}')
    assert run_check(check, '```\n{"a": 1}\n```')
    assert run_check(check, '```JSON\n{"a": 1, "b": 2}\n```\n')
    assert not run_check(check, '[{"a": 1}]')
    assert not run_check(check, 'Here you go: {"a": 1}')
    assert not run_check(check, "")
    assert strip_code_fence("```json\n{}\n```") == "{}"


def test_case_checks_need_letters() -> None:
    assert not run_check({"type": "all_lowercase"}, "123 !")
    assert not run_check({"type": "all_uppercase"}, "")


def test_quotes_accept_curly_pairs_only_when_matched() -> None:
    check = {"type": "wrapped_in_quotes"}
    assert run_check(check, "\u201cDream big.\u201d")
    assert not run_check(check, '"')
    assert not run_check(check, '\u201cDream big."x')


def test_text_helpers() -> None:
    assert count_words("  a  b\nc ") == 3
    assert split_sentences("Hi there. How are you?\nFine") == ["Hi there.", "How are you?", "Fine"]
    assert split_sentences("") == []
    assert split_paragraphs("a\n\n\nb\n \nc") == ["a", "b", "c"]
    assert split_paragraphs("  ") == []


def test_numbered_list_ignores_decimals_and_counts_multi_digit() -> None:
    check = {"type": "numbered_list", "n": 10}
    response = "\n".join(f"{i}. item" for i in range(1, 11)) + "\nAbout 2.5 hours total."
    assert run_check(check, response)


def test_every_bundled_record_parses_and_returns_bool() -> None:
    with open(VERIFIABLE, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert len(records) >= 60
    for record in records:
        validate_checks(record["checks"])
        for dummy in ("", "A dummy response.", "- x\n\n1. y"):
            assert isinstance(check_response(record["checks"], dummy), bool)
            results = check_results(record["checks"], dummy)
            assert set(results) == {c["type"] for c in record["checks"]}
