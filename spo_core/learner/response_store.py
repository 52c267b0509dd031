"""The per-prompt response store of the KL-adaptive forgetting factor (SPO_SPEC §4).

For each prompt it keeps the response of the prompt's last visit — token ids, the model-token
mask, and the log-probs of that response under the policy *after* that visit's update. On the
next visit, after the update, the learner re-scores the stored response with the current policy;
the drift D = mean over model tokens of |logπ_stored − logπ_now| sets ρ. Tool-output tokens are
excluded from D through the mask (the policy did not generate them).

Bounded: at most ``max_entries`` prompts, the least recently visited dropped first. A dropped
prompt's next visit is a first visit (D = 0, ρ = ρ_max), the same as a prompt never seen. Token
arrays are stored compactly (int32 ids, uint8 mask, fp32 log-probs) and checkpointed whole.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from spo_core.learner.batch import Row


@dataclass(frozen=True)
class StoredResponse:
    """One prompt's last response and its log-probs under the policy after that visit."""

    prompt_ids: torch.Tensor  # int32 [P]
    response_ids: torch.Tensor  # int32 [R]
    response_mask: torch.Tensor  # uint8 [R], 1 on model tokens
    logprobs: torch.Tensor  # float32 [R], 0 off the mask
    temperature: float

    def row(self, key: str) -> Row:
        """As a :class:`Row` to re-score (versions are irrelevant to a re-score)."""
        return Row(
            key=key,
            prompt_ids=self.prompt_ids.tolist(),
            response_ids=self.response_ids.tolist(),
            response_mask=self.response_mask.tolist(),
            logprobs=self.logprobs.tolist(),
            versions=[0] * len(self.response_ids),
            temperature=self.temperature,
        )


class ResponseStore:
    """Bounded LRU map from prompt key to :class:`StoredResponse`.

    Args:
        max_entries: most prompts kept.
    """

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: str) -> StoredResponse | None:
        """The stored response of ``key``, or ``None`` (first visit, or evicted)."""
        return self._entries.get(key)

    def put(
        self,
        key: str,
        prompt_ids: Sequence[int],
        response_ids: Sequence[int],
        response_mask: Sequence[int] | torch.Tensor,
        logprobs: torch.Tensor,
        temperature: float,
    ) -> None:
        """Store ``key``'s latest response, replacing the previous one; evicts the least
        recently stored prompt beyond ``max_entries``."""
        n = len(response_ids)
        mask = torch.as_tensor(response_mask, dtype=torch.uint8).reshape(-1)[:n]
        entry = StoredResponse(
            prompt_ids=torch.tensor(list(prompt_ids), dtype=torch.int32),
            response_ids=torch.tensor(list(response_ids), dtype=torch.int32),
            response_mask=mask.clone(),
            logprobs=(logprobs.detach().float().reshape(-1)[:n] * mask).clone(),
            temperature=float(temperature),
        )
        self._entries.pop(key, None)
        self._entries[key] = entry
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def state_dict(self) -> dict[str, Any]:
        """Every entry, oldest first, as plain tensors and numbers."""
        return {
            "max_entries": self.max_entries,
            "keys": list(self._entries),
            "entries": [
                {
                    "prompt_ids": e.prompt_ids,
                    "response_ids": e.response_ids,
                    "response_mask": e.response_mask,
                    "logprobs": e.logprobs,
                    "temperature": e.temperature,
                }
                for e in self._entries.values()
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the entries with those of :meth:`state_dict` (the bound is this store's)."""
        keys, entries = state["keys"], state["entries"]
        if len(keys) != len(entries):
            raise ValueError("corrupt response store: keys and entries differ in number")
        self._entries = OrderedDict(
            (str(k), StoredResponse(**e)) for k, e in zip(keys, entries, strict=True)
        )
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
