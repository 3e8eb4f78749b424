"""What an app needs to run a distilled safe system on a device with llama.cpp, in one folder.

`export_for_device(student, llm, folder)` writes
* `device.json`: the GGUF file the student was trained for (name, sha256, where it came from), the soft prompt's
  file, shape, dtype and byte order, the chat format (template, system prompt, end-of-turn token), the refusal
  text, the decoding the project evaluates with, and the sha256 of every file written;
* `soft_prompt.f32`: the N x d vectors as little-endian float32, row after row (no header: any language reads it);
* `run_on_device.py`: a short program that runs the system with nothing but llama-cpp-python (the vectors fed as
  input embeddings before the chat-formatted prompt), for a developer to copy into an app.
`load_device_export(folder, llm)` reads it back as a `SoftPrompt`, checking every checksum, the shape and the
model; the test runs the export through the llamacpp engine against the in-memory student.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dispsafe_nb.common.content_hash import file_sha256
from dispsafe_nb.core.decoding import EVALUATION_DECODING
from dispsafe_nb.core.llamacpp_engine import gguf_sha256
from dispsafe_nb.core.llm import LLM
from dispsafe_nb.guards.protocol import DEFAULT_REFUSAL
from dispsafe_nb.methods.soft_prompt import SoftPrompt

EXPORT_FORMAT = "dispsafe-device-export/1"
MANIFEST = "device.json"
VECTORS = "soft_prompt.f32"
EXAMPLE = "run_on_device.py"


class DeviceExportError(ValueError):
    """A device export folder is incomplete, altered or for another model; says which file and what to do."""


def export_for_device(
    student: SoftPrompt, llm: LLM, folder: str | Path, *, refusal: str = DEFAULT_REFUSAL
) -> Path:
    """Write the device export of `student` (a soft prompt trained for `llm`) into `folder`; returns it."""
    if not isinstance(student, SoftPrompt):
        raise DeviceExportError(
            f"a device export carries a soft prompt (input embeddings llama.cpp takes as they are), not a "
            f"{getattr(student, 'kind', type(student).__name__)}"
        )
    student.check_fits(llm)
    if llm.gguf_file is None:
        raise DeviceExportError(
            f"{llm.name} has no GGUF file for llama.cpp to run: export a student of load_llm()"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vectors = student.prefix().detach().to(torch.float32).cpu().numpy()
    (folder / VECTORS).write_bytes(vectors.astype("<f4").tobytes(order="C"))
    (folder / EXAMPLE).write_text(_EXAMPLE, encoding="utf-8")
    tok = llm.tokenizer
    manifest: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "gguf": {
            "file": llm.gguf_file.name,
            "sha256": gguf_sha256(llm.gguf_file),
            "source": llm.info.get("source"),
            "path_at_export": str(llm.gguf_file),
        },
        "soft_prompt": {
            "file": VECTORS,
            "shape": list(vectors.shape),
            "dtype": "float32",
            "byte_order": "little",
            "layout": "row-major: N vectors of d values, placed before the chat-formatted prompt",
            "method": student.describe(),
        },
        "chat": {
            "template": tok.chat_template,
            "system_prompt": llm.system_prompt,
            "end_of_turn": tok.eos_token,
            "end_of_turn_id": tok.eos_token_id,
        },
        "refusal": refusal,
        "decoding": EVALUATION_DECODING.to_dict(),
        "files": {name: file_sha256(folder / name) for name in (VECTORS, EXAMPLE)},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    return folder


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The export's manifest, after checking that every file it lists is there with its checksum."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise DeviceExportError(f"{folder} holds no {MANIFEST}: is it a folder export_for_device() wrote?")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != EXPORT_FORMAT:
        raise DeviceExportError(f"{path} is format {manifest.get('format')!r}, not {EXPORT_FORMAT!r}")
    for name, digest in manifest["files"].items():
        if not (folder / name).is_file():
            raise DeviceExportError(f"{folder} lacks {name}: export the student again")
        if file_sha256(folder / name) != digest:
            raise DeviceExportError(
                f"{folder / name} does not match its checksum in {MANIFEST}: it was altered"
            )
    return manifest


def load_device_export(folder: str | Path, llm: LLM) -> SoftPrompt:
    """The soft prompt of a device export, for `llm` (whose GGUF file must be the one the export names)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if llm.gguf_file is None or gguf_sha256(llm.gguf_file) != manifest["gguf"]["sha256"]:
        raise DeviceExportError(
            f"the export was made for {manifest['gguf']['file']} (sha256 {manifest['gguf']['sha256'][:12]}...), "
            f"not for {llm.name}'s model file: load the model it names"
        )
    shape = tuple(manifest["soft_prompt"]["shape"])
    raw = (folder / manifest["soft_prompt"]["file"]).read_bytes()
    if len(raw) != 4 * int(np.prod(shape)):
        raise DeviceExportError(
            f"{manifest['soft_prompt']['file']} holds {len(raw)} bytes, not {shape} float32"
        )
    vectors = torch.from_numpy(np.frombuffer(raw, dtype="<f4").reshape(shape).copy())
    info = manifest["soft_prompt"]["method"]
    return SoftPrompt(vectors, model_name=info.get("model_name"), init=info.get("init", "custom"))


