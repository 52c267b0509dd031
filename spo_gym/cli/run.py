"""``spo-gym run``: a ReTool agent solving N problems, shown live, summarised at the end."""

from __future__ import annotations

import asyncio
import functools
import json
import statistics
import warnings
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

console = Console(stderr=True, soft_wrap=True)


def run(
    n: int = typer.Option(8, "--n", "-n", min=1, help="Problems to solve."),
    env_id: str = typer.Option("spo_gym/ReTool-v0", "--env", help="A registered tool env id."),
    data: Path | None = typer.Option(
        None,
        help="Task file (JSONL/parquet, verl schema or {problem, answer}); default: the env's "
        "own task source (ReTool: the built-in arithmetic-with-tool family).",
    ),
    digits: int | None = typer.Option(
        None,
        min=1,
        help="Solve the built-in arithmetic family with operands of this many digits "
        "(default 4 with --operations) instead of the env's own tasks.",
    ),
    operations: int | None = typer.Option(
        None,
        min=1,
        help="Operations per built-in arithmetic task (default 2 with --digits).",
    ),
    model: str = typer.Option(
        "smollm2-135m",
        help="Embedded model name or a local HF folder (with --base-url: "
        "where the served model's tokenizer is).",
    ),
    base_url: str | None = typer.Option(
        None, help="An OpenAI-compatible server (vLLM / SGLang) to sample from instead."
    ),
    served_model: str | None = typer.Option(
        None, help="The model name the server serves (default: --model)."
    ),
    concurrency: int = typer.Option(4, "--concurrency", "-c", min=1, help="Episodes at once."),
    max_tokens: int = typer.Option(384, min=1, help="Tokens per model turn."),
    max_episode_tokens: int = typer.Option(2048, min=1, help="Token budget of one episode."),
    max_turns: int = typer.Option(4, min=1, help="Model turns per episode."),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, help="Nucleus mass."),
    episode_timeout: float = typer.Option(
        600.0, min=0.001, help="Budget per episode (s of the episode's own work; past it, masked)."
    ),
    demonstrations: int | None = typer.Option(
        None,
        min=0,
        help="Worked examples shown before each problem, for envs that take them "
        "(default 1 there).",
    ),
    seed: int = typer.Option(
        0, help="Task and sampling seed (each turn's seed is derived from it per sample)."
    ),
    out: Path | None = typer.Option(None, help="Write one trajectory per line (JSONL)."),
) -> None:
    """Run a tool agent (ReTool by default) on N problems with a local model and the sandbox."""
    import envs

    try:
        options = _env_options(env_id, demonstrations)
        if data is not None:
            tasks = envs.load_tasks(data, limit=n)
        elif digits is not None or operations is not None:
            tasks = envs.arithmetic_tasks(
                n, digits=digits or 4, operations=operations or 2, seed=seed
            )
        else:
            # The env's own task source; making it acquires nothing.
            tasks = envs.make(env_id, **options).sample_tasks(n, seed=seed)
    except (
        envs.TaskDataError,
        envs.EnvIdError,
        envs.EnvNotFoundError,
        envs.GraderUnavailable,
        OSError,
        ValueError,
    ) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    if not tasks:
        console.print("[red]error:[/red] no tasks to run")
        raise typer.Exit(2)
    settings = {
        "env_id": env_id,
        "model": model,
        "base_url": base_url,
        "served_model": served_model or model,
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "max_episode_tokens": max_episode_tokens,
        "max_turns": max_turns,
        "temperature": temperature,
        "top_p": top_p,
        "episode_timeout": episode_timeout,
        "seed": seed,
        "out": out,
        "env_options": options,
    }
    asyncio.run(_run(tasks, **settings))


def _env_options(env_id: str, demonstrations: int | None) -> dict[str, Any]:
    """The CLI's env options that ``env_id`` declares; an option given explicitly to an env
    that does not take it is an error."""
    import envs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a failed plugin is named by spec()
        accepted = envs.env_parameters(env_id)
    if "demonstrations" in accepted:
        return {"demonstrations": 1 if demonstrations is None else demonstrations}
    if demonstrations is not None:
        raise ValueError(f"{env_id} does not take --demonstrations")
    return {}


class _View:
    """The live table: one row per episode."""

    def __init__(self, tasks: list[Any]) -> None:
        self.rows: dict[str, dict[str, str]] = {
            t.key: {
                "problem": t.prompt if isinstance(t.prompt, str) else str(t.prompt[-1]),
                "status": "[dim]queued[/dim]",
                "turns": "0",
                "code": "",
                "output": "",
                "answer": "",
                "verdict": "",
            }
            for t in tasks
        }

    def update(self, key: str, **fields: str) -> None:
        self.rows[key].update(fields)

    def render(self) -> Table:
        table = Table(expand=True, show_lines=False, title="spo-gym run")
        for col, width in (
            ("problem", 34),
            ("status", 9),
            ("turns", 5),
            ("last code", 26),
            ("interpreter", 18),
            ("answer", 10),
            ("verdict", 8),
        ):
            table.add_column(col, max_width=width, no_wrap=True, overflow="ellipsis")
        for row in self.rows.values():
            table.add_row(
                row["problem"],
                row["status"],
                row["turns"],
                row["code"],
                row["output"],
                row["answer"],
                row["verdict"],
            )
        return table


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " ⏎ ".join(lines)[:200]


