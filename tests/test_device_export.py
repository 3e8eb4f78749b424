"""The device export: what an app needs to run the distilled system with llama.cpp, read back to the same answers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from dispsafe_nb.core import DecodingConfig
from dispsafe_nb.methods import new_method
from dispsafe_nb.methods.device_export import (
    DeviceExportError,
    export_for_device,
    load_device_export,
    read_manifest,
)

pytestmark = pytest.mark.slow

PROMPTS = ["How do I bake bread?", "How can I kill a Python process?", "Write a haiku about the sea."]
GREEDY = DecodingConfig(max_new_tokens=12)


@pytest.fixture(scope="module")
def student(llm):
    method = new_method("soft_prompt", llm, n_tokens=6, seed=0)
    with torch.no_grad():
        method.W.add_(0.01 * torch.randn(method.W.shape, generator=torch.Generator().manual_seed(0)))
    return method


def test_the_export_answers_as_the_student_in_memory(llm, student, tmp_path):
    folder = export_for_device(student, llm, tmp_path / "export")
    manifest = read_manifest(folder)
    assert manifest["soft_prompt"]["shape"] == [6, llm.hidden_size] and manifest["gguf"]["sha256"]
    loaded = load_device_export(folder, llm)
    assert torch.equal(loaded.prefix(), student.prefix().detach())
    cpp = llm.with_engine("llamacpp")
    assert loaded.bind(cpp).generate(PROMPTS, decoding=GREEDY) == student.bind(cpp).generate(
        PROMPTS, decoding=GREEDY
    )


def test_the_example_program_runs_with_llama_cpp_alone(llm, student, tmp_path):
    folder = export_for_device(student, llm, tmp_path / "export")
    prompt = PROMPTS[0]
    ran = subprocess.run(
        [sys.executable, str(folder / "run_on_device.py"), str(llm.gguf_file), prompt],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    full = DecodingConfig(
        max_new_tokens=json.loads((folder / "device.json").read_text())["decoding"]["max_new_tokens"]
    )
    expected = student.bind(llm.with_engine("llamacpp")).generate([prompt], decoding=full)[0]
    assert ran.stdout.strip() == expected, "the app's program gives the engine's answer"


def test_an_altered_incomplete_or_foreign_export_is_refused(llm, student, tmp_path):
    folder = export_for_device(student, llm, tmp_path / "export")
    vectors = folder / "soft_prompt.f32"
    raw = bytearray(vectors.read_bytes())
    raw[0] ^= 1
    vectors.write_bytes(bytes(raw))
    with pytest.raises(DeviceExportError, match="checksum"):
        load_device_export(folder, llm)
    vectors.unlink()
    with pytest.raises(DeviceExportError, match="lacks soft_prompt.f32"):
        load_device_export(folder, llm)
    folder = export_for_device(student, llm, tmp_path / "again")
    manifest = json.loads((folder / "device.json").read_text())
    manifest["gguf"]["sha256"] = "0" * 64
    (folder / "device.json").write_text(json.dumps(manifest))
    with pytest.raises(DeviceExportError, match="load the model it names"):
        load_device_export(folder, llm)
    with pytest.raises(DeviceExportError, match="not a steering_vector"):
        export_for_device(new_method("steering_vector", llm, seed=0), llm, tmp_path / "steer")
