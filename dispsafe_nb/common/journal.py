"""A job's finished pieces on disk as it goes, so an interrupted evaluation or probe keeps them and a rerun resumes.

A journal is a JSON-lines file: a header line naming the job and its configuration (with a hash of it), then one
line per finished piece, ``{"key": ..., "value": ...}``, flushed and fsynced when written. Reopened with the same
configuration it hands back the finished pieces; with another configuration it refuses, naming what differs, so a
rerun never mixes results of two setups. A last line cut short by an interruption is dropped with a warning (the
piece is redone); a damaged line before it is an error that names the line.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dispsafe_nb.common.content_hash import stable_hash

JOURNAL_FORMAT = 1


class JournalError(ValueError):
    """A journal that belongs to another job or configuration, or is damaged."""


class Journal:
    """Finished pieces of one job (`job`: a name; `config`: everything its results depend on, JSON-able).

    ``journal.get(key)`` is a finished piece's value or None; ``journal.record(key, value)`` writes one (and it is on
    disk when the call returns). Keys are strings; values anything JSON can hold."""

    def __init__(self, path: str | Path, job: str, config: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.job = job
        self.config = json.loads(json.dumps(dict(config), sort_keys=True, default=str))
        self.config_hash = stable_hash({"job": job, "config": self.config})
        self._done: dict[str, Any] = {}
        if self.path.exists() and self.path.stat().st_size > 0:
            self._read()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write_header()

    def _write_header(self) -> None:
        self._append(
            {
                "format": JOURNAL_FORMAT,
                "job": self.job,
                "config_hash": self.config_hash,
                "config": self.config,
            }
        )

    # ---- reading ---------------------------------------------------------------------------------------
    def _read(self) -> None:
        raw = self.path.read_bytes()
        if not raw.endswith(b"\n"):
            cut = raw.rfind(b"\n") + 1
            warnings.warn(
                f"{self.path}: its last line was cut short (an interrupted write); that piece will be redone",
                stacklevel=3,
            )
            with open(self.path, "r+b") as f:
                f.truncate(cut)
            raw = raw[:cut]
        lines = raw.decode("utf-8").splitlines()
        if not lines:
            self._write_header()
            return
        header = self._parse(lines[0], 1)
        if header.get("job") != self.job or header.get("config_hash") != self.config_hash:
            theirs = header.get("config", {})
            differ = sorted(
                k for k in set(theirs) | set(self.config) if theirs.get(k) != self.config.get(k)
            ) or ["job"]
            raise JournalError(
                f"{self.path} holds results of another {header.get('job', '?')!r} run (its settings differ in: "
                f"{', '.join(differ)}); pass a new journal path, or delete this file to start over"
            )
        for number, line in enumerate(lines[1:], start=2):
            entry = self._parse(line, number)
            if set(entry) != {"key", "value"}:
                raise JournalError(
                    f"{self.path} line {number} is not a journal entry; delete the file to start over"
                )
            self._done[entry["key"]] = entry["value"]

    def _parse(self, line: str, number: int) -> dict[str, Any]:
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise JournalError(
                f"{self.path} line {number} is damaged ({err.msg}); delete the file to start over"
            ) from None
        if not isinstance(value, dict):
            raise JournalError(
                f"{self.path} line {number} is not a JSON object; delete the file to start over"
            )
        return value

    # ---- the finished pieces ---------------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        return key in self._done

    def __len__(self) -> int:
        return len(self._done)

    def keys(self) -> Iterator[str]:
        return iter(self._done)

    def get(self, key: str) -> Any | None:
        return self._done.get(key)

    def record(self, key: str, value: Any) -> None:
        """Write one finished piece (durably: flushed and fsynced before returning)."""
        if not isinstance(key, str):
            raise TypeError(f"journal keys are strings, not {type(key).__name__}")
        value = json.loads(json.dumps(value, default=str))
        self._append({"key": key, "value": value})
        self._done[key] = value

    def _append(self, obj: Mapping[str, Any]) -> None:
        line = json.dumps(obj, sort_keys=True, default=str) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def open_journal(path: str | Path | None, job: str, config: Mapping[str, Any]) -> Journal | None:
    """A `Journal` at `path`, or None when no path is given (the job keeps nothing on disk)."""
    return None if path is None else Journal(path, job, config)
