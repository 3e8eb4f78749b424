"""Checks on the project's own bundled prompt set in ``data/bundled/`` (read directly with ``json``)."""

from __future__ import annotations

import csv
import difflib
import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest

from dispsafe_nb.evaluation.verifiable_instructions import CHECKS, validate_checks

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "data" / "bundled"

HARM_CATEGORIES = {
    "violence_weapons",
    "cybercrime",
    "fraud_scams",
    "drugs",
    "hate_harassment",
    "self_harm",
    "privacy_surveillance",
    "misinformation",
    "extremism",
    "theft_property",
}
BORDERLINE_CATEGORIES = {
    "homonyms",
    "figurative",
    "safe_targets",
    "fiction",
    "history",
    "safety_info",
    "public_figures",
    "definitions",
    "real_discrimination_nonsense",
}

# file -> (id prefix, required keys, minimum record count)
FILES: dict[str, tuple[str, set[str], int]] = {
    "harmful.jsonl": ("harm", {"id", "text", "category"}, 300),
    "benign.jsonl": ("benign", {"id", "text", "category"}, 160),
    "borderline.jsonl": ("border", {"id", "text", "category"}, 270),
    "verifiable.jsonl": ("verif", {"id", "text", "category", "checks"}, 60),
    "refusals.jsonl": ("ref", {"id", "text"}, 70),
    "compliant_openings.jsonl": ("comply", {"id", "text"}, 70),
    "harmful_forms.jsonl": ("hform", {"id", "text", "category", "form"}, 1000),
    "borderline_forms.jsonl": ("bform", {"id", "text", "category", "form", "pair"}, 500),
}
FORMS = {"imperative", "question", "first_person", "roleplay", "indirect", "short", "long"}

# Keys a record may carry on top of the required ones: "pair" links a borderline-safe prompt to its
# harmful minimal-pair twin.
OPTIONAL_KEYS: dict[str, set[str]] = {
    "harmful.jsonl": {"pair"},
    "borderline.jsonl": {"pair"},
    "harmful_forms.jsonl": {"pair"},
}
MIN_PAIRS = 150


def normalise(text: str) -> str:
    """Lowercase and collapse whitespace."""
    return re.sub(r"\s+", " ", text.strip().lower())


