"""The lean decode step computes what the model's own forward pass computes, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, Qwen3Config, Qwen3ForCausalLM

from agents.decode_step import decode_step, supports_decode_step
from agents.kv_batch import make_cache


@pytest.fixture(scope="module", params=["smollm2", "qwen3"])
def model(request: pytest.FixtureRequest, smollm2_dir: Path) -> PreTrainedModel:
    if request.param == "smollm2":
        return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    )
    return Qwen3ForCausalLM(config).eval()


@pytest.mark.parametrize("padded", [False, True])
def test_decode_steps_equal_the_models_forward_pass(model: PreTrainedModel, padded: bool) -> None:
    assert supports_decode_step(model)
    torch.manual_seed(0)
    rows, width = 3, 40
    ids = torch.randint(0, 1000, (rows, width))
    attention = torch.ones(rows, width, dtype=torch.long)
    if padded:
        attention[0, :17] = 0  # a shorter, left-padded row
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    caches = [make_cache(model.config), make_cache(model.config)]
    with torch.inference_mode():
        for cache in caches:
            model(ids, attention_mask=attention, position_ids=positions, past_key_values=cache)
        tokens = ids[:, -1:]
        for _ in range(4):
            attention = torch.cat([attention, attention.new_ones(rows, 1)], -1)
            step = attention.sum(-1, keepdim=True) - 1
            want = model(
                tokens, attention_mask=attention, position_ids=step, past_key_values=caches[0]
            ).logits[:, -1]
            got = decode_step(model, tokens, attention, step, caches[1])
            assert torch.equal(got, want)
            tokens = want.argmax(-1, keepdim=True)
