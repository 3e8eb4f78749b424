"""Micro-batches by tokens: every forward pass sees at most `token budget` padded tokens, whatever the number of
prompts.

Memory of a forward pass (activations, attention, the KV cache of a generation) grows with rows x padded width, so
batches are formed by that product, not by a count of prompts: many short prompts share a batch, a few long ones
fill it. The budget has one home: `DEFAULT_TOKEN_BUDGET`, overridden for a whole process by the environment
variable `DISPSAFE_TOKEN_BUDGET`, for a block of code by ``with token_budget(n):``, and for one call by the
`token_budget=` keyword of the functions that batch (generation, scoring, the guards' encoders).

Rows are grouped longest first (less padding, and the heaviest batch runs first, so a budget too large for the
machine fails in seconds, not hours); callers put the results back in the order they were given.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

# Padded tokens (rows x (prompt + prefix + new tokens)) per forward pass. Sized for a laptop: on the default
# SmolLM2-135M in float32 the KV cache alone is 2 x 30 layers x 3 KV heads x 64 dims x 4 bytes = 46 KB per token;
# `benchmarks/load.py` measures the whole process's peak (reports in benchmarks/reports/load_cpu*).
DEFAULT_TOKEN_BUDGET = 8192
TOKEN_BUDGET_ENV = "DISPSAFE_TOKEN_BUDGET"

_override: list[int] = []


class TokenBudgetError(ValueError):
    """A token budget that is not a positive int, or too small for one row."""


def check_budget(budget: object, where: str = "token budget") -> int:
    """`budget` as an int >= 1, or a `TokenBudgetError` that says what to pass."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise TokenBudgetError(
            f"the {where} must be an int >= 1 (padded tokens per forward pass), not {budget!r}"
        )
    return budget


def current_token_budget(budget: int | None = None) -> int:
    """The budget a call uses: `budget` when given, else the innermost ``with token_budget(n)``, else the
    environment variable DISPSAFE_TOKEN_BUDGET, else `DEFAULT_TOKEN_BUDGET`."""
    if budget is not None:
        return check_budget(budget)
    if _override:
        return _override[-1]
    raw = os.environ.get(TOKEN_BUDGET_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_TOKEN_BUDGET
    try:
        value = int(raw)
    except ValueError:
        raise TokenBudgetError(
            f"{TOKEN_BUDGET_ENV}={raw!r} is not an int; set it to e.g. 8192 or unset it"
        ) from None
    return check_budget(value, f"{TOKEN_BUDGET_ENV} value")


@contextlib.contextmanager
def token_budget(budget: int) -> Iterator[int]:
    """Within the block, every batched call without its own `token_budget=` uses `budget`."""
    _override.append(check_budget(budget))
    try:
        yield budget
    finally:
        _override.pop()


def plan_batches(
    lengths: Sequence[int],
    *,
    budget: int | None = None,
    max_rows: int | None = None,
    rows_per_item: int = 1,
    what: str = "prompt",
    keep_order: bool = False,
) -> list[list[int]]:
    """Group item indices into micro-batches whose padded size, rows x the longest length in the batch, stays within
    the budget; at most `max_rows` items per batch when given. An item counts `rows_per_item` rows (samples of one
    prompt decoded side by side). Longest items first (`keep_order`: consecutive runs in the given order, for callers
    that stream results by position); every index appears exactly once.

    `lengths` are the full lengths a row reaches (prompt + prefix + new tokens). An item that alone exceeds the
    budget raises `TokenBudgetError` naming it, its length and the budget, before any work."""
    limit = current_token_budget(budget)
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise TokenBudgetError(f"max_rows (the batch size) must be an int >= 1, not {max_rows!r}")
    if rows_per_item < 1:
        raise TokenBudgetError(f"rows_per_item must be >= 1, not {rows_per_item}")
    sizes = [int(n) for n in lengths]
    for i, n in enumerate(sizes):
        if n * rows_per_item > limit:
            rows = f" x {rows_per_item} samples" if rows_per_item > 1 else ""
            raise TokenBudgetError(
                f"{what} {i} needs {n} tokens{rows} in one forward pass, more than the token budget of {limit}; "
                f"raise the budget (token_budget=..., `with token_budget(n)` or {TOKEN_BUDGET_ENV}) or shorten it"
            )
    order = list(range(len(sizes))) if keep_order else sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        rows = (len(current) + 1) * rows_per_item
        full = max_rows is not None and len(current) >= max_rows
        if current and (full or rows * max(width, sizes[i]) > limit):
            batches.append(current)
            current, width = [], 0
        current.append(i)
        width = max(width, sizes[i])
    if current:
        batches.append(current)
    return batches


def padded_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]], rows_per_item: int = 1) -> int:
    """The largest padded size (rows x longest length) among `batches`: what the budget bounds."""
    return max((len(b) * rows_per_item * max(lengths[i] for i in b) for b in batches if b), default=0)
