"""The nano tokenizer and model: a real HF tokenizer with exact round trips and a chat
template, a deterministic from-scratch Qwen3 that loads through the ordinary paths."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from agents.hf_policy import HFPolicy
from agents.nano import (
    CHARSET,
    CI_CONFIG,
    DEFAULT_CONFIG,
    NanoConfig,
    build_model,
    parameter_count,
    save_nano,
    save_tokenizer,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    folder = tmp_path_factory.mktemp("nano-tokenizer")
    save_tokenizer(folder)
    return AutoTokenizer.from_pretrained(folder)


def test_every_character_is_one_token_and_text_round_trips(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    rng = random.Random(0)
    for _ in range(50):
        text = "".join(rng.choice(CHARSET) for _ in range(rng.randint(0, 200)))
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert len(ids) == len(text)
        assert tokenizer.decode(ids) == text
    assert len({tokenizer.convert_tokens_to_ids(c) for c in CHARSET}) == len(CHARSET)


def test_special_tokens_are_single_ids_and_ids_round_trip(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    text = "<|im_start|>user\n1 + 2<|im_end|>\n<|endoftext|>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    specials = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")]
    assert ids[0] == specials[0] and ids[11] == specials[1]
    assert len(ids) == len("user\n1 + 2\n") + 3
    assert tokenizer.decode(ids) == text
    rng = random.Random(1)
    whole = [tokenizer.convert_tokens_to_ids(t) for t in (*CHARSET, "<|im_start|>", "<|im_end|>")]
    for _ in range(50):
        ids = [rng.choice(whole) for _ in range(rng.randint(1, 100))]
        assert tokenizer.encode(tokenizer.decode(ids), add_special_tokens=False) == ids
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_characters_outside_the_charset_fall_back_to_bytes_and_round_trip(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    text = "a…é\ue000b[61 characters truncated]…"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(ids[1:4]) == ["<0xE2>", "<0x80>", "<0xA6>"]
    assert len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode(tokenizer.decode(ids), add_special_tokens=False) == ids
    # The name of a byte token typed as text is just characters.
    assert len(tokenizer.encode("<0xE2>", add_special_tokens=False)) == 6


def test_chat_template_is_qwen_style_for_every_role(tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
        {"role": "tool", "content": "T1"},
        {"role": "tool", "content": "T2"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
        "<|im_start|>assistant\nA<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nT1\n</tool_response>"
        "\n<tool_response>\nT2\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    closed = tokenizer.apply_chat_template(messages[:3], tokenize=False)
    assert closed.endswith("A<|im_end|>\n")
    with pytest.raises(Exception, match="unknown chat role"):
        tokenizer.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_default_config_is_about_0_8m_parameters_and_ci_is_much_smaller() -> None:
    assert 700_000 <= parameter_count(build_model(DEFAULT_CONFIG)) <= 900_000
    assert parameter_count(build_model(CI_CONFIG)) <= 100_000


def test_build_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b = build_model(CI_CONFIG), build_model(CI_CONFIG)
    assert torch.equal(torch.random.get_rng_state(), state)
    other = build_model(NanoConfig(**{**CI_CONFIG.to_dict(), "seed": 1}))
    pairs = list(zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert all(torch.equal(x, y) for x, y in pairs)
    assert not torch.equal(
        a.model.layers[0].mlp.up_proj.weight, other.model.layers[0].mlp.up_proj.weight
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"head_dim": 16}, "head_dim"),
        ({"context": 256}, "context"),
        ({"num_heads": 3, "num_kv_heads": 2}, "divide"),
        ({"num_layers": 0}, "num_layers"),
    ],
)
def test_bad_configs_are_refused(changes: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NanoConfig(**{**CI_CONFIG.to_dict(), **changes})


def test_a_saved_nano_loads_through_auto_classes_and_hfpolicy(tmp_path: Path) -> None:
    model = build_model(CI_CONFIG)
    save_nano(tmp_path, CI_CONFIG, model)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.model_type == "qwen3" and loaded.config.head_dim >= 32
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)
    policy = HFPolicy.from_pretrained(tmp_path, num_threads=1)
    eos = policy.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert policy.eos_token_ids == {eos} and policy.max_context_tokens == CI_CONFIG.context
    assert NanoConfig.from_dict(json.loads((tmp_path / "nano.json").read_text())) == CI_CONFIG
