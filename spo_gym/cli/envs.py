"""``spo-gym envs …``: list the registered tool envs, validate one against the contract."""

from __future__ import annotations

import asyncio
import inspect
import re
import warnings
from dataclasses import dataclass
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="Tool environments.", no_args_is_help=True)
console = Console()

REQUIRED_INFO = frozenset(
    {"prompt_key", "episode_id", "turn", "tool_calls", "call", "tool_result", "timings"}
    | {"termination_reason", "masked", "score"}
)


_ROLE = re.compile(r":[\w:]+:`~?(?:[^`<]*<)?([^`>]+)>?`")
_WHOLE_ENTRY_POINT = 32  # entry points up to this long are kept whole when they fit
_MIN_DESCRIPTION = 16  # narrowest description column before entry points fold


def plain_summary(doc: str | None) -> str:
    """The first sentence-paragraph of a docstring with its reStructuredText markup removed
    (``:class:`~a.B``` → ``B``, double backquotes dropped)."""
    first = (doc or "").strip().split("\n\n", 1)[0]
    text = " ".join(first.split())
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return text.replace("``", "")


def _quietly_load_plugins() -> list[str]:
    """Loads the plugins without their warnings (the CLI prints failures as one line each)."""
    import envs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return envs.plugin_errors()


def _fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command("list")
def list_envs() -> None:
    """List the registered tool envs (built in and from installed plugins)."""
    import envs

    errors = _quietly_load_plugins()
    ids = envs.list_envs()
    rows = []
    for env_id in ids:
        entry = envs.spec(env_id).entry_point
        creator = envs.env_creator(env_id)
        qualname = getattr(creator, "__qualname__", repr(creator))
        name = entry if isinstance(entry, str) else f"{creator.__module__}:{qualname}"
        rows.append((env_id, envs.env_source(env_id), name, inspect.getdoc(creator)))
    # The id is what a user copies: it is never cut. Entry points of ordinary length stay whole
    # too while a readable description still fits beside them; longer ones fold.
    id_width = max((len(i) for i in ids), default=2)
    source_width = max((len(row[1]) for row in rows), default=6)
    left = console.width - 13 - id_width - source_width  # 5 borders, 2 padding per column
    longest = max((len(row[2]) for row in rows), default=2)
    entry_width = min(longest, _WHOLE_ENTRY_POINT, left - _MIN_DESCRIPTION)
    table = Table(expand=False)
    table.add_column("id", no_wrap=True, min_width=id_width)
    table.add_column("source", overflow="fold")
    table.add_column(
        "entry point", overflow="fold", width=entry_width if entry_width >= 8 else None
    )
    table.add_column("description", overflow="fold", ratio=1)
    for env_id, source, name, doc in rows:
        table.add_row(env_id, source, escape(name), escape(plain_summary(doc)))
    console.print(table)
    for error in errors:
        console.print(f"[red]plugin failed:[/red] {escape(error)}", highlight=False)


@dataclass(frozen=True)
class Check:
    """One verdict of :func:`run_checks`."""

    name: str
    ok: bool
    detail: str = ""


