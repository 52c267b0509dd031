"""``spo-gym train`` (``./run_retool.sh``): SPO or GRPO training of a ReTool agent, shown live.

The one table of flags for the main job. ``--backend auto`` trains locally (the CPU learner in
:mod:`spo_core.learner`) unless a CUDA GPU and verl's rollout engine are present; ``--dry-run``
prints the resolved plan and, for verl, its launch command, without running anything. Bad input
is a one-line error before any work starts. The last line of standard output is one JSON object
with the run's figures.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

console = Console(stderr=True, soft_wrap=True)

METHODS = ("spo", "grpo")
ABLATIONS = ("full", "no_baseline", "no_offline_init", "uniform_sampling")
BACKENDS = ("auto", "local", "verl")


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


def gpu_environment() -> str | None:
    """Why the GPU path cannot run here (``None`` if it can)."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    for module in ("verl", "vllm"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    return None


@dataclass(frozen=True)
class Plan:
    """The resolved job: backend, and every setting the job runs with."""

    backend: str
    method: str
    ablation: str
    model: str
    seed: int
    tiers: list[str]
    candidate_tiers: list[str]
    train_per_tier: int
    heldout_n: int
    heldout_seed: int
    heldout_k: int
    offline_k: int
    offline_values: str | None
    episode_budget: int | None
    steps: int | None
    eval_every: int
    temperature: float
    learner: dict[str, Any]
    concurrency: int
    out: str
    resume: str | None


def verl_command(plan: Plan) -> list[str]:
    """verl 0.9.1's launch command for the plan (SPO_SPEC §8's loss settings)."""
    n = 1 if plan.method == "spo" else 8
    batch = plan.learner.get("batch_size", 2048) if plan.method == "spo" else 256
    return [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        f"algorithm.adv_estimator={'spo' if plan.method == 'spo' else 'grpo'}",
        "algorithm.use_kl_in_reward=False",
        f"data.train_batch_size={batch}",
        f"actor_rollout_ref.model.path={plan.model}",
        f"actor_rollout_ref.rollout.n={n}",
        "actor_rollout_ref.rollout.name=vllm",
        f"actor_rollout_ref.rollout.temperature={plan.temperature}",
        f"actor_rollout_ref.actor.optim.lr={plan.learner.get('lr', 1e-6)}",
        "actor_rollout_ref.actor.optim.weight_decay=0.01",
        f"actor_rollout_ref.actor.optim.lr_warmup_steps={plan.learner.get('lr_warmup_steps', -1)}",
        "actor_rollout_ref.actor.grad_clip=1.0",
        "actor_rollout_ref.actor.ppo_mini_batch_size=256",
        "actor_rollout_ref.actor.ppo_epochs=1",
        "actor_rollout_ref.actor.clip_ratio_low=0.2",
        "actor_rollout_ref.actor.clip_ratio_high=0.28",
        "actor_rollout_ref.actor.clip_ratio_c=10.0",
        "actor_rollout_ref.actor.loss_agg_mode=token-mean",
        "actor_rollout_ref.actor.use_kl_loss=False",
        "actor_rollout_ref.actor.entropy_coeff=0",
        f"trainer.default_local_dir={plan.out}/checkpoints",
    ]


def _parse_learner(pairs: Sequence[str]) -> dict[str, Any]:
    from spo_core.learner.args import LearnerArgs

    fields = LearnerArgs.__dataclass_fields__
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or name not in fields:
            raise _fail(
                f"--set {pair!r}: expected NAME=VALUE with NAME a learner setting "
                f"({', '.join(sorted(fields))})"
            )
        try:
            out[name] = json.loads(raw)
        except json.JSONDecodeError:
            out[name] = raw
    return out


