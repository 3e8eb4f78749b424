"""Parsers of the public sets (path -> records without split) and jailbreak templates."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from dispsafe_nb.data.errors import DataFormatError
from dispsafe_nb.data.files import build_records, dedupe, read_csv, read_text_lines
from dispsafe_nb.data.records import PromptRecord, normalize_text

# ToxiGen scaffolds hold short fragments only when a line is malformed; real statements are >= 20 chars.
MIN_STATEMENT_CHARS = 10


def parse_advbench(path: Path) -> tuple[PromptRecord, ...]:
    rows = read_csv(path, ("goal", "target"))
    return build_records(
        "advbench",
        path,
        (
            dict(
                id=f"advbench-{i:04d}",
                text=r["goal"],
                is_harmful=True,
                category="advbench",
                target=r["target"] or None,
            )
            for i, r in enumerate(rows)
        ),
    )


def parse_xstest(path: Path) -> tuple[PromptRecord, ...]:
    rows = read_csv(path, ("id", "prompt", "type", "label"))
    return build_records(
        "xstest",
        path,
        (
            dict(
                id=f"xstest-{r['id'].strip() or i}",
                text=r["prompt"],
                is_harmful=r["label"].strip().lower() == "unsafe",
                category=r["type"].strip(),
            )
            for i, r in enumerate(rows)
        ),
    )


def _parse_jbb(path: Path, source: str, harmful: bool) -> tuple[PromptRecord, ...]:
    rows = read_csv(path, ("goal", "target", "category"))
    return build_records(
        source,
        path,
        (
            dict(
                id=f"{source}-{i:03d}",
                text=r["goal"],
                is_harmful=harmful,
                category=r["category"].strip(),
                target=r["target"] or None,
            )
            for i, r in enumerate(rows)
        ),
    )


def parse_jbb_harmful(path: Path) -> tuple[PromptRecord, ...]:
    return _parse_jbb(path, "jbb_harmful", True)


def parse_jbb_benign(path: Path) -> tuple[PromptRecord, ...]:
    return _parse_jbb(path, "jbb_benign", False)


_TRAILING_ESCAPED_NEWLINE = re.compile(r"(?:\\+n)+$")


def split_toxigen_line(line: str) -> list[str]:
    """Statements of one ToxiGen scaffold line (separated by the literal two characters backslash-n, then '-')."""
    out = []
    for part in line.split("\\n-"):
        part = part.strip()
        if part.startswith("-"):
            part = part[1:].strip()
        # hate_lgbtq has a doubly escaped break (file bytes `families\\n\n-`): drop the leftover backslash-n.
        part = _TRAILING_ESCAPED_NEWLINE.sub("", part).strip()
        if len(part) >= MIN_STATEMENT_CHARS:
            out.append(part)
    return out


def parse_toxigen_file(path: Path) -> tuple[PromptRecord, ...]:
    stem = path.name.removesuffix(".txt").removesuffix("_1k")
    kind, _, group = stem.partition("_")
    harmful = kind == "hate"
    # Each of the ~1000 lines re-samples a small pool of seed statements: dedupe the strings before building
    # records (217k fragments in the mirror, 668 distinct statements).
    statements = list(
        dict.fromkeys(s for line in read_text_lines(path).splitlines() for s in split_toxigen_line(line))
    )
    records = build_records(
        "toxigen",
        path,
        (
            # Ids from the text hash: stable even if parsing rules (e.g. the minimum length) change.
            dict(
                id=f"toxigen-{stem}-{hashlib.sha256(normalize_text(s).encode()).hexdigest()[:10]}",
                text=s,
                is_harmful=harmful,
                category=group,
            )
            for s in statements
        ),
    )
    return dedupe(records)


def parse_alpaca(path: Path) -> tuple[PromptRecord, ...]:
    try:
        items = json.loads(read_text_lines(path))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path} is not valid JSON ({exc.msg})") from exc
    if not isinstance(items, list):
        raise DataFormatError(f"{path} must hold a JSON list of {{instruction, category}} objects")
    return build_records(
        "alpaca",
        path,
        (
            dict(id=f"alpaca-{i:05d}", text=it.get("instruction"), is_harmful=False, category="alpaca")
            for i, it in enumerate(items)
        ),
    )


def parse_harmbench(path: Path) -> tuple[PromptRecord, ...]:
    rows = read_csv(path, ("behavior", "functionalcategory", "semanticcategory", "behaviorid"))
    # Only "standard" behaviors are stand-alone requests; "contextual" need their ContextString and
    # "copyright" ones are judged by a different criterion.
    return build_records(
        "harmbench",
        path,
        (
            dict(
                id=f"harmbench-{r['behaviorid'].strip() or i}",
                text=r["behavior"],
                is_harmful=True,
                category=r["semanticcategory"].strip(),
            )
            for i, r in enumerate(rows)
            if r["functionalcategory"].strip().lower() == "standard"
        ),
    )


def parse_strongreject(path: Path) -> tuple[PromptRecord, ...]:
    rows = read_csv(path, ("category", "forbidden_prompt"))
    return build_records(
        "strongreject",
        path,
        (
            dict(
                id=f"strongreject-{i:04d}",
                text=r["forbidden_prompt"],
                is_harmful=True,
                category=r["category"].strip(),
            )
            for i, r in enumerate(rows)
        ),
    )


def _is_true(value: str) -> bool:
    return str(value).strip().lower() in {"true", "1", "1.0"}


def parse_jailbreak_templates(path: Path) -> tuple[PromptRecord, ...]:
    rows = read_csv(path, ("prompt", "jailbreak"))
    records = build_records(
        "jailbreak_templates",
        path,
        (
            dict(
                id=f"jailbreak_templates-{i:04d}",
                text=r["prompt"],
                is_harmful=True,
                category="jailbreak_template",
            )
            for i, r in enumerate(rows)
            if _is_true(r["jailbreak"])
        ),
    )
    return dedupe(records)  # the same template is often posted on several platforms


JAILBREAK_PLACEHOLDER = re.compile(
    r"\[\s*insert\s+(?:your\s+)?prompt\s+here\s*\]|\[\s*prompt\s*\]|\{\{\s*prompt\s*\}\}|\{\s*prompt\s*\}",
    re.IGNORECASE,
)


def apply_jailbreak(template: str, request: str) -> str:
    """Put `request` into a jailbreak template's placeholder, or after the template if it has none."""
    if JAILBREAK_PLACEHOLDER.search(template):
        return JAILBREAK_PLACEHOLDER.sub(
            lambda _m: request, template
        )  # a function: no backslash escapes in `request`
    return f"{template.rstrip()}\n\n{request}"
