"""Guards: alpha(x, y) = p(safe | x, y) for a prompt and a response (the teacher's second model, and judges).

protocol         the `Guard` protocol (`prob_safe(prompts, responses)`) and the refusal y_r
embedding_guard  the factorised embedding guard: 1 - p(harmful | x) * p(complies | y)
llama_guard      the Llama-Guard(-3) adapter
encoders         MiniLM and all-mpnet-base-v2 sentence encoders from offline packages
guard_training   train, evaluate and cache (by content) the teacher guard and the judge guard on disjoint data
"""

# The layer's face: what notebooks and the layers above use most, importable as dispsafe_nb.guards.X
from dispsafe_nb.guards.embedding_guard import EmbeddingGuard
from dispsafe_nb.guards.guard_training import GuardTrainingConfig, load_embedding_guard, load_judge_guard
from dispsafe_nb.guards.llama_guard import LlamaGuard, load_llama_guard
from dispsafe_nb.guards.protocol import DEFAULT_REFUSAL, SAFE_THRESHOLD, Guard

__all__ = [
    "DEFAULT_REFUSAL",
    "EmbeddingGuard",
    "Guard",
    "GuardTrainingConfig",
    "LlamaGuard",
    "SAFE_THRESHOLD",
    "load_embedding_guard",
    "load_judge_guard",
    "load_llama_guard",
]
