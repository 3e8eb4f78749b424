"""Guards: alpha(x, y) = p(safe | x, y) for a prompt and a response (the teacher's second model, and judges).

protocol         the `Guard` protocol (`prob_safe(prompts, responses)`) and the refusal y_r
embedding_guard  the factorised embedding guard: 1 - p(harmful | x) * p(complies | y)
llama_guard      the Llama-Guard(-3) adapter
encoders         MiniLM and all-mpnet-base-v2 sentence encoders from offline packages
guard_training   train, evaluate and cache (by content) the teacher guard and the judge guard on disjoint data
"""
