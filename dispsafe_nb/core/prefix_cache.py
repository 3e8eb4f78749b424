"""The soft prompt's keys and values, computed once per artifact and reused by every request.

A soft prompt precedes everything a model reads, so its N positions' keys and values at every layer depend only on
the prompt itself: compute them once, then give each batch a copy expanded along the batch. Rows are laid out
``[prefix | pad ... pad | chat tokens]``: the left padding goes after the prefix, masked, and positions come from
the attention mask's cumulative sum, so each row sees exactly what it sees without padding (``[prefix | chat]``)
and what `llm.prepend_prefix` builds (``[pad | prefix | chat]``). Per request the soft prompt then costs only
attention over N more keys (`costs.method_decode_flops`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch


class StalePrefixCacheError(RuntimeError):
    """The soft prompt changed after its cache was built (e.g. a training step): rebuild the cache."""


class PrefixCache:
    """Per-layer keys and values of N prefix embeddings (batch 1), for a frozen model."""

    def __init__(self, llm: Any, prefix: torch.Tensor) -> None:
        if prefix.ndim != 2 or prefix.shape[0] < 1:
            raise ValueError(f"a prefix is N x d with N >= 1, got shape {tuple(prefix.shape)}")
        if prefix.shape[1] != llm.hidden_size:
            raise ValueError(
                f"the prefix has width {prefix.shape[1]} but model '{llm.name}' has hidden size {llm.hidden_size}"
            )
        self.llm, self.n_tokens = llm, int(prefix.shape[0])
        self.source = prefix  # kept to detect a prefix changed in place after the cache was built
        self.fingerprint = _fingerprint(prefix)
        embeds = prefix.detach()[None].to(
            device=llm.device, dtype=llm.model.get_input_embeddings().weight.dtype
        )
        with torch.no_grad():
            cache = llm.model(inputs_embeds=embeds, use_cache=True).cache
        self.layers = [(layer.keys, layer.values) for layer in cache.layers]

    def check_current(self) -> None:
        """Raise `StalePrefixCacheError` if the prefix tensor it was built from has changed since."""
        if _fingerprint(self.source) != self.fingerprint:
            raise StalePrefixCacheError(
                "the soft prompt changed after its prefix cache was built (a training step?): build a new "
                "PrefixCache from the current prompt"
            )

    def expand(self, batch: int) -> Any:
        """A fresh `DynamicCache` holding the prefix for `batch` rows (later tokens are appended to it)."""
        from transformers import DynamicCache  # noqa: PLC0415 (deferred: transformers takes seconds to import; only code that runs a model needs it)

        self.check_current()
        data = [
            (k.expand(batch, -1, -1, -1).clone(), v.expand(batch, -1, -1, -1).clone()) for k, v in self.layers
        ]
        return DynamicCache(ddp_cache_data=data, config=self.llm.model.config)

    def nbytes(self) -> int:
        """Bytes of the cached keys and values (batch 1)."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


def _fingerprint(prefix: torch.Tensor) -> str:
    data = prefix.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()