# The example an app developer starts from: llama-cpp-python only (no dispsafe, no torch). It formats the chat
# with the export's template (jinja2, which llama-cpp-python installs), tokenizes with llama.cpp, feeds the soft
# prompt as input embeddings, then the prompt's tokens, and decodes greedily.
_EXAMPLE = '''"""Run a distilled safe system with llama.cpp: python run_on_device.py MODEL.gguf "your prompt"."""

import ctypes
import json
import sys
from pathlib import Path

import jinja2
import llama_cpp
import numpy as np

here = Path(__file__).parent
manifest = json.loads((here / "device.json").read_text(encoding="utf-8"))
gguf, prompt = sys.argv[1], sys.argv[2]
shape = manifest["soft_prompt"]["shape"]
vectors = np.fromfile(here / manifest["soft_prompt"]["file"], dtype="<f4").reshape(shape)
chat = manifest["chat"]
messages = ([{"role": "system", "content": chat["system_prompt"]}] if chat["system_prompt"] else []) + [
    {"role": "user", "content": prompt}
]
env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders chat templates
text = env.from_string(chat["template"]).render(messages=messages, add_generation_prompt=True)

llama_cpp.llama_backend_init()
model = llama_cpp.llama_model_load_from_file(gguf.encode(), llama_cpp.llama_model_default_params())
vocab = llama_cpp.llama_model_get_vocab(model)
params = llama_cpp.llama_context_default_params()
params.n_ctx, params.flash_attn_type = 2048, llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
ctx = llama_cpp.llama_init_from_model(model, params)
ids = (llama_cpp.llama_token * 4096)()
n = llama_cpp.llama_tokenize(vocab, text.encode(), len(text.encode()), ids, 4096, False, True)
tokens = list(ids[:n])

batch = llama_cpp.llama_batch_init(len(vectors), vectors.shape[1], 1)  # the soft prompt, as embeddings
flat = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1)
ctypes.memmove(batch.embd, flat.ctypes.data, flat.nbytes)
for i in range(len(vectors)):
    batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = i, 1, 0, False
batch.n_tokens = len(vectors)
assert llama_cpp.llama_decode(ctx, batch) == 0
llama_cpp.llama_batch_free(batch)

answer, pos, n_vocab = [], len(vectors), llama_cpp.llama_vocab_n_tokens(vocab)
for _ in range(manifest["decoding"]["max_new_tokens"]):
    batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
    for i, t in enumerate(tokens):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0] = t, pos + i, 1, 0
        batch.logits[i] = i == len(tokens) - 1
    batch.n_tokens = len(tokens)
    assert llama_cpp.llama_decode(ctx, batch) == 0
    llama_cpp.llama_batch_free(batch)
    pos += len(tokens)
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, len(tokens) - 1), shape=(n_vocab,))
    token = int(logits.argmax())
    if token == chat["end_of_turn_id"]:
        break
    answer.append(token)
    tokens = [token]
piece, out = ctypes.create_string_buffer(256), b""
for t in answer:
    n = llama_cpp.llama_token_to_piece(vocab, t, piece, 256, 0, False)
    out += piece.raw[:n]
print(out.decode("utf-8", errors="replace").strip())
'''
