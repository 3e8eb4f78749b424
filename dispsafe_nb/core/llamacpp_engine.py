"""The `llamacpp` generation engine: the GGUF file's own 4-bit kernels through llama.cpp, the runtime apps use on
phones and laptops, fed the project's token ids and a soft prompt's vectors as input embeddings.

PyTorch (the other engines) runs the GGUF dequantised to float32; llama.cpp reads the Q4_1 weights as stored and
multiplies them by 8-bit-quantised activations, so its answers are the deployed system's and may differ from the
PyTorch engines' where two tokens are nearly tied (measured, not assumed: `benchmarks/device.py`).

How a micro-batch runs (`LlamaCppRuntime.generate`):
- the soft prompt, if any, is decoded once into sequence 0 of the KV cache (positions 0..P-1) and kept there for
  as long as the same prompt is asked for; every row copies those cells (`llama_memory_seq_cp`) instead of
  recomputing them;
- each row is its own sequence 1..R with a KV buffer of its own; each row's chat tokens go through llama.cpp in a
  call of their own (in one call, llama.cpp splits rows of different lengths into sub-batches that depend on the
  other rows, and a row's answer then changed with its batch mates: measured, with 9 of 12 random soft prompts,
  on one or two of 5 prompts within 24 tokens), then one token per unfinished row per step, all rows together;
- the next token is chosen in Python from the row's logits by the caller (`choose`): argmax, or the row's own
  seeded sampler, exactly as the PyTorch engines choose, so `DecodingConfig` means the same on both.
The tokenizer and chat format stay the project's: llama.cpp receives token ids, never text.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dispsafe_nb.common.content_hash import file_sha256

# The pinned binding (built from source: `make install` builds the library only, no examples, server or tests).
LLAMA_CPP_PIN = "llama-cpp-python==0.3.36"
# llama.cpp's own limit on distinct sequences in one context (LLAMA_MAX_SEQ); one of them holds the soft prompt.
MAX_SEQUENCES = 256
PREFIX_SEQ = 0


class LlamaCppError(RuntimeError):
    """llama.cpp cannot run what was asked (not installed, wrong sizes, a context too small); says what to change."""


def llama_cpp_module() -> Any:
    """The `llama_cpp` binding, imported on first use, its logging quiet but for errors."""
    try:
        import llama_cpp  # noqa: PLC0415 (deferred: the binding loads a native library; only this engine needs it)
    except ImportError as err:
        raise LlamaCppError(
            f"engine='llamacpp' needs the llama.cpp binding ({err}): `make install` builds it, or pip install "
            f'"{LLAMA_CPP_PIN}" (a source build of a few minutes; set CMAKE_ARGS="-DLLAVA_BUILD=OFF" to skip '
            f"the multimodal library). Or choose another engine: 'fast', 'fast_bf16' or 'hf'."
        ) from err
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    return llama_cpp


_SHA256: dict[tuple[str, int, int], str] = {}


def gguf_sha256(path: Path) -> str:
    """`file_sha256` of a GGUF file, computed once per process for a given size and modification time."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        _SHA256[key] = file_sha256(path)
    return _SHA256[key]


Chooser = Callable[[torch.Tensor, Sequence[int]], list[int]]


