"""``spo-gym eval``: k samples per problem through the sandbox, resumable, with every figure.

One ``--model`` (or ``--base-url``, or ``--policy-factory``) per run; several give a
side-by-side table, overlaid curves and a paired comparison. ``--regrade RUN_DIR`` re-grades a
run's stored samples without regenerating them. The last line of standard output is one JSON
object: the summary figures of each run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


def eval_command(
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        "-d",
        help="A task file (.jsonl/.json/.parquet), 'tiers:d1o1,d3o2[:N]' or 'env[:N]'.",
    ),
    models: list[str] = typer.Option(
        [],
        "--model",
        "-m",
        help="Embedded model name or local HF folder; repeat to compare models "
        "(with --base-url: where the served model's tokenizer is).",
    ),
    base_url: str | None = typer.Option(
        None, help="An OpenAI-compatible server (vLLM / SGLang) to sample from."
    ),
    served_model: str | None = typer.Option(None, help="The name the server serves."),
    policy_factory: list[str] = typer.Option(
        [],
        help="'module:callable' returning (policy, tokenizer) given a seed; repeatable.",
    ),
    env_id: str = typer.Option("spo_gym/ReTool-v0", "--env", help="A registered tool env id."),
    env_options: str = typer.Option("{}", help="Env constructor options as a JSON object."),
    k: int = typer.Option(8, "-k", min=1, help="Samples per problem."),
    temperature: float = typer.Option(0.6, min=0.0),
    top_p: float = typer.Option(0.95),
    top_k: int = typer.Option(20, min=0, help="0 disables top-k."),
    max_tokens: int = typer.Option(1024, min=1, help="Tokens per model turn."),
    max_turns: int | None = typer.Option(
        None, min=1, help="Model turns per episode (default: the env's)."
    ),
    max_episode_tokens: int | None = typer.Option(
        None, min=1, help="Token budget of one episode (default: the env's)."
    ),
    seed: int = typer.Option(0, help="Run seed: each sample's seeds derive from it."),
    offset: int = typer.Option(0, min=0, help="First task of the slice."),
    limit: int | None = typer.Option(None, min=1, help="Tasks in the slice."),
    out: Path = typer.Option(Path("runs/eval"), help="Where runs are kept (one folder each)."),
    concurrency: int = typer.Option(8, "--concurrency", "-c", min=1, help="Episodes at once."),
    episode_timeout: float = typer.Option(
        600.0, min=0.001, help="An episode's budget of active seconds (past it: retried)."
    ),
    max_attempts: int = typer.Option(
        3, min=1, help="Plays of a sample lost to infrastructure before it counts as lost."
    ),
    ray_address: str | None = typer.Option(
        None, help="Play on a Ray cluster: 'auto', 'ray://host:port', or 'local'."
    ),
    ray_workers: int | None = typer.Option(
        None, min=1, help="Eval actors on the cluster (default: one per node)."
    ),
    regrade: Path | None = typer.Option(
        None, help="Re-grade the stored samples of this run folder (no generation)."
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Evaluate models on a dataset: pass@k, maj@k, avg@k with intervals, and SPO's offline
    values."""
    if regrade is not None:
        _regrade(regrade)
        return
    if dataset is None:
        raise _fail("--dataset is required (or --regrade RUN_DIR)")
    try:
        options = json.loads(env_options)
    except json.JSONDecodeError as exc:
        raise _fail(f"--env-options is not JSON: {exc}") from None
    if not isinstance(options, dict):
        raise _fail("--env-options must be a JSON object")
    generation = {
        name: value
        for name, value in (("max_turns", max_turns), ("max_episode_tokens", max_episode_tokens))
        if value is not None
    }
    if generation:
        options["generation"] = {**options.get("generation", {}), **generation}
    from agents.policy import SamplingParams
    from agents.policy_spec import PolicySpec, PolicySpecError
    from evals import EvalConfig
    from sandbox import SandboxConfig

    try:
        specs = [
            *(PolicySpec(model=m, base_url=base_url, served_model=served_model, seed=seed)
              for m in models),
            *(PolicySpec(factory=f, seed=seed) for f in policy_factory),
        ]  # fmt: skip
        if not specs:
            specs = [PolicySpec(base_url=base_url, served_model=served_model, seed=seed)]
        sampling = SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed
        )
    except (PolicySpecError, ValueError) as exc:
        raise _fail(str(exc)) from None
    configs = [
        EvalConfig(
            dataset=dataset,
            policy=spec,
            env_id=env_id,
            env_options=options,
            k=k,
            sampling=sampling,
            offset=offset,
            limit=limit,
            out=out,
            concurrency=concurrency,
            episode_timeout_s=episode_timeout,
            max_attempts=max_attempts,
            ray_address=ray_address,
            ray_workers=ray_workers,
            sandbox=SandboxConfig(warm=min(concurrency, 8), reuse=True),
        )
        for spec in specs
    ]
    outcomes = [_run_one(config, progress) for config in configs]
    figures: dict[str, Any] = {"runs": [_figures(o) for o in outcomes]}
    if len(outcomes) > 1:
        figures["comparison"] = _compare(outcomes, out)
    print(json.dumps(figures))


