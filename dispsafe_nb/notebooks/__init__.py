"""What the notebooks need from the package to run and to be tested.

outputs    metrics and figures a notebook emits (tests assert on them)
reproduce  `make reproduce`: every notebook headless through papermill, with progress
"""

# The layer's face: what notebooks and the layers above use most, importable as dispsafe_nb.notebooks.X
from dispsafe_nb.notebooks.outputs import (
    config_of,
    emit_and_check,
    emit_metrics,
    is_interactive,
    load_metrics,
    save_figure,
)

__all__ = ["config_of", "emit_and_check", "emit_metrics", "is_interactive", "load_metrics", "save_figure"]
