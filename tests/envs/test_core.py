"""The env contract: reset/step/truncate semantics, sandbox lifetime, sync and async use."""

from __future__ import annotations

import asyncio
from typing import Any

import gymnasium as gym
import pytest
from gymnasium.spaces import Text
from gymnasium.utils.env_checker import check_env

import envs
from envs import (
    AnyText,
    Episode,
    GenerationSpec,
    ReToolEnv,
    Score,
    ScoreUnavailable,
    Task,
    ToolEnv,
    default_pool,
)
from sandbox import RunResult, RunStatus, SandboxPool

INFO_KEYS = {"prompt_key", "episode_id", "turn", "tool_calls", "call", "tool_result", "timings",
             "termination_reason", "masked", "score"}  # fmt: skip
CODE = "<code>\n```python\n{}\n```\n</code>"


# -- spaces and declarations -----------------------------------------------------------------


def test_text_spaces_accept_any_text() -> None:
    turn = "Let me check: <code>\n```python\nprint({'a': 1/2})\n```\n</code> → \\boxed{\\frac12} 答"
    assert not Text(1 << 20).contains(turn)  # why AnyText exists
    space = AnyText()
    assert space.contains(turn) and space.contains("")
    assert not space.contains(b"bytes") and not space.contains(None)
    assert not AnyText(max_length=4).contains("12345")
    space.seed(0)
    samples = [space.sample() for _ in range(20)]
    assert all(space.contains(s) and len(s) <= space.sample_max_length for s in samples)
    assert len(set(samples)) > 1
    assert len(space.sample(mask=(7, None))) == 7


def test_generation_spec_defaults_and_validation() -> None:
    spec = GenerationSpec()
    assert (spec.tool_format, spec.stop, spec.include_stop) == ("retool", ("</code>",), True)
    assert spec.observation_placement == "inline" and spec.max_turns == 8
    hermes = spec.updated({"tool_format": "hermes", "max_turns": 3})
    assert hermes.stop == ("</tool_call>",) and hermes.observation_placement == "message"
    assert hermes.max_turns == 3
    assert GenerationSpec.for_format("hermes", stop=["</tool_call>", "<|im_end|>"]).stop == (
        "</tool_call>",
        "<|im_end|>",
    )
    assert spec.to_dict()["stop"] == ["</code>"]
    for bad in ({"max_turns": 0}, {"tool_format": "xml"}, {"max_episode_tokens": 0},
                {"truncation_side": "left"}, {"max_observation_chars": 0}):  # fmt: skip
        with pytest.raises(ValueError):
            GenerationSpec(**bad)


# -- the contract, with a toy env (no sandbox) ---------------------------------------------------


def test_reset_step_terminated_semantics(echo_env: type[ToolEnv], tasks: list[Task]) -> None:
    env = echo_env(tasks=tasks)
    with pytest.raises(RuntimeError, match="reset"):
        env.step("too early")
    obs, info = env.reset(seed=3)
    assert info.keys() >= INFO_KEYS
    assert obs == info["messages"][-1]["content"] and env.episode is not None
    assert obs == env.episode.task.prompt and info["prompt_key"] == env.episode.task.key
    assert info["turn"] == 0 and info["termination_reason"] is None and not info["masked"]
    assert info["tools"][0]["function"]["name"] == "code_interpreter"

    obs, reward, terminated, truncated, info = env.step("Compute." + CODE.format("print(1)"))
    assert obs == "<interpreter>\necho: print(1)\n</interpreter>\n\n"
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert (
        info["turn"] == 1
        and info["tool_calls"] == 1
        and info["call"].arguments == {"code": "print(1)"}
    )
    assert info["timings"]["tool_s"] >= 0 and info["timings"]["step_s"] >= info["timings"]["tool_s"]

    obs, reward, terminated, truncated, info = env.step("So it is right")
    assert (obs, reward, terminated, truncated) == ("", 1.0, True, False)
    assert info["termination_reason"] == "answered" and info["score"] == Score(1.0)
    assert info["turn"] == 2 and "score_s" in info["timings"]
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step("more")

    env.reset()
    *_, info = env.step("I give up.")
    assert info["termination_reason"] == "no_tool_call" and info["score"] == Score(0.0)


