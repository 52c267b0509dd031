"""Trajectories → the padded tensors a training step works on.

Layout: row ``i`` is ``[pad … pad, prompt_i, response_i, pad … pad]`` — prompts left-padded to
a common width ``P``, responses right-padded to ``R`` — so every response starts at column
``P`` and the response tensors (``[N, R]``) line up with the logits of the last ``R + 1``
positions. Position ids count real tokens only, so padding does not shift a row's positions.

Masked trajectories (infrastructure failures) are left out here, once, so they can reach neither
the loss, nor a statistic, nor the tracker. A trajectory whose behaviour log-probs are not of
the ``"tempered"`` kind is refused: the PPO ratio would compare two different distributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from agents.trajectory import Trajectory


class LogProbModeError(ValueError):
    """A trajectory's behaviour log-probs are of a kind the PPO ratio cannot use."""


@dataclass(frozen=True)
class TrainBatch:
    """One step's unmasked trajectories as tensors (N rows).

    Attributes:
        keys: prompt key of each row.
        sample_indices: each row's sample index of its prompt.
        group_ids: each row's group (GRPO), or ``None``.
        input_ids: [N, P + R] prompt and response ids (pad id where padded).
        attention_mask: [N, P + R] 1 on real tokens.
        position_ids: [N, P + R] positions counting real tokens from 0.
        prompt_width: P, the column where every response starts.
        response_ids: [N, R].
        response_mask: [N, R] float, 1 on model tokens (tool output and padding 0).
        behaviour_logp: [N, R] float32, the sampler's log-probs (0 off the mask).
        versions: [N, R] the policy version of each token (-1 on padding).
        temperatures: [N] the sampling temperature each row's log-probs are tempered with.
        rewards: [N] float64.
        policy_version: the learner's version when the batch was assembled; tokens of older
            versions are ``stale_tokens``.
    """

    keys: list[str]
    sample_indices: list[int]
    group_ids: list[str | None]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    prompt_width: int
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    behaviour_logp: torch.Tensor
    versions: torch.Tensor
    temperatures: torch.Tensor
    rewards: torch.Tensor
    policy_version: int

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def num_tokens(self) -> int:
        """Model tokens in the batch (the token-mean's denominator)."""
        return int(self.response_mask.sum())

    @property
    def stale_tokens(self) -> torch.Tensor:
        """[N, R] bool: model tokens sampled by a version older than ``policy_version``."""
        return (self.versions < self.policy_version) & (self.response_mask > 0)

    @property
    def carried(self) -> torch.Tensor:
        """[N] bool: rows holding at least one token of an older version."""
        return self.stale_tokens.any(dim=-1)

    def select(self, rows: Sequence[int] | slice) -> TrainBatch:
        """The given rows, with columns that are padding in all of them cut away."""
        index = torch.arange(len(self))[rows] if isinstance(rows, slice) else torch.tensor(rows)
        idx = [int(i) for i in index]
        attention = self.attention_mask[index]
        mask_cols = attention[:, : self.prompt_width].any(dim=0).nonzero()
        first = int(mask_cols[0]) if mask_cols.numel() else self.prompt_width
        response_cols = attention[:, self.prompt_width :].any(dim=0).nonzero()
        width = int(response_cols[-1]) + 1 if response_cols.numel() else 1
        cols = slice(first, self.prompt_width + width)
        return TrainBatch(
            keys=[self.keys[i] for i in idx],
            sample_indices=[self.sample_indices[i] for i in idx],
            group_ids=[self.group_ids[i] for i in idx],
            input_ids=self.input_ids[index, cols],
            attention_mask=attention[:, cols],
            position_ids=self.position_ids[index, cols],
            prompt_width=self.prompt_width - first,
            response_ids=self.response_ids[index, :width],
            response_mask=self.response_mask[index, :width],
            behaviour_logp=self.behaviour_logp[index, :width],
            versions=self.versions[index, :width],
            temperatures=self.temperatures[index],
            rewards=self.rewards[index],
            policy_version=self.policy_version,
        )


