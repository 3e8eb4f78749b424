"""Programmatic checks for verifiable instructions (IFEval-style).

A check is a dict such as ``{"type": "max_words", "n": 40}``. Each record of
``data/bundled/verifiable.jsonl`` carries a list of them; a response follows the instruction
when every check passes::

    >>> check_response([{"type": "max_words", "n": 3}, {"type": "no_commas"}], "Rain falls down.")
    True

Matching rules, kept deliberately simple and deterministic:

- words are whitespace-separated tokens;
- ``include_keywords`` matches case-insensitive substrings ("recipe" is found in "Recipes");
  ``exclude_keywords`` matches case-insensitive whole words or phrases ("data" is not found in
  "database");
- bullets are lines starting (after indentation) with ``"- "`` or ``"* "``; numbered items are lines
  starting with a number and a period (``"1. "``);
- sentences end at ``.``, ``!`` or ``?`` followed by whitespace, or at a line break;
- paragraphs are separated by blank lines;
- ``starts_with``/``ends_with`` are case-sensitive and ignore leading/trailing whitespace.

Only the standard library is used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "CHECKS",
    "PARAMS",
    "check_response",
    "check_results",
    "count_words",
    "run_check",
    "split_paragraphs",
    "split_sentences",
    "strip_code_fence",
    "validate_check",
    "validate_checks",
]

CheckFn = Callable[..., bool]

_BULLET_RE = re.compile(r"^\s*[-*] ")
_NUMBERED_RE = re.compile(r"^\s*\d+\.(?:\s|$)")
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+|\n+")
_PARAGRAPH_SPLIT_RE = re.compile(r"\n[ \t\r\f\v]*\n")
_FENCE_RE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n?(.*?)\n?```$", re.DOTALL)
_QUOTE_PAIRS = (('"', '"'), ("\u201c", "\u201d"))


# --------------------------------------------------------------------------- text helpers


def count_words(text: str) -> int:
    """Number of whitespace-separated tokens in ``text``."""
    return len(text.split())


def split_sentences(text: str) -> list[str]:
    """Rough sentence split: after ``.``/``!``/``?`` plus whitespace, and at line breaks."""
    pieces = _SENTENCE_SPLIT_RE.split(text.strip())
    return [p.strip() for p in pieces if any(ch.isalnum() for ch in p)]


def split_paragraphs(text: str) -> list[str]:
    """Non-empty blocks of text separated by one or more blank lines."""
    return [p.strip() for p in _PARAGRAPH_SPLIT_RE.split(text.strip()) if p.strip()]


def strip_code_fence(text: str) -> str:
    """Remove one surrounding Markdown code fence (```` ```json ... ``` ````) if present."""
    stripped = text.strip()
    match = _FENCE_RE.match(stripped)
    return match.group(1).strip() if match else stripped


def _contains_word(text: str, phrase: str) -> bool:
    """Case-insensitive whole-word (or whole-phrase) search."""
    pattern = r"(?<!\w)" + re.escape(phrase) + r"(?!\w)"
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


# --------------------------------------------------------------------------- the checks


def _max_words(response: str, n: int) -> bool:
    """At most ``n`` words."""
    return count_words(response) <= n


def _min_words(response: str, n: int) -> bool:
    """At least ``n`` words."""
    return count_words(response) >= n


def _include_keywords(response: str, keywords: Sequence[str]) -> bool:
    """Every keyword occurs (case-insensitive substring)."""
    lowered = response.lower()
    return all(k.lower() in lowered for k in keywords)


def _exclude_keywords(response: str, keywords: Sequence[str]) -> bool:
    """No keyword occurs as a whole word or phrase (case-insensitive)."""
    return not any(_contains_word(response, k) for k in keywords)


def _bullet_count(response: str, n: int) -> bool:
    """Exactly ``n`` lines start with ``"- "`` or ``"* "``."""
    return sum(1 for line in response.splitlines() if _BULLET_RE.match(line)) == n


def _numbered_list(response: str, n: int) -> bool:
    """Exactly ``n`` lines start with ``"<number>."``."""
    return sum(1 for line in response.splitlines() if _NUMBERED_RE.match(line)) == n


def _json_object(response: str, keys: Sequence[str]) -> bool:
    """The response (optionally in a code fence) is a JSON object holding all ``keys``."""
    try:
        value = json.loads(strip_code_fence(response))
    except (json.JSONDecodeError, RecursionError):
        return False
    return isinstance(value, dict) and all(k in value for k in keys)


def _all_lowercase(response: str) -> bool:
    """Has letters and none of them is uppercase."""
    return response.islower()


def _all_uppercase(response: str) -> bool:
    """Has letters and none of them is lowercase."""
    return response.isupper()


def _starts_with(response: str, prefix: str) -> bool:
    """Starts with ``prefix`` (leading whitespace ignored, case-sensitive)."""
    return response.lstrip().startswith(prefix)


def _ends_with(response: str, suffix: str) -> bool:
    """Ends with ``suffix`` (trailing whitespace ignored, case-sensitive)."""
    return response.rstrip().endswith(suffix)


def _max_sentences(response: str, n: int) -> bool:
    """At most ``n`` sentences (see :func:`split_sentences`)."""
    return len(split_sentences(response)) <= n


def _num_paragraphs(response: str, n: int) -> bool:
    """Exactly ``n`` paragraphs separated by blank lines."""
    return len(split_paragraphs(response)) == n


def _no_commas(response: str) -> bool:
    """No ``,`` anywhere."""
    return "," not in response


def _wrapped_in_quotes(response: str) -> bool:
    """The whole (stripped) response is enclosed in double quotes, straight or curly."""
    s = response.strip()
    return len(s) >= 2 and any(s.startswith(a) and s.endswith(b) for a, b in _QUOTE_PAIRS)


CHECKS: dict[str, CheckFn] = {
    "max_words": _max_words,
    "min_words": _min_words,
    "include_keywords": _include_keywords,
    "exclude_keywords": _exclude_keywords,
    "bullet_count": _bullet_count,
    "numbered_list": _numbered_list,
    "json_object": _json_object,
    "all_lowercase": _all_lowercase,
    "all_uppercase": _all_uppercase,
    "starts_with": _starts_with,
    "ends_with": _ends_with,
    "max_sentences": _max_sentences,
    "num_paragraphs": _num_paragraphs,
    "no_commas": _no_commas,
    "wrapped_in_quotes": _wrapped_in_quotes,
}
"""Check type -> function ``fn(response, **params) -> bool``."""

# Parameter kinds: "count" (int >= 0), "text" (non-empty str), "strings" (non-empty list of non-empty str).
PARAMS: dict[str, dict[str, str]] = {
    "max_words": {"n": "count"},
    "min_words": {"n": "count"},
    "include_keywords": {"keywords": "strings"},
    "exclude_keywords": {"keywords": "strings"},
    "bullet_count": {"n": "count"},
    "numbered_list": {"n": "count"},
    "json_object": {"keys": "strings"},
    "all_lowercase": {},
    "all_uppercase": {},
    "starts_with": {"prefix": "text"},
    "ends_with": {"suffix": "text"},
    "max_sentences": {"n": "count"},
    "num_paragraphs": {"n": "count"},
    "no_commas": {},
    "wrapped_in_quotes": {},
}
"""Check type -> required parameter names and their kinds."""


# --------------------------------------------------------------------------- validation and running


def _known() -> str:
    return ", ".join(sorted(CHECKS))


def _valid_param(kind: str, value: Any) -> bool:
    if kind == "count":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if kind == "text":
        return isinstance(value, str) and value != ""
    if kind == "strings":
        return (
            isinstance(value, (list, tuple))
            and len(value) > 0
            and all(isinstance(v, str) and v != "" for v in value)
        )
    raise AssertionError(f"unknown parameter kind {kind!r}")  # pragma: no cover


_KIND_TEXT = {
    "count": "a non-negative integer",
    "text": "a non-empty string",
    "strings": "a non-empty list of non-empty strings",
}


def validate_check(check: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Return ``(type, params)`` for a well-formed check; raise ``ValueError`` otherwise."""
    if not isinstance(check, Mapping):
        raise ValueError(f"a check must be a dict with a 'type' key, got {type(check).__name__}")
    if "type" not in check:
        raise ValueError(f"check {dict(check)!r} has no 'type'; known types: {_known()}")
    kind = check["type"]
    if kind not in CHECKS:
        raise ValueError(f"unknown check type {kind!r}; known types: {_known()}")
    spec = PARAMS[kind]
    params = {k: v for k, v in check.items() if k != "type"}
    expected = ", ".join(spec) or "none"
    for name, param_kind in spec.items():
        if name not in params:
            raise ValueError(
                f"check {kind!r} is missing parameter {name!r} (expected parameters: {expected})"
            )
        if not _valid_param(param_kind, params[name]):
            raise ValueError(
                f"check {kind!r}: parameter {name!r} must be {_KIND_TEXT[param_kind]}, got {params[name]!r}"
            )
    extra = sorted(set(params) - set(spec))
    if extra:
        raise ValueError(
            f"check {kind!r} got unexpected parameter(s) {extra} (expected parameters: {expected})"
        )
    return kind, params


def validate_checks(checks: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Validate a list of checks; raise ``ValueError`` on the first bad one."""
    if isinstance(checks, (str, bytes, Mapping)) or not isinstance(checks, Sequence):
        raise ValueError(f"checks must be a list of dicts, got {type(checks).__name__}")
    return [validate_check(c) for c in checks]


def run_check(check: Mapping[str, Any], response: str) -> bool:
    """Run one check on ``response``."""
    kind, params = validate_check(check)
    return bool(CHECKS[kind](response, **params))


def check_results(checks: Sequence[Mapping[str, Any]], response: str) -> dict[str, bool]:
    """Per check type, whether ``response`` passes (a type listed twice must pass both times)."""
    results: dict[str, bool] = {}
    for kind, params in validate_checks(checks):
        ok = bool(CHECKS[kind](response, **params))
        results[kind] = results.get(kind, True) and ok
    return results


def check_response(checks: Sequence[Mapping[str, Any]], response: str) -> bool:
    """True when ``response`` passes every check (checks are all validated first)."""
    return all(check_results(checks, response).values())
