"""The nano model: a from-scratch Qwen3-architecture model with a character-level tokenizer,
small enough to train on a laptop CPU (see :mod:`agents.nano.model`,
:mod:`agents.nano.tokenizer`)."""

from agents.nano.model import (
    CI_CONFIG,
    DEFAULT_CONFIG,
    NANO_CONFIG_FILE,
    NanoConfig,
    build_model,
    hf_config,
    parameter_count,
    save_nano,
)
from agents.nano.tokenizer import CHARSET, build_tokenizer, save_tokenizer

__all__ = [
    "CHARSET",
    "CI_CONFIG",
    "DEFAULT_CONFIG",
    "NANO_CONFIG_FILE",
    "NanoConfig",
    "build_model",
    "build_tokenizer",
    "hf_config",
    "parameter_count",
    "save_nano",
    "save_tokenizer",
]
