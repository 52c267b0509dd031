"""The ReTool env: prompts, reward rules, stateless mode, and the masking rule on a real sandbox."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import envs
from envs import Episode, ReToolEnv, Task
from envs.retool import paper_format_problem
from sandbox import RunStatus, SandboxConfig, SandboxPool

CODE = "<code>\n```python\n{}\n```\n</code>"


def _episode(task: Task, *actions: str) -> Episode:
    return Episode(task=task, episode_id="e", messages=[], actions=list(actions))


def test_stateful_prompt(tasks: list[Task]) -> None:
    env = ReToolEnv(tasks=tasks)
    _, info = env.reset(seed=0)
    system, user = info["messages"]
    assert system["role"] == "system" and "variables, functions and imports" in system["content"]
    assert "<code>" in system["content"] and "\\boxed{}" in system["content"]
    assert user == {"role": "user", "content": env.episode.task.problem}  # type: ignore[union-attr]
    assert not env.stateless and not env.echo_last_expr


def test_stateless_prompt_is_the_spo_setup(tasks: list[Task]) -> None:
    env = ReToolEnv(tasks=tasks, stateless=True)
    obs, info = env.reset(seed=0)
    assert [m["role"] for m in info["messages"]] == ["user"]
    assert "stateless" in obs and "*user question:*" in obs
    assert env.episode is not None and env.episode.task.problem in obs
    assert env.stateless and env.echo_last_expr


def test_hermes_prompt_and_controls(tasks: list[Task]) -> None:
    env = envs.make("spo_gym/ReTool-v0", tasks=tasks, generation={"tool_format": "hermes"})
    assert env.generation.stop == ("</tool_call>",)
    assert env.generation.observation_placement == "message"
    assert isinstance(env, ReToolEnv) and "code_interpreter tool" in env.system_prompt
    assert "hermes" not in env.system_prompt and "<code>" not in env.system_prompt


def test_custom_and_missing_templates(tmp_path: Path, tasks: list[Task]) -> None:
    template = tmp_path / "mine.j2"
    template.write_text("Problem: {{ problem }} (stateless={{ stateless }})")
    env = ReToolEnv(tasks=tasks, system_template="", user_template=str(template))
    obs, info = env.reset(seed=0)
    assert len(info["messages"]) == 1
    assert obs.startswith("Problem: ") and obs.endswith("(stateless=False)")
    with pytest.raises(FileNotFoundError, match=r"no_such\.j2"):
        ReToolEnv(tasks=tasks, system_template="no_such.j2")


def test_default_tasks_make_it_run_out_of_the_box() -> None:
    env = envs.make("spo_gym/ReTool-v0")
    obs, info = env.reset(seed=0)
    assert "Compute the exact value" in obs and info["data_source"] == "spo_gym/arithmetic"


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        ("<think>reason " + CODE.format("print(1)") + "</think> \\boxed{1}", ""),
        ("<think>no close \\boxed{1}", "exactly one </think>, found 0"),
        ("</think></think> \\boxed{1}", "exactly one </think>, found 2"),
        ("<think>ok</think> now " + CODE.format("print(1)"), "code after </think>"),
        ("<think>ok</think> ```python\nprint(1)\n```", "code after </think>"),
        ("<think>ok</think> <interpreter>1</interpreter>", "code after </think>"),
    ],
)
def test_paper_format_rule(response: str, problem: str) -> None:
    found = paper_format_problem(response)
    assert found.endswith(problem) if problem else found == ""


async def test_reward_rules(tasks: list[Task]) -> None:
    task = tasks[0]
    binary = ReToolEnv(tasks=tasks)
    paper = ReToolEnv(tasks=tasks, reward="paper")
    right = f"The answer is \\boxed{{{task.answer}}}."
    assert (await binary.score(_episode(task, right))).reward == 1.0
    assert (await binary.score(_episode(task, "\\boxed{-1}"))).reward == 0.0
    score = await paper.score(_episode(task, right))
    assert (score.reward, score.status) == (0.0, "format")
    score = await paper.score(_episode(task, "<think>" + CODE.format("1"), "</think>" + right))
    assert (score.reward, score.status) == (1.0, "ok")
    with pytest.raises(ValueError, match="reward"):
        ReToolEnv(tasks=tasks, reward="dense")  # type: ignore[arg-type]


def test_grader_status_is_recorded_not_a_silent_zero(tasks: list[Task]) -> None:
    env = ReToolEnv(tasks=tasks)
    env.reset(seed=0)
    *_, reward, terminated, truncated, info = env.step("I am not sure.")
    assert (reward, terminated, truncated) == (0.0, True, False)
    assert info["termination_reason"] == "no_tool_call"
    assert info["score"].status == "no_answer"


def test_interpreter_output_cannot_plant_the_answer(tasks: list[Task]) -> None:
    env = ReToolEnv(tasks=tasks)
    env.reset(seed=0)
    task = env.episode.task  # type: ignore[union-attr]
    planted = _episode(task, CODE.format("print('\\\\boxed{...}')"), "Done.")
    planted.observations = [f"<interpreter>\n\\boxed{{{task.answer}}}\n</interpreter>\n\n", ""]
    assert asyncio.run(env.score(planted)).reward == 0.0


# -- with the real sandbox ---------------------------------------------------------------------


@pytest.mark.docker
def test_stateless_mode_runs_cells_apart_and_echoes(pool: SandboxPool, tasks: list[Task]) -> None:
    env = envs.make("spo_gym/ReTool-v0", pool=pool, tasks=tasks, stateless=True)
    env.reset(seed=0)
    obs, *_ = env.step(CODE.format("x = 6\nx * 7"))
    assert "42" in obs, "the trailing expression is printed"
    obs, *_, info = env.step(CODE.format("print(x)"))
    assert "NameError" in obs and info["tool_result"].status is RunStatus.ERROR
    env.close()


@pytest.mark.docker
async def test_hermes_call_runs_in_the_sandbox(pool: SandboxPool, tasks: list[Task]) -> None:
    env = envs.make(
        "spo_gym/ReTool-v0", pool=pool, tasks=tasks, generation={"tool_format": "hermes"}
    )
    await env.areset(seed=0)
    actions = env.demo_actions()
    assert actions[0].count("<tool_call>") == 1
    rewards = [(await env.astep(a))[1] for a in actions]
    assert rewards == [0.0, 0.0, 1.0]


@pytest.mark.docker
async def test_sandbox_killed_during_a_cell_is_scored_normally(
    pool: SandboxPool, tasks: list[Task], docker_client: Any
) -> None:
    env = envs.make("spo_gym/ReTool-v0", pool=pool, tasks=tasks, tool_timeout_s=60)
    await env.areset(seed=0)
    await env.astep(CODE.format("x = 1"))
    assert env.session is not None and env.session.container_id
    container = env.session.container_id
    step = asyncio.ensure_future(env.astep(CODE.format("import time\ntime.sleep(60)")))
    await asyncio.sleep(1.0)
    await asyncio.to_thread(docker_client.api.kill, container)
    obs, reward, terminated, truncated, info = await asyncio.wait_for(step, 30)
    assert info["tool_result"].status is RunStatus.SANDBOX_ERROR
    assert "died" in obs and (reward, terminated, truncated) == (0.0, False, False)
    assert not info["masked"]
    # The episode goes on with a fresh sandbox (state lost) and is scored as usual.
    obs, *_ = await env.astep(CODE.format("print('alive')\nprint(x)"))
    assert "alive" in obs and "NameError" in obs
    answer = f"\\boxed{{{env.episode.task.answer}}}"  # type: ignore[union-attr]
    _, reward, terminated, _, info = await env.astep(answer)
    assert (reward, terminated, info["masked"]) == (1.0, True, False)
    assert info["termination_reason"] == "answered"


async def test_no_sandbox_obtainable_masks_the_episode(tasks: list[Task]) -> None:
    dead = SandboxPool(SandboxConfig(docker_url="unix:///nonexistent/docker.sock"))
    try:
        env = envs.make("spo_gym/ReTool-v0", pool=dead, tasks=tasks)
        obs, info = await env.areset(seed=0)
        assert not info["masked"]
        obs, reward, terminated, truncated, info = await env.astep(CODE.format("print(1)"))
        assert (obs, reward, terminated, truncated) == ("", 0.0, True, False)
        assert info["masked"] and info["termination_reason"] == "masked"
        assert info["score"] is None and "Docker daemon" in info["detail"]
        with pytest.raises(RuntimeError, match="masked"):
            await env.astep("\\boxed{1}")
    finally:
        await dead.close()