def test_max_turns_truncates(echo_env: type[ToolEnv], tasks: list[Task]) -> None:
    env = echo_env(tasks=tasks, generation={"max_turns": 2})
    env.reset(seed=0)
    assert env.step(CODE.format("a = 1"))[1:4] == (0.0, False, False)
    obs, reward, terminated, truncated, info = env.step(CODE.format("b = 2"))
    assert (obs, reward, terminated, truncated) == ("", 0.0, False, True)
    assert info["termination_reason"] == "max_turns" and info["score"] is None
    assert info["tool_calls"] == 1, "the tool of a turn over the limit does not run"
    assert env.scored == 0  # type: ignore[attr-defined]

    # The last allowed turn may still answer normally.
    env.reset(seed=0)
    env.step(CODE.format("a = 1"))
    assert env.step("right")[1:4] == (1.0, True, False)


def test_truncate_for_token_budget(echo_env: type[ToolEnv], tasks: list[Task]) -> None:
    env = echo_env(tasks=tasks)
    env.reset(seed=0)
    env.step(CODE.format("x = 1"))
    obs, reward, terminated, truncated, info = env.truncate("token_budget", action="partial ri")
    assert (obs, reward, terminated, truncated) == ("", 0.0, False, True)
    assert info["termination_reason"] == "token_budget" and info["score"] is None
    assert not info["masked"] and info["turn"] == 1
    assert env.episode is not None and env.episode.unfinished == "partial ri"
    assert env.scored == 0  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="unknown truncation reason"):
        env.reset(seed=0)
        env.truncate("tired")  # type: ignore[arg-type]


def test_an_unfinished_turn_is_never_graded(echo_env: type[ToolEnv], tasks: list[Task]) -> None:
    # A turn cut by a token limit may hold a \boxed{} written mid-reasoning: with
    # score_truncated the episode is scored on its completed turns only.
    scoring = echo_env(tasks=tasks, score_truncated=True)
    scoring.reset(seed=0)
    scoring.step(CODE.format("x = 1"))
    _, reward, _, truncated, info = scoring.truncate("turn_tokens", action="so it is right")
    assert truncated and info["termination_reason"] == "turn_tokens"
    assert info["score"] == Score(0.0) and reward == 0.0
    assert scoring.episode is not None and "right" not in scoring.episode.response


def test_watchdog_truncation_masks(echo_env: type[ToolEnv], tasks: list[Task]) -> None:
    env = echo_env(tasks=tasks, score_truncated=True)
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.truncate("watchdog", action="it is right")
    assert (reward, terminated, truncated) == (0.0, False, True)
    assert info["masked"] and info["termination_reason"] == "watchdog" and info["detail"]
    assert info["score"] is None and env.scored == 0  # type: ignore[attr-defined]


def test_malformed_calls_and_long_output_are_observations(
    echo_env: type[ToolEnv], tasks: list[Task]
) -> None:
    env = echo_env(tasks=tasks, generation={"max_observation_chars": 100})
    env.reset(seed=0)
    obs, _, terminated, _, info = env.step("<code>\n```python\n\n```\n</code>")
    assert "the code block is empty" in obs and not terminated
    assert info["tool_calls"] == 0 and info["call"].error
    obs, *_ = env.step(CODE.format("y" * 1000))
    body = obs.removeprefix("<interpreter>\n").removesuffix("\n</interpreter>\n\n")
    assert len(body) <= 100 and "characters truncated" in body
    obs, *_ = env.step(CODE.format("a") + CODE.format("b"))
    assert "echo: a" in obs and "1 more ignored" in obs


def test_hermes_observations_are_tool_messages(echo_env: type[ToolEnv], tasks: list[Task]) -> None:
    env = echo_env(tasks=tasks, generation={"tool_format": "hermes"})
    assert env.generation.stop == ("</tool_call>",)
    env.reset(seed=0)
    call = '<tool_call>{"name": "code_interpreter", "arguments": {"code": "1 + 1"}}</tool_call>'
    assert env.step(call)[0] == "echo: 1 + 1"
    assert (
        "unknown tool 'sql'"
        in env.step('<tool_call>{"name": "sql", "arguments": {}}</tool_call>')[0]
    )


