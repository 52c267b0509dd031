"""The SPO learner: one training step, read top to bottom (SPO_SPEC §2's numbers in comments).

::

    learner = Learner(args, model=model, policy=policy, episode_fn=fn, tasks=tasks)
    reports = await learner.train()          # until args.total_steps / args.episode_budget
    await learner.close()

The rollout policy (``policy``, e.g. an :class:`agents.hf_policy.HFPolicy`) and the learner's
``model`` are separate copies: episodes keep sampling from the policy while the learner trains
its own model off the event loop (in a thread that ends with each piece of work,
:mod:`agents.passing_thread`), and the weights reach the policy only through the engine's
protocol (pause, ``update_weights``, resume). GRPO and the SPO ablations are settings of
:class:`~spo_core.learner.args.LearnerArgs`, not other loops.

Each batch is put in a canonical order (prompt key, sample index) before it is split into
mini-batches: the order episodes finish in is a race, and the update should not depend on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from agents.engine import Batch, RolloutEngine
from agents.episode_request import EpisodeFn
from agents.passing_thread import in_passing_thread
from agents.policy import Policy
from envs.tasks import Task
from spo_core.advantages import compute_advantages
from spo_core.learner.args import LearnerArgs
from spo_core.learner.batch import Row, TrainBatch, pad, row_of, usable
from spo_core.learner.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from spo_core.learner.logprobs import response_logprobs, score
from spo_core.learner.report import StepReport
from spo_core.learner.response_store import ResponseStore
from spo_core.learner.source import SamplerSource, tracker_for
from spo_core.losses import policy_loss
from spo_core.offline import OfflineReport, OfflineScores
from spo_core.rho import forgetting_factor, logprob_drift
from spo_core.sampler import PromptSampler
from spo_core.tracker import ValueTracker

if TYPE_CHECKING:
    from transformers import PreTrainedModel

T = TypeVar("T")

EvaluateFn = Callable[[Mapping[str, torch.Tensor], int], Awaitable[dict[str, float]]]
"""``evaluate(state_dict, version)``: held-out figures for the given weights. Rollouts are paused
while it runs, the training policy included: it must sample from its own copy."""

OnStep = Callable[[StepReport], None]

_IDLE_POLL_S = 0.01
_UPDATE_METRICS = ("clip_frac", "dual_clip_frac", "approx_kl", "is_weight_mean")


@dataclass(frozen=True)
class UpdateResult:
    """What the PPO update (§2 step 5) measured."""

    loss: float
    grad_norm: float
    optimizer_steps: int
    behaviour_mismatch: float  # current-version tokens
    behaviour_mismatch_all: float
    metrics: dict[str, float]


def _mean_abs(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    m = mask.to(torch.float32)
    return float(((a - b).abs() * m).sum() / m.sum().clamp(min=1.0))


class Learner:
    """SPO (or GRPO) training against a :class:`RolloutEngine` the learner builds and owns.

    Args:
        args: the settings.
        model: the learner's trainable copy of the policy model (not the rollout policy's).
        policy: the rollout policy the episodes sample from; it receives the weights after
            every step.
        episode_fn: plays one episode (see :func:`agents.episode_fn.episode_fn`).
        tasks: the training prompts (distinct keys).
        offline: offline scores for the tracker's start (§5); ``None``: the prior.
        evaluate: called every ``args.eval_every`` steps and after the last (see
            :data:`EvaluateFn`).
        on_step: receives every :class:`StepReport`.
        checkpoint_dir: where checkpoints go every ``args.checkpoint_every`` steps and after
            the last; ``None``: none.
        pad_id: the id padding positions carry (any valid id: they are masked out).

    Raises:
        LearnerArgsError: the task set cannot keep the prompts in flight distinct.
        ValueError: ``model`` is the rollout policy's own model.
    """

    def __init__(
        self,
        args: LearnerArgs,
        *,
        model: PreTrainedModel,
        policy: Policy,
        episode_fn: EpisodeFn,
        tasks: Sequence[Task],
        offline: OfflineScores | None = None,
        evaluate: EvaluateFn | None = None,
        on_step: OnStep | None = None,
        checkpoint_dir: str | Path | None = None,
        pad_id: int = 0,
    ) -> None:
        args.check_dataset(len(tasks))
        if getattr(policy, "model", None) is model:
            raise ValueError("the learner needs its own copy of the model, not the policy's")
        self.args = args
        self.model = model.to(getattr(torch, args.dtype))
        self.policy = policy
        self.tasks = list(tasks)
        self.evaluate = evaluate
        self.on_step = on_step
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.pad_id = pad_id
        self.tracker = tracker_for(self.tasks, ValueTracker(config=args.spo.tracker))
        self.offline_report: OfflineReport | None = None
        if offline is not None:
            self.offline_report = self.tracker.init_offline(offline, args.spo.offline)
        self.source = SamplerSource(
            self.tasks,
            self.tracker,
            PromptSampler(args.spo.sampler, seed=args.seed),
            draw_size=args.prompts_in_flight,
        )
        self.engine = RolloutEngine(
            episode_fn,
            self.source,
            policy=policy,
            episode_timeout_s=args.episode_timeout_s,
            max_staleness=args.max_staleness,
            max_concurrency=args.max_concurrency,
        )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=args.lr,
            betas=args.betas,
            weight_decay=args.weight_decay,
        )
        self.store = ResponseStore(args.response_store_size)
        self.steps = 0
        self.episodes = 0
        self.last_batch: Batch | None = None  # the latest batch, for live views and checks

    # -- the run ------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Whether ``total_steps`` or ``episode_budget`` is reached."""
        a = self.args
        return (a.total_steps is not None and self.steps >= a.total_steps) or (
            a.episode_budget is not None and self.episodes >= a.episode_budget
        )

    async def train(self) -> list[StepReport]:
        """Run steps until :attr:`done`; the reports, in order."""
        reports = []
        while not self.done:
            reports.append(await self.step())
        return reports

    async def close(self) -> None:
        """Stop every episode in flight and release its prompt."""
        await self.engine.close()

    async def step(self) -> StepReport:
        """One training step (SPO_SPEC §2), then the weight push, evaluation and checkpoint."""
        a = self.args
        t_step = time.monotonic()

        # §2.1–2: the engine takes prompts from the SPO sampler (self.source: prompts in flight
        # excluded) and delivers B trajectories — the first B of B + extra to finish, older
        # ones carried over (GRPO: the first complete groups of G).
        t0 = time.monotonic()
        if a.method == "grpo":
            batch = await self.engine.next_group_batch(
                a.groups_per_batch, a.group_size, a.groups_per_batch + a.extra_groups
            )
        else:
            batch = await self.engine.next_batch(a.batch_size, a.extra)
        rollout_wait_s = time.monotonic() - t0
        self.episodes += len(batch.trajectories)
        self.last_batch = batch
        version = self.policy.version
        trajectories = sorted(batch.trajectories, key=lambda t: (t.prompt_key, t.sample_index))
        # Masked trajectories leave here, before any statistic, loss or tracker update.
        rows = [row_of(t) for t in usable(trajectories)]
        data = pad(rows, self.pad_id, version)

        idle = _IdleMeter(self.engine)
        t_learn = time.monotonic()
        # §2.3: baselines v̂₋₁ read from the tracker now, before this step's update.
        baselines = self.tracker.baseline(data.keys) if len(data) else np.empty(0)
        # §2.3–4: A = r − v̂₋₁, normalised over the batch (GRPO: within each group).
        adv = compute_advantages(
            a.spo.advantage,
            data.rewards,
            data.response_mask,
            baselines=baselines,
            group_ids=_group_index(data.group_ids),
        )
        # §2.5: π_old recomputed, then PPO-Clip with truncated importance weights on tokens of
        # older versions — off the event loop, so the episodes in flight keep running.
        update = await idle.during(self.update, data, adv.episode)
        # §2.6: ρ from each prompt's stored last response, then the tracker update.
        rho = np.zeros(0)
        first_visit = 0.0
        if a.method == "spo" and len(data):
            rho, first_visit = await idle.during(self._forgetting, rows, data)
            self.tracker.update(data.keys, data.rewards.numpy(), rho)
            self.source.refresh()
        learner_s = time.monotonic() - t_learn

        # 7 (after §2): the new weights reach the rollout policy through the engine's protocol.
        t_sync = time.monotonic()
        version += 1
        await self.engine.pause()
        try:
            await self.policy.update_weights(self._weights(), version)
        finally:
            self.engine.resume()
        sync_s = time.monotonic() - t_sync
        self.steps += 1

        evaluation: dict[str, float] = {}
        if self.evaluate is not None and self._due(a.eval_every):
            await self.engine.pause()
            try:
                evaluation = dict(await self.evaluate(self._weights(), version))
            finally:
                self.engine.resume()
        checkpoint = ""
        if self.checkpoint_dir is not None and self._due(a.checkpoint_every):
            checkpoint = str(await self.save(self.checkpoint_dir))

        report = self._report(
            batch, data, adv, update, baselines, rho, first_visit, version,
            rollout_wait_s=rollout_wait_s, learner_s=learner_s, sync_s=sync_s,
            idle_s=idle.total + sync_s, wall_s=time.monotonic() - t_step,
            evaluation=evaluation, checkpoint=checkpoint,
        )  # fmt: skip
        if self.on_step is not None:
            self.on_step(report)
        return report

    # -- §2.5: the policy update --------------------------------------------------------------

    def update(self, data: TrainBatch, advantages: torch.Tensor) -> UpdateResult:
        """§2 step 5 on ``data`` with per-row advantages ``advantages`` ([N]): recompute π_old,
        then ``epochs`` passes of mini-batch AdamW steps over micro-batch-accumulated PPO-Clip
        gradients. Runs in the calling thread (the loop calls it off the event loop)."""
        a = self.args
        model = self.model
        lr = self.learning_rate()
        if not len(data) or data.num_tokens == 0:
            return UpdateResult(
                0.0, 0.0, 0, 0.0, 0.0, {**dict.fromkeys(_UPDATE_METRICS, 0.0), "lr": lr}
            )
        model.eval()
        old = score(model, data, a.micro_batch_size)  # π_old, recomputed before the update
        stale = data.stale_tokens
        current = (data.response_mask > 0) & ~stale
        mismatch = _mean_abs(data.behaviour_logp, old, current)
        mismatch_all = _mean_abs(data.behaviour_logp, old, data.response_mask)
        weighted = (data.response_mask > 0) if a.is_every_token else stale

        for group in self.optimizer.param_groups:
            group["lr"] = lr
        model.train()
        losses, norms = [], []
        sums = dict.fromkeys(_UPDATE_METRICS, 0.0)
        weight_tokens = {"all": 0.0, "carried": 0.0, "truncated": 0.0}
        for _epoch in range(a.epochs):
            for start in range(0, len(data), a.mini_batch_size):
                rows = list(range(start, min(start + a.mini_batch_size, len(data))))
                n_tokens = float(data.response_mask[rows].sum())
                if n_tokens == 0:
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                mini_loss = 0.0
                # Micro-batches: each token-sum divided by the mini-batch's token count, so the
                # accumulated gradient is that of one token mean over the mini-batch (as verl).
                for offset in range(0, len(rows), a.micro_batch_size):
                    part_rows = rows[offset : offset + a.micro_batch_size]
                    part = data.select(part_rows)
                    width = part.response_ids.shape[1]
                    out = policy_loss(
                        response_logprobs(model, part),
                        old[part_rows, :width],
                        advantages[part_rows],
                        part.response_mask,
                        a.spo.loss,
                        behaviour_logp=part.behaviour_logp,
                        carried=weighted[part_rows, :width],
                        num_tokens=n_tokens,
                    )
                    out.loss.backward()
                    mini_loss += float(out.loss.detach())
                    tokens = float(part.response_mask.sum())
                    carried_tokens = out.metrics.get("carried_token_frac", 0.0) * tokens
                    weight_tokens["all"] += tokens
                    weight_tokens["carried"] += carried_tokens
                    weight_tokens["truncated"] += (
                        out.metrics.get("is_truncated_frac", 0.0) * carried_tokens
                    )
                    for name in ("clip_frac", "dual_clip_frac", "approx_kl"):
                        sums[name] += out.metrics[name] * tokens
                    sums["is_weight_mean"] += (
                        out.metrics.get("is_weight_mean", 0.0) * carried_tokens
                    )
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
                self.optimizer.step()
                losses.append(mini_loss)
                norms.append(float(norm))
        model.eval()
        total = max(weight_tokens["all"], 1.0)
        carried = max(weight_tokens["carried"], 1.0)
        metrics = {
            "clip_frac": sums["clip_frac"] / total,
            "dual_clip_frac": sums["dual_clip_frac"] / total,
            "approx_kl": sums["approx_kl"] / total,
            "is_weight_mean": sums["is_weight_mean"] / carried,
            "is_truncated_frac": weight_tokens["truncated"] / carried,
            "lr": lr,
        }
        return UpdateResult(
            loss=statistics.fmean(losses) if losses else 0.0,
            grad_norm=statistics.fmean(norms) if norms else 0.0,
            optimizer_steps=len(losses),
            behaviour_mismatch=mismatch,
            behaviour_mismatch_all=mismatch_all,
            metrics=metrics,
        )

    def learning_rate(self) -> float:
        """The learning rate of the step about to run: ``lr`` after the linear warm-up."""
        warmup = self.args.lr_warmup_steps
        return self.args.lr * min(1.0, (self.steps + 1) / warmup) if warmup else self.args.lr

    # -- §2.6: the forgetting factor ----------------------------------------------------------

    def _forgetting(self, rows: Sequence[Row], data: TrainBatch) -> tuple[np.ndarray, float]:
        """ρ per row from the drift of each prompt's stored response; then store this visit's
        responses with their log-probs under the updated policy. Returns ρ and the share of
        first visits."""
        config = self.args.spo.rho
        n = len(data)
        if config.mode == "constant":
            return forgetting_factor(n, config), 0.0
        stored = [self.store.get(key) for key in data.keys]
        first_visit = np.array([s is None for s in stored])
        drift = np.zeros(n)
        seen = [i for i, s in enumerate(stored) if s is not None]
        if seen:
            previous = pad(
                [stored_row.row(data.keys[i]) for i in seen if (stored_row := stored[i])],
                self.pad_id,
                data.policy_version,
            )
            now = score(self.model, previous, self.args.micro_batch_size)
            d = logprob_drift(previous.behaviour_logp, now, previous.response_mask)
            drift[seen] = d.double().numpy()
        rho = forgetting_factor(n, config, drift=drift, first_visit=first_visit)
        post = score(self.model, data, self.args.micro_batch_size)
        for i, row in enumerate(rows):
            self.store.put(
                row.key,
                row.prompt_ids,
                row.response_ids,
                data.response_mask[i],
                post[i],
                row.temperature,
            )
        return rho, float(first_visit.mean())

    # -- weights, checkpoints -----------------------------------------------------------------

    def _weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.model.state_dict().items()}

    def _due(self, every: int) -> bool:
        return every > 0 and (self.steps % every == 0 or self.done)

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed by this learner."""
        digest = hashlib.blake2b(digest_size=16)
        for task in self.tasks:
            digest.update(task.key.encode() + b"\n")
        return {
            "method": self.args.method,
            "tasks": digest.hexdigest(),
            "n_tasks": len(self.tasks),
            "params": {k: list(v.shape) for k, v in self.model.state_dict().items()},
            "dtype": self.args.dtype,
        }

    async def save(self, directory: str | Path) -> Path:
        """Write a checkpoint of the learner now (between steps); its path.

        The source's prompts in flight are recorded so that a resumed run re-runs them first.
        """
        state = {
            "step": self.steps,
            "episodes": self.episodes,
            "policy_version": self.policy.version,
            "model": self._weights(),
            "optimizer": self.optimizer.state_dict(),
            "source": self.source.state_dict(),
            "engine": self.engine.state_dict(),
            "store": self.store.state_dict(),
            "fingerprint": self.fingerprint(),
        }
        return await in_passing_thread(save_checkpoint, directory, self.steps, state, self.tracker)

    async def resume(self, path: str | Path) -> Path:
        """Load the checkpoint at ``path`` (or the latest under it) before the first step, and
        push its weights to the rollout policy. Its path.

        Raises:
            CheckpointError: missing, unreadable, or written by a different run (one line).
        """
        if self.steps or self.engine.in_flight:
            raise RuntimeError("resume needs a learner that has not started")
        state, tracker = load_checkpoint(path)
        where = state["path"]
        mine, theirs = self.fingerprint(), state.get("fingerprint", {})
        for name in ("method", "n_tasks", "tasks", "dtype", "params"):
            if theirs.get(name) != mine[name]:
                raise CheckpointError(
                    f"checkpoint {where} was written by a different run: its {name} differs "
                    f"({str(theirs.get(name))[:60]!r} vs {str(mine[name])[:60]!r})"
                )
        if tracker.config != self.tracker.config:
            raise CheckpointError(f"checkpoint {where}: tracker config differs from this run's")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.tracker.load_state_dict(tracker.state_dict())
            self.source.load_state_dict(state["source"])
            self.engine.load_state_dict(state["engine"])
            self.store.load_state_dict(state["store"])
        except (KeyError, ValueError, RuntimeError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(f"checkpoint {where} does not fit: {detail}"[:300]) from exc
        self.steps, self.episodes = int(state["step"]), int(state["episodes"])
        version = int(state["policy_version"])
        if version > self.policy.version:
            await self.policy.update_weights(self._weights(), version)
        elif version < self.policy.version:
            raise CheckpointError(
                f"checkpoint {where} is at policy version {version}, the policy already at "
                f"{self.policy.version}"
            )
        return Path(where)

    # -- the report ---------------------------------------------------------------------------

    def _report(
        self,
        batch: Batch,
        data: TrainBatch,
        adv: Any,
        update: UpdateResult,
        baselines: np.ndarray,
        rho: np.ndarray,
        first_visit: float,
        version: int,
        *,
        rollout_wait_s: float,
        learner_s: float,
        sync_s: float,
        idle_s: float,
        wall_s: float,
        evaluation: dict[str, float],
        checkpoint: str,
    ) -> StepReport:
        stats = batch.stats
        everything = slice(0, len(self.tracker))
        staleness = stats.staleness or [0]
        n = max(len(data), 1)
        return StepReport(
            step=self.steps,
            policy_version=version,
            episodes=self.episodes,
            trajectories=stats.size,
            masked=stats.masked,
            tokens=data.num_tokens,
            reward_mean=float(data.rewards.mean()) if len(data) else 0.0,
            loss=update.loss,
            frac_zero_adv=adv.stats.frac_zero,
            frac_near_zero_adv=adv.stats.frac_near_zero,
            degenerate_share=adv.stats.degenerate_share,
            adv_variance=adv.stats.variance,
            adv_raw_variance=adv.stats.raw_variance,
            carried_share=float(data.carried.sum()) / n,
            staleness_mean=statistics.fmean(staleness),
            staleness_max=max(staleness),
            tracker_value_mean=float(self.tracker.value_at(everything).mean()),
            tracker_neff_mean=float(self.tracker.n_eff_at(everything).mean()),
            baseline_mean=float(baselines.mean()) if baselines.size else 0.0,
            rho_mean=float(rho.mean()) if rho.size else 0.0,
            first_visit_share=first_visit,
            behaviour_mismatch=update.behaviour_mismatch,
            behaviour_mismatch_all=update.behaviour_mismatch_all,
            clip_frac=update.metrics["clip_frac"],
            dual_clip_frac=update.metrics["dual_clip_frac"],
            approx_kl=update.metrics["approx_kl"],
            is_weight_mean=update.metrics["is_weight_mean"],
            is_truncated_frac=update.metrics.get("is_truncated_frac", 0.0),
            grad_norm=update.grad_norm,
            lr=update.metrics["lr"],
            optimizer_steps=update.optimizer_steps,
            llm_s=stats.mean_timings.get("llm_s", 0.0),
            sandbox_s=stats.mean_timings.get("sandbox_s", 0.0),
            grader_s=stats.mean_timings.get("grader_s", 0.0),
            rollout_wait_s=rollout_wait_s,
            learner_s=learner_s,
            sync_s=sync_s,
            generation_idle_s=idle_s,
            wall_s=wall_s,
            eval=evaluation,
            checkpoint=checkpoint,
        )


def _group_index(group_ids: Sequence[str | None]) -> torch.Tensor | None:
    """Dense group numbers for GRPO advantages; ``None`` when the batch has no groups."""
    if not group_ids or any(g is None for g in group_ids):
        return None
    numbers: dict[str | None, int] = {}
    return torch.tensor([numbers.setdefault(g, len(numbers)) for g in group_ids])


class _IdleMeter:
    """Runs learner work off the event loop and measures how long, meanwhile, no episode ran
    (the rollout side waiting on the learner)."""

    def __init__(self, engine: RolloutEngine) -> None:
        self.engine = engine
        self.total = 0.0

    async def during(self, fn: Callable[..., T], *args: Any) -> T:
        work = asyncio.ensure_future(in_passing_thread(fn, *args, name="learner"))
        last = time.monotonic()
        while not work.done():
            await asyncio.wait({work}, timeout=_IDLE_POLL_S)
            now = time.monotonic()
            if self.engine.running == 0:
                self.total += now - last
            last = now
        return work.result()
