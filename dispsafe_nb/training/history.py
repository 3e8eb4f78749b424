"""What a run records as it goes: losses, clip fractions, the validation gap."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from dispsafe_nb.core.llm import LLM
from dispsafe_nb.methods import Method
from dispsafe_nb.system.teacher_cache import TeacherSample
from dispsafe_nb.training.batch_loss import validation_gap

if TYPE_CHECKING:
    from dispsafe_nb.training.config import DistillConfig


@dataclass
class History:
    """What happened during training, step by step (JSON-able)."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    mean_alpha: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_refusal_gap: list[float] = field(default_factory=list)
    # Fractions of the batch whose TV clip is engaged (term switched off) on y and on y_r: the mechanism that
    # separates TV from KL, logged rather than asserted. Computed for KL too (it ignores them).
    clipped_y: list[float] = field(default_factory=list)
    clipped_r: list[float] = field(default_factory=list)
    # PPO only: the fraction of tokens whose probability ratio the clip held (the reward objectives log no TV
    # clip; their mean_alpha is the mean reward, the guard's α of the student's own samples).
    ppo_clip_fraction: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, list]:
        return asdict(self)


def history_summary(histories: Mapping[str, History]) -> dict[str, dict[str, float | None]]:
    """{name: final training loss, final validation loss and validation refusal gap (None when not recorded)}."""
    return {
        name: {
            "final_loss": h.loss[-1],
            "final_val_loss": h.val_loss[-1] if h.val_loss else None,
            "final_val_refusal_gap": h.val_refusal_gap[-1] if h.val_refusal_gap else None,
        }
        for name, h in histories.items()
    }


def record_validation(
    llm: LLM,
    method: Method,
    val_samples: Sequence[TeacherSample],
    cfg: DistillConfig,
    history: History,
    step: int,
    labels: Mapping[str, bool] | None = None,
) -> float:
    """Append the validation loss and refusal gap at `step` to the history; returns the loss."""
    val_loss, gap = validation_gap(llm, method, val_samples, cfg, labels)
    history.val_step.append(step)
    history.val_loss.append(val_loss)
    history.val_refusal_gap.append(gap)
    return val_loss
