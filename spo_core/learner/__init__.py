"""The learner: training loops that update a policy's weights — the SPO/GRPO loop around the
rollout engine with its checkpoints (:mod:`spo_core.learner.loop`), and the supervised warm start
(:mod:`spo_core.learner.sft`, imported on its own) and its continuation for a wall-time budget
(:mod:`spo_core.learner.sft_continue`) — and what runs around them: offline values,
held-out evaluation, tier choice, metrics and curves, and the whole ReTool job
(:mod:`spo_core.learner.job`).

Unlike the rest of :mod:`spo_core`, this subpackage imports ``agents`` and ``envs`` (it drives
the rollout engine); ``import spo_core`` alone never loads it. See :mod:`spo_core.learner.loop`.
"""

from spo_core.learner.args import ABLATIONS, Ablation, LearnerArgs, LearnerArgsError
from spo_core.learner.batch import LogProbModeError, Row, TrainBatch, collate, pad
from spo_core.learner.checkpoint import CheckpointError, find_checkpoint, load_checkpoint
from spo_core.learner.logprobs import response_logprobs, score
from spo_core.learner.loop import EvaluateFn, Learner, OnStep, UpdateResult
from spo_core.learner.report import StepReport
from spo_core.learner.response_store import ResponseStore, StoredResponse
from spo_core.learner.source import SamplerSource, tracker_for

__all__ = [
    "ABLATIONS",
    "Ablation",
    "CheckpointError",
    "EvaluateFn",
    "Learner",
    "LearnerArgs",
    "LearnerArgsError",
    "LogProbModeError",
    "OnStep",
    "ResponseStore",
    "Row",
    "SamplerSource",
    "StepReport",
    "StoredResponse",
    "TrainBatch",
    "UpdateResult",
    "collate",
    "find_checkpoint",
    "load_checkpoint",
    "pad",
    "response_logprobs",
    "score",
    "tracker_for",
]