async def run_checks(env_id: str, pool: Any) -> list[Check]:
    """Plays scripted episodes of ``env_id`` on ``pool`` and checks the env contract."""
    import envs

    checks: list[Check] = []

    def check(name: str, ok: object, detail: str = "") -> bool:
        checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    env = envs.make(env_id, pool=pool)
    try:
        sample = "Try: <code>\n```python\nprint('é', 1/2)\n```\n</code>\n\\boxed{\\frac{1}{2}} ✓"
        check(
            "spaces accept arbitrary text",
            env.action_space.contains(sample) and env.observation_space.contains(sample),
        )
        obs, info = await env.areset(seed=0)
        missing = sorted(REQUIRED_INFO - info.keys())
        check(
            "reset returns (text, info)",
            isinstance(obs, str) and env.observation_space.contains(obs) and not missing,
            f"missing info keys {missing}" if missing else f"prompt_key {info['prompt_key']}",
        )
        again, _ = await env.areset(seed=0)
        check("reset(seed) is reproducible", again == obs)
        try:
            actions = env.demo_actions()
        except NotImplementedError as exc:
            check("scripted episode", False, str(exc))
            return checks
        await _check_episode(env, actions, pool, check)

        await env.areset(seed=1)
        _, reward, terminated, truncated, final = await env.atruncate("token_budget")
        check(
            "truncate() ends the episode truncated, unscored",
            truncated and not terminated and reward == 0.0 and final["score"] is None,
            f"reason {final['termination_reason']}",
        )

        short = envs.make(env_id, pool=pool, generation={"max_turns": 1})
        try:
            await short.areset(seed=0)
            _, _, terminated, truncated, step = await short.astep(short.demo_actions()[0])
            check(
                "max_turns truncates a turn that still calls a tool",
                truncated and not terminated and step["termination_reason"] == "max_turns",
                f"reason {step['termination_reason']}",
            )
        finally:
            await short.aclose()

        await env.areset(seed=2)
        await env.astep(env.demo_actions()[0])
        env.close()
        await env.aclose()
        check(
            "close() mid-episode releases the sandbox",
            env.session is None and pool.stats().in_use == 0,
            f"{pool.stats().in_use} sandboxes in use",
        )
    finally:
        await env.aclose()
    return checks


async def _check_episode(env: Any, actions: list[str], pool: Any, check: Any) -> None:
    results = [await env.astep(action) for action in actions]
    *middle, last = results
    check(
        "steps return (text, float, bool, bool, dict)",
        all(
            isinstance(o, str) and isinstance(r, float) and isinstance(te, bool)
            and isinstance(tr, bool) and isinstance(i, dict)
            for o, r, te, tr, i in results
        ),
    )  # fmt: skip
    check(
        "tool turns continue the episode with an observation",
        all(o and r == 0.0 and not te and not tr for o, r, te, tr, _ in middle),
        f"{len(middle)} tool turns",
    )
    check(
        "turns are counted",
        [i["turn"] for *_, i in results] == list(range(1, len(results) + 1)),
    )
    check("a tool ran", last[4]["tool_calls"] > 0, f"{last[4]['tool_calls']} calls")
    _, reward, terminated, truncated, info = last
    score = info["score"]
    check(
        "the final turn terminates the episode with a positive reward",
        terminated and not truncated and reward > 0 and not info["masked"],
        f"reason {info['termination_reason']}, reward {reward}, score {score}",
    )
    check(
        "the sandbox is released when the episode ends",
        env.session is None and pool.stats().in_use == 0,
    )
    try:
        await env.astep("one more turn")
    except RuntimeError:
        check("step() after the end raises", True)
    else:
        check("step() after the end raises", False, "it returned")


@app.command("validate")
def validate(
    env_id: str = typer.Argument(..., help="A registered id, e.g. spo_gym/ReTool-v0."),
) -> None:
    """Play scripted episodes against the real sandbox and check the env contract."""
    import envs
    from sandbox import SandboxConfig, SandboxPool

    _quietly_load_plugins()
    try:
        envs.spec(env_id)
    except (envs.EnvIdError, envs.EnvNotFoundError) as exc:
        _fail(str(exc))

    async def main() -> list[Check]:
        # Not started here: the pool starts only if the env acquires a sandbox.
        pool = SandboxPool(SandboxConfig(warm=1))
        try:
            return await run_checks(env_id, pool)
        finally:
            await pool.close()

    with console.status(f"validating {env_id}"):
        checks = asyncio.run(main())
    for c in checks:
        mark = "[green]✓[/green]" if c.ok else "[red]✗[/red]"
        detail = f" [dim]({escape(c.detail)})[/dim]" if c.detail else ""
        console.print(f"{mark} {escape(c.name)}{detail}", highlight=False)
    failed = [c for c in checks if not c.ok]
    if failed:
        console.print(f"[red]{escape(env_id)}: {len(failed)} of {len(checks)} checks failed[/red]")
        raise typer.Exit(1)
    console.print(f"[green]{escape(env_id)}: all {len(checks)} checks passed[/green]")
