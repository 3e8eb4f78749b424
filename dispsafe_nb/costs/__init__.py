"""On-device costs: what the dual system, the soft prompt and the other methods cost in parameters, memory,
FLOPs per generated token and latency.

* `memory` — parameters and bytes of the models we load (each at its real precision), the dual system's summary;
* `flops` — analytic FLOPs and bytes from an architecture's configuration (ours and the paper's models), and the
  same counted by `torch.utils.flop_counter` on a real model;
* `phone` — what a phone's memory budget allows for the dual system versus the soft prompt;
* `speed` — measured peaks, the trainer's step, decoding and latency (benchmarks/costs.py runs it).
"""

from dispsafe_nb.costs.flops import (
    PAPER_ARCHITECTURES,
    Architecture,
    decode_flops,
    kv_cache_bytes,
    measured_decode_flops,
    method_decode_flops,
    prefill_flops,
    request_flops,
    weight_bytes,
)
from dispsafe_nb.costs.memory import (
    count_parameters,
    dual_system_costs,
    guard_modules,
    llm_weight_bytes,
    method_memory_rows,
    module_bytes,
)
from dispsafe_nb.costs.phone import memory_options, paper_pairs_budget, phone_budget

__all__ = [
    "PAPER_ARCHITECTURES",
    "Architecture",
    "count_parameters",
    "decode_flops",
    "dual_system_costs",
    "guard_modules",
    "kv_cache_bytes",
    "llm_weight_bytes",
    "measured_decode_flops",
    "method_memory_rows",
    "method_decode_flops",
    "module_bytes",
    "paper_pairs_budget",
    "memory_options",
    "phone_budget",
    "prefill_flops",
    "request_flops",
    "weight_bytes",
]
