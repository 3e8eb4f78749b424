"""Training mixes at the paper's scale: thousands of prompts from the train splits of many sources.

The teacher needs no labels -- any prompt becomes a training example once the dual system has answered it -- so a
mix is only a choice of prompts. Labels choose the *shares*: a mix of `size` prompts holds `harmful_share`
harmful requests, `borderline_share` safe prompts that look risky and benign instructions for the rest. Within a
group the sources contribute equally, each up to what its train split holds (in proportion to size, Alpaca's 22k
instructions would leave the 125 bundled ones and ToxiGen's neutral requests -- the benign twins of its hateful
framing -- a few dozen prompts). Each source takes a prefix of its own seeded shuffle, so a smaller mix is a
subset of a larger one: a data-size curve then varies size alone.

Every source is decontaminated against every evaluated prompt (`data.training_prompts`), and the finished mix is
checked again (`data.check_training_texts`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from dispsafe_nb import data

# group -> sources; toxigen_requests holds hateful and neutral requests, each goes to the group of its label.
MIX_SOURCES: dict[str, tuple[str, ...]] = {
    "harmful": ("bundled_harmful_forms", "bundled_harmful", "advbench", "toxigen_requests"),
    "borderline": ("bundled_borderline_forms", "bundled_borderline"),
    "benign": ("bundled_benign", "toxigen_requests", "alpaca"),
}
BORDERLINE_SOURCES = frozenset(MIX_SOURCES["borderline"])


class MixTooLargeError(ValueError):
    """A mix asks for more prompts of a group than the train splits of its sources hold."""


@dataclass(frozen=True)
class MixConfig:
    """A training mix: how many prompts, which shares, which seed (recorded with every result)."""

    size: int = 5000
    harmful_share: float = 0.3
    borderline_share: float = 0.1
    seed: int = 0
    split: str = "train"  # "val" for a validation mix from the same sources

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be at least 1, not {self.size}")
        shares = (self.harmful_share, self.borderline_share)
        if any(not 0 <= s <= 1 for s in shares) or sum(shares) > 1:
            raise ValueError(
                f"harmful_share and borderline_share must lie in [0, 1] and sum to at most 1, not {shares}"
            )
        if self.split not in ("train", "val"):
            raise ValueError(
                f"split must be 'train' or 'val' (test prompts are never trained on), not {self.split!r}"
            )
        data.check_seed(self.seed)

    def group_sizes(self) -> dict[str, int]:
        """Prompts per group (rounded; benign takes the remainder)."""
        harmful = round(self.size * self.harmful_share)
        borderline = round(self.size * self.borderline_share)
        return {"harmful": harmful, "borderline": borderline, "benign": self.size - harmful - borderline}


def mix_pools(split: str = "train") -> dict[str, dict[str, list[data.PromptRecord]]]:
    """{group: {source: decontaminated records of that split with the group's label}} (a public set that is in
    neither the mirror nor the cache is downloaded from its pinned commit)."""
    pools: dict[str, dict[str, list[data.PromptRecord]]] = {}
    loaded = {
        name: data.training_prompts([name], split=split)
        for name in dict.fromkeys(n for names in MIX_SOURCES.values() for n in names)
    }
    for group, names in MIX_SOURCES.items():
        harmful = group == "harmful"
        pools[group] = {name: [r for r in loaded[name] if r.is_harmful == harmful] for name in names}
    return pools


def water_fill(need: int, sizes: dict[str, int]) -> dict[str, int]:
    """`need` split as evenly as the sources allow: each gets an equal share up to what it holds, and what a
    small source cannot take goes to the others (max-min fair; a larger `need` never takes less from a source)."""
    take = dict.fromkeys(sizes, 0)
    left, open_ = need, sorted(sizes, key=lambda n: (sizes[n], n))
    while left > 0 and open_:
        share = left // len(open_)
        if share == 0:  # fewer prompts left than open sources: one more each, smallest sources first
            for name in open_[:left]:
                take[name] += 1
            break
        for name in list(open_):
            add = min(share, sizes[name] - take[name])
            take[name], left = take[name] + add, left - add
            if take[name] == sizes[name]:
                open_.remove(name)
    return take


def scale_mix(cfg: MixConfig = MixConfig()) -> list[data.PromptRecord]:
    """The mix `cfg` describes (harmful, then borderline, then benign records). Raises MixTooLargeError, saying
    how many prompts exist, when a group asks for more than its sources hold."""
    pools = mix_pools(cfg.split)
    return _draw(pools, cfg.group_sizes(), cfg.seed, cfg.split, largest=lambda: _largest_size(cfg, pools))


def group_mix(
    harmful: int, borderline: int, benign: int, *, seed: int = 0, split: str = "train"
) -> list[data.PromptRecord]:
    """A mix with this many prompts per group, drawn like `scale_mix` (every source of the group shares them
    max-min fair, a prefix of each source's seeded shuffle): a small mix that still sees every source and, through
    the bundled forms sets, every phrasing form. Notebook 03's `training.examples.training_mix` is this."""
    data.check_seed(seed)
    counts = {"harmful": harmful, "borderline": borderline, "benign": benign}
    bad = {g: n for g, n in counts.items() if not isinstance(n, int) or n < 0}
    if bad:
        raise ValueError(f"prompts per group must be non-negative integers, not {bad}")
    return _draw(mix_pools(split), counts, seed, split, largest=None, by_form=True)


def _draw(
    pools: dict[str, dict[str, list[data.PromptRecord]]],
    counts: dict[str, int],
    seed: int,
    split: str,
    largest: Callable[[], int] | None,
    by_form: bool = False,
) -> list[data.PromptRecord]:
    out: list[data.PromptRecord] = []
    for group, need in counts.items():
        sizes = {n: len(rs) for n, rs in pools[group].items()}
        if need > sum(sizes.values()):
            detail = ", ".join(f"{n} {k}" for n, k in sizes.items())
            hint = f"; at these shares the largest mix is {largest()}" if largest else ""
            raise MixTooLargeError(
                f"the mix needs {need} {group} prompts but the {split} splits hold "
                f"{sum(sizes.values())} ({detail}){hint}"
            )
        for name, k in water_fill(need, sizes).items():
            records = list(pools[group][name])
            # A seed per (mix seed, source, group): a source's order does not depend on the other sources.
            random.Random(f"{seed}:{group}:{name}").shuffle(records)
            out += (_round_robin_by_form(records) if by_form else records)[:k]
    if split == "train":
        data.assert_trainable(out)
    data.check_training_texts(r.text for r in out)
    return out


def _round_robin_by_form(records: list[data.PromptRecord]) -> list[data.PromptRecord]:
    """The shuffled records taken one phrasing form at a time (forms in first-seen order), so that a short prefix
    already holds every form. Small mixes need this: 12 of 710 forms prompts drawn at random miss a form or two.
    (`scale_mix` keeps the plain shuffle: its thousands of prompts hold every form, and its recorded runs stay
    reproducible.)"""
    by_form: dict[str, list[data.PromptRecord]] = {}
    for r in records:
        by_form.setdefault(r.form, []).append(r)
    queues = list(by_form.values())
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def _largest_size(cfg: MixConfig, pools: dict[str, dict[str, list[data.PromptRecord]]]) -> int:
    held = {g: sum(len(rs) for rs in by_source.values()) for g, by_source in pools.items()}
    size = cfg.size
    while size > 0:  # the group sizes are rounded: step down until every group fits
        needs = MixConfig(size, cfg.harmful_share, cfg.borderline_share, cfg.seed, cfg.split).group_sizes()
        if all(needs[g] <= held[g] for g in needs):
            return size
        size -= max(1, (size - 1) // 100)
    return 0


def mix_summary(records: Sequence[data.PromptRecord], cfg: MixConfig) -> dict:
    """What a mix holds, for a result's config: its settings and counts by group, source and phrasing form."""
    by: dict[str, dict[str, int]] = {"source": {}, "form": {}, "label": {}}
    for r in records:
        label = "harmful" if r.is_harmful else ("borderline" if r.source in BORDERLINE_SOURCES else "benign")
        for key, value in (("source", r.source), ("form", r.form or "-"), ("label", label)):
            by[key][value] = by[key].get(value, 0) + 1
    return {"config": asdict(cfg), "n": len(records), **{f"by_{k}": v for k, v in by.items()}}


def leaking_prompts(records: Sequence[data.PromptRecord]) -> list[str]:
    """The prompts of a mix that are, or nearly repeat, an evaluated prompt (empty for a clean mix)."""
    checker = data.default_decontaminator()
    return [r.text for r in records if checker.leaks(r.text)]