async def _run(tasks: list[Any], **s: Any) -> None:
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    from agents.engine import RolloutEngine, RolloutError, TaskCycle
    from agents.episode import run_episode
    from agents.episode_request import EpisodeRequest
    from agents.hf_policy import HFPolicy
    from agents.models import ModelNotFoundError, resolve_model
    from agents.openai_policy import OpenAIPolicy, OpenAIPolicyError
    from agents.passing_thread import in_passing_thread
    from agents.policy import Policy, SamplingParams
    from envs import extract_boxed, make
    from envs.formats import parse_action
    from sandbox import SandboxConfig, SandboxPool, SandboxUnavailable

    view = _View(tasks)
    with console.status(f"loading {s['model']}"):
        try:
            tokenizer: PreTrainedTokenizerBase
            if s["base_url"]:
                tokenizer = await asyncio.to_thread(
                    AutoTokenizer.from_pretrained, resolve_model(s["model"])
                )
                # A run is scored, not trained on: any kind of log-prob will do.
                policy: Policy = await asyncio.to_thread(
                    OpenAIPolicy, s["base_url"], s["served_model"], require_tempered=False
                )
            else:
                hf = await in_passing_thread(
                    functools.partial(HFPolicy.from_pretrained, seed=s["seed"]), s["model"]
                )
                policy, tokenizer = hf, hf.tokenizer
        except ModelNotFoundError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        except OpenAIPolicyError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from exc
    with console.status("starting the sandbox pool"):
        pool = SandboxPool(SandboxConfig(warm=min(s["concurrency"], 8), default_timeout_s=30))
        try:
            await pool.start()
        except SandboxUnavailable as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from exc
    sampling = SamplingParams(
        max_tokens=s["max_tokens"], temperature=s["temperature"], top_p=s["top_p"], seed=s["seed"]
    )
    generation = {"max_turns": s["max_turns"], "max_episode_tokens": s["max_episode_tokens"]}

    async def episode(request: EpisodeRequest) -> Any:
        task = request.task
        env = make(s["env_id"], pool=pool, generation=generation, **s["env_options"])
        view.update(task.key, status="[yellow]running[/yellow]")

        def on_event(kind: str, payload: dict[str, Any]) -> None:
            if kind == "turn":
                call = parse_action(
                    payload["action"], env.generation.tool_format, {t.name: t for t in env.tools}
                )
                code = getattr(call, "arguments", {}).get("code", "") if call else ""
                boxed = extract_boxed(payload["action"])
                view.update(
                    task.key,
                    turns=str(int(view.rows[task.key]["turns"]) + 1),
                    code=_one_line(code) or view.rows[task.key]["code"],
                    answer=boxed or view.rows[task.key]["answer"],
                )
            elif kind == "observation":
                view.update(task.key, output=_one_line(payload["text"]))

        try:
            traj = await run_episode(env, policy, tokenizer, request, sampling, on_event=on_event)
        finally:
            await env.aclose()
        verdict = (
            "[dim]masked[/dim]"
            if traj.masked
            else "[green]correct[/green]"
            if traj.reward > 0
            else "[red]wrong[/red]"
        )
        view.update(
            task.key, status=traj.termination_reason, verdict=verdict, turns=str(traj.turns)
        )
        return traj

    engine = RolloutEngine(
        episode,
        TaskCycle(tasks, seed=s["seed"]),
        policy=policy,
        episode_timeout_s=s["episode_timeout"],
        max_concurrency=s["concurrency"],
    )
    try:
        with Live(view.render(), console=console, refresh_per_second=4) as live:
            refresher = asyncio.ensure_future(_refresh(live, view))
            try:
                batch = await engine.next_batch(len(tasks))
            except RolloutError as exc:
                console.print(f"[red]error:[/red] {exc}")
                raise typer.Exit(1) from exc
            finally:
                refresher.cancel()
            live.update(view.render())
    finally:
        await engine.close()
        await pool.close()
    trajectories = batch.trajectories
    if s["out"] is not None:
        s["out"].parent.mkdir(parents=True, exist_ok=True)
        with open(s["out"], "w") as f:
            for t in trajectories:
                f.write(json.dumps(t.to_dict()) + "\n")
    console.print(_summary(trajectories, batch.stats))
    if s["out"] is not None:
        console.print(f"trajectories written to {s['out']}")


async def _refresh(live: Live, view: _View) -> None:
    while True:
        await asyncio.sleep(0.25)
        live.update(view.render())


def _summary(trajectories: list[Any], stats: Any) -> Panel:
    scored = [t for t in trajectories if not t.masked]
    table = Table(show_header=False, box=None)
    acc = sum(t.reward > 0 for t in scored) / max(len(scored), 1)
    table.add_row("episodes", f"{len(trajectories)} ({len(trajectories) - len(scored)} masked)")
    table.add_row("accuracy", f"{acc:.1%} of scored episodes")
    table.add_row("tool-use rate", f"{sum(t.used_tool for t in scored) / max(len(scored), 1):.1%}")
    table.add_row("mean turns", f"{statistics.fmean(t.turns for t in trajectories):.2f}")
    table.add_row("ended by", ", ".join(f"{k} {v}" for k, v in sorted(stats.termination.items())))
    table.add_row("tokens / model turn", f"{stats.tokens_per_turn:.1f}")
    timings = stats.mean_timings
    table.add_row(
        "time split (mean s)",
        f"llm {timings['llm_s']:.2f} · sandbox {timings['sandbox_s']:.2f} · grader "
        f"{timings['grader_s']:.2f} · queue {timings['queue_wait_s']:.2f} · episode {timings['total_s']:.2f}",
    )
    table.add_row("wall time", f"{stats.wall_s:.1f} s")
    return Panel(Group(table), title="summary")
