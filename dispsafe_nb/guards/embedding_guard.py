"""The embedding guard: alpha = 1 - p(harmful | x) * p(complies | y) from sentence embeddings and a small
trained head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dispsafe_nb.common.artifacts import load_artifact, save_artifact
from dispsafe_nb.guards.encoders import MINILM_ID, SentenceEncoder, load_encoder
from dispsafe_nb.guards.protocol import check_pairs

# ---------------------------------------------------------------------------------------------------------
# The embedding guard
# ---------------------------------------------------------------------------------------------------------


class ProbeHead(nn.Module):
    """Logistic regression (hidden=0) or a one-hidden-layer MLP on a sentence embedding; outputs a logit."""

    def __init__(self, dim: int, hidden: int = 0):
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.net = (
            nn.Linear(dim, 1)
            if hidden == 0
            else nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


@dataclass
class EmbeddingGuard:
    """α(x, y) = 1 − p(harmful | x) · p(complies | y).

    The prompt side may use a fine-tuned copy of MiniLM (`prompt_encoder`); the response side uses the
    stock encoder (telling refusals from answers needs no fine-tuning). Train with
    `dispsafe_nb.guard_training.load_embedding_guard()`.
    """

    prompt_encoder: SentenceEncoder
    response_encoder: SentenceEncoder
    prompt_head: ProbeHead
    response_head: ProbeHead
    config: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def prob_harmful(self, prompts: Sequence[str]) -> torch.Tensor:
        """p(harmful | x) for each prompt."""
        return torch.sigmoid(self.prompt_head(self.prompt_encoder.encode(prompts)))

    @torch.no_grad()
    def prob_complies(self, responses: Sequence[str]) -> torch.Tensor:
        """p(complies | y) for each response; an empty answer complies with nothing."""
        responses = list(responses)
        embeddings = self.response_encoder.encode([r if r.strip() else "." for r in responses])
        probs = torch.sigmoid(self.response_head(embeddings))
        empty = torch.tensor([not r.strip() for r in responses], dtype=torch.bool)
        return probs.masked_fill(empty, 0.0)

    def prob_safe(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        prompts, responses = check_pairs(prompts, responses)
        return 1.0 - self.prob_harmful(prompts) * self.prob_complies(responses)

    def describe(self) -> dict[str, Any]:
        return {
            "guard": "embedding",
            "encoder": self.response_encoder.name,
            "key": self.config.get("key"),
            "role": self.config.get("role", "teacher"),
        }

    def save(self, folder: str | Path) -> Path:
        tensors = {f"prompt.{k}": v for k, v in self.prompt_head.state_dict().items()}
        tensors |= {f"response.{k}": v for k, v in self.response_head.state_dict().items()}
        if self.prompt_encoder is not self.response_encoder:
            # Only the fine-tuned parameters differ from the stock encoder; store just those.
            stock = dict(self.response_encoder.model.named_parameters())
            for name, param in self.prompt_encoder.model.named_parameters():
                if not torch.equal(param, stock[name]):
                    tensors[f"prompt_encoder.{name}"] = param
        meta = {"config": self.config, "report": self.report, "dim": self.prompt_head.dim}
        return save_artifact(folder, "embedding_guard", tensors, meta)

    @classmethod
    def load(cls, folder: str | Path, encoder: SentenceEncoder | None = None) -> EmbeddingGuard:
        """Load a saved guard; `encoder` is the stock MiniLM (loaded when not given)."""
        tensors, meta = load_artifact(folder, "embedding_guard")
        wanted = meta["config"].get("encoder", MINILM_ID)
        if encoder is None or encoder.name != wanted:
            encoder = load_encoder(wanted)
        if encoder.dim != meta["dim"]:
            raise ValueError(
                f"guard in {folder} was trained on {meta['dim']}-d embeddings but the encoder gives {encoder.dim}-d"
            )
        hidden = int(meta["config"]["hidden"])
        heads = []
        for prefix in ("prompt.", "response."):
            head = ProbeHead(meta["dim"], hidden)
            head.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
            heads.append(head.eval())
        tuned = {
            k[len("prompt_encoder.") :]: v for k, v in tensors.items() if k.startswith("prompt_encoder.")
        }
        prompt_encoder = encoder
        if tuned:
            prompt_encoder = encoder.clone(name=f"{encoder.name}+finetuned")
            missing = set(tuned) - set(dict(prompt_encoder.model.named_parameters()))
            if missing:
                raise ValueError(
                    f"guard in {folder} has encoder weights this encoder lacks: {sorted(missing)[:3]}"
                )
            prompt_encoder.model.load_state_dict(tuned, strict=False)
            prompt_encoder.model.eval()
        return cls(prompt_encoder, encoder, heads[0], heads[1], meta["config"], meta.get("report", {}))
