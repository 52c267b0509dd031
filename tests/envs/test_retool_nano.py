"""``spo_gym/ReToolNano-v0``: ReTool sized for a character-level model's short context."""

from __future__ import annotations

import envs
from envs import Task
from envs.tasks import Tier


def test_the_compact_variant_has_a_short_prompt_and_small_budgets() -> None:
    env = envs.make("spo_gym/ReToolNano-v0")
    try:
        gen = env.generation
        assert gen.tool_format == "retool" and gen.stop == ("</code>",)
        assert gen.max_turns == 3 and gen.max_episode_tokens == 384
        assert env.demonstrations == 0
        task = Tier.parse("d4o2").tasks(1, seed=0)[0]
        messages = env.prompt(task)
        assert [m["role"] for m in messages] == ["system", "user"]
        assert len(messages[0]["content"]) < 200 and "\\boxed{}" in messages[0]["content"]
        assert messages[1]["content"] == task.problem
        full = envs.make("spo_gym/ReTool-v0")
        assert len(full.prompt(Task.create("q", "1", "t", {}))[0]["content"]) > 2 * len(
            messages[0]["content"]
        )
        full.close()
    finally:
        env.close()
