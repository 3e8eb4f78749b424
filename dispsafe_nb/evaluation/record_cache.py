"""Evaluation records computed once and reused: one JSON file per key under ``cache_root()/records``.

Used for reference systems whose answers do not change between runs (the base model and the dual system on the
generalisation sets: 7 minutes of generation on a CPU). The key names everything the records depend on --
systems, decoding, limits, the prompts themselves and a digest of the code that generates and judges
(`content_hash.code_digest`: by what the code says, so moving it between modules keeps the records) -- so a
change to any of them is a different key, never a stale hit. A damaged entry (bad JSON, checksum mismatch, another
key in the file) is reported, deleted and recomputed.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dispsafe_nb.common.content_hash import stable_hash
from dispsafe_nb.common.paths import cache_root
from dispsafe_nb.evaluation.records import EvalRecord

RECORD_CACHE_FORMAT = 1


def cache_path(key: Mapping[str, Any], root: Path | None = None) -> Path:
    """The file holding the records of `key` (under `root`, default ``cache_root()/records``)."""
    return (root or cache_root() / "records") / f"{stable_hash(dict(key))[:20]}.json"


def load(key: Mapping[str, Any], root: Path | None = None) -> list[EvalRecord] | None:
    """The records cached under `key`, or None (absent, or damaged: then warned about and deleted)."""
    path = cache_path(key, root)
    if not path.exists():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(entry, dict):
            raise ValueError("not a cache entry")
        if entry.get("format") != RECORD_CACHE_FORMAT or entry.get("key") != _as_json(dict(key)):
            raise ValueError("another format or key")
        if entry["checksum"] != stable_hash(entry["records"]):
            raise ValueError("checksum mismatch")
        return [EvalRecord(**r) for r in entry["records"]]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
        warnings.warn(f"record cache entry {path} is unusable ({err}); recomputing it", stacklevel=3)
        path.unlink(missing_ok=True)
        return None


def _as_json(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def store(key: Mapping[str, Any], records: list[EvalRecord], root: Path | None = None) -> list[EvalRecord]:
    """Write `records` under `key` atomically (a crash leaves the old entry or none, never half a file); return
    them as they will come back from the cache (through JSON), so that a first run and a cached one agree."""
    path = cache_path(key, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = [_as_json(asdict(r)) for r in records]
    payload = {
        "format": RECORD_CACHE_FORMAT,
        "key": _as_json(dict(key)),
        "checksum": stable_hash(body),
        "records": body,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return [EvalRecord(**r) for r in body]


def cached_records(
    key: Mapping[str, Any], compute: Callable[[], list[EvalRecord]], root: Path | None = None
) -> tuple[list[EvalRecord], bool]:
    """The records under `key` if cached, else `compute()` stored under it; and whether they came from the cache."""
    hit = load(key, root)
    if hit is not None:
        return hit, True
    return store(key, compute(), root), False
