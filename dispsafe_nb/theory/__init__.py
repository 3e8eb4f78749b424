"""The exact maths behind the study: small, exact, tested (notebook 01), importable as one namespace (`th.X`).

divergences     TV, KL, the expectation gap, the variational form, Pinsker and Bretagnolle-Huber (Theorem 3.1)
surrogates      the dual system's distribution and the DiSP surrogates on exact tables: Eq. 4's clipped NLL,
                KL-DiSP's weighted NLL, their gradients, expected losses and minimisers
sequences       the bound and the KL chain rule on whole token sequences
toy_experiment  TV-DiSP against KL-DiSP on a tabular student: KL's over-refusal in miniature
"""

from dispsafe_nb.theory.divergences import (
    DTYPE,
    SUM_TOL,
    ArrayLike,
    bretagnolle_huber_bound,
    expectation_gap,
    kl_divergence,
    pinsker_bound,
    random_bound_checks,
    tv_distance,
    tv_upper_bound_from_kl,
    variational_tv,
)
from dispsafe_nb.theory.sequences import (
    CondTables,
    random_conditional_tables,
    random_sequence_checks,
    sequence_distribution,
    sequence_kl_chain_rule,
    sequence_tv_bound_check,
)
from dispsafe_nb.theory.surrogates import (
    expected_disp_loss,
    kl_disp_loss,
    minimise_expected_loss,
    refusal_logit_grad,
    safe_system_distribution,
    safety_rate,
    surrogate_grads,
    tv_disp_loss,
    weighted_clipped_nll,
    weighted_nll,
)
from dispsafe_nb.theory.toy_experiment import toy_overrefusal_experiment

__all__ = [
    "DTYPE",
    "SUM_TOL",
    "ArrayLike",
    "CondTables",
    "bretagnolle_huber_bound",
    "expectation_gap",
    "expected_disp_loss",
    "kl_disp_loss",
    "kl_divergence",
    "minimise_expected_loss",
    "pinsker_bound",
    "random_bound_checks",
    "random_conditional_tables",
    "random_sequence_checks",
    "refusal_logit_grad",
    "safe_system_distribution",
    "safety_rate",
    "sequence_distribution",
    "sequence_kl_chain_rule",
    "sequence_tv_bound_check",
    "surrogate_grads",
    "toy_overrefusal_experiment",
    "tv_disp_loss",
    "tv_distance",
    "tv_upper_bound_from_kl",
    "variational_tv",
    "weighted_clipped_nll",
    "weighted_nll",
]
