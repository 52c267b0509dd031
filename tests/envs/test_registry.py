"""The registry: register/make/spec/list, entry-point plugins, the example package, the CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import gymnasium as gym
import pytest
from rich.console import Console
from typer.testing import CliRunner

import envs
from envs import ReToolEnv, Task, ToolEnv
from envs import registry as registry_module
from sandbox import SandboxPool
from spo_gym.cli import app
from spo_gym.cli import envs as cli_envs
from spo_gym.cli.envs import run_checks

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_registration(tasks: list[Task]) -> None:
    assert "spo_gym/ReTool-v0" in envs.list_envs()
    assert envs.env_source("spo_gym/ReTool-v0") == "spo-gym"
    spec = envs.spec("spo_gym/ReTool-v0")
    assert spec.entry_point == "envs.retool:ReToolEnv" and spec.nondeterministic
    env = envs.make("spo_gym/ReTool-v0", tasks=tasks[:1], generation={"max_turns": 3})
    assert type(env) is ReToolEnv, "our make returns the env itself, async twins reachable"
    assert env.generation.max_turns == 3 and callable(env.astep)
    assert env.spec is not None and env.spec.kwargs["generation"] == {"max_turns": 3}
    with pytest.raises(envs.EnvNotFoundError):
        envs.make("spo_gym/NoSuchEnv-v0")


def test_make_keeps_the_pool_out_of_the_spec(tasks: list[Task]) -> None:
    own = SandboxPool()
    env = envs.make("spo_gym/ReTool-v0", pool=own, tasks=tasks)
    assert env.pool is own
    assert env.spec is not None and "pool" not in env.spec.kwargs
    remade = env.spec.make()  # deep-copies the recorded kwargs: works without the pool
    assert isinstance(remade.unwrapped, ReToolEnv)
    remade.close()


def test_register_a_class_directly(echo_env: type[ToolEnv], tasks: list[Task]) -> None:
    envs.register("tests/Echo-v0", echo_env, kwargs={"tasks": tasks})
    assert "tests/Echo-v0" in envs.list_envs()
    env = envs.make("tests/Echo-v0")
    assert isinstance(env, echo_env) and env.tasks == tasks
    envs.register("tests/NotTool-v0", "gymnasium.envs.classic_control:CartPoleEnv")
    with pytest.raises(TypeError, match="not a ToolEnv"):
        envs.make("tests/NotTool-v0")


def test_entry_point_plugins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, echo_env: type[ToolEnv]
) -> None:
    (tmp_path / "fake_plugin.py").write_text(
        textwrap.dedent(
            """
            import envs
            from envs.retool import ReToolEnv

            class PluginEnv(ReToolEnv):
                pass

            def register_all():
                envs.register("fake/ByCallable-v0", "fake_plugin:PluginEnv")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    group = registry_module.ENTRY_POINT_GROUP
    points = [
        EntryPoint("fake/ByClass-v0", "fake_plugin:PluginEnv", group),
        EntryPoint("fake_callable", "fake_plugin:register_all", group),
        EntryPoint("broken", "fake_plugin_missing:Nothing", group),
    ]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: points)
    with pytest.warns(RuntimeWarning, match="fake_plugin_missing"):
        envs.load_plugins(reload=True)
    try:
        ids = envs.list_envs()
        assert {"fake/ByClass-v0", "fake/ByCallable-v0"} <= set(ids)
        assert type(envs.make("fake/ByClass-v0")).__name__ == "PluginEnv"
        assert type(envs.make("fake/ByCallable-v0")).__name__ == "PluginEnv"
        assert any("fake_plugin_missing" in e for e in envs.plugin_errors())
    finally:
        monkeypatch.undo()
        for env_id in ("fake/ByClass-v0", "fake/ByCallable-v0"):
            gym.registry.pop(env_id, None)
        envs.load_plugins(reload=True)
    assert envs.plugin_errors() == []
    assert "fake/ByClass-v0" not in envs.list_envs()


