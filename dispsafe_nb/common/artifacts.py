"""Artifacts are data, never code: tensors in `.safetensors`, their config in JSON beside them."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TENSORS_FILE = "tensors.safetensors"
CONFIG_FILE = "config.json"


class ArtifactError(ValueError):
    """An artifact folder is missing, corrupt, or of another kind than expected."""


def save_artifact(
    folder: str | Path, kind: str, tensors: dict[str, torch.Tensor], config: dict[str, Any]
) -> Path:
    """Write `tensors` and `config` (with `kind`) into `folder`, each file atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic_write(folder / TENSORS_FILE, lambda p: save_file(tensors, str(p)))
    payload = json.dumps({"kind": kind, **config}, indent=2, sort_keys=True, default=str)
    _atomic_write(folder / CONFIG_FILE, lambda p: Path(p).write_text(payload, encoding="utf-8"))
    return folder


def load_artifact(folder: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an artifact written by `save_artifact`, checking its kind; clear errors for anything wrong."""
    folder = Path(folder)
    tensors_path, config_path = folder / TENSORS_FILE, folder / CONFIG_FILE
    for path in (tensors_path, config_path):
        if not path.is_file():
            raise ArtifactError(f"{path} is missing: {folder} is not a complete {kind} artifact")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{config_path} is not valid JSON ({err}); re-create the artifact") from err
    if config.get("kind") != kind:
        raise ArtifactError(f"{folder} holds a {config.get('kind')!r} artifact, not a {kind!r} one")
    try:
        tensors = load_file(str(tensors_path))
    except Exception as err:  # safetensors raises several error types for a damaged file
        raise ArtifactError(f"{tensors_path} is corrupt ({err}); re-create the artifact") from err
    return tensors, config


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