def test_reset_options_and_task_sources(echo_env: type[ToolEnv], tasks: list[Task]) -> None:
    env = echo_env(tasks=tasks)
    first = env.reset(seed=11)[0]
    assert env.reset(seed=11)[0] == first
    assert len({env.reset(seed=s)[0] for s in range(8)}) > 1
    assert env.reset(options={"task": tasks[5]})[0] == tasks[5].prompt
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"tsk": tasks[0]})
    with pytest.raises(TypeError, match="Task"):
        env.reset(options={"task": "1 + 1"})
    with pytest.raises(ValueError, match="no task"):
        echo_env().reset()
    generated = echo_env(tasks=lambda rng: tasks[int(rng.integers(2))])
    assert generated.reset(seed=1)[0] in {tasks[0].prompt, tasks[1].prompt}


def test_exception_in_a_step_ends_the_episode(echo_env: type[ToolEnv], tasks: list[Task]) -> None:
    class Broken(echo_env):  # type: ignore[misc, valid-type]
        async def score(self, episode: Episode) -> Score:
            raise ZeroDivisionError("grader bug")

    env = Broken(tasks=tasks)
    env.reset(seed=0)
    with pytest.raises(ZeroDivisionError):
        env.step("right")
    assert env.episode is not None and env.episode.termination_reason == "error"


def test_unavailable_score_masks_the_episode(echo_env: type[ToolEnv], tasks: list[Task]) -> None:
    class GraderDown(echo_env):  # type: ignore[misc, valid-type]
        async def score(self, episode: Episode) -> Score:
            raise ScoreUnavailable("grader worker did not start (3 attempts)")

    env = GraderDown(tasks=tasks)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step("right")
    assert (obs, reward, terminated, truncated) == ("", 0.0, True, False)
    assert info["masked"] and info["termination_reason"] == "masked"
    assert info["score"] is None and "grader worker did not start" in info["detail"]


def test_gymnasium_env_checker(tasks: list[Task]) -> None:
    # Random actions hold no code, so no sandbox is needed; the check covers spaces, seeding,
    # returned types, fresh info objects and a double close().
    env = envs.make("spo_gym/ReTool-v0", tasks=tasks)
    check_env(env, skip_render_check=True)
    env.close()


def test_gymnasium_make_wraps_the_same_env(tasks: list[Task]) -> None:
    wrapped = gym.make("spo_gym/ReTool-v0", tasks=tasks)
    assert isinstance(wrapped.unwrapped, ReToolEnv)
    obs, info = wrapped.reset(seed=0)
    assert isinstance(obs, str) and info["prompt_key"]
    wrapped.close()


def test_default_pool_is_shared_and_lazy(echo_env: type[ToolEnv], tasks: list[Task]) -> None:
    started = default_pool().loop is not None
    env = echo_env(tasks=tasks)
    assert env.pool is default_pool() is echo_env(tasks=tasks).pool
    env.reset(seed=0)
    env.step(CODE.format("1"))  # this env's tool needs no sandbox
    env.step("right")
    env.close()
    assert (default_pool().loop is not None) == started, "no sandbox, no pool start"


# -- with the real sandbox ---------------------------------------------------------------------


@pytest.mark.docker
def test_retool_episode_sync(pool: SandboxPool, tasks: list[Task]) -> None:
    before = pool.stats().in_use
    env = envs.make("spo_gym/ReTool-v0", pool=pool, tasks=tasks)
    env.reset(seed=0)
    first, second, answer = env.demo_actions()
    obs, *_, info = env.step(first)
    assert obs == "<interpreter>\n41\n</interpreter>\n\n"
    assert isinstance(info["tool_result"], RunResult) and info["tool_result"].status is RunStatus.OK
    assert "acquire_s" in info["timings"] and pool.stats().in_use == before + 1
    obs, *_ = env.step(second)
    assert "42" in obs, "variables persist between cells"
    _, reward, terminated, truncated, info = env.step(answer)
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert info["score"].status == "ok" and not info["masked"]
    assert env.session is None and pool.stats().in_use == before
    assert [r.status for r in env.episode.results] == [RunStatus.OK, RunStatus.OK]  # type: ignore[union-attr]
    env.close()


