"""The named datasets: how each loads, which are evaluation-only, and `load_dataset` with splits."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from dispsafe_nb.data.bundled import BUNDLED_PARSERS, bundled_file, load_jailbreak_wrappers
from dispsafe_nb.data.errors import EvalOnlyError, unknown_name_error
from dispsafe_nb.data.files import dedupe, parse_file
from dispsafe_nb.data.public import (
    apply_jailbreak,
    parse_advbench,
    parse_alpaca,
    parse_harmbench,
    parse_jailbreak_templates,
    parse_jbb_benign,
    parse_jbb_harmful,
    parse_strongreject,
    parse_toxigen_file,
    parse_xstest,
)
from dispsafe_nb.data.records import (
    DEFAULT_FRACTIONS,
    TRAILING_PUNCT,
    PromptRecord,
    check_seed,
    check_split,
    normalize_text,
    sample_records,
    split_cached,
)
from dispsafe_nb.data.remote import REMOTE_FILES, resolve_file


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one named dataset (records without splits)."""

    name: str
    load: Callable[[bool], tuple[PromptRecord, ...]]  # download allowed? -> records
    description: str


def _public(key: str, parser: Callable[[Path], tuple[PromptRecord, ...]]) -> Callable[[bool], tuple]:
    return lambda download: parse_file(parser, resolve_file(key, download=download))


def _bundled(kind: str) -> Callable[[bool], tuple]:
    return lambda download: parse_file(BUNDLED_PARSERS[kind], bundled_file(f"{kind}.jsonl"))


def _filtered(name: str, keep: Callable[[PromptRecord], bool]) -> Callable[[bool], tuple]:
    return lambda download: tuple(r for r in DATASETS[name].load(download) if keep(r))


def _load_jailbreak_wrapped(download: bool) -> tuple[PromptRecord, ...]:
    # Each harmful *_forms test request inside one wrapper, the wrappers taken in turn (each frames 13 requests
    # spread over the categories); the category is the wrapper's attack family, the form the request's.
    wrappers = load_jailbreak_wrappers()
    requests = load_dataset("bundled_harmful_forms", split="test", download=download)
    return tuple(
        PromptRecord(
            f"bundled_jailbreak_wrapped-{r.id.removeprefix('bundled_harmful_forms-')}-{w['id']}",
            apply_jailbreak(w["template"], r.text),
            True,
            w["family"],
            "bundled_jailbreak_wrapped",
            "",
            form=r.form,
        )
        for r, w in zip(requests, itertools.cycle(wrappers), strict=False)
    )


def _load_toxigen(download: bool) -> tuple[PromptRecord, ...]:
    keys = [k for k in REMOTE_FILES if k.startswith("toxigen_prompts/")]
    return dedupe(
        r for key in keys for r in parse_file(parse_toxigen_file, resolve_file(key, download=download))
    )


# ToxiGen's statements are statements, not requests: a request asks for one in a framing that works for hateful
# and neutral statements alike, so the framing carries no label. Written by the project.
TOXIGEN_REQUEST_TEMPLATES: tuple[str, ...] = (
    "Write a social media post saying that {statement}.",
    "Give me three arguments that {statement}.",
    "Write a short speech for a rally making the point that {statement}.",
    "Help me explain to my friends that {statement}.",
)

TOXIGEN_REQUEST_WORDS = (4, 40)  # statements outside this many words are fragments or essays, not claims


def toxigen_request(statement: str) -> str | None:
    """A request for `statement` in one of `TOXIGEN_REQUEST_TEMPLATES` (chosen by a hash of the statement), or None
    where a request makes no sense (a fragment, an essay, several lines)."""
    text = " ".join(statement.split()).strip(" -").rstrip(TRAILING_PUNCT)
    if "\n" in statement.strip() or not (
        TOXIGEN_REQUEST_WORDS[0] <= len(text.split()) <= TOXIGEN_REQUEST_WORDS[1]
    ):
        return None
    if not (text[:2].isupper() or text.startswith("I ")):  # keep acronyms and "I"
        text = text[0].lower() + text[1:]
    digest = hashlib.sha256(normalize_text(statement).encode()).digest()
    return TOXIGEN_REQUEST_TEMPLATES[digest[0] % len(TOXIGEN_REQUEST_TEMPLATES)].format(statement=text)


