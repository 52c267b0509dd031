"""Write prompts and finished trajectories into TransferQueue the way verl's V1 does.

The prompt entry is what ``PPOTrainer._submit_batch_to_rollout`` registers and
``AgentLoopWorkerTQ._run_prompt`` advances; the trajectory is ``AgentLoopOutput.as_dict()`` plus
the row's columns under the key ``{uid}_{session}_{index}``, as ``_agent_loop_postprocess``
writes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transfer_queue as tq
from verl.experimental.agent_loop import AgentLoopOutput
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

from spo_core.verl.fields import PROMPT_KEY

TRAIN = "train"


@dataclass(frozen=True)
class Episode:
    """One finished single-sample episode."""

    uid: str
    prompt_key: str
    reward: float
    response_mask: list[int]
    masked: bool = False
    finished_at: float = 0.0
    global_steps: int = 1


def put_prompt(uid: str, prompt_key: str, status: str, global_steps: int = 1) -> None:
    """Register a prompt (``pending``, ``running``, ``finished`` or ``failure``)."""
    tq.kv_put(
        key=uid,
        partition_id=TRAIN,
        tag={"is_prompt": True, "status": status, "global_steps": global_steps},
    )
    if status == "pending":  # async modes persist the prompt's columns for resume
        tq.kv_batch_put(
            keys=[uid],
            partition_id=TRAIN,
            fields=list_of_dict_to_tensordict([{PROMPT_KEY: prompt_key, "uid": uid}]),
        )


def put_episode(episode: Episode, reason: str = "") -> str:
    """Write a finished trajectory and mark its prompt finished; returns its key."""
    n = len(episode.response_mask)
    output = AgentLoopOutput(
        prompt_ids=[1, 2, 3],
        response_ids=list(range(10, 10 + n)),
        response_mask=episode.response_mask,
        response_logprobs=[-0.5] * n,
        reward_score=episode.reward,
        num_turns=2,
        metrics=AgentLoopMetrics(),
        extra_fields={
            "spo_masked": episode.masked,
            "spo_finished_at": episode.finished_at,
            "spo_prompt_key": episode.prompt_key,
            "spo_mask_reason": reason,
        },
    )
    field = output.as_dict()
    field.update({"uid": episode.uid, PROMPT_KEY: episode.prompt_key, "global_steps": 1})
    # What the trainer's old-log-prob pass (the actor, on GPU) writes before advantages.
    field["old_log_probs"] = torch.full((n,), -0.45)
    key = f"{episode.uid}_0_0"
    tq.kv_batch_put(
        keys=[key],
        partition_id=TRAIN,
        fields=list_of_dict_to_tensordict([field]),
        tags=[{"status": "success", "global_steps": episode.global_steps}],
    )
    tq.kv_put(
        key=episode.uid,
        partition_id=TRAIN,
        tag={"is_prompt": True, "status": "finished", "global_steps": episode.global_steps},
    )
    return key


def listed() -> dict[str, dict]:
    """The train partition's keys and tags."""
    return (tq.kv_list(TRAIN) or {}).get(TRAIN, {})


def token_mask(n: int, tool_every: int = 4) -> list[int]:
    """A response of ``n`` tokens with a tool-output token every ``tool_every``."""
    return [0 if i % tool_every == tool_every - 1 else 1 for i in range(n)]


def as_padded(nested: torch.Tensor, width: int) -> torch.Tensor:
    """A nested [B, j] tensor as a zero-padded [B, width] one."""
    return torch.nested.to_padded_tensor(nested, 0.0, (nested.size(0), width))
