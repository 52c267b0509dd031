"""``spo-gym nano``: build the nano model and warm-start it on ideal tool-use traces (cached)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True, soft_wrap=True)


def nano(
    ci: bool = typer.Option(False, "--ci", help="The CI config and recipe (~80k parameters)."),
    seed: int = typer.Option(0, "--seed", help="Run seed (trace order, batches); >= 0."),
    out: Path | None = typer.Option(
        None, "--out", help="Also copy the warm-started model into this new folder."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="Torch threads for training (default: all CPUs but one)."
    ),
) -> None:
    """Build the nano model (a from-scratch Qwen3 with a character-level tokenizer) and
    warm-start it with SFT on ideal tool-use traces of the arithmetic family.

    The result is cached by (config, recipe, seed): a second run returns it at once. Progress
    and the SFT figures go to stderr; the last stdout line is one JSON object with the model
    folder and the figures.
    """
    if seed < 0:
        _fail(f"--seed must be >= 0, got {seed}")
    if threads is not None and threads < 1:
        _fail(f"--threads must be >= 1, got {threads}")
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        _fail(f"--out {out} exists and is not an empty folder")
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _fail(f"--out {out}: cannot create the folder ({exc.strerror or exc})")

    from transformers.utils import logging as hf_logging

    from agents.nano import CI_CONFIG, DEFAULT_CONFIG
    from spo_core.learner.sft import CI_RECIPE, DEFAULT_RECIPE, load_report, warm_start

    hf_logging.disable_progress_bar()

    config, recipe = (CI_CONFIG, CI_RECIPE) if ci else (DEFAULT_CONFIG, DEFAULT_RECIPE)
    console.print(f"nano ({'ci' if ci else 'default'} config), seed {seed}")
    folder = warm_start(
        config,
        recipe,
        seed,
        num_threads=threads,
        progress=lambda line: console.print(f"  {escape(line)}", highlight=False),
    )
    report = load_report(folder)
    first, last = report.heldout_loss[0][1], report.heldout_loss[-1][1]
    console.print(
        f"{report.parameters:,} parameters; {report.steps} steps ({report.stopped}) in "
        f"{report.train_s:.0f} s on {report.num_threads} thread(s); held-out trace loss "
        f"{first:.3f} -> {last:.3f}"
    )
    if out is not None:
        shutil.copytree(folder, out, dirs_exist_ok=True)
        folder = out
    console.print(f"model: {folder}")
    figures = {
        "model": str(folder),
        "config": "ci" if ci else "default",
        "seed": seed,
        "parameters": report.parameters,
        "steps": report.steps,
        "stopped": report.stopped,
        "train_s": round(report.train_s, 1),
        "heldout_loss_before": round(first, 4),
        "heldout_loss_after": round(last, 4),
    }
    print(json.dumps(figures))


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(2)
