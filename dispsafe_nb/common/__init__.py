"""The bottom layer: what every other layer may use and that knows nothing of models or data.

paths          where things live on disk (repository, results, figures, the cache)
names          "unknown name" messages that suggest the close match
artifacts      .safetensors + JSON artifacts (never pickle)
content_hash   stable hashes of data; `code_digest`, the digest of code by content that keys every cache
classifier_stats  AUROC, binary reports (TPR/FPR), Cohen's kappa and agreement of two binary judges
validation     field checks for configs: the error names the config, the field, the value and the range
provenance     the commit and the processor a result was made on
journal        a job's finished pieces on disk as it goes (JSON lines), so a rerun resumes
"""

# The layer's face: what notebooks and the layers above use most, importable as dispsafe_nb.common.X
from dispsafe_nb.common.artifacts import ArtifactError
from dispsafe_nb.common.content_hash import code_digest, stable_hash
from dispsafe_nb.common.paths import REPO_ROOT, cache_root, figures_dir, results_dir

__all__ = [
    "ArtifactError",
    "REPO_ROOT",
    "cache_root",
    "code_digest",
    "figures_dir",
    "results_dir",
    "stable_hash",
]