class LlamaCppRuntime:
    """One GGUF model and one llama.cpp context (`n_seq` sequences of `n_ctx_seq` KV cells each). Grows its
    context when a batch needs more cells or sequences. Not thread-safe."""

    def __init__(self, gguf: Path, *, n_threads: int) -> None:
        self.lib = llama_cpp_module()
        self.path = Path(gguf)
        if not self.path.is_file():
            raise LlamaCppError(f"no GGUF file at {self.path}")
        self.n_threads = n_threads
        self.lib.llama_backend_init()
        params = self.lib.llama_model_default_params()
        params.n_gpu_layers = 0 if not torch.cuda.is_available() else params.n_gpu_layers
        self.model = self.lib.llama_model_load_from_file(str(self.path).encode(), params)
        if not self.model:
            raise LlamaCppError(f"llama.cpp could not load {self.path} (not a GGUF file, or a newer format)")
        self.vocab = self.lib.llama_model_get_vocab(self.model)
        self.n_vocab = int(self.lib.llama_vocab_n_tokens(self.vocab))
        self.n_embd = int(self.lib.llama_model_n_embd(self.model))
        self.n_layer = int(self.lib.llama_model_n_layer(self.model))
        self._steering_key: str | None = None
        self.ctx: Any = None
        self.n_ctx_seq = 0  # KV cells of each sequence
        self.n_seq = 0
        self._prefix_key: str | None = None
        self._prefix_len = 0

    # ---- the context -----------------------------------------------------------------------------------
    def _ensure_context(self, cells: int, sequences: int) -> None:
        """A context whose `sequences` sequences hold at least `cells` KV cells each (rebuilt, larger, when needed).

        Every sequence has a KV buffer of its own (`kv_unified=False`): a row's cells then sit at the same places
        whatever else is in the batch, so its attention sums run in the same order. In one shared buffer they do
        not, and with 8-bit activations the rounding differences grow into different logits (measured here: up to
        0.6 in a logit between a row alone and in a batch; tests/test_llamacpp_engine.py keeps them equal)."""
        if self.ctx is not None and cells <= self.n_ctx_seq and sequences <= self.n_seq:
            return
        if sequences > MAX_SEQUENCES:
            raise LlamaCppError(
                f"{sequences - 1} rows in one batch; llama.cpp holds at most {MAX_SEQUENCES - 1} beside the "
                "soft prompt: lower batch_size or num_samples"
            )
        self.close_context()
        n_seq = max(sequences, self.n_seq)
        per_seq = max(256, -(-max(cells, self.n_ctx_seq) // 256) * 256)
        params = self.lib.llama_context_default_params()
        params.n_ctx = per_seq * n_seq
        params.n_batch = params.n_ctx  # a whole prompt batch in one llama_decode call
        params.n_ubatch = min(512, params.n_ctx)
        params.n_seq_max = n_seq
        params.kv_unified = False
        # Flash attention (llama.cpp's CPU default) also makes a row's logits depend on the other rows of its
        # batch (measured here: up to 1.1 in a logit, enough to change a sampled answer).
        params.flash_attn_type = self.lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.n_threads = params.n_threads_batch = self.n_threads
        params.no_perf = True
        self.ctx = self.lib.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise LlamaCppError(f"llama.cpp could not make a context of {params.n_ctx} cells")
        self.n_ctx_seq, self.n_seq = per_seq, n_seq
        self._prefix_key, self._prefix_len = None, 0
        self._steering_key = None

    def close_context(self) -> None:
        if self.ctx is not None:
            self.lib.llama_free(self.ctx)
            self.ctx = None

    def __del__(self) -> None:  # the native memory goes with the object
        try:
            self.close_context()
            if getattr(self, "model", None):
                self.lib.llama_model_free(self.model)
                self.model = None
        except Exception:  # noqa: BLE001 (interpreter shutdown: the library may already be gone)
            pass

    @property
    def _memory(self) -> Any:
        return self.lib.llama_get_memory(self.ctx)

    # ---- batches ---------------------------------------------------------------------------------------
    def _decode(self, tokens: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode call over (token, position, sequence, wants logits) entries."""
        batch = self.lib.llama_batch_init(len(tokens), 0, 1)
        try:
            for i, (token, pos, seq, logits) in enumerate(tokens):
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = logits
            batch.n_tokens = len(tokens)
            self._check(self.lib.llama_decode(self.ctx, batch), len(tokens))
        finally:
            self.lib.llama_batch_free(batch)

    def _decode_embeddings(self, vectors: np.ndarray, seq: int) -> None:
        """Input embeddings (a soft prompt) at positions 0..n-1 of sequence `seq`, no logits."""
        n = int(vectors.shape[0])
        batch = self.lib.llama_batch_init(n, self.n_embd, 1)
        try:
            flat = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1)
            ctypes.memmove(batch.embd, flat.ctypes.data, flat.nbytes)
            for i in range(n):
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = False
            batch.n_tokens = n
            self._check(self.lib.llama_decode(self.ctx, batch), n)
        finally:
            self.lib.llama_batch_free(batch)

    def _check(self, status: int, n_tokens: int) -> None:
        if status == 1:
            raise LlamaCppError(
                f"no room in llama.cpp's KV cache ({self.n_ctx_seq} cells a sequence) for a batch of {n_tokens} "
                "tokens: lower batch_size or the token budget"
            )
        if status != 0:
            raise LlamaCppError(f"llama_decode failed with status {status} on a batch of {n_tokens} tokens")

    def _logits(self, index: int) -> np.ndarray:
        """The logits of the batch's `index`-th token (one that asked for logits), copied out of llama.cpp."""
        pointer = self.lib.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def _load_prefix(self, prefix: np.ndarray | None) -> int:
        """Sequence 0 holds `prefix`'s KV (decoded once while the same prefix is asked for); returns its length."""
        if prefix is None:
            if self._prefix_key is not None:
                self.lib.llama_memory_seq_rm(self._memory, PREFIX_SEQ, -1, -1)
            self._prefix_key, self._prefix_len = None, 0
            return 0
        if prefix.ndim != 2 or prefix.shape[1] != self.n_embd:
            raise LlamaCppError(
                f"the soft prompt has shape {tuple(prefix.shape)} but {self.path.name} takes vectors of size "
                f"{self.n_embd}: it was trained for another model"
            )
        key = hashlib.sha256(np.ascontiguousarray(prefix, dtype=np.float32).tobytes()).hexdigest()
        if key != self._prefix_key:
            self.lib.llama_memory_seq_rm(self._memory, PREFIX_SEQ, -1, -1)
            self._decode_embeddings(prefix, PREFIX_SEQ)
            self._prefix_key, self._prefix_len = key, int(prefix.shape[0])
        return self._prefix_len

    def _set_steering(self, steering: tuple[int, np.ndarray] | None) -> None:
        """A steering vector as llama.cpp's control vector: (layer, d-vector) added to that layer's output for every
        token, like the PyTorch hook (`methods.steering`); None removes it. A change drops the cached prefix KV,
        which was computed under the old one."""
        key = None
        if steering is not None:
            layer, vector = steering
            if vector.shape != (self.n_embd,):
                raise LlamaCppError(
                    f"the steering vector has shape {tuple(vector.shape)} but {self.path.name} takes vectors of "
                    f"size {self.n_embd}: it was trained for another model"
                )
            if not 1 <= layer < self.n_layer:
                raise LlamaCppError(
                    f"llama.cpp's control vectors act after layers 1..{self.n_layer - 1}, not layer {layer}: "
                    "steer another layer or generate with a PyTorch engine"
                )
            key = (
                f"{layer}:"
                + hashlib.sha256(np.ascontiguousarray(vector, dtype=np.float32).tobytes()).hexdigest()
            )
        if key == self._steering_key:
            return
        if steering is None:
            status = self.lib.llama_set_adapter_cvec(self.ctx, None, 0, self.n_embd, -1, -1)
        else:
            layer, vector = steering
            data = np.zeros((self.n_layer - 1, self.n_embd), dtype=np.float32)  # layers 1..n_layer-1
            data[layer - 1] = vector
            flat = data.reshape(-1)
            pointer = flat.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            status = self.lib.llama_set_adapter_cvec(self.ctx, pointer, flat.size, self.n_embd, layer, layer)
        if status != 0:
            raise LlamaCppError(f"llama.cpp refused the control vector (status {status})")
        self._steering_key = key
        if self._prefix_key is not None:
            self.lib.llama_memory_seq_rm(self._memory, PREFIX_SEQ, -1, -1)
            self._prefix_key, self._prefix_len = None, 0

    def _start_rows(self, n_rows: int, n_prefix: int) -> None:
        for seq in range(1, n_rows + 1):
            self.lib.llama_memory_seq_rm(self._memory, seq, -1, -1)
            if n_prefix:  # a copy of the soft prompt's whole buffer (made before the next decode)
                self.lib.llama_memory_seq_cp(self._memory, PREFIX_SEQ, seq, -1, -1)

    def _end_rows(self, n_rows: int) -> None:
        for seq in range(1, n_rows + 1):
            self.lib.llama_memory_seq_rm(self._memory, seq, -1, -1)

    # ---- what the engine offers ------------------------------------------------------------------------
    def generate(
        self,
        rows: Sequence[Sequence[int]],
        *,
        prefix: np.ndarray | None,
        max_new_tokens: int,
        eos_id: int,
        choose: Chooser,
        steering: tuple[int, np.ndarray] | None = None,
    ) -> list[list[int]]:
        """New token ids for each row of prompt token ids (an answer stops after `eos_id`, which it keeps, or at
        `max_new_tokens`). `choose(logits, rows)` picks the next token of each listed row from its logits
        (rows x vocab, float32). `steering`: (layer, vector) added after that layer (`_set_steering`)."""
        if not rows:
            return []
        n_prefix = 0 if prefix is None else int(prefix.shape[0])
        self._ensure_context(n_prefix + max(len(r) for r in rows) + max_new_tokens, len(rows) + 1)
        self._set_steering(steering)
        n_prefix = self._load_prefix(prefix)
        self._start_rows(len(rows), n_prefix)
        try:
            last = []
            for i, row in enumerate(rows):  # one call a row (the module docstring says why)
                self._decode([(int(t), n_prefix + j, i + 1, j == len(row) - 1) for j, t in enumerate(row)])
                last.append(self._logits(len(row) - 1))
            logits = torch.from_numpy(np.stack(last))
            active = list(range(len(rows)))
            out: list[list[int]] = [[] for _ in rows]
            for step in range(max_new_tokens):
                chosen = choose(logits, active)
                for row, token in zip(active, chosen, strict=True):
                    out[row].append(int(token))
                active_next = [r for r, t in zip(active, chosen, strict=True) if int(t) != eos_id]
                if not active_next or step == max_new_tokens - 1:
                    break
                self._decode([(out[r][-1], n_prefix + len(rows[r]) + step, r + 1, True) for r in active_next])
                logits = torch.from_numpy(np.stack([self._logits(k) for k in range(len(active_next))]))
                active = active_next
            return out
        finally:
            self._end_rows(len(rows))

    def continuation_logprobs(
        self,
        rows: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[int]],
        *,
        prefix: np.ndarray | None,
        steering: tuple[int, np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """log q(c_t | prefix, row, c_<t) for every token of each row's continuation (float64, one array a row)."""
        if len(rows) != len(continuations):
            raise ValueError(f"{len(rows)} prompts but {len(continuations)} continuations")
        if not rows:
            return []
        n_prefix = 0 if prefix is None else int(prefix.shape[0])
        longest = max(len(r) + len(c) for r, c in zip(rows, continuations, strict=True))
        self._ensure_context(n_prefix + longest, len(rows) + 1)
        self._set_steering(steering)
        n_prefix = self._load_prefix(prefix)
        self._start_rows(len(rows), n_prefix)
        try:
            out = []
            for i, (row, cont) in enumerate(zip(rows, continuations, strict=True)):  # one call a row
                if not cont:
                    out.append(np.zeros(0))
                    continue
                tokens = [*row, *cont]
                scored = range(len(row) - 1, len(tokens) - 1)  # the logits that predict c_0..c_{n-1}
                self._decode([(int(t), n_prefix + j, i + 1, j in scored) for j, t in enumerate(tokens)])
                logits = torch.from_numpy(np.stack([self._logits(j) for j in scored])).double()
                logp = torch.log_softmax(logits, dim=-1)
                out.append(logp[torch.arange(len(cont)), torch.tensor(list(cont))].numpy())
            return out
        finally:
            self._end_rows(len(rows))


_RUNTIMES: dict[tuple[str, int], LlamaCppRuntime] = {}


def runtime_for(gguf: Path, *, n_threads: int | None = None) -> LlamaCppRuntime:
    """The process's runtime for `gguf` (loaded once; `n_threads` defaults to torch's thread count)."""
    threads = n_threads or int(os.environ.get("DISPSAFE_LLAMACPP_THREADS", 0)) or torch.get_num_threads()
    key = (str(Path(gguf).resolve()), threads)
    if key not in _RUNTIMES:
        _RUNTIMES[key] = LlamaCppRuntime(Path(gguf), n_threads=threads)
    return _RUNTIMES[key]