@pytest.mark.docker
def test_close_mid_episode_releases_the_container(
    pool: SandboxPool, tasks: list[Task], wait_until: Any
) -> None:
    def settled() -> bool:  # no container between episodes (being scrubbed or created)
        stats = pool.stats()
        return stats.live == stats.ready + stats.in_use

    def after_episodes() -> int:  # containers scrubbed and served again, or rejected
        stats = pool.stats()
        return stats.reused + sum(stats.scrub_rejections.values())

    env = envs.make("spo_gym/ReTool-v0", pool=pool, tasks=tasks)
    env.reset(seed=1)
    env.step(CODE.format("x = 1"))
    assert env.session is not None
    assert wait_until(settled)
    in_use, scrubbed = pool.stats().in_use, after_episodes()
    env.close()
    assert env.session is None and pool.stats().in_use == in_use - 1
    # The container went back to the pool: scrubbed, then served again or removed.
    assert wait_until(lambda: after_episodes() == scrubbed + 1)
    env.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        env.step("more")

    # A new reset releases the previous episode's sandbox too.
    env.reset(seed=2)
    env.step(CODE.format("x = 1"))
    assert pool.stats().in_use == in_use
    env.reset(seed=3)
    assert env.session is None and pool.stats().in_use == in_use - 1


@pytest.mark.docker
async def test_many_envs_in_parallel(pool: SandboxPool, tasks: list[Task]) -> None:
    async def episode(seed: int) -> tuple[float, bool]:
        env = envs.make("spo_gym/ReTool-v0", pool=pool, tasks=tasks)
        try:
            await env.areset(seed=seed)
            for action in env.demo_actions():
                _, reward, *_, info = await env.astep(action)
            return reward, info["masked"]
        finally:
            await env.aclose()

    before = pool.stats().in_use
    results = await asyncio.gather(*(episode(seed) for seed in range(4)))
    assert results == [(1.0, False)] * 4
    assert pool.stats().in_use == before


@pytest.mark.docker
async def test_async_close_inside_the_pool_loop(tasks: list[Task]) -> None:
    # A pool started on this loop: env.close() from inside it must not block the loop.
    async with SandboxPool(warm=0, self_test=False) as own:
        env = envs.make("spo_gym/ReTool-v0", pool=own, tasks=tasks)
        await env.areset(seed=0)
        await env.astep(CODE.format("x = 1"))
        with pytest.raises(RuntimeError, match="async twin"):
            env.step("right")
        env.close()
        assert env.session is not None, "released by a task, not while blocking the loop"
        for _ in range(100):
            await asyncio.sleep(0.01)
            if own.stats().in_use == 0:
                break
        assert env.session is None and own.stats().in_use == 0


@pytest.mark.docker
async def test_cancelling_a_step_releases_before_returning(
    pool: SandboxPool, tasks: list[Task]
) -> None:
    before = pool.stats().in_use
    env = envs.make("spo_gym/ReTool-v0", pool=pool, tasks=tasks, tool_timeout_s=60)
    await env.areset(seed=0)
    step = asyncio.ensure_future(env.astep(CODE.format("import time\ntime.sleep(60)")))
    for _ in range(300):
        if env.session is not None:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the cell is running
    step.cancel()
    with pytest.raises(asyncio.CancelledError):
        await step
    assert env.episode is not None and env.episode.termination_reason == "cancelled"
    assert env.session is None and pool.stats().in_use == before


def test_sample_tasks_draws_distinct_tasks_from_the_task_source(
    echo_env: type[ToolEnv], tasks: list[Task]
) -> None:
    listed = echo_env(tasks=tasks)
    drawn = listed.sample_tasks(5, seed=3)
    assert len({t.key for t in drawn}) == 5 and set(drawn) <= set(tasks)
    assert drawn == listed.sample_tasks(5, seed=3) and drawn != listed.sample_tasks(5, seed=4)
    with pytest.raises(ValueError, match="holds 8 tasks, not 9"):
        listed.sample_tasks(9)
    generated = echo_env(tasks=lambda rng: tasks[int(rng.integers(3))])
    assert len(generated.sample_tasks(3)) == 3
    with pytest.raises(ValueError, match="gave 3 distinct tasks, not 4"):
        generated.sample_tasks(4)
    with pytest.raises(ValueError, match="declares no task source"):
        echo_env().sample_tasks(1)


def test_score_from_grade_masks_an_unavailable_grade() -> None:
    from envs import GradeResult

    assert Score.from_grade(GradeResult(True, "numeric", "ok", "7")) == Score(
        1.0, "ok", "numeric: 7"
    )
    assert Score.from_grade(GradeResult(False, "none", "no_answer", "")).reward == 0.0
    with pytest.raises(ScoreUnavailable, match="worker did not start"):
        Score.from_grade(GradeResult(False, "none", "unavailable", "worker did not start"))
