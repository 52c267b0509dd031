"""Continued SFT: more supervised training of a warm-started nano model for a wall-time budget.

The control of the learning-curve experiment: RL runs start from a warm start and train for
some wall time; continuing the warm start's own SFT for the same time tells a gain of RL apart
from a gain of more training. :func:`continue_sft` loads the model from a nano folder, trains it
on the recipe's traces (those of the warm start's seed, in a fresh batch order from its own
seed) with the warm start's optimizer settings at the constant learning rate the warm start's
schedule ends at, checks the clock between optimizer steps, and stops at the first step
boundary after ``wall_s`` seconds of training. The held-out trace loss is measured before and
after (outside the budget). The result is a complete nano folder in the warm start's layout,
whose ``sft.json`` says it is a continuation; it is written into a temporary sibling and
renamed into place only when complete.

Determinism: the same folder, recipe, seeds and thread count give the same weights step for
step; only the number of steps depends on the clock (``max_steps`` can fix it).
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

from agents.hf_policy import default_num_threads
from agents.nano import NANO_CONFIG_FILE, NanoConfig, parameter_count, save_nano
from spo_core.learner.sft import (
    SFT_REPORT_FILE,
    Continuation,
    Progress,
    SFTRecipe,
    SFTReport,
    batch_indices,
    heldout_loss,
    recipe_traces,
    sft_optimizer,
    sft_step,
    write_recipe,
)
from spo_core.learner.traces import TraceError

__all__ = ["SFTContinueError", "continue_sft"]


class SFTContinueError(ValueError):
    """A continuation that cannot run as asked (the message is one line)."""


def continue_sft(
    folder: Path,
    recipe: SFTRecipe,
    seed: int,
    *,
    wall_s: float,
    out: Path,
    trace_seed: int = 0,
    max_steps: int | None = None,
    num_threads: int | None = None,
    progress: Progress | None = None,
) -> SFTReport:
    """Continue the SFT of the nano model in ``folder`` for ``wall_s`` seconds; save it at ``out``.

    Args:
        folder: a nano folder (``nano.json`` and the model), e.g. a warm start
            (:func:`spo_core.learner.sft.warm_start`); it is only read.
        recipe: the recipe ``folder`` was warm-started with: its traces, batch size, weight
            decay, gradient clip and final learning rate (:attr:`SFTRecipe.final_lr`).
        seed: seeds the batch order and torch's RNG.
        wall_s: seconds of training (held-out evaluations and trace rendering excluded); > 0.
            Training stops at the first step boundary past it.
        out: the new model folder; it must not exist, or be an empty folder.
        trace_seed: the seed ``folder`` was warm-started with: its training and held-out traces
            are ``recipe_traces(recipe, trace_seed, ...)``, so the held-out ones stay unseen.
        max_steps: stop after this many steps even within the budget (``None``: the clock
            alone).
        num_threads: torch threads; default :func:`agents.hf_policy.default_num_threads`.
        progress: receives a line every ``recipe.eval_every`` steps and at the ends.

    Returns:
        The run's figures (``stopped`` "wall" or "max_steps"; ``heldout_loss`` before and
        after), also saved as ``out/sft.json``.

    Raises:
        SFTContinueError: ``folder`` is not a nano folder or does not load, ``wall_s`` <= 0,
            ``max_steps`` < 1, ``out`` exists and is not an empty folder, or the recipe's
            traces do not fit the model's context.
    """
    if not (folder / NANO_CONFIG_FILE).is_file() or not (folder / "config.json").is_file():
        raise SFTContinueError(
            f"{folder} is not a nano model folder (it needs {NANO_CONFIG_FILE} and config.json)"
        )
    if not wall_s > 0:
        raise SFTContinueError(f"the wall-time budget must be > 0 seconds, got {wall_s}")
    if max_steps is not None and max_steps < 1:
        raise SFTContinueError(f"max_steps must be >= 1, got {max_steps}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SFTContinueError(f"{out} exists and is not an empty folder")
    say = progress or (lambda line: None)
    try:
        config = NanoConfig.from_dict(json.loads((folder / NANO_CONFIG_FILE).read_text()))
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
        model = Qwen3ForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError, TypeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SFTContinueError(f"{folder}: cannot load the nano model ({first_line})") from None
    say(f"rendering traces for tiers {', '.join(recipe.tiers)} (seed {trace_seed})")
    try:
        train, heldout = recipe_traces(recipe, trace_seed, tokenizer, config.context)
    except TraceError as exc:
        raise SFTContinueError(f"the recipe's traces do not fit {folder}: {exc}") from None
    lr = recipe.final_lr
    threads = num_threads or default_num_threads()
    report = SFTReport(
        stopped="wall",
        train_traces=len(train),
        heldout_traces=len(heldout),
        train_tokens=sum(sum(t.loss_mask) for t in train),
        num_threads=threads,
        parameters=parameter_count(model),
        continued=Continuation(str(folder.resolve()), seed, trace_seed, lr, float(wall_s)),
    )
    pad_id = int(getattr(model.config, "pad_token_id", 0) or 0)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            report.heldout_loss.append((0, heldout_loss(model, heldout, pad_id)))
            say(
                f"step 0: held-out loss {report.heldout_loss[0][1]:.4f}; lr {lr:.2e} for {wall_s:g} s"
            )
            optimizer = sft_optimizer(model, recipe, lr)
            # Its own stream: a continuation does not replay the warm start's batch order.
            batches = batch_indices(
                len(train), recipe.batch_size, random.Random(f"spo_gym.sft_continue:{seed}")
            )
            window: list[float] = []
            model.train()
            t0 = time.monotonic()
            while time.monotonic() - t0 < wall_s:
                if max_steps is not None and report.steps >= max_steps:
                    report.stopped = "max_steps"
                    break
                picked = [train[i] for i in next(batches)]
                window.append(sft_step(model, optimizer, picked, pad_id, recipe.grad_clip))
                report.steps += 1
                if report.steps % recipe.eval_every == 0:
                    report.train_loss.append((report.steps, sum(window) / len(window)))
                    window = []
                    say(
                        f"step {report.steps}: train loss {report.train_loss[-1][1]:.4f} "
                        f"({time.monotonic() - t0:.0f} s)"
                    )
            report.train_s = time.monotonic() - t0
            if window:
                report.train_loss.append((report.steps, sum(window) / len(window)))
            report.heldout_loss.append((report.steps, heldout_loss(model, heldout, pad_id)))
    finally:
        torch.set_num_threads(previous_threads)
        model.eval()
    say(
        f"step {report.steps} ({report.stopped}, {report.train_s:.1f} s): held-out loss "
        f"{report.heldout_loss[0][1]:.4f} -> {report.heldout_loss[-1][1]:.4f}"
    )
    _save(out, config, model, tokenizer, report, recipe, trace_seed)
    return report


def _save(
    out: Path,
    config: NanoConfig,
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    report: SFTReport,
    recipe: SFTRecipe,
    trace_seed: int,
) -> None:
    """Write the folder into a temporary sibling, then rename it into place (a rename replaces
    an empty folder), so ``out`` is either absent or complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        save_nano(tmp, config, model, tokenizer)
        (tmp / SFT_REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        write_recipe(tmp, recipe, trace_seed)  # the same traces: a job keeps them out
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
