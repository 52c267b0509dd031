"""``spo-gym nano``: build the nano model and warm-start it on ideal tool-use traces (cached),
or continue a warm start's SFT for a wall-time budget (``--continue-from``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import NoReturn

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
    continue_from: Path | None = typer.Option(
        None,
        "--continue-from",
        help="Continue the SFT of this warm-started nano folder (the recipe of --ci or the "
        "default one, at its final learning rate) for --wall-s seconds into --out; --seed "
        "seeds the batch order.",
    ),
    wall_s: float | None = typer.Option(
        None, "--wall-s", help="With --continue-from: seconds of training (> 0)."
    ),
    trace_seed: int = typer.Option(
        0,
        "--trace-seed",
        help="With --continue-from: the seed the folder was warm-started with (which traces "
        "are training and which held out).",
    ),
) -> None:
    """Build the nano model (a from-scratch Qwen3 with a character-level tokenizer) and
    warm-start it with SFT on ideal tool-use traces of the arithmetic family.

    The result is cached by (config, recipe, seed): a second run returns it at once. With
    --continue-from, continue a warm start's SFT for --wall-s seconds instead (not cached) and
    write the model into --out. Progress and the SFT figures go to stderr; the last stdout line
    is one JSON object with the model folder and the figures.
    """
    if seed < 0:
        _fail(f"--seed must be >= 0, got {seed}")
    if threads is not None and threads < 1:
        _fail(f"--threads must be >= 1, got {threads}")
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        _fail(f"--out {out} exists and is not an empty folder")
    if continue_from is not None:
        _continue(continue_from, wall_s, out, ci, seed, trace_seed, threads)
        return
    if wall_s is not None:
        _fail("--wall-s goes with --continue-from")
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


def _continue(
    folder: Path,
    wall_s: float | None,
    out: Path | None,
    ci: bool,
    seed: int,
    trace_seed: int,
    threads: int | None,
) -> None:
    """``--continue-from``: continued SFT of ``folder`` into ``out``."""
    from agents.nano import CI_CONFIG, NANO_CONFIG_FILE, NanoConfig

    if not (folder / NANO_CONFIG_FILE).is_file():
        _fail(f"--continue-from {folder}: not a nano model folder (no {NANO_CONFIG_FILE})")
    try:
        is_ci = (
            NanoConfig.from_dict(json.loads((folder / NANO_CONFIG_FILE).read_text())) == CI_CONFIG
        )
    except (OSError, ValueError, TypeError) as exc:
        _fail(f"--continue-from {folder}: unreadable {NANO_CONFIG_FILE} ({exc})")
    from spo_core.learner.sft import load_recipe

    named = load_recipe(folder)
    # A folder built before folders named their recipe: the CI nano goes with the CI recipe.
    if named is None and is_ci != ci:
        _fail(
            f"--continue-from {folder}: "
            + (
                "the CI nano continues with the CI recipe: add --ci"
                if is_ci
                else "not the CI nano: drop --ci"
            )
        )
    if wall_s is None or not wall_s > 0:
        _fail(f"--wall-s must be > 0 with --continue-from, got {wall_s}")
    if out is None:
        _fail("--continue-from needs --out, the new model folder")
    if trace_seed < 0:
        _fail(f"--trace-seed must be >= 0, got {trace_seed}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"--out {out}: cannot create its parent folder ({exc.strerror or exc})")

    from transformers.utils import logging as hf_logging

    from spo_core.learner.sft import CI_RECIPE, DEFAULT_RECIPE
    from spo_core.learner.sft_continue import SFTContinueError, continue_sft

    hf_logging.disable_progress_bar()
    if named is not None:
        recipe, trace_seed = named
        recipe_name = "the folder's"
    else:
        recipe = CI_RECIPE if ci else DEFAULT_RECIPE
        recipe_name = "ci" if ci else "default"
    console.print(f"continuing {folder} ({recipe_name} recipe), seed {seed}, {wall_s:g} s")
    try:
        report = continue_sft(
            folder,
            recipe,
            seed,
            wall_s=wall_s,
            out=out,
            trace_seed=trace_seed,
            num_threads=threads,
            progress=lambda line: console.print(f"  {escape(line)}", highlight=False),
        )
    except SFTContinueError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"--out {out}: cannot write the model ({exc.strerror or exc})")
    first, last = report.heldout_loss[0][1], report.heldout_loss[-1][1]
    console.print(
        f"{report.steps} steps in {report.train_s:.1f} s on {report.num_threads} thread(s); "
        f"held-out trace loss {first:.4f} -> {last:.4f}"
    )
    console.print(f"model: {out}")
    figures = {
        "model": str(out),
        "continued_from": str(folder),
        "recipe": recipe.to_dict(),
        "seed": seed,
        "trace_seed": trace_seed,
        "parameters": report.parameters,
        "steps": report.steps,
        "stopped": report.stopped,
        "train_s": round(report.train_s, 1),
        "wall_budget_s": wall_s,
        "lr": round(recipe.final_lr, 10),
        "heldout_loss_before": round(first, 4),
        "heldout_loss_after": round(last, 4),
    }
    print(json.dumps(figures))


def _fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(2)
