"""Theorem 3.1 at the sequence level: distributions over token sequences built from conditional tables,
the TV bound and the KL chain rule on whole sequences, checked on random tables.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from dispsafe_nb.theory.divergences import DTYPE, kl_divergence, tv_distance

# ----------------------------------------------------------------------------------------------------------
# sequence level
# ----------------------------------------------------------------------------------------------------------

CondTables = dict[tuple[int, ...], np.ndarray]


def random_conditional_tables(V: int, T: int, seed: int = 0, concentration: float = 1.0) -> CondTables:
    """A random autoregressive model: ``{prefix: p(. | prefix)}`` for every prefix of length 0 .. T-1.

    Conditionals are Dirichlet(concentration) draws, independent across prefixes.
    """
    rng = np.random.default_rng(seed)
    tables: CondTables = {}
    for t in range(T):
        for prefix in itertools.product(range(V), repeat=t):
            g = rng.gamma(concentration, size=V) + 1e-300
            tables[prefix] = g / g.sum()
    return tables


def _prefix_probs(tables: CondTables, V: int, t: int) -> dict[tuple[int, ...], float]:
    """P(prefix) for every prefix of length t, by the chain rule."""
    out: dict[tuple[int, ...], float] = {}
    for prefix in itertools.product(range(V), repeat=t):
        prob = 1.0
        for s in range(t):
            prob *= float(tables[prefix[:s]][prefix[s]])
        out[prefix] = prob
    return out


def sequence_distribution(cond_tables: CondTables, V: int, T: int) -> torch.Tensor:
    """Exact joint distribution over all V**T sequences, as a tensor of shape (V,) * T."""
    probs = _prefix_probs(cond_tables, V, T)
    out = torch.zeros((V,) * T, dtype=DTYPE)
    for seq, prob in probs.items():
        out[seq] = prob
    return out


def sequence_tv_bound_check(p_tables: CondTables, q_tables: CondTables, V: int, T: int) -> dict[str, Any]:
    """Exact ``TV(P_seq, Q_seq)`` and the per-token bound ``sum_t E_{prefix ~ P} TV(p(.|prefix), q(.|prefix))``.

    Why it holds: telescoping over hybrids H_t (first t tokens from P, the rest from Q),
    ``TV(P, Q) <= sum_t TV(H_t, H_{t-1})`` and the t-th term equals ``E_{prefix ~ P} TV(p_t, q_t)`` (the
    shared continuation from Q cannot increase TV). Returns ``tv_seq``, ``bound`` and ``per_position``.
    """
    P = sequence_distribution(p_tables, V, T)
    Q = sequence_distribution(q_tables, V, T)
    tv_seq = float(tv_distance(P.reshape(-1), Q.reshape(-1)))
    per_position = []
    for t in range(T):
        w = _prefix_probs(p_tables, V, t)
        per_position.append(
            sum(w[pre] * float(tv_distance(p_tables[pre], q_tables[pre])) for pre in w if w[pre] > 0)
        )
    return {"tv_seq": tv_seq, "bound": float(sum(per_position)), "per_position": per_position}


def sequence_kl_chain_rule(p_tables: CondTables, q_tables: CondTables, V: int, T: int) -> dict[str, Any]:
    """Exact ``KL(P_seq || Q_seq)`` and the chain-rule sum ``sum_t E_{prefix ~ P} KL(p(.|prefix) || q(.|prefix))``.

    The two are equal (an identity, not a bound): log P/Q of a sequence is the sum of per-token log ratios.
    """
    P = sequence_distribution(p_tables, V, T)
    Q = sequence_distribution(q_tables, V, T)
    kl_seq = float(kl_divergence(P.reshape(-1), Q.reshape(-1)))
    per_position = []
    for t in range(T):
        w = _prefix_probs(p_tables, V, t)
        per_position.append(
            sum(w[pre] * float(kl_divergence(p_tables[pre], q_tables[pre])) for pre in w if w[pre] > 0)
        )
    return {"kl_seq": kl_seq, "chain_sum": float(sum(per_position)), "per_position": per_position}


def random_sequence_checks(n_pairs: int = 200, V: int = 3, T: int = 4, seed: int = 0) -> dict[str, Any]:
    """The per-token TV bound and the KL chain rule on `n_pairs` random autoregressive pairs (P, Q).

    P has Dirichlet(0.5) conditionals; Q mixes them with an independent model R, ``q = (1 - e) p + e r`` with
    e ~ U(0, 1) per pair, so pairs range from identical to far apart. Returns the per-pair arrays ``tv_seq``,
    ``tv_bound``, ``kl_seq``, ``kl_sum`` and the maxima ``max_sequence_bound_violation`` (max TV_seq − bound,
    mathematically <= 0) and ``kl_chain_rule_error`` (max |KL_seq − chain-rule sum|, mathematically 0).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_pairs):
        p_tab = random_conditional_tables(V, T, seed=seed + i, concentration=0.5)
        r_tab = random_conditional_tables(V, T, seed=seed + 100_000 + i, concentration=0.5)
        eps = rng.uniform()
        q_tab = {prefix: (1 - eps) * p_tab[prefix] + eps * r_tab[prefix] for prefix in p_tab}
        tv_res = sequence_tv_bound_check(p_tab, q_tab, V, T)
        kl_res = sequence_kl_chain_rule(p_tab, q_tab, V, T)
        rows.append((tv_res["tv_seq"], tv_res["bound"], kl_res["kl_seq"], kl_res["chain_sum"]))
    tv_seq, tv_bound, kl_seq, kl_sum = np.array(rows).T
    return {
        "tv_seq": tv_seq,
        "tv_bound": tv_bound,
        "kl_seq": kl_seq,
        "kl_sum": kl_sum,
        "max_sequence_bound_violation": float((tv_seq - tv_bound).max()),
        "kl_chain_rule_error": float(np.abs(kl_seq - kl_sum).max()),
    }
