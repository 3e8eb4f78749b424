"""Load an LLM and talk to it: the base system every other layer builds on.

system         the `System` protocol every system answers: generate(prompts, *, decoding, ...), describe()
batching       micro-batches by padded tokens: the token budget (one default, one place to change it)
loading        load_llm(): the embedded 4-bit GGUF default, Hugging Face ids or folders, nf4 through bitsandbytes
llm            the `LLM` (model + tokenizer + chat format); batched, left-padded generation after an
               optional prefix of input embeddings (a soft prompt)
decoding       `DecodingConfig`, its named presets (evaluation, teacher, probing), per-row seeded sampling
model_parts    the decoder layers, the backbone and the head of a causal LM
fast_decoding  the decoding loop over a KV cache (greedy and per-row seeded sampling; a bf16 twin)
llamacpp_engine  the `llamacpp` engine: the GGUF's own 4-bit kernels through llama.cpp (the on-device runtime),
               our token ids in, a soft prompt as input embeddings (its KV computed once, copied to each row)
prefix_cache   a prefix's keys and values computed once and read by every request
scoring        log-probabilities of given token ids (whole sequences, per token, next token)
shared_prompt  the fast trainer's scorer: y and y_r continue one pass over prefix + chat prompt
"""

# The layer's face: what notebooks and the layers above use most, importable as dispsafe_nb.core.X
from dispsafe_nb.core.batching import (
    DEFAULT_TOKEN_BUDGET,
    TokenBudgetError,
    current_token_budget,
    token_budget,
)
from dispsafe_nb.core.decoding import (
    DECODING_PRESETS,
    EVALUATION_DECODING,
    PROBING_DECODING,
    TEACHER_DECODING,
    DecodingConfig,
    decoding_preset,
)
from dispsafe_nb.core.llm import LLM, Generation, PromptError
from dispsafe_nb.core.loading import DEFAULT_MODEL, ModelNotAvailableError, load_llm
from dispsafe_nb.core.scoring import sequence_logprobs
from dispsafe_nb.core.system import System

__all__ = [
    "DECODING_PRESETS",
    "DEFAULT_MODEL",
    "DEFAULT_TOKEN_BUDGET",
    "DecodingConfig",
    "EVALUATION_DECODING",
    "Generation",
    "LLM",
    "ModelNotAvailableError",
    "PROBING_DECODING",
    "PromptError",
    "System",
    "TEACHER_DECODING",
    "TokenBudgetError",
    "current_token_budget",
    "decoding_preset",
    "load_llm",
    "sequence_logprobs",
    "token_budget",
]
