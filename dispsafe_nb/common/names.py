"""Messages for unknown names: say what was asked for, the closest known name, and every known one."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def unknown_name_message(kind: str, name: str, known: Iterable[str], cutoff: float = 0.5) -> str:
    """``Unknown method 'lroa'. Did you mean 'lora'? Known: lora, soft_prompt, ...``"""
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=cutoff)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"Unknown {kind} {name!r}.{hint} Known: {', '.join(known)}."
