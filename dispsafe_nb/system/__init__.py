"""The safe LLM system (the teacher) and what it teaches.

dual_system    `SafeSystem`: an LLM whose unsafe answers a guard replaces by the refusal y_r
teacher_cache  teacher samples (responses, their token ids, alpha) computed once, cached on disk by content
"""
