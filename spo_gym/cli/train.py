"""``spo-gym train`` (``./run_retool.sh``): SPO or GRPO training of a ReTool agent, shown live.

The one table of flags for the main job. ``--backend auto`` trains locally (the CPU learner in
:mod:`spo_core.learner`) unless an NVIDIA GPU and the GPU environment (scripts/gpu_env.sh) are
present; ``--backend verl`` launches verl with a config of ``configs/verl``
(:mod:`spo_core.verl.launch`). ``--dry-run`` prints the resolved plan and, for verl, the composed
configuration and the launch command, without running anything. Bad input is a one-line error
before any work starts. The last line of standard output is one JSON object with the run's
figures.
"""

from __future__ import annotations

import json
import shlex
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

if TYPE_CHECKING:
    from spo_core.verl.launch import LaunchSpec

console = Console(stderr=True, soft_wrap=True)

METHODS = ("spo", "grpo")
ABLATIONS = ("full", "no_baseline", "no_offline_init", "uniform_sampling")
BACKENDS = ("auto", "local", "verl")


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


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
    model: str | None = typer.Option(
        None,
        help="nano (the local default: a character-level Qwen3, SFT warm start, cached) | "
        "nano-ci (CI-sized) | smollm2 (SmolLM2-135M-Instruct) | a local Hugging Face model "
        "folder | with verl also a hub id (verl's default: the config's, Qwen/Qwen3-8B).",
    ),
    backend: str = typer.Option(
        "auto",
        help="auto (verl with an NVIDIA GPU and the GPU environment of scripts/gpu_env.sh, "
        "else local) | local | verl.",
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
    verl_config: str | None = typer.Option(
        None,
        help="verl: a config of configs/verl (default <method>_qwen3_8b; spo_smoke, grpo_smoke "
        "for one GPU).",
    ),
    train_files: list[Path] = typer.Option(
        [], "--train-files", help="verl: training parquet (repeatable; spo-gym data prepare)."
    ),
    val_files: list[Path] = typer.Option(
        [], "--val-files", help="verl: evaluation parquet (repeatable)."
    ),
    nnodes: int | None = typer.Option(None, min=1, help="verl: nodes (default: the config's)."),
    gpus_per_node: int | None = typer.Option(
        None, min=1, help="verl: GPUs per node (default: the config's)."
    ),
    verl_overrides: list[str] = typer.Option(
        [], "--verl", help="verl: a Hydra override KEY=VALUE, applied last (repeatable)."
    ),
) -> None:
    """Train a ReTool agent with SPO (or GRPO) and report its held-out gain.

    The verl backend uses --method, --ablation (full, no_offline_init, uniform_sampling),
    --model, --offline-values, --steps, --seed, --temperature, --set (lr, batch_size,
    lr_warmup_steps), --out, --resume and the verl options.
    """
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
    if resume and not (out / "checkpoints").is_dir():
        raise _fail(f"--resume: no checkpoints under {out}/checkpoints")
    from spo_core.verl.launch import LaunchSpec, gpu_unavailable_reason

    why_not_gpu = None if backend == "local" else gpu_unavailable_reason()
    resolved = backend if backend != "auto" else ("local" if why_not_gpu else "verl")
    if resolved == "verl":
        if why_not_gpu and not dry_run:
            raise _fail(
                f"the verl backend cannot run here: {why_not_gpu}; use --backend local "
                "(--dry-run prints the launch on any machine)"
            )
        spec = LaunchSpec(
            method=method,  # type: ignore[arg-type]
            model=model,
            out=out,
            config_name=verl_config,
            train_files=tuple(map(str, train_files)),
            val_files=tuple(map(str, val_files)),
            nnodes=nnodes,
            gpus_per_node=gpus_per_node,
            offline_values=offline_values,
            cold_start=ablation == "no_offline_init",
            resume=resume,
            seed=seed,
            temperature=temperature,
            overrides=_verl_overrides(set_, ablation, steps, verl_overrides),
        )
        _train_verl(spec, ablation, dry_run)
        return
    model = model or "nano"
    if model not in ("nano", "nano-ci", "smollm2") and not (Path(model) / "config.json").is_file():
        raise _fail(f"model {model!r}: not nano, nano-ci, smollm2 or a folder with config.json")
    learner = _parse_learner(set_)
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
        print(json.dumps({"dry_run": True, **asdict(plan)}))
        return
    result = _run_local(config, quiet)
    print(json.dumps(result))


