"""dispsafe_nb: helpers behind the dispsafe notebooks.

Distilling a safe LLM system (LLM + guard) into soft prompts, after
Alfarra et al., *Distilling Safe LLM Systems via Soft Prompts for On Device Settings* (UAI 2026).
"""

__version__ = "0.1.0"