def test_example_package_installs_and_registers_by_entry_point(calculator_site: Path) -> None:
    target = calculator_site
    script = textwrap.dedent(
        """
        import json, envs
        env = envs.make("calculator/Calculator-v0")
        obs, info = env.reset(seed=0)
        steps = [env.step(action) for action in env.demo_actions()]
        print(json.dumps({
            "ids": envs.list_envs(),
            "source": envs.env_source("calculator/Calculator-v0"),
            "stop": list(env.generation.stop),
            "tool": info["tools"][0]["function"]["name"],
            "observation": steps[0][0],
            "final": steps[-1][1:4],
            "sandbox_used": env.pool.loop is not None,
        }))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "calculator/Calculator-v0" in result["ids"] and "spo_gym/ReTool-v0" in result["ids"]
    assert result["source"] == "spo-gym-calculator-env"
    assert result["stop"] == ["</tool_call>"] and result["tool"] == "calculator"
    assert result["observation"].isdigit()
    assert result["final"] == [1.0, True, False] and not result["sandbox_used"]

    spo_gym = Path(sys.executable).with_name("spo-gym")
    cli = subprocess.run(
        [str(spo_gym), "envs", "validate", "calculator/Calculator-v0"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "all" in cli.stdout and "checks passed" in cli.stdout


def test_cli_list() -> None:
    result = CliRunner().invoke(app, ["envs", "list"])
    assert result.exit_code == 0, result.output
    assert "spo_gym/ReTool-v0" in result.output and "envs.retool:ReToolEnv" in result.output


def test_cli_list_never_cuts_the_id_and_shows_plain_descriptions(
    monkeypatch: pytest.MonkeyPatch, echo_env: type[ToolEnv]
) -> None:
    long_id = "a_rather_long_namespace/AnEnvironmentWithALongName-v12"

    class Documented(echo_env):  # type: ignore[misc, valid-type]
        """Solves :class:`~envs.tasks.Task` items with ``code_interpreter`` calls.

        More detail that the listing leaves out.
        """

    envs.register(long_id, Documented)
    out = io.StringIO()
    monkeypatch.setattr(cli_envs, "console", Console(file=out, width=80, color_system=None))
    try:
        result = CliRunner().invoke(app, ["envs", "list"])
    finally:
        gym.registry.pop(long_id, None)
    assert result.exit_code == 0, result.output
    text = out.getvalue()
    assert long_id in text and "spo_gym/ReTool-v0" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    flat = " ".join(text.split())
    assert "Task" in flat and "``" not in flat and ":class:" not in flat
    assert "More detail" not in flat


def test_cli_errors_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    group = registry_module.ENTRY_POINT_GROUP
    points = [EntryPoint("broken/Thing-v0", "no_such_module_here:Env", group)]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: points)
    try:
        for env_id, expected in (
            ("broken/Thing-v0", "plugin failed to load: broken/Thing-v0"),
            ("nope/Nothing-v0", "no env of namespace 'nope'"),
            ("spo_gym/ReTool-v1", "did you mean spo_gym/ReTool-v0"),
            ("ReTool-v0", "must look like namespace/Name-vN"),
        ):
            envs.load_plugins(reload=True)
            result = CliRunner().invoke(app, ["envs", "validate", env_id])
            assert result.exit_code == 2, result.output
            lines = [ln for ln in result.output.splitlines() if ln.strip()]
            assert len(lines) == 1 and lines[0].startswith("error:"), result.output
            assert expected in lines[0] and "Traceback" not in result.output
    finally:
        monkeypatch.undo()
        envs.load_plugins(reload=True)


def test_ids_need_a_namespace_and_a_version(echo_env: type[ToolEnv]) -> None:
    for bad in ("NoNamespace-v0", "ns/NoVersion", "ns/Bad Name-v0", ""):
        with pytest.raises(envs.EnvIdError, match="namespace/Name-vN"):
            envs.register(bad, echo_env)
        with pytest.raises(envs.EnvIdError):
            envs.make(bad)


@pytest.mark.docker
async def test_validate_checks_the_contract(pool: SandboxPool) -> None:
    checks = await run_checks("spo_gym/ReTool-v0", pool)
    failed = [c for c in checks if not c.ok]
    assert not failed, failed
    assert len(checks) >= 12


async def test_validate_reports_failures(echo_env: type[ToolEnv]) -> None:
    # The toy env has no demo episode: validation says so instead of passing.
    envs.register("tests/NoDemo-v0", echo_env, kwargs={"tasks": envs.arithmetic_tasks(2)})
    unused = SandboxPool()  # the toy env needs no sandbox, so this pool never starts
    checks = await run_checks("tests/NoDemo-v0", unused)
    await unused.close()
    assert [c.name for c in checks if not c.ok] == ["scripted episode"]
    assert "no demo episode" in checks[-1].detail


def test_no_public_name_shadows_a_submodule() -> None:
    # `envs.spec` (the registry function) once shadowed the module envs/spec.py, so
    # `import envs.spec; envs.spec.GenerationSpec` failed.
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(envs.__path__):
        module = importlib.import_module(f"envs.{info.name}")
        bound = getattr(envs, info.name, module)
        assert bound is module, f"envs.{info.name} is {bound!r}, not the module"