def load(name: str) -> list[dict]:
    """Read one JSON-lines file; every line must be a JSON object."""
    records = []
    with open(BUNDLED / name, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            assert line.strip(), f"{name}:{lineno} is blank"
            record = json.loads(line)
            assert isinstance(record, dict), f"{name}:{lineno} is not a JSON object"
            records.append(record)
    return records


@pytest.fixture(scope="module")
def data() -> dict[str, list[dict]]:
    return {name: load(name) for name in FILES}


def test_all_files_present() -> None:
    for name in [*FILES, "README.md"]:
        assert (BUNDLED / name).is_file(), name


@pytest.mark.parametrize("name", list(FILES))
def test_every_line_is_valid_json(name: str) -> None:
    raw = (BUNDLED / name).read_bytes()
    text = raw.decode("utf-8")
    assert text.endswith("\n")
    for lineno, line in enumerate(text.splitlines(), 1):
        try:
            json.loads(line)
        except json.JSONDecodeError as err:  # pragma: no cover - message for the failure
            pytest.fail(f"{name}:{lineno}: {err}")


@pytest.mark.parametrize("name", list(FILES))
def test_schema_and_count(data: dict[str, list[dict]], name: str) -> None:
    prefix, keys, minimum = FILES[name]
    records = data[name]
    assert len(records) >= minimum
    for r in records:
        assert keys <= set(r) <= keys | OPTIONAL_KEYS.get(name, set()), r
        assert re.fullmatch(rf"{prefix}-\d{{3,4}}", r["id"]), r["id"]
        assert isinstance(r["text"], str) and r["text"].strip(), r
        assert r["text"] == r["text"].strip(), r["id"]
        if "category" in keys:
            assert isinstance(r["category"], str) and re.fullmatch(r"[a-z_]+", r["category"]), r


def test_ids_unique_across_files(data: dict[str, list[dict]]) -> None:
    ids = Counter(r["id"] for records in data.values() for r in records)
    assert [i for i, c in ids.items() if c > 1] == []


def test_texts_unique_within_and_across_files(data: dict[str, list[dict]]) -> None:
    seen: dict[str, str] = {}
    dupes = []
    for records in data.values():
        for r in records:
            key = normalise(r["text"])
            if key in seen:
                dupes.append((seen[key], r["id"]))
            seen[key] = r["id"]
    assert dupes == []


def test_harmful_categories(data: dict[str, list[dict]]) -> None:
    counts = Counter(r["category"] for r in data["harmful.jsonl"])
    assert set(counts) <= HARM_CATEGORIES, set(counts) - HARM_CATEGORIES
    assert len(counts) >= 8
    assert all(c >= 20 for c in counts.values()), counts


def test_harmful_requests_are_short_one_liners(data: dict[str, list[dict]]) -> None:
    for r in data["harmful.jsonl"]:
        assert "\n" not in r["text"], r["id"]
        assert len(r["text"]) <= 160, r["id"]


def test_harmful_phrasing_is_varied(data: dict[str, list[dict]]) -> None:
    first_words = Counter(r["text"].split()[0].lower().strip("'\",:") for r in data["harmful.jsonl"])
    assert len(first_words) >= 20
    assert first_words.most_common(1)[0][1] <= 0.2 * len(data["harmful.jsonl"])
    assert sum(r["text"].endswith("?") for r in data["harmful.jsonl"]) >= 30


def test_benign_categories(data: dict[str, list[dict]]) -> None:
    counts = Counter(r["category"] for r in data["benign.jsonl"])
    assert len(counts) >= 8, counts


def test_borderline_categories(data: dict[str, list[dict]]) -> None:
    counts = Counter(r["category"] for r in data["borderline.jsonl"])
    assert set(counts) == BORDERLINE_CATEGORIES
    assert all(c >= 30 for c in counts.values()), counts


# --------------------------------------------------------------------------- minimal pairs


def _content_words(text: str) -> set[str]:
    words = (w.strip("'-") for w in re.findall(r"[a-z'-]+", text.lower()))
    return {w for w in words if len(w) >= 4}


def test_minimal_pairs_link_one_harmful_and_one_borderline(data: dict[str, list[dict]]) -> None:
    """Every ``pair`` value appears exactly twice: once in harmful.jsonl, once in borderline.jsonl."""
    where: dict[str, list[str]] = {}
    for name in ("harmful.jsonl", "borderline.jsonl"):
        for r in data[name]:
            if "pair" in r:
                assert isinstance(r["pair"], str) and re.fullmatch(r"pair-\d{3}", r["pair"]), r
                where.setdefault(r["pair"], []).append(name)
    assert len(where) >= MIN_PAIRS
    bad = {p: names for p, names in where.items() if sorted(names) != ["borderline.jsonl", "harmful.jsonl"]}
    assert bad == {}


def test_minimal_pairs_share_vocabulary_and_cover_every_category(data: dict[str, list[dict]]) -> None:
    harmful = {r["pair"]: r for r in data["harmful.jsonl"] if "pair" in r}
    borderline = {r["pair"]: r for r in data["borderline.jsonl"] if "pair" in r}
    assert set(harmful) == set(borderline)
    for pair, safe in borderline.items():
        twin = harmful[pair]
        assert _content_words(safe["text"]) & _content_words(twin["text"]), pair
        assert normalise(safe["text"]) != normalise(twin["text"]), pair
    per_category = Counter(r["category"] for r in borderline.values())
    assert set(per_category) == BORDERLINE_CATEGORIES
    assert all(c >= 15 for c in per_category.values()), per_category


# --------------------------------------------------------------------------- phrasing forms


def test_harmful_forms_cover_every_category_in_every_form(data: dict[str, list[dict]]) -> None:
    """At least 12 harm categories, each phrased in all seven forms, at least 5 requests per cell."""
    records = data["harmful_forms.jsonl"]
    cells = Counter((r["category"], r["form"]) for r in records)
    categories = {c for c, _ in cells}
    assert {f for _, f in cells} == FORMS
    assert len(categories) >= 12 and HARM_CATEGORIES <= categories
    assert min(cells[(c, f)] for c in categories for f in FORMS) >= 5, cells


def test_forms_look_like_their_form(data: dict[str, list[dict]]) -> None:
    """The form labels mean something: questions end in '?', short ones are short and long ones long, role-play
    names a role, first-person ones speak for the asker."""
    for name in ("harmful_forms.jsonl", "borderline_forms.jsonl"):
        for r in data[name]:
            text, form = r["text"], r["form"]
            assert "\n" not in text and len(text) <= 400, r["id"]
            if form == "question":
                assert text.endswith("?"), r["id"]
            elif form == "short":
                assert len(text.split()) <= 10, r["id"]
            elif form == "long":
                assert len(text.split()) >= 25, r["id"]
            elif form == "first_person":
                assert re.search(r"\b(I|I'm|I've|I'd|my|me)\b", text), r["id"]


def test_forms_twins_are_paired_and_share_form_and_words(data: dict[str, list[dict]]) -> None:
    harmful = {r["pair"]: r for r in data["harmful_forms.jsonl"] if "pair" in r}
    borderline = {r["pair"]: r for r in data["borderline_forms.jsonl"]}
    assert len(borderline) == len(data["borderline_forms.jsonl"]) >= 500  # one twin per pair value
    assert set(harmful) == set(borderline)
    unshared = []
    for pair, safe in borderline.items():
        assert re.fullmatch(r"fpair-\d{4}", pair), pair
        twin = harmful[pair]
        assert safe["form"] == twin["form"], pair
        stems = [{w[:5] for w in _content_words(r["text"].replace("-", " "))} for r in (safe, twin)]
        if not stems[0] & stems[1]:
            unshared.append(pair)
    # Twins share a topic; a handful do so without a shared word ("Silk Road" / "dark web vendor").
    assert len(unshared) <= len(borderline) // 100, unshared
    assert {r["category"] for r in borderline.values()} <= BORDERLINE_CATEGORIES
    assert Counter(r["form"] for r in borderline.values()).keys() == FORMS


def test_jailbreak_wrappers_hold_one_placeholder_and_are_listed() -> None:
    wrappers = load("jailbreak_wrappers.jsonl")
    readme = (BUNDLED / "README.md").read_text(encoding="utf-8")
    assert len(wrappers) >= 10 and len({w["family"] for w in wrappers}) == len(wrappers)
    assert re.search(rf"`jailbreak_wrappers.jsonl` \| {len(wrappers)} \|", readme)
    for w in wrappers:
        assert set(w) == {"id", "family", "template"} and re.fullmatch(r"wrap-\d{3}", w["id"]), w
        assert w["template"].count("{prompt}") == 1 and f"| {w['family']} | {w['id']} |" in readme, w


def test_verifiable_checks_are_known_and_well_formed(data: dict[str, list[dict]]) -> None:
    for r in data["verifiable.jsonl"]:
        assert isinstance(r["checks"], list) and r["checks"], r["id"]
        validate_checks(r["checks"])  # raises ValueError on unknown types / bad parameters


def test_every_check_type_used_at_least_four_times(data: dict[str, list[dict]]) -> None:
    used = Counter(c["type"] for r in data["verifiable.jsonl"] for c in r["checks"])
    assert set(used) == set(CHECKS)
    assert all(n >= 4 for n in used.values()), used


# Words that must appear in an instruction for each kind of constraint, so the model is told it plainly.
_NUMBER_WORDS = {1: ["one", "single"], 2: ["two"], 3: ["three"], 4: ["four"], 5: ["five"], 6: ["six"]}
_HINTS = {
    "max_words": ["word"],
    "min_words": ["word"],
    "bullet_count": ["bullet"],
    "numbered_list": ["numbered"],
    "json_object": ["json"],
    "all_lowercase": ["lowercase"],
    "all_uppercase": ["capital", "uppercase"],
    "max_sentences": ["sentence"],
    "num_paragraphs": ["paragraph"],
    "no_commas": ["comma"],
    "wrapped_in_quotes": ["quot"],
}


def test_instructions_state_their_constraints(data: dict[str, list[dict]]) -> None:
    for r in data["verifiable.jsonl"]:
        text = r["text"].lower()
        for check in r["checks"]:
            kind = check["type"]
            if kind in _HINTS:
                assert any(h in text for h in _HINTS[kind]), (r["id"], kind)
            if "n" in check:
                spellings = [str(check["n"]), *_NUMBER_WORDS.get(check["n"], [])]
                assert any(re.search(rf"\b{s}\b", text) for s in spellings), (r["id"], kind)
            for word in check.get("keywords", []) + check.get("keys", []):
                assert word.lower() in text, (r["id"], word)
            for key in ("prefix", "suffix"):
                if key in check:
                    assert check[key].lower() in text, (r["id"], key)


def test_responses_are_short(data: dict[str, list[dict]]) -> None:
    for name in ("refusals.jsonl", "compliant_openings.jsonl"):
        for r in data[name]:
            assert len(r["text"]) <= 400, r["id"]


def test_refusals_include_partial_starts(data: dict[str, list[dict]]) -> None:
    texts = [r["text"] for r in data["refusals.jsonl"]]
    assert sum(not t.endswith((".", "!", "?")) for t in texts) >= 5


def test_readme_counts_match(data: dict[str, list[dict]]) -> None:
    readme = (BUNDLED / "README.md").read_text(encoding="utf-8")
    assert "MIT" in readme
    for name, records in data.items():
        assert f"`{name}`" in readme, name
        assert re.search(rf"`{re.escape(name)}`[^\n]*\b{len(records)}\b", readme), name
        for category, count in Counter(r.get("category") for r in records).items():
            if category is not None and name != "verifiable.jsonl":
                assert f"| `{category}` | {count} |" in readme, (name, category, count)


# --------------------------------------------------------------------------- held-out public sets


def _mirror() -> Path | None:
    for candidate in (os.environ.get("DISPSAFE_DATA"), ROOT.parent / "shared" / "datasets"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def _public_prompts(mirror: Path) -> list[str]:
    prompts: list[str] = []
    for rel, column in [
        ("xstest/xstest_prompts.csv", "prompt"),
        ("xstest/xstest_v2_prompts.csv", "prompt"),
        ("advbench/harmful_behaviors.csv", "goal"),
        ("jbb_behaviors/harmful-behaviors.csv", "Goal"),
        ("jbb_behaviors/benign-behaviors.csv", "goal"),
    ]:
        path = mirror / rel
        if path.is_file():
            with open(path, encoding="utf-8", newline="") as f:
                prompts += [row[column] for row in csv.DictReader(f) if row.get(column)]
    return prompts


def test_not_copied_from_public_benchmarks(data: dict[str, list[dict]]) -> None:
    """No bundled prompt is a verbatim or near-verbatim copy of XSTest, AdvBench or JBB."""
    mirror = _mirror()
    if mirror is None:
        pytest.skip("public-set mirror not available (set DISPSAFE_DATA)")
    public = [normalise(p) for p in _public_prompts(mirror)]
    if not public:
        pytest.skip("no public prompt files in the mirror")
    exact = set(public)
    close = []
    prompts = ("harmful", "benign", "borderline", "verifiable", "harmful_forms", "borderline_forms")
    for name in (f"{p}.jsonl" for p in prompts):
        for r in data[name]:
            ours = normalise(r["text"])
            assert ours not in exact, r["id"]
            matcher = difflib.SequenceMatcher(None, b=ours)
            for p in public:
                matcher.set_seq1(p)
                if (
                    matcher.real_quick_ratio() > 0.85
                    and matcher.quick_ratio() > 0.85
                    and matcher.ratio() > 0.85
                ):
                    close.append((r["id"], p))
    assert close == []
