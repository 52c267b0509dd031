"""Fixtures for the learner tests: a tiny random Qwen3 model, a small real tokenizer with a chat
template, and one sandbox pool for the session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from envs import arithmetic_tasks
from envs import make as make_env
from sandbox import SandboxConfig, SandboxPool
from spo_core.learner.batch import Row, pad
from spo_core.learner.logprobs import response_logprobs

CHAT_TEMPLATE = (
    "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_CORPUS = [
    "What is 12 * 34? Use the interpreter.",
    "<code>\n```python\nprint(12 * 34)\n```\n</code>",
    "<interpreter>\n408\n</interpreter>",
    "The answer is \\boxed{408}.",
    "0123456789 + - * / ( ) = , . : ; ? !",
]


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer with Qwen-style chat tokens and a chat template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def make_tiny_model(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> Callable[[int], Qwen3ForCausalLM]:
    """``make(seed)``: a 2-layer Qwen3 (head dim 32) with seeded random weights, fp32."""

    def make(seed: int = 0) -> Qwen3ForCausalLM:
        torch.manual_seed(seed)
        config = Qwen3Config(
            vocab_size=len(tiny_tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            pad_token_id=tiny_tokenizer.pad_token_id,
            eos_token_id=tiny_tokenizer.eos_token_id,
        )
        return Qwen3ForCausalLM(config).eval()

    return make


CODE_ACTION = "<code>\n```python\nprint(6 * 7)\n```\n</code>"


@pytest.fixture(scope="session")
def make_coder_model(
    tiny_tokenizer: PreTrainedTokenizerFast, make_tiny_model: Callable[[int], Qwen3ForCausalLM]
) -> Callable[[], Qwen3ForCausalLM]:
    """``make()``: the tiny model after a few seconds of supervised training to answer any chat
    ReTool prompt with a code cell — a real model that calls the tool, so its episodes reach the
    sandbox."""
    torch.set_num_threads(1)
    model = make_tiny_model(0).train()
    response = tiny_tokenizer.encode(CODE_ACTION)
    rows = []
    env = make_env("spo_gym/ReTool-v0", system_template="")  # renders prompts, never runs one
    for i, task in enumerate(arithmetic_tasks(8, digits=1, operations=1, seed=99)):
        prompt = tiny_tokenizer.apply_chat_template(
            env.prompt(task), add_generation_prompt=True, tokenize=False
        )
        ids = tiny_tokenizer.encode(prompt)
        zeros = [0] * len(response)
        rows.append(Row(str(i), ids, response, [1] * len(response), [0.0] * len(response), zeros))
    data = pad(rows, 0, 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        logp = response_logprobs(model, data)
        loss = -(logp * data.response_mask).sum() / data.response_mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def make() -> Qwen3ForCausalLM:
        copy = make_tiny_model(0)
        copy.load_state_dict(state)
        return copy

    return make


@pytest_asyncio.fixture(scope="session")
async def learner_pool() -> AsyncIterator[SandboxPool]:
    """One warm sandbox pool for the learner's end-to-end tests."""
    pool = SandboxPool(SandboxConfig(warm=2))
    await pool.start()
    yield pool
    await pool.close()
