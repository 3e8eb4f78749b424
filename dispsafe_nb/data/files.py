"""Reading data files (UTF-8 CSV / JSON / JSONL) into records, parsed once per file version."""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from dispsafe_nb.data.errors import DataFormatError, data_warning
from dispsafe_nb.data.records import PromptRecord, normalize_text


def read_text_lines(path: Path) -> str:
    """UTF-8 text (a BOM is tolerated); anything else is a clear error rather than mojibake labels."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"{path} is not valid UTF-8 (undecodable byte at offset {exc.start}); data files must be UTF-8 - "
            "re-save it as UTF-8."
        ) from exc


def read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """CSV rows with lower-cased, stripped headers (JBB spells `Goal` and `goal`)."""
    csv.field_size_limit(1 << 24)  # jailbreak templates can be long; the default 128 kB limit is too small
    reader = csv.DictReader(io.StringIO(read_text_lines(path), newline=""))
    header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataFormatError(f"{path} lacks column(s) {missing}; found {reader.fieldnames}")
    return [
        {h: (v or "") for h, v in zip(header, (row.get(k) for k in reader.fieldnames or []), strict=True)}
        for row in reader
    ]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for lineno, line in enumerate(read_text_lines(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}:{lineno} is not valid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise DataFormatError(f"{path}:{lineno} must be a JSON object, got {type(obj).__name__}")
        rows.append(obj)
    return rows


def build_records(source: str, path: Path, rows: Iterable[dict[str, Any]]) -> tuple[PromptRecord, ...]:
    """Records (split not yet assigned) from row dicts; empty texts are dropped with a warning."""
    records, empty = [], 0
    for row in rows:
        text = str(row.get("text") or "").strip()
        if not text:
            empty += 1
            continue
        records.append(PromptRecord(**{**row, "text": text, "source": source, "split": ""}))
    if empty:
        data_warning(f"{path}: dropped {empty} empty or whitespace-only prompt(s) from {source}")
    return tuple(records)


def dedupe(records: Iterable[PromptRecord]) -> tuple[PromptRecord, ...]:
    """Keep the first record of each normalised text."""
    seen: set[str] = set()
    out = []
    for r in records:
        key = normalize_text(r.text)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return tuple(out)


@functools.lru_cache(maxsize=128)
def parse_file_cached(
    parser: Callable[[Path], tuple[PromptRecord, ...]], path: str, mtime_ns: int, size: int
):
    return parser(Path(path))


def parse_file(parser: Callable[[Path], tuple[PromptRecord, ...]], path: Path) -> tuple[PromptRecord, ...]:
    """Parse once per file version (path + mtime + size): Alpaca and ToxiGen are re-read often in a notebook."""
    st = path.stat()
    return parse_file_cached(parser, str(path.resolve()), st.st_mtime_ns, st.st_size)
