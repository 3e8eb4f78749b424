"""The safe LLM system (the teacher) and what it teaches.

dual_system    `SafeSystem`: an LLM whose unsafe answers a guard replaces by the refusal y_r
teacher_cache  teacher samples (responses, their token ids, alpha) computed once, cached on disk by content
"""

# The layer's face: what notebooks and the layers above use most, importable as dispsafe_nb.system.X
from dispsafe_nb.system.dual_system import SafeSystem, SafeSystemOutput
from dispsafe_nb.system.teacher_cache import TeacherSample, teacher_samples

__all__ = ["SafeSystem", "SafeSystemOutput", "TeacherSample", "teacher_samples"]
