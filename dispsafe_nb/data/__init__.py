"""Prompt records, deterministic splits, and loaders for the bundled and public prompt sets.

Data flows one way: files -> :class:`PromptRecord` lists -> notebooks, training, evaluation.

* Bundled sets (``data/bundled/*.jsonl``) ship with the repo and need nothing else.
* Public sets are resolved file by file (:func:`resolve_file`): the offline mirror ``$DISPSAFE_DATA``, then the
  cache ``$DISPSAFE_CACHE/datasets``, then a download from a pinned upstream commit, always checked by sha256.
* Splits come from a hash of the normalised text (:func:`assign_split`), so one prompt lands in one split in
  every dataset that contains it, whatever seed a caller samples with (seeds only choose subsets). Evaluation-only
  sets are always ``"test"`` and can never feed training (:func:`training_prompts`, :func:`assert_trainable`);
  training texts that (nearly) contain an evaluated prompt are dropped (:func:`decontaminate`).

One module per concept: `records` (records, normalisation, splits), `remote` (pinned public files), `files`
(reading them), `public` (parsers of the public sets), `bundled` (the project's own sets), `registry` (named
datasets, `load_dataset`), `decontamination` with `near_duplicates` (its containment index) and `training` (what
may be trained on), `mixes` (training mixes at the paper's scale), `errors` (the layer's errors and warnings).
Everything public but `mixes` is importable from here, as ``data.load_dataset`` etc.
"""

from __future__ import annotations

from dispsafe_nb.data.bundled import (
    BUNDLED_KINDS,
    DEFAULT_BUNDLED_DIR,
    FORMS,
    RESPONSE_FILES,
    bundled_dir,
    load_compliant_texts,
    load_jailbreak_wrappers,
    load_refusal_texts,
    load_response_texts,
)
from dispsafe_nb.data.decontamination import (
    Decontaminator,
    cached_decontaminator,
    decontaminate,
    decontaminate_texts,
    decontamination_report,
    default_decontaminator,
    eval_only_texts,
    evaluated_texts,
)
from dispsafe_nb.data.errors import (
    ChecksumError,
    DataFormatError,
    DatasetNotAvailableError,
    DataWarning,
    EvalOnlyError,
)
from dispsafe_nb.data.files import parse_file_cached
from dispsafe_nb.data.public import MIN_STATEMENT_CHARS, apply_jailbreak, split_toxigen_line
from dispsafe_nb.data.records import (
    DEFAULT_FRACTIONS,
    RECORD_COLUMNS,
    SPLIT_VERSION,
    SPLITS,
    PromptRecord,
    assign_split,
    check_seed,
    normalize_text,
    records_to_frame,
)
from dispsafe_nb.data.registry import (
    DATASETS,
    EVAL_ONLY,
    TOXIGEN_REQUEST_TEMPLATES,
    TOXIGEN_REQUEST_WORDS,
    TRAINABLE,
    DatasetSpec,
    dataset_spec,
    load_dataset,
    toxigen_request,
)
from dispsafe_nb.data.remote import (
    DOWNLOAD_TIMEOUT_S,
    REMOTE_FILES,
    TOXIGEN_SHA256,
    RemoteFile,
    cache_dir,
    mirror_dir,
    remote_file,
    resolve_file,
)
from dispsafe_nb.data.training import assert_trainable, check_training_texts, training_prompts


def clear_caches() -> None:
    """Forget parsed files and decontamination indexes (the next load re-reads them)."""
    parse_file_cached.cache_clear()
    cached_decontaminator.cache_clear()


__all__ = [
    "BUNDLED_KINDS",
    "ChecksumError",
    "DATASETS",
    "DEFAULT_BUNDLED_DIR",
    "DEFAULT_FRACTIONS",
    "DOWNLOAD_TIMEOUT_S",
    "DataFormatError",
    "DataWarning",
    "DatasetNotAvailableError",
    "DatasetSpec",
    "Decontaminator",
    "EVAL_ONLY",
    "EvalOnlyError",
    "FORMS",
    "MIN_STATEMENT_CHARS",
    "PromptRecord",
    "RECORD_COLUMNS",
    "REMOTE_FILES",
    "RESPONSE_FILES",
    "RemoteFile",
    "SPLITS",
    "SPLIT_VERSION",
    "TOXIGEN_REQUEST_TEMPLATES",
    "TOXIGEN_REQUEST_WORDS",
    "TOXIGEN_SHA256",
    "TRAINABLE",
    "apply_jailbreak",
    "assert_trainable",
    "assign_split",
    "bundled_dir",
    "cache_dir",
    "check_seed",
    "check_training_texts",
    "clear_caches",
    "dataset_spec",
    "decontaminate",
    "decontaminate_texts",
    "decontamination_report",
    "default_decontaminator",
    "eval_only_texts",
    "evaluated_texts",
    "load_compliant_texts",
    "load_dataset",
    "load_jailbreak_wrappers",
    "load_refusal_texts",
    "load_response_texts",
    "mirror_dir",
    "normalize_text",
    "records_to_frame",
    "remote_file",
    "resolve_file",
    "split_toxigen_line",
    "toxigen_request",
    "training_prompts",
]
