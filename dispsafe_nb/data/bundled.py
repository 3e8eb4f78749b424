"""The project's bundled sets (``data/bundled/*.jsonl``): prompts, response texts and jailbreak framings."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from dispsafe_nb.common.paths import REPO_ROOT
from dispsafe_nb.data.errors import DataFormatError, data_warning, unknown_name_error
from dispsafe_nb.data.files import build_records, read_jsonl
from dispsafe_nb.data.public import JAILBREAK_PLACEHOLDER
from dispsafe_nb.data.records import PromptRecord, assign_split, check_split

DEFAULT_BUNDLED_DIR = REPO_ROOT / "data" / "bundled"

BUNDLED_KINDS: tuple[str, ...] = (
    "harmful",
    "benign",
    "borderline",
    "verifiable",
    "harmful_forms",
    "borderline_forms",
)

FORMS: tuple[str, ...] = ("imperative", "question", "first_person", "roleplay", "indirect", "short", "long")

RESPONSE_FILES: dict[str, str] = {"refusal": "refusals.jsonl", "compliant": "compliant_openings.jsonl"}


def bundled_dir() -> Path:
    """The bundled data folder: ``$DISPSAFE_BUNDLED`` or ``<repo>/data/bundled``."""
    raw = os.environ.get("DISPSAFE_BUNDLED")
    return Path(raw).expanduser() if raw else DEFAULT_BUNDLED_DIR


def bundled_file(name: str) -> Path:
    path = bundled_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"bundled file {path} not found (set DISPSAFE_BUNDLED to override the folder)"
        )
    return path


def _bundled_parser(kind: str) -> Callable[[Path], tuple[PromptRecord, ...]]:
    source = f"bundled_{kind}"

    def parse(path: Path) -> tuple[PromptRecord, ...]:
        rows = (
            dict(
                id=f"{source}-{obj.get('id', f'{i:04d}')}",
                text=obj.get("text"),
                is_harmful=kind.startswith("harmful"),
                category=str(obj.get("category") or kind),
                checks=tuple(dict(c) for c in obj.get("checks") or ()) if kind == "verifiable" else (),
                form=str(obj.get("form") or ""),
                # The *_forms twins share their split; the older bundled pairs were split by text (v2 splits).
                group=f"pair:{obj['pair']}" if kind.endswith("_forms") and obj.get("pair") else "",
            )
            for i, obj in enumerate(read_jsonl(path))
        )
        return build_records(source, path, rows)

    parse.__qualname__ = f"parse_{source}"
    return parse


# One parser object per kind, so the parse cache recognises repeated loads.
BUNDLED_PARSERS = {kind: _bundled_parser(kind) for kind in BUNDLED_KINDS}


def load_response_texts(kind: str, split: str | None = None) -> list[str]:
    """Bundled response texts: kind "refusal" (refusals.jsonl) or "compliant" (compliant_openings.jsonl)."""
    if kind not in RESPONSE_FILES:
        raise unknown_name_error("response kind", kind, RESPONSE_FILES)
    check_split(split)
    path = bundled_file(RESPONSE_FILES[kind])
    texts = [str(obj.get("text") or "").strip() for obj in read_jsonl(path)]
    empty = sum(1 for t in texts if not t)
    if empty:
        data_warning(f"{path}: dropped {empty} empty response text(s)")
    return [t for t in texts if t and (split is None or assign_split(t) == split)]


def load_refusal_texts(split: str | None = None) -> list[str]:
    """Bundled refusal texts (y_r candidates)."""
    return load_response_texts("refusal", split)


def load_compliant_texts(split: str | None = None) -> list[str]:
    """Bundled compliant response openings."""
    return load_response_texts("compliant", split)


def load_jailbreak_wrappers() -> list[dict[str, str]]:
    """The bundled jailbreak framings (`jailbreak_wrappers.jsonl`): id, attack family and a template holding the
    request at its ``{prompt}`` placeholder. Evaluation only: no training text is ever wrapped in one."""
    path = bundled_file("jailbreak_wrappers.jsonl")
    rows = read_jsonl(path)
    for row in rows:
        if (
            not {"id", "family", "template"} <= set(row)
            or len(JAILBREAK_PLACEHOLDER.findall(row["template"])) != 1
        ):
            raise DataFormatError(
                f"{path}: {row.get('id', row)} needs id, family and a template with exactly one {{prompt}}"
            )
    return rows
