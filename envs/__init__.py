"""Gymnasium tool environments: the env contract, action formats, registry, grading, tasks.

Public API::

    import envs

    env = envs.make("spo_gym/ReTool-v0", tasks=[task])
    obs, info = await env.areset(seed=0)
    obs, reward, terminated, truncated, info = await env.astep(assistant_turn)

See :mod:`envs.core` for the contract and how to write a new tool env.
"""

from envs.core import (
    Episode,
    ResetInfo,
    Score,
    ScoreStatus,
    ScoreUnavailable,
    StepInfo,
    StepResult,
    StepTimings,
    TaskSource,
    TerminationReason,
    ToolEnv,
    TruncationReason,
)
from envs.formats import (
    CODE_INTERPRETER,
    MalformedCall,
    Tool,
    ToolCall,
    parse_action,
    parse_hermes,
    parse_retool,
    render_call,
    render_observation,
    truncate_text,
)
from envs.generation import GenerationSpec, ObservationPlacement, ObservationRole, TurnCut
from envs.grading import (
    Grader,
    GradeResult,
    GraderUnavailable,
    agrade,
    equivalence_classes,
    extract_boxed,
    grade,
    grade_many,
    majority_vote,
    pass_at_k,
)
from envs.pool_loop import default_pool
from envs.registry import (
    ENTRY_POINT_GROUP,
    EnvIdError,
    EnvNotFoundError,
    env_creator,
    env_parameters,
    env_source,
    list_envs,
    load_plugins,
    make,
    plugin_errors,
    register,
    spec,
)
from envs.retool import ReToolEnv
from envs.spaces import AnyText
from envs.tasks import Task, TaskDataError, arithmetic_tasks, load_tasks, prompt_key

__all__ = [
    "CODE_INTERPRETER",
    "ENTRY_POINT_GROUP",
    "AnyText",
    "EnvIdError",
    "EnvNotFoundError",
    "Episode",
    "GenerationSpec",
    "GradeResult",
    "Grader",
    "GraderUnavailable",
    "MalformedCall",
    "ObservationPlacement",
    "ObservationRole",
    "ReToolEnv",
    "ResetInfo",
    "Score",
    "ScoreStatus",
    "ScoreUnavailable",
    "StepInfo",
    "StepResult",
    "StepTimings",
    "Task",
    "TaskDataError",
    "TaskSource",
    "TerminationReason",
    "Tool",
    "ToolCall",
    "ToolEnv",
    "TruncationReason",
    "TurnCut",
    "agrade",
    "arithmetic_tasks",
    "default_pool",
    "env_creator",
    "env_parameters",
    "env_source",
    "equivalence_classes",
    "extract_boxed",
    "grade",
    "grade_many",
    "list_envs",
    "load_plugins",
    "load_tasks",
    "majority_vote",
    "make",
    "parse_action",
    "parse_hermes",
    "parse_retool",
    "pass_at_k",
    "plugin_errors",
    "prompt_key",
    "register",
    "render_call",
    "render_observation",
    "spec",
    "truncate_text",
]