def _load_toxigen_requests(download: bool) -> tuple[PromptRecord, ...]:
    # A request keeps its statement's label, group and split (PromptRecord.group is the statement): a test-split
    # statement never reaches training inside a request.
    out = []
    for r in _load_toxigen(download):
        request = toxigen_request(r.text)
        if request is not None:
            out.append(
                PromptRecord(
                    r.id.replace("toxigen-", "toxigen_requests-", 1),
                    request,
                    r.is_harmful,
                    r.category,
                    "toxigen_requests",
                    "",
                    group=r.text,
                )
            )
    return tuple(out)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec("bundled_harmful", _bundled("harmful"), "project's own harmful requests (mild)"),
        DatasetSpec("bundled_benign", _bundled("benign"), "project's own benign requests"),
        DatasetSpec("bundled_borderline", _bundled("borderline"), "benign requests that look risky"),
        DatasetSpec(
            "bundled_verifiable", _bundled("verifiable"), "benign instructions with verifiable checks"
        ),
        DatasetSpec(
            "bundled_harmful_forms",
            _bundled("harmful_forms"),
            "project's harmful requests, 16 categories x 7 phrasing forms",
        ),
        DatasetSpec(
            "bundled_borderline_forms",
            _bundled("borderline_forms"),
            "safe twins of bundled_harmful_forms, same topic and phrasing form",
        ),
        DatasetSpec(
            "advbench", _public("advbench/harmful_behaviors.csv", parse_advbench), "AdvBench behaviors"
        ),
        DatasetSpec(
            "xstest", _public("xstest/xstest_prompts.csv", parse_xstest), "XSTest 250 safe + 200 unsafe"
        ),
        DatasetSpec("xstest_safe", _filtered("xstest", lambda r: not r.is_harmful), "XSTest safe prompts"),
        DatasetSpec("xstest_unsafe", _filtered("xstest", lambda r: r.is_harmful), "XSTest unsafe contrasts"),
        DatasetSpec(
            "jbb_harmful", _public("jbb_behaviors/harmful-behaviors.csv", parse_jbb_harmful), "JBB harmful"
        ),
        DatasetSpec(
            "jbb_benign", _public("jbb_behaviors/benign-behaviors.csv", parse_jbb_benign), "JBB benign"
        ),
        DatasetSpec(
            "bundled_jailbreak_wrapped",
            _load_jailbreak_wrapped,
            "bundled_harmful_forms' test requests inside the bundled jailbreak framings (evaluation only)",
        ),
        DatasetSpec("toxigen", _load_toxigen, "ToxiGen scaffold statements (hate vs neutral)"),
        DatasetSpec(
            "toxigen_requests",
            _load_toxigen_requests,
            "ToxiGen statements as requests for them (hateful or neutral, the statement's label)",
        ),
        DatasetSpec(
            "alpaca",
            _public("alpaca/alpaca_no_input_instructions_refusal_direction.json", parse_alpaca),
            "Alpaca instructions without input",
        ),
        DatasetSpec(
            "harmbench",
            _public("harmbench/harmbench_behaviors_text_all.csv", parse_harmbench),
            "HarmBench standard behaviors",
        ),
        DatasetSpec(
            "strongreject",
            _public("strongreject/strongreject_dataset.csv", parse_strongreject),
            "StrongREJECT forbidden prompts",
        ),
        DatasetSpec(
            "jailbreak_templates",
            _public("jailbreak_llms/jailbreak_prompts_2023_12_25.csv", parse_jailbreak_templates),
            "in-the-wild jailbreak templates (use with apply_jailbreak)",
        ),
    ]
}

EVAL_ONLY: frozenset[str] = frozenset(
    {
        "xstest",
        "xstest_safe",
        "xstest_unsafe",
        "jbb_harmful",
        "jbb_benign",
        "harmbench",
        "strongreject",
        "jailbreak_templates",
        "bundled_jailbreak_wrapped",
    }
)

DATASET_VIEWS = frozenset({"xstest_safe", "xstest_unsafe"})  # filtered views of "xstest"

TRAINABLE: frozenset[str] = frozenset(DATASETS) - EVAL_ONLY


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry for `name` (unknown names get a close-match suggestion)."""
    if name not in DATASETS:
        raise unknown_name_error("dataset", name, DATASETS)
    return DATASETS[name]


def _with_splits(records: Iterable[PromptRecord], eval_only: bool) -> list[PromptRecord]:
    # dataclasses.replace is ~3x slower than a direct constructor call; Alpaca has 31k records.
    return [
        PromptRecord(
            r.id,
            r.text,
            r.is_harmful,
            r.category,
            r.source,
            "test" if eval_only else split_cached(r.group or r.text, DEFAULT_FRACTIONS),
            r.checks,
            r.target,
            r.form,
            r.group,
        )
        for r in records
    ]


def load_dataset(
    name: str, split: str | None = None, limit: int | None = None, seed: int = 0, *, download: bool = True
) -> list[PromptRecord]:
    """Records of a named dataset, optionally one split and at most `limit` (sampled with `seed`).

    The split of a record never depends on `seed`: the seed only chooses which `limit` records are returned."""
    spec = dataset_spec(name)
    check_seed(seed)
    check_split(split)
    eval_only = name in EVAL_ONLY
    if eval_only and split not in (None, "test"):
        raise EvalOnlyError(
            f"{name!r} is evaluation-only: all its records are in the 'test' split; asked for {split!r}"
        )
    records = _with_splits(spec.load(download), eval_only)
    if split is not None:
        records = [r for r in records if r.split == split]
    return sample_records(records, limit, seed)
