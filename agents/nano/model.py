"""The nano model: a small Qwen3-architecture causal LM built from scratch, with the
character-level tokenizer of :mod:`agents.nano.tokenizer`.

:func:`build_model` is deterministic for a :class:`NanoConfig` (its seed included), and
:func:`save_nano` writes an ordinary Hugging Face folder (weights, config, generation config,
tokenizer and ``nano.json``, the config it was built from) that
:meth:`agents.hf_policy.HFPolicy.from_pretrained`, ``AutoModelForCausalLM`` and
``AutoTokenizer`` load.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from agents.nano.tokenizer import EOS_TOKEN, PAD_TOKEN, build_tokenizer

__all__ = [
    "CI_CONFIG",
    "DEFAULT_CONFIG",
    "NANO_CONFIG_FILE",
    "NanoConfig",
    "build_model",
    "hf_config",
    "parameter_count",
    "save_nano",
]

NANO_CONFIG_FILE = "nano.json"
"""The file in a saved nano folder that records its :class:`NanoConfig`."""


@dataclass(frozen=True)
class NanoConfig:
    """The shape of a nano model and the seed of its initial weights.

    Attributes:
        hidden_size: width of the residual stream.
        num_layers: transformer blocks.
        num_heads: query heads per attention layer.
        num_kv_heads: key/value heads (grouped-query attention); divides ``num_heads``.
        head_dim: width of one attention head; at least 32, the smallest vLLM's CPU attention
            kernels take.
        intermediate_size: width of the SwiGLU MLP.
        context: most tokens of prompt plus response (``max_position_embeddings``); at least
            512, room for a whole compact episode.
        rope_theta: RoPE base frequency.
        seed: seeds the weight initialisation.
    """

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 384
    context: int = 768
    rope_theta: float = 10000.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.head_dim < 32:
            raise ValueError(f"head_dim must be >= 32 (vLLM's CPU kernels), got {self.head_dim}")
        if self.context < 512:
            raise ValueError(f"context must be >= 512 to hold an episode, got {self.context}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})"
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NanoConfig:
        """The config of :meth:`to_dict`'s output."""
        return cls(**data)


DEFAULT_CONFIG = NanoConfig()
"""About 0.8M parameters: 4 layers of width 128."""

CI_CONFIG = NanoConfig(
    hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128, context=512
)
"""About 80k parameters: small enough for CI to build and warm-start in under a minute."""


def hf_config(config: NanoConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen3Config:
    """The transformers ``Qwen3Config`` of ``config`` with ``tokenizer``'s vocabulary."""
    eos = _token_id(tokenizer, EOS_TOKEN)
    pad = _token_id(tokenizer, PAD_TOKEN)
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.context,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=pad,
        use_cache=True,
    )


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    found = tokenizer.convert_tokens_to_ids(token)
    assert isinstance(found, int)
    return found


def build_model(
    config: NanoConfig, tokenizer: PreTrainedTokenizerFast | None = None
) -> Qwen3ForCausalLM:
    """A freshly initialised nano model (float32, identical for identical configs)."""
    tokenizer = tokenizer or build_tokenizer()
    # A private RNG state: building a model neither depends on nor disturbs the global one.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = Qwen3ForCausalLM(hf_config(config, tokenizer))
    return model.float()


def save_nano(
    folder: Path,
    config: NanoConfig,
    model: Qwen3ForCausalLM | None = None,
    tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """Writes a loadable nano folder: ``model`` (default a fresh :func:`build_model`), its
    tokenizer, a generation config that stops at ``<|im_end|>``, and ``nano.json``."""
    tokenizer = tokenizer or build_tokenizer()
    model = model if model is not None else build_model(config, tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        eos_token_id=_token_id(tokenizer, EOS_TOKEN), pad_token_id=_token_id(tokenizer, PAD_TOKEN)
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / NANO_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return folder


def parameter_count(model: torch.nn.Module) -> int:
    """Distinct parameters of ``model`` (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
