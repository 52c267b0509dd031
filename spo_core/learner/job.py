"""The ReTool training job end to end: model → offline values → tier choice → held-out before →
SPO (or GRPO) training with periodic held-out evaluations → held-out after → curves.

This is what ``./run_retool.sh`` (``spo-gym train``) runs on the local backend, and what the
learning-curve experiment runs once per configuration. Every stage reports through a
:class:`JobObserver`, so the command line can show it live and a benchmark can stay quiet.

With ``steps=0`` the job only evaluates: the model's held-out report is both "before" and
"after", nothing trains, no curve is drawn, and the offline values are skipped when the tiers
are given (only the tier choice would read them).
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from agents.episode_fn import EpisodeSpec, episode_fn
from agents.hf_policy import HFPolicy
from agents.models import cache_dir, resolve_model
from agents.nano import NANO_CONFIG_FILE
from agents.policy import SamplingParams
from envs.tasks import Task, Tier, tier_of, tier_tasks
from sandbox import SandboxConfig, SandboxPool
from spo_core.learner.args import Ablation, LearnerArgs
from spo_core.learner.curves import plot_learning_curves
from spo_core.learner.heldout import HeldoutReport, HeldoutSet, evaluate_heldout, heldout_set
from spo_core.learner.heldout_cache import (
    heldout_cache_key,
    read_cached_report,
    write_cached_report,
)
from spo_core.learner.loop import Learner
from spo_core.learner.metrics_log import MetricsLog
from spo_core.learner.offline_values import (
    OfflineValues,
    offline_values,
    read_offline_values,
    weights_fingerprint,
)
from spo_core.learner.report import StepReport
from spo_core.learner.task_samples import SamplingProgress
from spo_core.learner.tier_choice import TierPassRates, choose_tiers, tier_pass_rates
from spo_core.offline import OfflineScores

__all__ = [
    "JobConfig",
    "JobError",
    "JobObserver",
    "JobResult",
    "ModelChoice",
    "run_job",
    "run_job_sync",
    "validate",
]

ModelChoice = Literal["nano", "nano-ci", "smollm2"]
_NANO_ENV = "spo_gym/ReToolNano-v0"
_SMOLLM_ENV = "spo_gym/ReTool-v0"
_HELDOUT_TEMPERATURE = 1.0  # avg@k's sampling temperature


class JobError(RuntimeError):
    """The job cannot run as configured (the message is one line)."""


@dataclass(frozen=True)
class JobConfig:
    """One training job.

    Attributes:
        method: "spo" or "grpo".
        ablation: one of the paper's ablations applied to the method ("full": none).
        model: "nano" (the warm-started character-level Qwen3, built and cached on first use),
            "nano-ci" (its CI-sized sibling), "smollm2" (SmolLM2-135M-Instruct with its own chat
            template) or a local Hugging Face folder.
        seed: seeds the learner (sampler, sampling seeds); the task sets have their own seeds.
        tiers: the training tiers; empty: chosen from the warm start's per-tier pass@1 and
            pass@8 among ``candidate_tiers``.
        candidate_tiers: tiers measured when ``tiers`` is empty.
        train_per_tier: training prompts per tier.
        train_seed: seed of the training prompts.
        heldout_n: held-out problems in total (split evenly over the tiers, rounded up).
        heldout_seed: seed of the held-out problems (deduplicated against training).
        heldout_k: sampled episodes per held-out problem for avg@k at temperature 1.0.
        offline_k: offline samples per prompt (§5's n₀); also the k of pass@k for the tier
            choice.
        episode_budget: training episodes (trajectories delivered to the learner).
        steps: training steps instead of an episode budget (when set); 0: evaluate the model
            on the held-out set and train nothing.
        eval_every: greedy held-out evaluation every this many steps and after the last (0:
            none); the full evaluation (greedy and avg@k) runs before and after training.
        temperature: training sampling temperature (top-p 1, top-k off).
        learner: learner settings overriding the profile's (``LearnerArgs`` field names).
        concurrency: sandbox containers kept warm and episodes run at once.
        out: the run directory (metrics, TensorBoard, checkpoints, curve, result).
        resume: continue from the latest checkpoint in ``out`` (or this path).
        cache: where offline values and the initial model's held-out reports are cached;
            default the project cache (``offline/`` and ``heldout/``).
        offline_values: read the offline values from this file instead of sampling them
            (``spo-gym eval`` of the training prompts at the training sampling parameters
            writes it as ``offline_values.jsonl``); it must cover every training prompt.
    """

    method: Literal["spo", "grpo"] = "spo"
    ablation: Ablation = "full"
    model: str = "nano"
    seed: int = 0
    tiers: tuple[str, ...] = ()
    candidate_tiers: tuple[str, ...] = ("d3o2", "d4o1", "d4o2", "d5o1")
    train_per_tier: int = 64
    train_seed: int = 0
    heldout_n: int = 300
    heldout_seed: int = 1_000_003
    heldout_k: int = 4
    offline_k: int = 8
    episode_budget: int = 1024
    steps: int | None = None
    eval_every: int = 8
    temperature: float = 1.0
    learner: Mapping[str, Any] = field(default_factory=dict)
    concurrency: int = 32
    out: Path = Path("runs/retool")
    resume: Path | None = None
    cache: Path | None = None
    offline_values: Path | None = None


@dataclass(frozen=True)
class JobResult:
    """What the job measured; :meth:`summary` is the final JSON line."""

    method: str
    ablation: str
    model: str
    seed: int
    tiers: list[str]
    train_prompts: int
    episodes: int
    steps: int
    offline_episodes: int
    offline_wall_s: float
    train_wall_s: float
    wall_s: float
    heldout_n: int
    heldout_tier_mix: dict[str, int]
    before: HeldoutReport
    after: HeldoutReport
    out: Path
    curve: Path | None

    def summary(self) -> dict[str, Any]:
        """The flat figures of the run (greedy decoding is the headline)."""
        return {
            "method": self.method,
            "ablation": self.ablation,
            "model": self.model,
            "seed": self.seed,
            "tiers": self.tiers,
            "train_prompts": self.train_prompts,
            "episodes": self.episodes,
            "steps": self.steps,
            "offline_episodes": self.offline_episodes,
            "offline_wall_s": round(self.offline_wall_s, 1),
            "train_wall_s": round(self.train_wall_s, 1),
            "wall_s": round(self.wall_s, 1),
            "heldout_n": self.heldout_n,
            "heldout_tier_mix": self.heldout_tier_mix,
            "decoding": "greedy",
            "heldout_accuracy_before": round(self.before.greedy_accuracy, 4),
            "heldout_accuracy_after": round(self.after.greedy_accuracy, 4),
            "heldout_gain_points": round(
                100 * (self.after.greedy_accuracy - self.before.greedy_accuracy), 2
            ),
            f"heldout_avg@{self.after.k}_before": round(self.before.avg_at_k, 4),
            f"heldout_avg@{self.after.k}_after": round(self.after.avg_at_k, 4),
            "heldout_per_tier_before": {t: s.greedy for t, s in self.before.per_tier.items()},
            "heldout_per_tier_after": {t: s.greedy for t, s in self.after.per_tier.items()},
            "out": str(self.out),
        }


class JobObserver(Protocol):
    """Receives the job's progress."""

    def stage(self, name: str, detail: str) -> None:
        """A stage starts (``name``) or reports a one-line result (``detail``)."""

    def progress(self, progress: SamplingProgress) -> None:
        """How far the current offline or held-out pass has come."""

    def tiers(self, rates: Mapping[str, TierPassRates], chosen: Sequence[str]) -> None:
        """The warm start's per-tier figures and the tiers chosen for training."""

    def heldout(self, label: str, report: HeldoutReport) -> None:
        """A held-out evaluation finished (``label``: "before", "step N", "after")."""

    def step(self, report: StepReport) -> None:
        """A training step finished."""


@dataclass
class _Model:
    path: Path
    env_id: str
    env_options: dict[str, Any]
    max_tokens: int
    seen: list[Task]  # problems the model was fine-tuned on: kept out of training and held-out


def _resolve_model(config: JobConfig, observer: JobObserver) -> _Model:
    """The model folder and the env variant that fits it."""
    if config.model in ("nano", "nano-ci"):
        from agents.nano import CI_CONFIG, DEFAULT_CONFIG
        from spo_core.learner.sft import CI_RECIPE, DEFAULT_RECIPE, recipe_tasks, warm_start

        ci = config.model == "nano-ci"
        nano, recipe = (CI_CONFIG, CI_RECIPE) if ci else (DEFAULT_CONFIG, DEFAULT_RECIPE)
        observer.stage("warm start", f"{config.model}: SFT on {', '.join(recipe.tiers)} (cached)")
        path = warm_start(nano, recipe, seed=0, progress=lambda line: observer.stage("SFT", line))
        seen = recipe_tasks(recipe, seed=0)[0]
        return _Model(path, _NANO_ENV, {}, max_tokens=200, seen=seen)
    if config.model == "smollm2":
        path = resolve_model("smollm2-135m")
        return _Model(path, _SMOLLM_ENV, {"demonstrations": 1}, max_tokens=384, seen=[])
    folder = Path(config.model)
    if (folder / NANO_CONFIG_FILE).is_file():
        # A nano folder (another warm start, a continued one): keep the traces of the recipe
        # it names out of training and held-out; a folder naming none, the default recipe's.
        from spo_core.learner.sft import DEFAULT_RECIPE, load_recipe, recipe_tasks

        recipe, seed = load_recipe(folder) or (DEFAULT_RECIPE, 0)
        return _Model(folder, _NANO_ENV, {}, max_tokens=200, seen=recipe_tasks(recipe, seed)[0])
    return _Model(folder, _SMOLLM_ENV, {}, max_tokens=384, seen=[])


def _learner_args(config: JobConfig, n_prompts: int | None) -> LearnerArgs:
    """The learner's settings: the CPU profile, the ablation, the run's end and the overrides,
    checked against a train set of ``n_prompts`` (``None``: no train set to check)."""
    args = LearnerArgs.cpu(config.method, seed=config.seed).ablation(config.ablation)
    end: dict[str, Any] = (
        {"total_steps": config.steps, "episode_budget": None}
        if config.steps is not None
        else {"total_steps": None, "episode_budget": config.episode_budget}
    )
    args = args.with_overrides(
        **end, eval_every=config.eval_every, checkpoint_every=args.checkpoint_every
    )
    args = args.with_overrides(**dict(config.learner))
    if n_prompts is not None:
        args.check_dataset(n_prompts)
    return args


def validate(config: JobConfig) -> None:
    """Check the settings that can be checked before any work (one-line errors).

    Raises:
        JobError / TierError / LearnerArgsError: a setting that cannot be satisfied.
    """
    if (
        config.model not in ("nano", "nano-ci", "smollm2")
        and not (Path(config.model) / "config.json").is_file()
    ):
        raise JobError(
            f"model {config.model!r} is neither nano, nano-ci, smollm2 nor a model folder "
            "with a config.json"
        )
    if config.heldout_n < 1 or config.heldout_k < 1 or config.offline_k < 1:
        raise JobError("heldout_n, heldout_k and offline_k must be >= 1")
    if config.offline_values is not None and not config.offline_values.is_file():
        raise JobError(f"offline values file {config.offline_values} does not exist")
    if config.steps is not None and config.steps < 0:
        raise JobError(f"steps must be >= 0 (0: evaluation only), got {config.steps}")
    if config.steps == 0 and config.resume is not None:
        raise JobError("resume continues training; an evaluation-only job (steps 0) has none")
    tiers = [Tier.parse(name) for name in config.tiers or config.candidate_tiers]
    if config.steps == 0:
        # Nothing trains, so no train set to fit; a bad learner setting is still bad input.
        _learner_args(replace(config, steps=None), None)
        return
    # The smallest train set the tier choice can leave is one tier's prompts.
    smallest = config.train_per_tier * (len(tiers) if config.tiers else 1)
    _learner_args(config, smallest)


async def run_job(config: JobConfig, observer: JobObserver) -> JobResult:
    """Run the job; see the module docstring for the stages.

    Raises:
        JobError: a setting that cannot be satisfied (before any training).
        LearnerArgsError / TierChoiceError / TierError: likewise, from the pieces.
    """
    t_start = time.monotonic()
    validate(config)
    transformers.utils.logging.disable_progress_bar()
    candidates = [Tier.parse(name) for name in config.tiers or config.candidate_tiers]
    evaluate_only = config.steps == 0

    # 1. The model: its warm start (nano), a rollout copy and an evaluation copy (the trainable
    #    copy is made when training starts).
    model_info = _resolve_model(config, observer)
    tokenizer = AutoTokenizer.from_pretrained(model_info.path)
    rollout_model = AutoModelForCausalLM.from_pretrained(model_info.path, dtype=torch.float32)
    eval_model: PreTrainedModel = copy.deepcopy(rollout_model)
    policy = HFPolicy(rollout_model, tokenizer, max_batch_size=config.concurrency, seed=config.seed)
    eval_policy = HFPolicy(eval_model, tokenizer, max_batch_size=config.concurrency)
    sampling = SamplingParams(
        max_tokens=model_info.max_tokens, temperature=config.temperature, seed=config.seed
    )
    spec = EpisodeSpec(model_info.env_id, model_info.env_options, sampling)

    observer.stage("sandbox", f"starting {config.concurrency} reusable containers")
    pool = SandboxPool(SandboxConfig(warm=min(config.concurrency, 16), reuse=True))
    await pool.start()
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    try:
        # 2. Offline values (§5) of the candidate tiers' prompts: the tracker's start and the
        #    per-tier pass@1 / pass@k the tier choice reads. Cached by model, tasks, sampling.
        model_id = weights_fingerprint(rollout_model)
        sft_seen = {str(t.extra.get("expression")) for t in model_info.seen}
        candidate_tasks = [
            t
            for t in tier_tasks(candidates, config.train_per_tier, config.train_seed)
            if str(t.extra.get("expression")) not in sft_seen
        ]
        offline: OfflineValues | None = None
        if evaluate_only and config.tiers:
            observer.stage("offline values", "skipped: evaluation only, the tiers are given")
        elif config.offline_values is not None:
            try:
                offline = read_offline_values(
                    config.offline_values, candidate_tasks, config.offline_k
                )
            except (OSError, ValueError) as exc:
                raise JobError(f"offline values: {exc}") from None
            observer.stage(
                "offline values", f"{offline.samples} samples read from {config.offline_values}"
            )
        else:
            observer.stage(
                "offline values",
                f"{len(candidate_tasks)} prompts x {config.offline_k} samples "
                f"({', '.join(t.name for t in candidates)})",
            )
            offline = await offline_values(
                policy,
                tokenizer,
                pool,
                spec,
                candidate_tasks,
                model_id=model_id,
                cache_dir=(config.cache or cache_dir()) / "offline",
                k=config.offline_k,
                episodes_in_flight=config.concurrency,
                on_progress=observer.progress,
            )
            observer.stage(
                "offline values",
                f"{offline.samples} samples in {offline.wall_s:.0f} s"
                + (" (cached)" if offline.cached else ""),
            )

        # 3. Training tiers: given, or where the warm start solves 20–60% and pass@k ≫ pass@1.
        #    The train set is drawn either way: the held-out set is deduplicated against it.
        chosen = list(config.tiers)
        if offline is not None:
            rates = tier_pass_rates(candidate_tasks, offline.scores, k=config.offline_k)
            chosen = chosen or choose_tiers(rates)
            observer.tiers(rates, chosen)
        train = [t for t in candidate_tasks if tier_of(t) in chosen]
        args = None if evaluate_only else _learner_args(config, len(train))

        # 4. Held-out problems: a separate seed, no expression shared with training.
        per_tier = math.ceil(config.heldout_n / len(chosen))
        held: HeldoutSet = heldout_set(
            [Tier.parse(n) for n in chosen],
            per_tier,
            config.heldout_seed,
            [*train, *model_info.seen],
        )

        async def evaluate_now(label: str, k: int) -> HeldoutReport:
            what = f"greedy + avg@{k}" if k else "greedy"
            observer.stage("held-out", f"{label}: {len(held.tasks)} problems, {what}")
            report = await evaluate_heldout(
                eval_policy,
                tokenizer,
                pool,
                spec,
                held,
                k=k,
                temperature=_HELDOUT_TEMPERATURE,
                episodes_in_flight=config.concurrency,
                on_progress=observer.progress,
            )
            observer.heldout(label, report)
            return report

        # The initial model's figures are cached like the offline values: every run from the
        # same warm start, held-out set and sampling scores the same before training.
        before_key = heldout_cache_key(model_id, held, spec, config.heldout_k, _HELDOUT_TEMPERATURE)
        heldout_cache = (config.cache or cache_dir()) / "heldout"
        cached_before = read_cached_report(heldout_cache, before_key)
        if cached_before is not None:
            observer.stage("held-out", f"before: {len(held.tasks)} problems (cached)")
            observer.heldout("before", cached_before)
            before = cached_before
        else:
            before = await evaluate_now("before", config.heldout_k)
            write_cached_report(heldout_cache, before_key, before)
        log = MetricsLog(out)
        log.log(0, {"episodes": 0, "wall_s": 0.0, **before.to_metrics()})
        if args is None or offline is None:
            # Evaluation only: the weights are those just scored, so "after" is "before".
            log.close()
            observer.stage("evaluation only", "no training; the report after is the one before")
            after, steps, episodes, train_wall = before, 0, 0, 0.0
        else:
            offline_scores = OfflineScores.from_lists(
                {t.key: offline.scores[t.key] for t in train if t.key in offline.scores},
                args.spo.offline,
            )
            clock = {"train_start": 0.0, "eval_s": 0.0}

            async def evaluate(state: Mapping[str, torch.Tensor], version: int) -> dict[str, float]:
                t0 = time.monotonic()
                await eval_policy.update_weights(state, eval_policy.version + 1)
                # Greedy only during training; the sampled avg@k once, after the last step.
                report = await evaluate_now(f"step {version}", 0)
                clock["eval_s"] += time.monotonic() - t0
                return report.to_metrics()

            def on_step(report: StepReport) -> None:
                # Training wall time: held-out evaluations are measurement, not training.
                wall = time.monotonic() - clock["train_start"] - clock["eval_s"]
                figures = {k: v for k, v in report.to_dict().items() if k != "eval"}
                log.log(
                    report.step,
                    {
                        **figures,
                        "step_wall_s": report.wall_s,
                        "wall_s": wall,
                        "reward/mean": report.reward_mean,
                        **report.eval,
                    },
                )
                observer.step(report)

            # 5. Training (spo_core.learner.loop: the numbered steps of SPO_SPEC §2).
            learner = Learner(
                args,
                model=copy.deepcopy(rollout_model),
                policy=policy,
                episode_fn=episode_fn(spec, policy, tokenizer, pool),
                tasks=train,
                offline=offline_scores,
                evaluate=evaluate,
                on_step=on_step,
                checkpoint_dir=out / "checkpoints",
                pad_id=int(tokenizer.pad_token_id or 0),
            )
            if config.resume is not None:
                observer.stage("resume", str(await learner.resume(config.resume)))
            observer.stage(
                "training",
                f"{config.method} ({config.ablation}) on {len(train)} prompts of {chosen}",
            )
            clock["train_start"] = time.monotonic()
            try:
                steps = len(await learner.train())
            finally:
                await learner.close()
                log.close()
            episodes = learner.episodes
            train_wall = time.monotonic() - clock["train_start"] - clock["eval_s"]
            await eval_policy.update_weights(learner.model.state_dict(), eval_policy.version + 1)
            after = await evaluate_now("after", config.heldout_k)
    finally:
        await policy.aclose()
        await eval_policy.aclose()
        await pool.close()

    # A run that trained nothing has no curve: one point at zero episodes.
    curve = (
        None
        if evaluate_only
        else plot_learning_curves({f"{config.method} seed {config.seed}": out}, out / "curve.png")
    )
    result = JobResult(
        method=config.method,
        ablation=config.ablation,
        model=config.model,
        seed=config.seed,
        tiers=chosen,
        train_prompts=len(train),
        episodes=episodes,
        steps=steps,
        offline_episodes=len(candidate_tasks) * config.offline_k
        if offline is not None and config.offline_values is None
        else 0,
        offline_wall_s=offline.wall_s if offline is not None else 0.0,
        train_wall_s=train_wall,
        wall_s=time.monotonic() - t_start,
        heldout_n=len(held.tasks),
        heldout_tier_mix=dict(held.tier_mix),
        before=before,
        after=after,
        out=out,
        curve=curve,
    )
    (out / "result.json").write_text(json.dumps(result.summary(), indent=1) + "\n")
    (out / "job.json").write_text(json.dumps(asdict(config), indent=1, default=str) + "\n")
    return result


def run_job_sync(config: JobConfig, observer: JobObserver) -> JobResult:
    """:func:`run_job` on a fresh event loop."""
    return asyncio.run(run_job(config, observer))