# The learner settings with a verl counterpart (--set NAME=VALUE on the verl backend).
_VERL_SETTINGS = {
    "lr": "actor_rollout_ref.actor.optim.lr",
    "batch_size": "data.train_batch_size",
    "lr_warmup_steps": "actor_rollout_ref.actor.optim.lr_warmup_steps",
}


def _verl_overrides(
    settings: Sequence[str], ablation: str, steps: int | None, extra: Sequence[str]
) -> tuple[str, ...]:
    """The Hydra overrides that carry the learner flags to verl, then ``extra``."""
    overrides: list[str] = []
    for pair in settings:
        name, sep, value = pair.partition("=")
        if not sep or name not in _VERL_SETTINGS:
            raise _fail(
                f"--set {pair!r}: the verl backend takes {', '.join(sorted(_VERL_SETTINGS))}; "
                "give other verl settings as --verl KEY=VALUE"
            )
        overrides.append(f"{_VERL_SETTINGS[name]}={value}")
    if ablation == "no_baseline":
        raise _fail("--ablation no_baseline runs on the local backend only")
    if ablation == "uniform_sampling":
        overrides.append("++spo_gym.sampler.mode=uniform")  # the block starts empty
    if steps == 0:  # evaluation only, as on the local backend
        overrides += ["trainer.val_only=true", "trainer.val_before_train=true"]
    elif steps is not None:
        overrides.append(f"trainer.total_training_steps={steps}")
    for pair in extra:
        if "=" not in pair:
            raise _fail(f"--verl {pair!r}: expected a Hydra override KEY=VALUE")
    return (*overrides, *extra)


def _train_verl(spec: LaunchSpec, ablation: str, dry_run: bool) -> None:
    """Build the verl launch of ``spec``; print it (``dry_run``) or run it."""
    from omegaconf import OmegaConf

    from spo_core.verl.launch import (
        LaunchError,
        build_launch,
        default_offline_values,
        run_launch,
    )

    try:
        launch = build_launch(spec, prepare_model=not dry_run)
    except LaunchError as exc:
        raise _fail(str(exc)) from None
    summary = {
        "backend": "verl",
        "method": spec.method,
        "ablation": ablation,
        "config": spec.config,
        "model": str(launch.config.actor_rollout_ref.model.path),
        "out": str(spec.out),
        "command": launch.command,
    }
    if launch.config.trainer.nnodes > 1:
        console.print(
            f"{launch.config.trainer.nnodes} nodes: start Ray from the GPU environment on each "
            "(`ray start --head` here, `ray start --address=<head>:6379` on the others); the "
            "command runs on the head node and joins that cluster"
        )
    if dry_run:
        offline = OmegaConf.select(launch.config, "spo_gym.offline_values")
        if spec.offline_values is None and offline == str(default_offline_values(spec)):
            console.print(
                f"SPO starts its tracker from {default_offline_values(spec)}, which the launch "
                "needs: `spo-gym eval --dataset <train parquet> -k 8 --temperature 1.0` writes "
                "it (or pass --offline-values, or --ablation no_offline_init)"
            )
        print(f"# configs/verl/{spec.config}.yaml composed with the command's overrides")
        print(launch.config_yaml, end="")
        console.print("verl launch command:")
        print(shlex.join(launch.command))
        print(json.dumps({"dry_run": True, **summary}))
        return
    console.print(f"launching verl ({spec.config}); configuration: {spec.out}/verl_config.yaml")
    try:
        code = run_launch(launch, spec.out)
    except LaunchError as exc:
        raise _fail(str(exc)) from None
    print(json.dumps({**summary, "exit_code": code}))
    if code != 0:
        raise typer.Exit(code)


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