def usable(trajectories: Sequence[Trajectory]) -> list[Trajectory]:
    """The unmasked trajectories, after checking their log-prob kind.

    Raises:
        LogProbModeError: an unmasked trajectory's log-probs are not ``"tempered"``.
    """
    kept = [t for t in trajectories if not t.masked]
    for t in kept:
        if t.log_prob_mode != "tempered":
            raise LogProbModeError(
                f"trajectory {t.episode_id} carries {t.log_prob_mode!r} log-probs; the PPO "
                "ratio needs 'tempered' ones (log_softmax(logits / T) before top-k/top-p)"
            )
    return kept


@dataclass(frozen=True)
class Row:
    """One sequence to pad: a trajectory's tokens, or a stored response being re-scored."""

    key: str
    prompt_ids: Sequence[int]
    response_ids: Sequence[int]
    response_mask: Sequence[int]
    logprobs: Sequence[float]
    versions: Sequence[int]
    temperature: float = 1.0
    reward: float = 0.0
    sample_index: int = 0
    group_id: str | None = None


def row_of(t: Trajectory) -> Row:
    """A trajectory as a :class:`Row` (its log-probs tempered with its sampling temperature)."""
    if not len(t.response_ids) == len(t.response_mask) == len(t.response_logprobs):
        raise ValueError(f"trajectory {t.episode_id}: response arrays differ in length")
    sampled = t.sampling is not None and not t.sampling.greedy
    return Row(
        key=t.prompt_key,
        prompt_ids=t.prompt_ids,
        response_ids=t.response_ids,
        response_mask=t.response_mask,
        logprobs=t.response_logprobs,
        versions=t.response_versions or [t.policy_version] * len(t.response_ids),
        temperature=t.sampling.temperature if sampled and t.sampling is not None else 1.0,
        reward=t.reward,
        sample_index=t.sample_index,
        group_id=t.group_id,
    )


def collate(trajectories: Sequence[Trajectory], pad_id: int, policy_version: int) -> TrainBatch:
    """Pad the unmasked ``trajectories`` into a :class:`TrainBatch`, in the order given.

    Raises:
        LogProbModeError: see :func:`usable`.
    """
    return pad([row_of(t) for t in usable(trajectories)], pad_id, policy_version)


def pad(rows: Sequence[Row], pad_id: int, policy_version: int) -> TrainBatch:
    """Pad ``rows`` into a :class:`TrainBatch`, in the order given."""
    n = len(rows)
    p = max((len(r.prompt_ids) for r in rows), default=1)
    width = max((len(r.response_ids) for r in rows), default=1) or 1
    input_ids = torch.full((n, p + width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, p + width), dtype=torch.long)
    response_mask = torch.zeros((n, width), dtype=torch.float32)
    behaviour = torch.zeros((n, width), dtype=torch.float32)
    versions = torch.full((n, width), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        prompt, response = row.prompt_ids, row.response_ids
        start = p - len(prompt)
        input_ids[i, start:p] = torch.tensor(list(prompt), dtype=torch.long)
        attention[i, start:p] = 1
        k = len(response)
        if k:
            input_ids[i, p : p + k] = torch.tensor(list(response), dtype=torch.long)
            attention[i, p : p + k] = 1
            mask = torch.tensor(list(row.response_mask), dtype=torch.float32)
            response_mask[i, :k] = mask
            behaviour[i, :k] = torch.tensor(list(row.logprobs), dtype=torch.float32) * mask
            versions[i, :k] = torch.tensor(list(row.versions), dtype=torch.long)
    return TrainBatch(
        keys=[r.key for r in rows],
        sample_indices=[r.sample_index for r in rows],
        group_ids=[r.group_id for r in rows],
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
        prompt_width=p,
        response_ids=input_ids[:, p:].clone(),
        response_mask=response_mask,
        behaviour_logp=behaviour,
        versions=versions,
        temperatures=torch.tensor([r.temperature for r in rows], dtype=torch.float32),
        rewards=torch.tensor([r.reward for r in rows], dtype=torch.float64),
        policy_version=policy_version,
    )
