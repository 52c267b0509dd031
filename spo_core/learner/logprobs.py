"""Per-token log-probs of response tokens under a model, at the sampling temperature.

The rollout records ``log_softmax(logits / T)`` over the full vocabulary (the ``"tempered"``
kind, see :mod:`agents.policy`); the learner recomputes the same quantity, as verl's actor
does, so the PPO ratio compares like with like. Logits are taken in fp32 whatever the model's
dtype. Only the last ``R + 1`` positions' logits are materialised (the responses start at the
same column), which keeps a long prompt from costing a vocabulary-sized row per token.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from spo_core.learner.batch import TrainBatch

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def response_logprobs(model: PreTrainedModel, batch: TrainBatch) -> torch.Tensor:
    """[N, R] fp32 log-probs of ``batch.response_ids`` (0 on padding), differentiable.

    Row ``i``'s logits are divided by ``batch.temperatures[i]`` before the log-softmax.
    """
    width = batch.response_ids.shape[1]
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        logits_to_keep=width + 1,
    )
    # Logits at position t predict token t + 1: drop the last position's.
    logits = out.logits[:, :-1, :].float() / batch.temperatures[:, None, None]
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    real = batch.attention_mask[:, batch.prompt_width :].to(chosen.dtype)
    return chosen * real


def micro_batches(batch: TrainBatch, size: int) -> Iterator[TrainBatch]:
    """Consecutive row slices of at most ``size`` rows, each trimmed of shared padding."""
    for start in range(0, len(batch), size):
        yield batch.select(slice(start, start + size))


@torch.no_grad()
def score(model: PreTrainedModel, batch: TrainBatch, micro_batch_size: int) -> torch.Tensor:
    """[N, R] log-probs without gradient, computed in micro-batches (an inference pass)."""
    out = torch.zeros(batch.response_ids.shape, dtype=torch.float32)
    for start, part in zip(
        range(0, len(batch), micro_batch_size), micro_batches(batch, micro_batch_size), strict=True
    ):
        width = part.response_ids.shape[1]
        out[start : start + len(part), :width] = response_logprobs(model, part)
    return out