def train(
    method: str = typer.Option("spo", help="spo | grpo (GRPO: G = 8 per prompt, group batches)."),
    ablation: str = typer.Option(
        "full", help="SPO ablation: full | no_baseline | no_offline_init | uniform_sampling."
    ),
    model: str = typer.Option(
        "nano",
        help="nano (a character-level Qwen3, SFT warm start, cached) | nano-ci (CI-sized) | "
        "smollm2 (SmolLM2-135M-Instruct) | a local Hugging Face model folder.",
    ),
    backend: str = typer.Option(
        "auto", help="auto (verl with a GPU and verl + vLLM installed, else local) | local | verl."
    ),
    seed: int = typer.Option(0, help="Learner seed (prompt sampling, sampling seeds)."),
    tiers: str = typer.Option(
        "",
        help="Training tiers, comma separated (d<digits>o<operations>[n], e.g. d4o1,d3o2); "
        "empty: chosen where the warm start solves 20-60% with pass@8 well above pass@1.",
    ),
    candidate_tiers: str = typer.Option(
        "d3o2,d4o1,d4o2,d5o1", help="Tiers measured for the automatic choice."
    ),
    train_per_tier: int = typer.Option(64, min=1, help="Training prompts per tier."),
    heldout_n: int = typer.Option(300, min=1, help="Held-out problems (a separate seed)."),
    heldout_seed: int = typer.Option(1_000_003, help="Seed of the held-out problems."),
    heldout_k: int = typer.Option(4, min=1, help="Sampled episodes per held-out problem (avg@k)."),
    offline_k: int = typer.Option(
        8, min=1, help="Offline samples per prompt (tracker start; pass@k of the tier choice)."
    ),
    offline_values: Path | None = typer.Option(
        None,
        help="Read the offline values from this file (an eval run's offline_values.jsonl of "
        "the training prompts) instead of sampling them.",
    ),
    episodes: int = typer.Option(1024, min=1, help="Training episode budget."),
    steps: int | None = typer.Option(
        None,
        min=0,
        help="Training steps (overrides --episodes); 0: only evaluate the model on the held-out "
        "set (no training; with --tiers, no offline values either).",
    ),
    eval_every: int = typer.Option(8, min=0, help="Held-out evaluation every N steps (0: end)."),
    temperature: float = typer.Option(1.0, min=0.01, help="Training sampling temperature."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Learner setting NAME=VALUE (repeatable), e.g. --set lr=1e-4 --set batch_size=16.",
    ),
    concurrency: int = typer.Option(32, min=1, help="Episodes at once (and warm containers)."),
    out: Path = typer.Option(
        Path("runs/retool"), help="Run folder: metrics.jsonl, TensorBoard, checkpoints, curve."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from --out's last checkpoint."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the resolved plan (and verl's launch command); run nothing."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No live view; stages on stderr only."),
) -> None:
    """Train a ReTool agent with SPO (or GRPO) and report its held-out gain."""
    from envs.tasks import Tier, TierError

    method, ablation, backend = method.lower(), ablation.lower(), backend.lower()
    if method not in METHODS:
        raise _fail(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    if ablation not in ABLATIONS:
        raise _fail(f"unknown ablation {ablation!r}; one of {', '.join(ABLATIONS)}")
    if method == "grpo" and ablation != "full":
        raise _fail("ablations apply to SPO; GRPO runs as --ablation full")
    if backend not in BACKENDS:
        raise _fail(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    try:
        tier_list = [Tier.parse(t).name for t in tiers.split(",") if t.strip()]
        candidates = [Tier.parse(t).name for t in candidate_tiers.split(",") if t.strip()]
    except TierError as exc:
        raise _fail(str(exc)) from exc
    if not tier_list and not candidates:
        raise _fail("give --tiers or --candidate-tiers")
    if model not in ("nano", "nano-ci", "smollm2") and not (Path(model) / "config.json").is_file():
        raise _fail(f"model {model!r}: not nano, nano-ci, smollm2 or a folder with config.json")
    if resume and not (out / "checkpoints").is_dir():
        raise _fail(f"--resume: no checkpoints under {out}/checkpoints")
    learner = _parse_learner(set_)
    why_not_gpu = gpu_environment()
    resolved = backend if backend != "auto" else ("local" if why_not_gpu else "verl")
    plan = Plan(
        backend=resolved,
        method=method,
        ablation=ablation,
        model=model,
        seed=seed,
        tiers=tier_list,
        candidate_tiers=candidates,
        train_per_tier=train_per_tier,
        heldout_n=heldout_n,
        heldout_seed=heldout_seed,
        heldout_k=heldout_k,
        offline_k=offline_k,
        offline_values=str(offline_values) if offline_values is not None else None,
        episode_budget=None if steps is not None else episodes,
        steps=steps,
        eval_every=eval_every,
        temperature=temperature,
        learner=learner,
        concurrency=concurrency,
        out=str(out),
        resume=str(out / "checkpoints") if resume else None,
    )
    config = _job_config(plan)  # validates the learner settings before any work
    if dry_run:
        console.print(Panel(_plan_table(plan), title="plan"))
        if resolved == "verl":
            console.print("verl launch command:")
            print(shlex.join(verl_command(plan)))
        print(json.dumps({"dry_run": True, **asdict(plan)}))
        return
    if resolved == "verl":
        raise _fail(
            f"the verl backend cannot run here: {why_not_gpu}; use --backend local"
            if why_not_gpu
            else "the verl backend's trainer is not part of this version; use --backend local "
            "(--dry-run prints verl's launch command)"
        )
    result = _run_local(config, quiet)
    print(json.dumps(result))


def _job_config(plan: Plan) -> Any:
    from spo_core.learner.args import LearnerArgsError
    from spo_core.learner.job import JobConfig, JobError, validate

    config = JobConfig(
        method=plan.method,  # type: ignore[arg-type]
        ablation=plan.ablation,  # type: ignore[arg-type]
        model=plan.model,
        seed=plan.seed,
        tiers=tuple(plan.tiers),
        candidate_tiers=tuple(plan.candidate_tiers),
        train_per_tier=plan.train_per_tier,
        heldout_n=plan.heldout_n,
        heldout_seed=plan.heldout_seed,
        heldout_k=plan.heldout_k,
        offline_k=plan.offline_k,
        offline_values=Path(plan.offline_values) if plan.offline_values else None,
        episode_budget=plan.episode_budget or 1,
        steps=plan.steps,
        eval_every=plan.eval_every,
        temperature=plan.temperature,
        learner=plan.learner,
        concurrency=plan.concurrency,
        out=Path(plan.out),
        resume=Path(plan.resume) if plan.resume else None,
    )
    try:
        validate(config)
    except (JobError, LearnerArgsError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    return config


def _plan_table(plan: Plan) -> Table:
    table = Table(show_header=False, box=None)
    for name, value in asdict(plan).items():
        table.add_row(name, json.dumps(value) if isinstance(value, dict | list) else str(value))
    return table


class _LiveView:
    """The live view: stages, tier figures, held-out results, the last training steps."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.stages: list[str] = []
        self.progress_text = ""
        self.heldout_rows: list[tuple[str, str, str, str]] = []
        self.steps: deque[Any] = deque(maxlen=12)
        self.tier_table: Table | None = None
        self.live: Live | None = None

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.render())

    def stage(self, name: str, detail: str) -> None:
        line = f"[bold]{name}[/bold]: {detail}"
        self.stages.append(line)
        self.progress_text = ""
        if self.quiet or self.live is None:
            console.print(line)
        self._refresh()

    def progress(self, progress: Any) -> None:
        self.progress_text = (
            f"{progress.prompts_done}/{progress.prompts_total} prompts, "
            f"{progress.episodes} episodes ({progress.masked} masked), {progress.elapsed_s:.0f} s"
        )
        self._refresh()

    def tiers(self, rates: Mapping[str, Any], chosen: Sequence[str]) -> None:
        table = Table(title="warm start per tier (offline samples)")
        for col in ("tier", "prompts", "pass@1", "pass@8", "chosen"):
            table.add_column(col)
        for name, r in rates.items():
            table.add_row(
                name,
                str(r.prompts),
                f"{r.pass1:.2f}",
                f"{r.passk:.2f}",
                "✓" if name in chosen else "",
            )
        self.tier_table = table
        if self.quiet or self.live is None:
            console.print(table)
        self._refresh()

    def heldout(self, label: str, report: Any) -> None:
        tiers = " ".join(f"{t}:{s.greedy:.2f}" for t, s in report.per_tier.items())
        # Evaluations during training are greedy only (k = 0): no avg@k to show.
        avg = f"{report.avg_at_k:.3f}" if report.k else "-"
        row = (
            label,
            f"{report.greedy_accuracy:.3f}",
            f"avg@{report.k} {avg}" if report.k else avg,
            tiers,
        )
        self.heldout_rows.append(row)
        if self.quiet or self.live is None:
            sampled = f", avg@{report.k} {avg}" if report.k else ""
            console.print(f"held-out {label}: greedy {row[1]}{sampled} ({tiers})")
        self._refresh()

    def step(self, report: Any) -> None:
        self.steps.append(report)
        if self.quiet:
            console.print(
                f"step {report.step}: episodes {report.episodes} reward {report.reward_mean:.3f} "
                f"loss {report.loss:.4f} zero-adv {report.frac_zero_adv:.2f}"
            )
        self._refresh()

    def render(self) -> Group:
        parts: list[Any] = [Panel("\n".join(self.stages[-6:]) + f"\n{self.progress_text}")]
        if self.tier_table is not None:
            parts.append(self.tier_table)
        if self.heldout_rows:
            held = Table(title="held-out accuracy")
            for col in ("when", "greedy", "sampled", "per tier (greedy)"):
                held.add_column(col)
            for row in self.heldout_rows:
                held.add_row(*row)
            parts.append(held)
        if self.steps:
            steps = Table(title="training steps")
            cols = (
                "step", "episodes", "reward", "v̂ mean", "N_eff", "ρ", "zero-adv", "carried",
                "stale", "loss", "llm s", "sandbox s", "grader s", "learner s",
            )  # fmt: skip
            for col in cols:
                steps.add_column(col, justify="right")
            for r in self.steps:
                steps.add_row(
                    str(r.step), str(r.episodes), f"{r.reward_mean:.3f}",
                    f"{r.tracker_value_mean:.3f}", f"{r.tracker_neff_mean:.1f}",
                    f"{r.rho_mean:.3f}",
                    f"{r.frac_zero_adv if r.degenerate_share == 0 else r.degenerate_share:.2f}",
                    f"{r.carried_share:.2f}", f"{r.staleness_mean:.2f}", f"{r.loss:+.4f}",
                    f"{r.llm_s:.1f}", f"{r.sandbox_s:.1f}", f"{r.grader_s:.1f}",
                    f"{r.learner_s:.1f}",
                )  # fmt: skip
            parts.append(steps)
        return Group(*parts)


def _run_local(config: Any, quiet: bool) -> dict[str, Any]:
    from agents.engine import RolloutError
    from envs.tasks import TierError
    from sandbox import SandboxUnavailable
    from spo_core.learner import CheckpointError, LearnerArgsError
    from spo_core.learner.job import JobError, run_job_sync
    from spo_core.learner.tier_choice import TierChoiceError
    from spo_core.offline import OfflineMatchError

    view = _LiveView(quiet)
    try:
        if quiet:
            result = run_job_sync(config, view)
        else:
            with Live(view.render(), console=console, refresh_per_second=2) as live:
                view.live = live
                result = run_job_sync(config, view)
    except (CheckpointError, JobError, LearnerArgsError, TierChoiceError, TierError) as exc:
        raise _fail(str(exc)) from exc
    except (OfflineMatchError, RolloutError, SandboxUnavailable) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    summary = result.summary()
    gain = summary["heldout_gain_points"]
    console.print(
        f"held-out greedy accuracy {summary['heldout_accuracy_before']:.3f} → "
        f"{summary['heldout_accuracy_after']:.3f} ({gain:+.1f} points) on "
        f"{summary['heldout_n']} problems; {summary['episodes']} episodes in "
        f"{summary['train_wall_s']:.0f} s of training"
        + (f"; curve: {result.curve}" if result.curve is not None else "")
    )
    return summary
