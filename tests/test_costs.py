"""Parameter counting and the dual system's cost summary, on small stand-in modules."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from torch import nn

from dispsafe_nb.costs import (
    count_parameters,
    dual_system_costs,
    guard_modules,
    llm_weight_bytes,
    module_bytes,
)


def test_shared_parameters_are_counted_once():
    encoder, head = nn.Linear(4, 3), nn.Linear(3, 1)  # 15 and 4 parameters
    assert count_parameters(encoder, head) == 19
    assert count_parameters(encoder, encoder, head) == 19
    tied = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    tied[1].weight = tied[0].weight  # weight tying, as between an LLM's embeddings and its head
    assert count_parameters(tied) == 9


def test_an_embedding_guard_sharing_its_encoder_and_a_generative_guard():
    encoder = SimpleNamespace(model=nn.Linear(4, 3))
    guard = SimpleNamespace(
        prompt_encoder=encoder,
        response_encoder=encoder,
        prompt_head=nn.Linear(3, 1),
        response_head=nn.Linear(3, 1),
    )
    assert count_parameters(*guard_modules(guard)) == 15 + 4 + 4
    assert guard_modules(SimpleNamespace(model=nn.Linear(2, 2)))[0].weight.shape == (2, 2)
    with pytest.raises(TypeError, match="cannot find the modules"):
        guard_modules(object())


def test_dual_system_costs():
    llm = SimpleNamespace(model=nn.Linear(10, 10))  # 110
    guard = SimpleNamespace(model=nn.Linear(5, 2))  # 12
    costs = dual_system_costs(llm, guard, {"generate_s": 2.0, "guard_s": 0.5, "n": 4})
    assert costs["dual_param_ratio"] == pytest.approx(122 / 110)
    assert costs["generate_ms_per_prompt"] == 500.0 and costs["guard_ms_per_prompt"] == 125.0
    assert costs["dual_cost_ratio"] == pytest.approx(1.25)
    assert costs["llm_MB"] == 110 * 4 / 1e6 and costs["dual_memory_ratio"] == pytest.approx(122 / 110)
    with pytest.raises(ValueError, match="at least one prompt"):
        dual_system_costs(llm, guard, {"generate_s": 0.0, "guard_s": 0.0, "n": 0})


def test_bytes_are_counted_at_each_tensors_precision_once():
    import torch

    half = nn.Linear(4, 4).to(torch.float16)  # 20 parameters x 2 bytes
    full = nn.Linear(4, 1)  # 5 x 4 bytes
    norm = nn.BatchNorm1d(3)  # 6 parameters + 3 + 3 + 1 buffers
    assert module_bytes(half, full, half) == 40 + 20
    assert module_bytes(norm) == 6 * 4 + 6 * 4 + 8
    assert llm_weight_bytes(SimpleNamespace(name="not-embedded", model=full)) == 20


@pytest.mark.slow
def test_the_embedded_llm_is_counted_as_its_4_bit_file_stores_it(llm):
    stored = llm_weight_bytes(llm)
    in_memory = module_bytes(llm.model)  # dequantised to fp32 on this CPU
    bits_per_weight = 8 * stored / count_parameters(llm.model)
    assert 4.5 < bits_per_weight < 7  # Q4_1 blocks (5 bits) plus a few fp32 norms and a Q8_0 tensor
    assert in_memory > 4 * stored
