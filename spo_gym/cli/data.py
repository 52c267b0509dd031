"""``spo-gym data …``: task data for verl (parquet in the schema spo-gym's agent loop reads)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Task data for verl training and evaluation.", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)


def prepare_command(
    sources: list[str] = typer.Argument(
        None,
        help="What to prepare: a hub name (dapo_math_17k, aime24, aime25, hmmt25, brumo25, "
        "beyondaime), a local task file (PATH or NAME=PATH; .jsonl/.json/.parquet), or "
        "tiers:d2o1,d3o1[:N] (N tasks per tier, plus a held-out file).",
        show_default=False,
    ),
    paper: bool = typer.Option(
        False, "--paper", help="The paper's data from the hub: DAPO-Math-17k (en) + the 5 evals."
    ),
    out: Path = typer.Option(Path("data/verl"), help="Folder of the parquet files."),
    split: str | None = typer.Option(
        None, help="train | test for local files (default: a hub name's own, else train)."
    ),
    heldout_per_tier: int = typer.Option(
        32, min=0, help="Held-out tasks per tier for tiers:… sources (0: none)."
    ),
    seed: int = typer.Option(0, help="Seed of the tier training tasks (spo-gym eval's default)."),
    heldout_seed: int = typer.Option(1_000_003, help="Seed of the held-out tier tasks."),
    env: str = typer.Option("retool", help="The env that plays the rows (extra_info.env)."),
) -> None:
    """Write verl parquet files, one per source; a bad row stops everything, nothing written.

    Hugging Face names need the hub; where it is not reachable, download the file elsewhere
    and pass it as NAME=PATH (e.g. aime24=../shared/data/aime24.jsonl).
    """
    from spo_core.verl.data import HUB_DATASETS, DataPrepareError, parse_source, prepare

    texts = [*(HUB_DATASETS if paper else ()), *(sources or ())]
    if not texts:
        console.print("[red]error:[/red] nothing to prepare: give sources or --paper")
        raise typer.Exit(2)
    try:
        if split not in (None, "train", "test"):
            raise DataPrepareError(f"--split must be train or test, got {split!r}")
        prepared = prepare(
            [parse_source(t) for t in texts],
            out,
            split=split,  # type: ignore[arg-type]
            heldout_per_tier=heldout_per_tier,
            seed=seed,
            heldout_seed=heldout_seed,
            env=env,
        )
    except DataPrepareError as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    table = Table(title=f"verl parquet in {out}")
    for column in ("file", "split", "rows", "data source"):
        table.add_column(column)
    for f in prepared:
        table.add_row(f.path.name, f.split, str(f.rows), ", ".join(f.data_sources))
    console.print(table)
    print(
        json.dumps(
            {"files": [{"path": str(f.path), "split": f.split, "rows": f.rows} for f in prepared]}
        )
    )


app.command("prepare")(prepare_command)
