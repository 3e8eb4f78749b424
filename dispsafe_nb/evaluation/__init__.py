"""Evaluate any system on named sets, and look inside what it learnt.

benchmarks               the named evaluation sets
harness                  evaluate(): any system on named sets, greedy or sampled; both dual-system forms; SGS,
                         over-refusal, compliance, instruction accuracy
benchmark_metrics        judged answers -> an EvalRecord with the set's metric (one answer or k samples per prompt)
records                  `EvalRecord`s as JSON lines and tables, metrics per system, judge agreement
judges                   each set's refusal rule, the guard judge, the bundled judge check set
verifiable_instructions  programmatic checks of the bundled verifiable instructions (IFEval-style)
record_cache             evaluation records cached under a key naming all they depend on
engine_agreement         two engines' evaluations compared: verdicts, kappa, paired rate difference, where answers part
generalisation           a student against the dual system off-distribution: paired ratios, intervals, targets
linear_harm_probe        does the frozen model separate what the teacher refuses? per-layer linear probes
tv_bound_estimate        Theorem 3.1 on the real model: Monte-Carlo TV against the safety and refusal gaps
student_diagnostics      did training work? each student against its initial soft prompt
"""

# The layer's face: what notebooks and the layers above use most, importable as dispsafe_nb.evaluation.X
from dispsafe_nb.evaluation.benchmarks import BENCHMARKS, benchmark, benchmark_records
from dispsafe_nb.evaluation.harness import (
    evaluate,
    evaluate_base_and_dual,
    evaluate_students,
    fidelity_record,
)
from dispsafe_nb.evaluation.judges import GuardJudge, RefusalJudge, judge_for_kind
from dispsafe_nb.evaluation.records import (
    EvalRecord,
    agreement_table,
    judge_agreement,
    metrics_by_system,
    read_records,
    records_table,
    side_by_side,
    write_records,
)

__all__ = [
    "BENCHMARKS",
    "EvalRecord",
    "GuardJudge",
    "RefusalJudge",
    "agreement_table",
    "benchmark",
    "benchmark_records",
    "evaluate",
    "evaluate_base_and_dual",
    "evaluate_students",
    "fidelity_record",
    "judge_agreement",
    "judge_for_kind",
    "metrics_by_system",
    "read_records",
    "records_table",
    "side_by_side",
    "write_records",
]
