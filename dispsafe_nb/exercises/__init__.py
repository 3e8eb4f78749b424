"""Exercises with self-checks, ARENA-style: the reader writes a short function, `check(name, fn)` tests it.

Each exercise has a task (what to write, never how), a reference solution (`solution(name)`, or
`show_solution(name)` to read its source; in `solutions`), and a checker (in `checkers`) that compares the reader's function with a brute-force
or closed-form reference on fixed random cases and says what went wrong in words. Notebooks run the checks with
the solutions filled in when papermill executes them, so the test suite checks every checker against its
solution; `tests/test_exercises.py` also shows each checker rejecting plausible wrong answers.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from dispsafe_nb.exercises import checkers as _c
from dispsafe_nb.exercises.checkers import ExerciseFailed
from dispsafe_nb.exercises.solutions import (
    clip_fractions,
    clipped_nll,
    decode_flops_per_token,
    dual_refusal_probability,
    dual_system_distribution,
    eq4_loss,
    mc_tv_estimate,
    refusal_logit_gradient,
    rloo_advantages,
    share_out,
    tv_and_event,
    two_point_tv,
    xstest_refusal_rate,
)


@dataclass(frozen=True)
class Exercise:
    name: str
    notebook: str
    task: str
    solution: Callable
    checker: Callable[[Callable], int]


EXERCISES: dict[str, Exercise] = {
    e.name: e
    for e in (
        Exercise(
            "tv_and_event",
            "01_tv_bound",
            "Write tv_and_event(p, q) -> (TV(p, q), A): the total variation distance between two distributions "
            "on the same outcomes, and an event A (one boolean per outcome) on which p(A) - q(A) reaches it.",
            tv_and_event,
            _c._check_tv_and_event,
        ),
        Exercise(
            "two_point_tv",
            "01_tv_bound",
            "Write two_point_tv(alpha, q_y, q_r): TV between the teacher's two-point distribution given y "
            "(y with probability alpha, the refusal otherwise) and a student giving y mass q_y, the refusal q_r.",
            two_point_tv,
            _c._check_two_point_tv,
        ),
        Exercise(
            "clipped_nll",
            "01_tv_bound",
            "Write clipped_nll(log_q, w) with torch: one term of Eq. 4, w·[log(w/q)]_+, exactly 0 where w = 0; "
            "its gradient w.r.t. log_q must match too.",
            clipped_nll,
            _c._check_clipped_nll,
        ),
        Exercise(
            "refusal_logit_gradient",
            "01_tv_bound",
            "Write refusal_logit_gradient(q_y, q_r, alpha, loss) -> dL/dz_r for one sample's loss ('tv' or "
            "'kl'), a softmax student with logits z over (y, y_r, everything else).",
            refusal_logit_gradient,
            _c._check_refusal_logit_gradient,
        ),
        Exercise(
            "mc_tv_estimate",
            "01_tv_bound",
            "Write mc_tv_estimate(log_p, log_q) -> (estimate, standard error) of TV(p, q) from samples of p, "
            "given each sample's log-probability under p and under q.",
            mc_tv_estimate,
            _c._check_mc_tv_estimate,
        ),
        Exercise(
            "dual_system_distribution",
            "02_safe_system",
            "Write dual_system_distribution(base, alpha): the safe system's distribution over the base model's "
            "answers and, as the last entry, the refusal.",
            dual_system_distribution,
            _c._check_dual_system_distribution,
        ),
        Exercise(
            "xstest_refusal_rate",
            "02_safe_system",
            "Write xstest_refusal_rate(responses): the share XSTest's string rule counts as refusals (use "
            "dispsafe_nb.judges.XSTEST_REFUSAL_PREFIXES).",
            xstest_refusal_rate,
            _c._check_xstest_refusal_rate,
        ),
        Exercise(
            "eq4_loss",
            "03_distill",
            "Write eq4_loss(logq_y, logq_r, alpha) with torch: TV-DiSP (Eq. 4) per example from whole-sequence "
            "log-probabilities of the sample and of the refusal.",
            eq4_loss,
            _c._check_eq4_loss,
        ),
        Exercise(
            "clip_fractions",
            "03_distill",
            "Write clip_fractions(logq_y, logq_r, alpha) -> (share of y terms, share of y_r terms) that Eq. 4 "
            "has switched off in a batch.",
            clip_fractions,
            _c._check_clip_fractions,
        ),
        Exercise(
            "rloo_advantages",
            "04_baselines",
            "Write rloo_advantages(rewards) with torch: for a (prompts x k) tensor of rewards, each sample's "
            "reward minus the mean reward of the other k - 1 samples of its prompt (REINFORCE's baseline).",
            rloo_advantages,
            _c._check_rloo_advantages,
        ),
        Exercise(
            "decode_flops_per_token",
            "07_on_device",
            "Write decode_flops_per_token(arch, context): the matrix-product FLOPs of one generated token of a "
            "decoder (an `Architecture`: hidden, layers, heads, kv_heads, head_dim, ffn, vocab) at `context` keys.",
            decode_flops_per_token,
            _c._check_decode_flops_per_token,
        ),
        Exercise(
            "share_out",
            "08_generalisation",
            "Write share_out(need, sizes) -> {source: count}: take `need` prompts from sources holding `sizes` "
            "as evenly as they allow -- equal shares, no source beyond its size, what a small source cannot "
            "give taken from the others.",
            share_out,
            _c._check_share_out,
        ),
        Exercise(
            "dual_refusal_probability",
            "06_probe",
            "Write dual_refusal_probability(alphas, refused): the dual system's (sampling form) probability of "
            "refusing, estimated from k base samples with their α and whether each is itself a refusal.",
            dual_refusal_probability,
            _c._check_dual_refusal_probability,
        ),
    )
}


def _exercise(name: str) -> Exercise:
    if name not in EXERCISES:
        close = difflib.get_close_matches(name, list(EXERCISES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(EXERCISES)}"
        raise KeyError(f"no exercise named {name!r}{hint}")
    return EXERCISES[name]


def for_notebook(notebook: str) -> list[str]:
    """The exercises of one notebook, in order."""
    return [e.name for e in EXERCISES.values() if e.notebook == notebook]


def task(name: str) -> str:
    """What to write for exercise `name`."""
    return _exercise(name).task


def solution(name: str) -> Callable:
    """The reference solution of exercise `name` (a function)."""
    return _exercise(name).solution


def show_solution(name: str) -> str:
    """The source of the reference solution, printed and returned."""
    source = inspect.getsource(_exercise(name).solution)
    print(source)
    return source


def check(name: str, fn: Callable) -> int:
    """Test `fn` against the reference of exercise `name`; raises `ExerciseFailed` with a hint, or prints a tick
    and returns the number of cases checked."""
    exercise = _exercise(name)
    if not callable(fn):
        raise ExerciseFailed(f"{name}: pass your function itself, not {type(fn).__name__}")
    try:
        n = exercise.checker(fn)
    except NotImplementedError:
        raise ExerciseFailed(f"{name}: not written yet -- {exercise.task}") from None
    print(f"✓ {name}: all {n} cases agree with the reference")
    return n
