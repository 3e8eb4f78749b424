"""Train and evaluate the embedding guard, and load the default one (trained once, then cached)."""

from __future__ import annotations

import hashlib
import importlib
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dispsafe_nb import data
from dispsafe_nb.common.artifacts import ArtifactError
from dispsafe_nb.common.classifier_stats import auroc, binary_report
from dispsafe_nb.common.content_hash import code_digest
from dispsafe_nb.common.paths import cache_root
from dispsafe_nb.guards.embedding_guard import EmbeddingGuard, ProbeHead
from dispsafe_nb.guards.encoders import MINILM_ID, MPNET_ID, SentenceEncoder, load_encoder
from dispsafe_nb.guards.protocol import DEFAULT_REFUSAL


@dataclass
class GuardTrainingConfig:
    """Everything that determines a trained embedding guard (hashed into its cache key)."""

    seed: int = 0
    hidden: int = 0  # 0: logistic regression on the embedding
    head_steps: int = 400
    head_lr: float = 3e-3
    weight_decay: float = 1e-3
    # Fine-tuning the top encoder layers on the prompt task (0 epochs: frozen encoder). A frozen MiniLM cannot
    # separate "kill a Python process" from "kill a person"; fine-tuning on minimal pairs is what can.
    finetune_epochs: int = 2
    finetune_top_layers: int = 4
    finetune_lr: float = 3e-5
    batch_size: int = 32
    # Borderline-safe prompts are the hard negatives (XSTest-style); weighting them up keeps the guard from
    # flagging them.
    borderline_weight: float = 6.0
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
    # Which share of the train split this guard learns from. The teacher and the evaluation's second judge take
    # disjoint shares (`data_role`), so the judge shares no training text with the teacher; "all" takes both.
    role: str = "teacher"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {self.role!r}")
        data.check_seed(self.seed)

    def config_hash(self) -> str:
        """Hash of the settings alone (the cache key adds the training texts and code: `guard_key`)."""
        blob = json.dumps(asdict(self), sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GuardTrainingConfig:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        for name in ("harmful_sets", "benign_sets"):
            if name in known:
                known[name] = tuple(known[name])
        return cls(**known)


ROLES = ("teacher", "judge", "all")
JUDGE_SHARE = 0.3  # of the train split's texts, by a hash of the text: the judge's; the rest: the teacher's


def data_role(text: str) -> str:
    """'teacher' or 'judge': a stable hash of the normalised text assigns every training text to one guard."""
    digest = hashlib.sha256(f"dispsafe-guard-role:{data.normalize_text(text)}".encode()).digest()
    return "judge" if int.from_bytes(digest[:8], "big") / 2**64 < JUDGE_SHARE else "teacher"


def _in_role(text: str, role: str) -> bool:
    return role == "all" or data_role(text) == role


# The modules whose code decides what a trained guard is: this training code, the guards and the encoders. The
# digest of their code (by content, `content_hash.code_digest`) is part of the guard's key.
GUARD_CODE = (
    "dispsafe_nb.guards.guard_training",
    "dispsafe_nb.guards.protocol",
    "dispsafe_nb.guards.embedding_guard",
    "dispsafe_nb.guards.llama_guard",
    "dispsafe_nb.guards.encoders",
)


def code_version() -> str:
    """A digest of the code that trains and applies the embedding guard, by content: editing what it does retrains
    the guard; moving it between modules does not."""
    return code_digest(*(importlib.import_module(name) for name in GUARD_CODE))[:12]


def guard_key(cfg: GuardTrainingConfig, train: dict[str, Any] | None = None) -> str:
    """The guard's content key: its settings, every training text with its label and weight, and the code
    version. Editing one bundled prompt, a parser or the training code gives a new key (and a new guard)."""
    train = train if train is not None else guard_training_data(cfg, "train")
    blob = json.dumps(
        {
            "config": asdict(cfg),
            "prompts": train["prompts"],
            "prompt_labels": train["prompt_labels"].tolist(),
            "prompt_weights": train["prompt_weights"].tolist(),
            "responses": train["responses"],
            "response_labels": train["response_labels"].tolist(),
            "code": code_version(),
            "split_version": data.SPLIT_VERSION,
        },
        sort_keys=True,
        default=list,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def guard_training_data(cfg: GuardTrainingConfig, split: str = "train") -> dict[str, Any]:
    """Prompts (labels, weights) and responses (labels) for one split of the trainable sets.

    The train split goes through `data.training_prompts` (evaluation-only sets refused, texts that contain an
    evaluated prompt dropped) and keeps only the texts of the config's `role`; response texts (targets included)
    are decontaminated the same way.
    """
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
        if ((r.is_harmful and r.source in harmful_sets) or (not r.is_harmful and r.source in benign_sets))
        and (split != "train" or _in_role(r.text, cfg.role))
    ]
    weights = [cfg.borderline_weight if r.source == "bundled_borderline" else 1.0 for r in records]
    refusals = data.load_refusal_texts(split) + ([DEFAULT_REFUSAL] if split == "train" else [])
    compliant = data.load_compliant_texts(split)
    if split == "train":
        refusals = [t for t in data.decontaminate_texts(refusals) if _in_role(t, cfg.role)]
        compliant = [t for t in data.decontaminate_texts(compliant) if _in_role(t, cfg.role)]
    # AdvBench targets ("Sure, here is ...") are compliant openings to harmful requests: exactly the answers the
    # guard must catch, with no harmful content beyond the request. Several prompts share one target text, so a
    # target goes by its own role, not its prompt's: otherwise teacher and judge could both train on it.
    targets = [r.target for r in records if r.source == "advbench" and r.target]
    if split == "train":
        targets = [t for t in data.decontaminate_texts(targets) if _in_role(t, cfg.role)]
    compliant += targets
    return {
        "records": records,
        "prompts": [r.text for r in records],
        "prompt_labels": torch.tensor([float(r.is_harmful) for r in records]),
        "prompt_weights": torch.tensor(weights),
        "responses": refusals + compliant,
        "response_labels": torch.tensor([0.0] * len(refusals) + [1.0] * len(compliant)),
    }


def _balanced_weights(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-example weights so both classes carry equal total weight (times the given weights)."""
    pos, neg = y.sum().clamp(min=1), (1 - y).sum().clamp(min=1)
    return w * torch.where(y > 0.5, 0.5 / pos, 0.5 / neg) * len(y)


def _fit_head(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, cfg: GuardTrainingConfig, desc: str
) -> ProbeHead:
    """Full-batch AdamW on a weighted, class-balanced logistic loss (a few thousand embeddings)."""

    torch.manual_seed(cfg.seed)
    head = ProbeHead(x.shape[1], cfg.hidden)
    weights = _balanced_weights(y, w)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.head_lr, weight_decay=cfg.weight_decay)
    for _ in tqdm(range(cfg.head_steps), desc=desc, leave=False):
        loss = (nn.functional.binary_cross_entropy_with_logits(head(x), y, reduction="none") * weights).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval()


def _finetune(
    encoder: SentenceEncoder,
    head: ProbeHead,
    texts: list[str],
    y: torch.Tensor,
    w: torch.Tensor,
    cfg: GuardTrainingConfig,
) -> SentenceEncoder:
    """Fine-tune the top layers of a copy of the encoder together with the head (minibatch AdamW)."""

    tuned = encoder.clone(name=f"{encoder.name}+finetuned")
    model = tuned.model
    model.requires_grad_(False)
    for layer in model.encoder.layer[-cfg.finetune_top_layers :]:
        layer.requires_grad_(True)
    weights = _balanced_weights(y, w)
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.finetune_lr},
            {"params": head.parameters(), "lr": cfg.head_lr / 3},
        ],
        weight_decay=cfg.weight_decay,
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout
    model.train()
    head.train()
    n = len(texts)
    for epoch in range(cfg.finetune_epochs):
        order = torch.randperm(n, generator=generator)
        bar = tqdm(range(0, n, cfg.batch_size), desc=f"fine-tune guard (epoch {epoch + 1})", leave=False)
        for start in bar:
            idx = order[start : start + cfg.batch_size]
            logits = head(tuned.pooled([texts[i] for i in idx]))
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y[idx], reduction="none")
            loss = (loss * weights[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval().requires_grad_(False)
    head.eval()
    return tuned


def train_embedding_guard(
    cfg: GuardTrainingConfig | None = None,
    encoder: SentenceEncoder | None = None,
    progress: bool = True,
    train: dict[str, Any] | None = None,
) -> EmbeddingGuard:
    """Train on train splits only, then attach an evaluation report (`evaluate_embedding_guard`).
    `train`: `guard_training_data(cfg, "train")` when the caller has it already."""
    cfg = cfg or GuardTrainingConfig()
    encoder = _encoder_for(cfg, encoder)
    train = train if train is not None else guard_training_data(cfg, "train")
    data.assert_trainable(train["records"])
    if not train["prompts"] or train["response_labels"].sum() in (0, len(train["responses"])):
        raise ValueError(f"guard training data for role {cfg.role!r} lacks prompts or one response class")
    px = encoder.encode(train["prompts"], progress=progress)
    rx = encoder.encode(train["responses"], progress=progress)
    prompt_head = _fit_head(px, train["prompt_labels"], train["prompt_weights"], cfg, "prompt head")
    response_head = _fit_head(rx, train["response_labels"], torch.ones(len(rx)), cfg, "response head")
    prompt_encoder = encoder
    if cfg.finetune_epochs > 0:
        # Start from the frozen-encoder head (a good init), then adapt encoder and head together.
        prompt_encoder = _finetune(
            encoder, prompt_head, train["prompts"], train["prompt_labels"], train["prompt_weights"], cfg
        )
    config = {
        **asdict(cfg),
        "key": guard_key(cfg, train),
        "code_version": code_version(),
        "decontamination": data.decontamination_report(),
        "n_train_prompts": len(px),
        "n_train_responses": len(rx),
    }
    guard = EmbeddingGuard(prompt_encoder, encoder, prompt_head, response_head, config)
    guard.report = evaluate_embedding_guard(guard, cfg)
    return guard


def evaluate_embedding_guard(guard: EmbeddingGuard, cfg: GuardTrainingConfig | None = None) -> dict[str, Any]:
    """Prompt head on held-out val/test splits and on the contrast sets it never trained on (XSTest safe vs
    unsafe, JBB benign vs harmful); response head on held-out refusals vs compliant answers."""
    cfg = cfg or GuardTrainingConfig.from_dict(guard.config)
    report: dict[str, Any] = {}
    for split in ("val", "test"):
        held = guard_training_data(cfg, split)
        report[f"prompt_{split}"] = binary_report(guard.prob_harmful(held["prompts"]), held["prompt_labels"])
        report[f"response_{split}"] = binary_report(
            guard.prob_complies(held["responses"]), held["response_labels"]
        )
    scores, labels = {}, {}
    for name in ("xstest", "jbb_harmful", "jbb_benign"):
        try:
            records = data.load_dataset(name)
        except data.DatasetNotAvailableError:
            continue
        scores[name] = guard.prob_harmful([r.text for r in records])
        labels[name] = torch.tensor([r.is_harmful for r in records])
    if "xstest" in scores:
        report["xstest"] = binary_report(scores["xstest"], labels["xstest"])
        report["xstest_safe_flag_rate"] = report["xstest"]["fpr"]
    if "jbb_harmful" in scores and "jbb_benign" in scores:
        jbb_s = torch.cat([scores["jbb_harmful"], scores["jbb_benign"]])
        jbb_y = torch.cat([labels["jbb_harmful"], labels["jbb_benign"]])
        report["jbb"] = binary_report(jbb_s, jbb_y)
    if len(scores) == 3:
        report["contrast_auroc"] = auroc(torch.cat(list(scores.values())), torch.cat(list(labels.values())))
        report["contrast_auroc_mean"] = (report["xstest"]["auroc"] + report["jbb"]["auroc"]) / 2
    return report


def _encoder_for(cfg: GuardTrainingConfig, encoder: SentenceEncoder | None) -> SentenceEncoder:
    """The given encoder when it is the config's, else the config's encoder loaded fresh."""
    return encoder if encoder is not None and encoder.name == cfg.encoder else load_encoder(cfg.encoder)


def default_guard_dir(cfg: GuardTrainingConfig | None = None, key: str | None = None) -> Path:
    """The cache folder of a guard: named by its content key (`guard_key`)."""
    cfg = cfg or GuardTrainingConfig()
    return cache_root() / "guards" / f"{cfg.role}-{key or guard_key(cfg)}"


def load_embedding_guard(
    cfg: GuardTrainingConfig | None = None,
    retrain: bool = False,
    encoder: SentenceEncoder | None = None,
    progress: bool = True,
) -> EmbeddingGuard:
    """The default guard: loaded from the cache when this exact config was trained before, else trained
    (a few minutes on a laptop CPU) and cached. A damaged cache entry is reported and retrained."""
    cfg = cfg or GuardTrainingConfig()
    train = guard_training_data(cfg, "train")  # once: for the key and, on a cache miss, for training
    key = guard_key(cfg, train)
    folder = default_guard_dir(cfg, key)
    if folder.exists() and not retrain:
        try:
            guard = EmbeddingGuard.load(folder, _encoder_for(cfg, encoder))
            if guard.config.get("key") != key:
                raise ValueError(f"it was trained as {guard.config.get('key')}, expected {key}")
            return guard
        except (ArtifactError, KeyError, RuntimeError, ValueError) as err:
            warnings.warn(f"cached guard at {folder} is unusable ({err}); retraining it", stacklevel=2)
    guard = train_embedding_guard(cfg, encoder, progress, train)
    guard.save(folder)
    return guard


# The evaluation's second judge: another encoder (all-mpnet-base-v2, not MiniLM), trained on the judge's share of
# the train split (`data_role`), which holds no text of the teacher's share, with another seed, a small MLP head
# and a frozen encoder. Like the teacher it never sees an evaluated prompt (decontamination). It keeps the
# teacher's factorised design and label sources, so it is a cousin of the teacher, not an independent judge;
# with hub access, pass a GuardJudge around Llama-Guard instead.
JUDGE_GUARD_CONFIG = GuardTrainingConfig(seed=1, hidden=64, finetune_epochs=0, role="judge", encoder=MPNET_ID)


def load_judge_guard(
    retrain: bool = False, encoder: SentenceEncoder | None = None, progress: bool = True
) -> EmbeddingGuard:
    """The second (non-teacher) guard for evaluation, trained once and cached like the teacher."""
    return load_embedding_guard(JUDGE_GUARD_CONFIG, retrain=retrain, encoder=encoder, progress=progress)
