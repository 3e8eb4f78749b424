"""Errors and warnings of the data package (each says what to fix)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from dispsafe_nb.common.names import unknown_name_message


class DataWarning(UserWarning):
    """Something in the data was dropped, repaired, or could not be verified."""


def data_warning(message: str) -> None:
    # stacklevel=3: attribute the warning to the caller of the function that warns, not to this helper.
    warnings.warn(message, DataWarning, stacklevel=3)


class DatasetNotAvailableError(FileNotFoundError):
    """A public file is in neither the mirror nor the cache, and could not be downloaded."""


class ChecksumError(ValueError):
    """A file's sha256 differs from the pinned (or first-use) value."""


class DataFormatError(ValueError):
    """A data file could not be parsed (encoding, columns, JSON)."""


class EvalOnlyError(ValueError):
    """Evaluation-only data (or the test split) was about to be used for training."""


def unknown_name_error(kind: str, name: str, known: Iterable[str]) -> ValueError:
    return ValueError(unknown_name_message(kind, name, known))
