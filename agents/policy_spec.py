"""A policy described, not built: which backend, which model. Picklable, so every process that
needs a policy (an eval worker on another Ray node) builds its own client from it.

Three kinds:

* a local model (``model``: an embedded name or a Hugging Face folder), served by
  :class:`~agents.hf_policy.HFPolicy`;
* an OpenAI-compatible server (``base_url``; ``model`` then names where its tokenizer is);
* a factory (``factory="package.module:function"``): any callable ``f(seed) -> (policy,
  tokenizer)`` — the way in for a custom backend.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from agents.policy import Policy

__all__ = ["PolicySpec", "PolicySpecError"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


class PolicySpecError(ValueError):
    """A policy description that cannot be used (a factory that cannot be imported, …)."""


@dataclass(frozen=True)
class PolicySpec:
    """How to build one policy client.

    Attributes:
        model: an embedded model name or a local HF folder; with ``base_url``, where the
            served model's tokenizer is.
        base_url: an OpenAI-compatible server to sample from.
        served_model: the name the server serves (default ``model``).
        factory: ``"module:callable"`` returning ``(policy, tokenizer)`` given the seed.
        seed: the backend's fallback sampling seed (requests carry their own seeds).
        max_batch_size: the local backend's decode batch.
    """

    model: str = "smollm2-135m"
    base_url: str | None = None
    served_model: str | None = None
    factory: str | None = None
    seed: int = 0
    max_batch_size: int = 32

    def __post_init__(self) -> None:
        if self.factory is not None and self.base_url is not None:
            raise PolicySpecError("give a factory or a base_url, not both")
        if self.factory is not None and ":" not in self.factory:
            raise PolicySpecError(f"factory must read 'module:callable', got {self.factory!r}")

    @property
    def label(self) -> str:
        """A short name for tables and plots."""
        if self.factory is not None:
            return self.factory.rsplit(":", 1)[1]
        if self.base_url is not None:
            return self.served_model or self.model
        return Path(self.model).name or self.model

    def build(self) -> tuple[Policy, PreTrainedTokenizerBase]:
        """Construct the client and its tokenizer (loads the model for a local one).

        Raises:
            PolicySpecError: the factory cannot be imported or returns something else.
            agents.models.ModelNotFoundError: the model cannot be resolved.
            agents.openai_policy.OpenAIPolicyError: the server cannot be reached.
        """
        if self.factory is not None:
            made = _import(self.factory)(self.seed)
            if not (isinstance(made, tuple) and len(made) == 2):
                raise PolicySpecError(f"{self.factory} must return (policy, tokenizer)")
            return made[0], made[1]
        if self.base_url is not None:
            from transformers import AutoTokenizer

            from agents.models import resolve_model
            from agents.openai_policy import OpenAIPolicy

            tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.model))
            # Evaluation scores samples, it does not train on them: any log-prob kind will do.
            policy = OpenAIPolicy(
                self.base_url, self.served_model or self.model, require_tempered=False
            )
            return policy, tokenizer
        from agents.hf_policy import HFPolicy

        hf = HFPolicy.from_pretrained(
            self.model, seed=self.seed, max_batch_size=self.max_batch_size
        )
        return hf, hf.tokenizer

    def identity(self) -> dict[str, Any]:
        """What determines the samples this policy draws, for content-addressed run ids: a
        local model's weights by content, a served model by name, a factory by its path."""
        if self.factory is not None:
            return {"factory": self.factory}
        if self.base_url is not None:
            return {"served_model": self.served_model or self.model}
        from agents.models import resolve_model

        return {"weights": folder_fingerprint(resolve_model(self.model))}


def folder_fingerprint(folder: Path) -> str:
    """A content hash of a model folder: its config and weight files, by name and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    names = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name == "config.json")
    )
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(folder / name, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise PolicySpecError(f"cannot import policy factory {path!r}: {exc}") from None
    if not callable(found):
        raise PolicySpecError(f"policy factory {path!r} is not callable")
    return found