def _run_one(config: Any, show_progress: bool) -> Any:
    """Run one eval with a progress bar; print its table and where its outputs are."""
    from agents.models import ModelNotFoundError
    from agents.openai_policy import OpenAIPolicyError
    from agents.policy_spec import PolicySpecError
    from evals import run_eval
    from evals.datasets import DatasetError
    from evals.ray_runner import RayUnavailable
    from evals.report import summary_table
    from evals.store import RunCorrupt, RunLocked
    from sandbox import SandboxUnavailable

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[rate]} · right {task.fields[acc]} · lost {task.fields[lost]}"),
        console=console,
        disable=not show_progress,
    )
    handle = bar.add_task(config.policy.label, total=None, rate="–", acc="–", lost=0)

    def on_progress(p: Any) -> None:
        finished = p.done - p.lost
        bar.update(
            handle,
            completed=p.done,
            total=p.total,
            rate=f"{p.played / p.elapsed_s:.2f} samples/s" if p.elapsed_s > 0 else "–",
            acc=f"{p.correct / finished:.1%}" if finished else "–",
            lost=p.lost,
        )

    try:
        with bar:
            outcome = asyncio.run(run_eval(config, on_progress=on_progress))
    except (DatasetError, PolicySpecError, ModelNotFoundError, RunCorrupt, ValueError) as exc:
        raise _fail(str(exc)) from None
    except (RunLocked, OpenAIPolicyError, SandboxUnavailable, RayUnavailable) as exc:
        raise _fail(str(exc), 1) from None
    console.print(summary_table(outcome.summary))
    if outcome.played == 0:
        console.print("[dim]the run was already complete: nothing was sampled[/dim]")
    console.print(f"outputs in {outcome.store.folder}")
    return outcome


def _figures(outcome: Any) -> dict[str, Any]:
    s = outcome.summary
    return {
        "run_id": s.run_id,
        "folder": str(outcome.store.folder),
        "k": s.k,
        "problems": s.problems,
        "samples": s.samples,
        "lost": s.lost,
        "played": outcome.played,
        "wall_s": round(outcome.wall_s, 2),
        f"avg@{s.k}": s.avg.value,
        **{f"pass@{p.k}": p.value for p in s.pass_at},
        **{f"maj@{p.k}": p.value for p in s.maj_at},
    }


def _compare(outcomes: list[Any], out: Path) -> dict[str, Any]:
    from evals.compare import compare_runs
    from evals.plots import plot_pass_at_k
    from evals.report import comparison_markdown, comparison_table

    summaries = [o.summary for o in outcomes]
    labels = [o.summary.run_id for o in outcomes]
    pairs = compare_runs(summaries, labels)
    key = hashlib.blake2b("|".join(labels).encode(), digest_size=6).hexdigest()
    folder = out / f"compare-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comparison.md").write_text(comparison_markdown(summaries, labels, pairs))
    plot_pass_at_k(summaries, folder / "pass_at_k.png", labels)
    console.print(comparison_table(summaries, labels))
    for pair in pairs:
        d = pair.avg
        console.print(
            f"{pair.b} − {pair.a}: {100 * d.difference:+.1f} points per problem "
            f"[{100 * d.ci_low:+.1f}, {100 * d.ci_high:+.1f}] (paired bootstrap), "
            f"only {pair.a}: {len(pair.only_a)}, only {pair.b}: {len(pair.only_b)}"
        )
    console.print(f"comparison in {folder}")
    return {
        "folder": str(folder),
        "pairs": [
            {
                "a": p.a,
                "b": p.b,
                "difference": p.avg.difference,
                "ci": [p.avg.ci_low, p.avg.ci_high],
                "p_value": p.avg.p_value,
                "only_a": len(p.only_a),
                "only_b": len(p.only_b),
            }
            for p in pairs
        ],
    }


def _regrade(folder: Path) -> None:
    from evals.job import SUMMARY_JSON, summarize_run, write_outputs
    from evals.regrade import regrade_run
    from evals.report import summary_table
    from evals.store import RunCorrupt, RunLocked, RunStore

    store = RunStore(folder)
    if not store.exists():
        raise _fail(f"{folder} is not an eval run (no manifest.json)")
    try:
        k = json.loads(store.path(SUMMARY_JSON).read_text())["k"]
    except (OSError, ValueError, KeyError):
        k = max(s.get("k", 1) for s in store.manifest()["sessions"] or [{"k": 1}])
    try:
        with store.lock():
            report = regrade_run(store)
            summary = summarize_run(store, k)
            write_outputs(store, summary)
    except RunLocked as exc:
        raise _fail(str(exc), 1) from None
    except RunCorrupt as exc:
        raise _fail(str(exc)) from None
    table = Table(title=f"verdicts changed by grader {report.grader_version}")
    for column in ("sample", "answer", "was", "now", "detail"):
        table.add_column(column)
    mark: Callable[[bool], str] = lambda ok: "right" if ok else "wrong"  # noqa: E731
    for change in report.changed:
        table.add_row(
            change.id, change.answer or "–", mark(change.was_correct), mark(change.now_correct),
            change.detail[:60],
        )  # fmt: skip
    console.print(table)
    console.print(
        f"{report.checked} re-graded, {len(report.changed)} changed, {report.kept} kept "
        f"(not the grader's verdict), {report.unavailable} could not be graded now"
    )
    console.print(summary_table(summary))
    print(
        json.dumps(
            {
                "run_id": store.run_id,
                "checked": report.checked,
                "changed": [c.id for c in report.changed],
                "unavailable": report.unavailable,
                f"avg@{k}": summary.avg.value,
            }
        )
    )
