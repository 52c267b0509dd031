"""``spo-gym sandbox …``: build the image, run batch jobs."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

app = typer.Typer(help="The Docker code sandbox.", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)
# The command-line option that sets each SandboxConfig field, for one-line errors.
OPTION_OF = {"default_timeout_s": "--timeout", "memory_mb": "--memory-mb"}


@app.command("build-image")
def build_image(
    force: bool = typer.Option(False, help="Rebuild even if the recipe's image exists."),
    offline: bool | None = typer.Option(
        None, "--offline/--registry", help="Force the build route (default: detect)."
    ),
) -> None:
    """Build the sandbox image (cached by a hash of its recipe)."""
    from sandbox.image import ensure_image
    from sandbox.results import ImageBuildError

    with console.status("building the sandbox image") as status:

        def log(line: str) -> None:
            console.print(line, markup=False, highlight=False)
            status.update(line[:100])

        try:
            tag = ensure_image(force=force, offline=offline, log=log)
        except ImageBuildError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from exc
    console.print(f"[green]ready:[/green] {tag}")


@app.command("run")
def run_jobs(
    jobs_file: Path = typer.Argument(
        ...,
        help='JSONL input, one job per line: {"id", "code", "timeout"?, "files"?}; files maps '
        'relative paths to text written under /tmp/work first, e.g. {"data.csv": "a,b\\n1,2\\n"}.',
    ),
    out_file: Path = typer.Argument(..., help="JSONL output; appended to, resumable."),
    concurrency: int = typer.Option(8, "--concurrency", "-c", min=1, help="Jobs running at once."),
    timeout: float = typer.Option(30.0, help="Default per-job timeout in seconds."),
    memory_mb: int = typer.Option(1024, help="Memory limit per sandbox."),
    reuse: bool = typer.Option(
        True,
        help="Serve a container to the next job after a verified scrub (--no-reuse: a fresh one each).",
    ),
) -> None:
    """Run each job in its own sandbox session; results appended as they finish.

    SIGINT or SIGTERM stops the run cleanly: running jobs are cancelled, the containers
    removed, the summary printed; the same command resumes it.
    """
    from pydantic import ValidationError

    from sandbox.batch import BatchInputError, completed_ids, read_jobs
    from sandbox.config import SandboxConfig
    from sandbox.results import SandboxError

    try:
        cfg = SandboxConfig(
            default_timeout_s=timeout,
            memory_mb=memory_mb,
            reuse=reuse,
            warm=min(concurrency, 8),
            max_containers=max(concurrency * 2, 8),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        _fail(f"{OPTION_OF.get(field, field)}: {first['msg']} (got {first.get('input')!r})")
    folder = out_file.parent
    if not folder.is_dir():
        _fail(f"the output folder {folder} does not exist")
    if out_file.is_dir() or not os.access(out_file if out_file.exists() else folder, os.W_OK):
        _fail(f"cannot write the output file {out_file}")
    try:
        jobs = read_jobs(jobs_file)
        remaining = len(jobs) - len(completed_ids(out_file) & {j.id for j in jobs})
    except (BatchInputError, OSError) as exc:
        _fail(str(exc))
    try:
        summary, signals = asyncio.run(_run_jobs(cfg, jobs, out_file, concurrency, remaining))
    except SandboxError as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from exc
    _print_summary(summary)
    if summary.interrupted:
        sig = signals[0] if signals else signal.SIGINT
        console.print(
            f"[yellow]stopped by {sig.name}: {summary.not_run} job(s) not run; "
            "run the same command again to resume (interrupted)[/yellow]"
        )
        raise typer.Exit(128 + sig.value)
    if summary.unavailable:
        console.print(
            f"[yellow]{len(summary.unavailable)} job(s) got no sandbox and were not written; "
            "run the same command again to retry them[/yellow]"
        )
        raise typer.Exit(1)


def _fail(message: str) -> Any:
    """Prints a one-line error and exits with the usage-error code."""
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(2)


async def _run_jobs(
    cfg: Any, jobs: list[Any], out_file: Path, concurrency: int, remaining: int
) -> tuple[Any, list[signal.Signals]]:
    from sandbox.batch import run_batch
    from sandbox.pool import SandboxPool

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[statuses]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("sandbox jobs", total=remaining, statuses="")
            counts: Counter[str] = Counter()

            def on_result(job: Any, result: Any) -> None:
                counts[result.status.value if result is not None else "unavailable"] += 1
                progress.update(
                    task,
                    advance=1,
                    statuses=" ".join(f"{k}={v}" for k, v in sorted(counts.items())),
                )

            async with SandboxPool(cfg) as pool:
                summary = await run_batch(
                    pool, jobs, out_file, concurrency=concurrency, on_result=on_result, stop=stop
                )
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return summary, received


def _print_summary(summary: Any) -> None:
    from statistics import median

    table = Table(title="sandbox jobs")
    table.add_column("status")
    table.add_column("jobs", justify="right")
    for status, n in sorted(summary.statuses.items()):
        table.add_row(status, str(n))
    if summary.unavailable:
        table.add_row("no sandbox (retry)", str(len(summary.unavailable)))
    if summary.interrupted:
        table.add_row("not run (interrupted)", str(summary.not_run - len(summary.unavailable)))
    table.add_row("already done (skipped)", str(summary.skipped))
    durations = sorted(summary.durations_s)
    p99 = durations[min(len(durations) - 1, int(0.99 * len(durations)))] if durations else 0.0
    console.print(table)
    console.print(
        f"ran {summary.done} job(s) in {summary.wall_s:.1f} s "
        f"({summary.done / max(summary.wall_s, 1e-9):.1f} jobs/s); cell latency "
        f"p50 {median(durations) * 1e3 if durations else 0:.1f} ms, p99 {p99 * 1e3:.1f} ms"
    )
