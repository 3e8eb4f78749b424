"""Guards: models of α(x, y) = p(safe | prompt x, response y), the teacher's safety judgement.

Every guard answers `prob_safe(prompts, responses) -> tensor`. Two implementations:

* `EmbeddingGuard` (offline default): MiniLM-L6 sentence embeddings and two small trained heads, combined by the
  factorisation  p(unsafe | x, y) = p(harmful | x) · p(complies | y).
  Why factorise? An exchange is unsafe exactly when a harmful request meets a compliant answer. Each factor can be
  learned from data this project can hold: labelled *requests* (public benchmarks plus our bundled set) and
  refusal vs. compliant *answers* — we never need (or write) harmful answers. A joint head over (x, y) would need
  harmful completions as positives. The price: the guard cannot see harm that lives only in the answer.
* `LlamaGuard`: any HF generative guard in the Llama-Guard style; α = p("safe") against p("unsafe") as the first
  token the guard would generate under its own chat template.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from dispsafe_nb import data
from dispsafe_nb.artifacts import load_artifact, save_artifact
from dispsafe_nb.encoders import MINILM_ID, SentenceEncoder, load_minilm
from dispsafe_nb.metrics import auroc, binary_report
from dispsafe_nb.paths import cache_root

DEFAULT_REFUSAL = "I'm sorry, but I can't help with that request."


@runtime_checkable
class Guard(Protocol):
    """Anything that scores exchanges: α(x, y) = p(safe | x, y), one value per (prompt, response) pair."""

    def prob_safe(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor: ...

    def describe(self) -> dict[str, Any]: ...


def _check_pairs(prompts: Sequence[str], responses: Sequence[str]) -> tuple[list[str], list[str]]:
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
        raise ValueError(
            f"{len(prompts)} prompts but {len(responses)} responses: give one response per prompt"
        )
    return prompts, responses


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
class GuardTrainingConfig:
    """Everything that determines a trained embedding guard (hashed into its cache key)."""

    seed: int = 0
    hidden: int = 128
    steps: int = 400
    lr: float = 3e-3
    weight_decay: float = 1e-3
    # Borderline-safe prompts are the hard negatives (XSTest-style); weighting them up is what keeps the
    # guard from flagging "how do I kill a Python process".
    borderline_weight: float = 3.0
    harmful_sets: tuple[str, ...] = ("bundled_harmful", "advbench", "toxigen")
    benign_sets: tuple[str, ...] = (
        "bundled_benign",
        "bundled_borderline",
        "bundled_verifiable",
        "alpaca",
        "toxigen",
    )
    limits: dict[str, int] = field(default_factory=lambda: {"alpaca": 1200, "toxigen": 1200})
    encoder: str = MINILM_ID

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class EmbeddingGuard:
    """α(x, y) = 1 − p(harmful | x) · p(complies | y), both heads on MiniLM embeddings."""

    encoder: SentenceEncoder
    prompt_head: ProbeHead
    response_head: ProbeHead
    config: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def prob_harmful(self, prompts: Sequence[str]) -> torch.Tensor:
        return torch.sigmoid(self.prompt_head(self.encoder.encode(prompts)))

    @torch.no_grad()
    def prob_complies(self, responses: Sequence[str]) -> torch.Tensor:
        # An empty answer complies with nothing.
        responses = list(responses)
        probs = torch.sigmoid(
            self.response_head(self.encoder.encode([r if r.strip() else "." for r in responses]))
        )
        empty = torch.tensor([not r.strip() for r in responses], dtype=torch.bool)
        return probs.masked_fill(empty, 0.0)

    def prob_safe(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        prompts, responses = _check_pairs(prompts, responses)
        return 1.0 - self.prob_harmful(prompts) * self.prob_complies(responses)

    def describe(self) -> dict[str, Any]:
        return {
            "guard": "embedding",
            "encoder": self.encoder.name,
            "key": self.config.get("key"),
            **self.config,
        }

    def save(self, folder: str | Path) -> Path:
        tensors = {f"prompt.{k}": v for k, v in self.prompt_head.state_dict().items()}
        tensors |= {f"response.{k}": v for k, v in self.response_head.state_dict().items()}
        meta = {"config": self.config, "report": self.report, "dim": self.prompt_head.dim}
        return save_artifact(folder, "embedding_guard", tensors, meta)

    @classmethod
    def load(cls, folder: str | Path, encoder: SentenceEncoder | None = None) -> EmbeddingGuard:
        tensors, meta = load_artifact(folder, "embedding_guard")
        encoder = encoder or load_minilm()
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
        return cls(encoder, heads[0], heads[1], meta["config"], meta.get("report", {}))


def _fit_head(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, cfg: GuardTrainingConfig, desc: str
) -> ProbeHead:
    """Full-batch Adam on a weighted, class-balanced logistic loss (data are a few thousand embeddings)."""
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    head = ProbeHead(x.shape[1], cfg.hidden)
    pos = y.sum().clamp(min=1)
    neg = (1 - y).sum().clamp(min=1)
    balance = torch.where(y > 0.5, 0.5 / pos, 0.5 / neg) * len(y)
    weights = w * balance
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    bar = tqdm(range(cfg.steps), desc=desc, leave=False)
    for _ in bar:
        loss = (nn.functional.binary_cross_entropy_with_logits(head(x), y, reduction="none") * weights).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    bar.set_postfix(loss=float(loss))
    return head.eval()


def guard_training_data(cfg: GuardTrainingConfig, split: str = "train") -> dict[str, Any]:
    """Prompts (with labels and weights) and responses (with labels) for one split of the trainable sets."""
    records = []
    for name in dict.fromkeys(cfg.harmful_sets + cfg.benign_sets):  # ordered, unique
        limit = cfg.limits.get(name)
        if split == "train":
            records += data.training_prompts([name], split="train", limit_per_set=limit, seed=cfg.seed)
        else:  # held-out splits keep the train mix, scaled to their size
            limit = max(1, limit * 15 // 70) if limit else None
            records += data.load_dataset(name, split=split, limit=limit, seed=cfg.seed)
    harmful_sets, benign_sets = set(cfg.harmful_sets), set(cfg.benign_sets)
    records = [
        r
        for r in records
        if (r.is_harmful and r.source in harmful_sets) or (not r.is_harmful and r.source in benign_sets)
    ]
    weights = [cfg.borderline_weight if r.source == "bundled_borderline" else 1.0 for r in records]
    refusals = data.load_refusal_texts(split) + ([DEFAULT_REFUSAL] if split == "train" else [])
    compliant = data.load_compliant_texts(split)
    # AdvBench targets ("Sure, here is ...") are compliant openings to harmful requests: exactly the answers the
    # guard must catch, and no harmful content beyond the request itself.
    compliant += [r.target for r in records if r.source == "advbench" and r.target]
    return {
        "records": records,
        "prompts": [r.text for r in records],
        "prompt_labels": torch.tensor([float(r.is_harmful) for r in records]),
        "prompt_weights": torch.tensor(weights),
        "prompt_sources": [r.source for r in records],
        "responses": refusals + compliant,
        "response_labels": torch.tensor([0.0] * len(refusals) + [1.0] * len(compliant)),
    }


def train_embedding_guard(
    cfg: GuardTrainingConfig | None = None, encoder: SentenceEncoder | None = None, progress: bool = True
) -> EmbeddingGuard:
    """Train both heads on train splits only, then attach an evaluation report (`evaluate_embedding_guard`)."""
    cfg = cfg or GuardTrainingConfig()
    encoder = encoder or load_minilm()
    train = guard_training_data(cfg, "train")
    data.assert_trainable(train["records"])
    px = encoder.encode(train["prompts"], progress=progress)
    rx = encoder.encode(train["responses"], progress=progress)
    prompt_head = _fit_head(px, train["prompt_labels"], train["prompt_weights"], cfg, "prompt head")
    response_head = _fit_head(rx, train["response_labels"], torch.ones(len(rx)), cfg, "response head")
    config = {**asdict(cfg), "key": cfg.key(), "n_train_prompts": len(px), "n_train_responses": len(rx)}
    guard = EmbeddingGuard(encoder, prompt_head, response_head, config)
    guard.report = evaluate_embedding_guard(guard, cfg)
    return guard


def evaluate_embedding_guard(guard: EmbeddingGuard, cfg: GuardTrainingConfig | None = None) -> dict[str, Any]:
    """Accuracy/AUROC of the prompt head on held-out val and test splits and on the contrast sets
    (XSTest safe vs unsafe, JBB benign vs harmful, which the guard never trained on); response-head accuracy."""
    cfg = cfg or GuardTrainingConfig(
        **{k: v for k, v in guard.config.items() if k in GuardTrainingConfig.__dataclass_fields__}
    )
    report: dict[str, Any] = {}
    for split in ("val", "test"):
        held = guard_training_data(cfg, split)
        report[f"prompt_{split}"] = binary_report(guard.prob_harmful(held["prompts"]), held["prompt_labels"])
        report[f"response_{split}"] = binary_report(
            guard.prob_complies(held["responses"]), held["response_labels"]
        )
    contrast_scores, contrast_labels = [], []
    for name in ("xstest", "jbb_harmful", "jbb_benign"):
        try:
            records = data.load_dataset(name)
        except data.DatasetNotAvailableError:
            continue
        contrast_scores.append(guard.prob_harmful([r.text for r in records]))
        contrast_labels.append(torch.tensor([r.is_harmful for r in records]))
        if name == "xstest":
            report["xstest"] = binary_report(contrast_scores[-1], contrast_labels[-1])
            report["xstest_safe_flag_rate"] = report["xstest"].get("fpr")
    if len(contrast_scores) == 3:
        jbb_s, jbb_y = torch.cat(contrast_scores[1:]), torch.cat(contrast_labels[1:])
        report["jbb"] = binary_report(jbb_s, jbb_y)
        report["contrast_auroc"] = auroc(torch.cat(contrast_scores), torch.cat(contrast_labels))
    return report


def default_guard_dir(cfg: GuardTrainingConfig | None = None) -> Path:
    cfg = cfg or GuardTrainingConfig()
    return cache_root() / "guards" / f"minilm-{cfg.key()}"


def load_embedding_guard(
    cfg: GuardTrainingConfig | None = None, retrain: bool = False, encoder: SentenceEncoder | None = None
) -> EmbeddingGuard:
    """The default guard: loaded from the cache when this exact config was trained before, else trained (~1 min
    on a laptop CPU) and cached. A damaged cache entry is reported and retrained, never silently used."""
    import warnings

    from dispsafe_nb.artifacts import ArtifactError

    cfg = cfg or GuardTrainingConfig()
    folder = default_guard_dir(cfg)
    if folder.exists() and not retrain:
        try:
            return EmbeddingGuard.load(folder, encoder)
        except (ArtifactError, KeyError, RuntimeError) as err:
            warnings.warn(f"cached guard at {folder} is unusable ({err}); retraining it")
    guard = train_embedding_guard(cfg, encoder)
    guard.save(folder)
    return guard


# ---------------------------------------------------------------------------------------------------------
# Llama-Guard-style generative guards
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LlamaGuard:
    """α = p("safe") / (p("safe") + p("unsafe")) for the guard's first generated token.

    Works with Llama-Guard-3 (1B/8B) and any causal LM whose chat template renders a (user, assistant) exchange
    into a classification prompt. `safe_token`/`unsafe_token` are the words' first token ids.
    """

    model: Any
    tokenizer: Any
    name: str = "llama-guard"
    safe_word: str = "safe"
    unsafe_word: str = "unsafe"
    batch_size: int = 8

    def _first_token(self, word: str) -> int:
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"the guard's tokenizer maps {word!r} to no tokens")
        return int(ids[0])

    def guard_prompt(self, prompt: str, response: str) -> str:
        chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    @torch.no_grad()
    def prob_safe(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        prompts, responses = _check_pairs(prompts, responses)
        safe_id, unsafe_id = self._first_token(self.safe_word), self._first_token(self.unsafe_word)
        if safe_id == unsafe_id:
            raise ValueError(
                f"{self.safe_word!r} and {self.unsafe_word!r} start with the same token; pick other words"
            )
        self.tokenizer.padding_side = (
            "left"  # the next-token logits then sit in the last column for every row
        )
        device = self.model.get_input_embeddings().weight.device
        out = []
        for start in range(0, len(prompts), self.batch_size):
            texts = [
                self.guard_prompt(p, r)
                for p, r in zip(
                    prompts[start : start + self.batch_size], responses[start : start + self.batch_size]
                )
            ]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                device
            )
            logits = self.model(**batch).logits[:, -1, :].float()
            pair = torch.stack([logits[:, safe_id], logits[:, unsafe_id]], dim=-1)
            out.append(torch.softmax(pair, dim=-1)[:, 0].cpu())
        return torch.cat(out)

    def describe(self) -> dict[str, Any]:
        return {"guard": "llama-guard", "name": self.name}


def load_llama_guard(
    name: str = "meta-llama/Llama-Guard-3-1B", quantization: str | None = None
) -> LlamaGuard:
    """Load a Llama-Guard model (needs hub access or a local folder)."""
    from dispsafe_nb.models import load_llm

    llm = load_llm(name, quantization=quantization)
    if llm.tokenizer.pad_token is None:
        llm.tokenizer.pad_token = llm.tokenizer.eos_token
    return LlamaGuard(llm.model, llm.tokenizer, name)
