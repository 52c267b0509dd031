"""Task sets: files in verl's schema, built-in arithmetic-with-tool tasks, reasoning-gym.

Every source yields :class:`Task` records keyed by :func:`prompt_key`, the canonical prompt key.
"""

from envs.tasks.arithmetic import arithmetic_tasks
from envs.tasks.dataset import TaskDataError, load_tasks
from envs.tasks.keys import normalize_prompt, prompt_key
from envs.tasks.reasoning_gym import reasoning_gym_tasks, score_reasoning_gym
from envs.tasks.task import ChatMessage, Task
from envs.tasks.tiers import Tier, TierError, heldout_tasks, tier_of, tier_tasks

__all__ = [
    "ChatMessage",
    "Task",
    "TaskDataError",
    "Tier",
    "TierError",
    "arithmetic_tasks",
    "heldout_tasks",
    "load_tasks",
    "normalize_prompt",
    "prompt_key",
    "reasoning_gym_tasks",
    "score_reasoning_gym",
    "tier_of",
    "tier_tasks",
]
