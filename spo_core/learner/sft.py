"""Supervised warm start of the nano model on ideal tool-use traces, cached on disk.

:func:`warm_start` builds a nano model (:mod:`agents.nano`), first teaches it to copy with the
copy warm-up (:mod:`spo_core.learner.copy_warmup`, ``recipe.copy_steps``), then trains it on ideal traces of the
arithmetic family (:mod:`spo_core.learner.traces`) with AdamW and a cross-entropy loss on the
model's own tokens only (prompt and interpreter output are context, never targets), and saves
the result as an ordinary Hugging Face folder with ``sft.json``, the run's figures.

Stopping rule: the held-out trace loss (traces of unseen tasks) is measured every
``eval_every`` steps; training stops at ``max_steps`` or, once ``min_steps`` are done, when it
has not improved by ``min_delta`` (relative) for ``patience`` evaluations, a plateau.

Caching: the folder lives under the model cache (``<cache>/models/nano/``) at a key of the
model config, the recipe and the seed; a second call with the same three returns it at once.
Builds write into a temporary sibling that is renamed into place only when complete, under a
file lock, so concurrent callers build once and a killed build leaves nothing that looks ready.

Determinism: the same config, recipe, seed and thread count give the same weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import envs
from agents.hf_policy import default_num_threads
from agents.models import cache_dir
from agents.nano import DEFAULT_CONFIG, NanoConfig, build_model, build_tokenizer, save_nano
from envs.tasks import Task, Tier, heldout_tasks
from spo_core.learner.copy_warmup import copy_warmup
from spo_core.learner.traces import Trace, render_traces

__all__ = [
    "CI_RECIPE",
    "DEFAULT_RECIPE",
    "RECIPE_FILE",
    "SFT_REPORT_FILE",
    "Continuation",
    "SFTRecipe",
    "SFTReport",
    "batch_indices",
    "cache_key",
    "collate",
    "heldout_loss",
    "load_recipe",
    "load_report",
    "recipe_tasks",
    "recipe_traces",
    "sft_optimizer",
    "sft_step",
    "train_sft",
    "warm_start",
    "warm_start_dir",
    "write_recipe",
]

SFT_REPORT_FILE = "sft.json"
"""The file in a warm-start folder that holds its :class:`SFTReport`."""
RECIPE_FILE = "recipe.json"
"""The file in a warm-start folder that names its recipe and seed: which problems it saw."""
_FORMAT = 3  # bump when the tokenizer, traces or training change, so caches are rebuilt
_TASK_SEED_OFFSET = 7_919  # trace tasks come from seeds of their own, apart from RL task sets

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SFTRecipe:
    """What the warm start trains on, and how.

    Attributes:
        env_id: the env whose prompt, budgets and observation format the traces use.
        mix: training traces per arithmetic tier, as ``(tier name, count)`` pairs.
        heldout_per_tier: held-out traces per tier (unseen expressions) for the stopping rule.
        max_steps: most optimizer steps.
        batch_size: traces per step.
        lr: peak AdamW learning rate (linear warm-up, cosine decay to a tenth over
            ``max_steps``).
        warmup_steps: steps of linear warm-up.
        weight_decay: AdamW weight decay (matrices only; norms and embeddings are not decayed).
        grad_clip: gradient-norm clip.
        eval_every: steps between held-out loss measurements.
        min_steps: steps before the plateau rule may stop training. A small model's loss
            stalls before it learns to copy (the expression into code, the output into the
            answer) and then drops again; this carries training past that stall.
        patience: evaluations without improvement that stop training.
        min_delta: relative improvement of the held-out loss that counts.
        copy_steps: steps of the copy warm-up before SFT (:mod:`spo_core.learner.copy_warmup`;
            0: none).
        copy_batch_size: sequences per copy warm-up step.
        copy_lr: peak learning rate of the copy warm-up.
    """

    env_id: str = "spo_gym/ReToolNano-v0"
    mix: tuple[tuple[str, int], ...] = (
        ("d2o1", 1000),
        ("d3o1", 1500),
        ("d2o2", 1500),
        ("d3o2", 300),
    )
    heldout_per_tier: int = 16
    max_steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 50
    min_steps: int = 600
    patience: int = 3
    min_delta: float = 0.01
    copy_steps: int = 800
    copy_batch_size: int = 32
    copy_lr: float = 3e-3

    def __post_init__(self) -> None:
        object.__setattr__(self, "mix", tuple((str(t), int(n)) for t, n in self.mix))
        if not self.mix:
            raise ValueError("a recipe needs at least one tier")
        for tier, count in self.mix:
            Tier.parse(tier)
            if count < 1:
                raise ValueError(f"tier {tier} needs at least one trace, got {count}")
        if len({t for t, _ in self.mix}) != len(self.mix):
            raise ValueError("a tier appears twice in the mix")
        if self.copy_steps < 0 or self.copy_batch_size < 1 or not self.copy_lr > 0:
            raise ValueError("copy_steps must be >= 0, copy_batch_size >= 1 and copy_lr > 0")
        for name in ("heldout_per_tier", "max_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 1 or self.patience < 1:
            raise ValueError("eval_every and patience must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        data = dataclasses.asdict(self)
        data["mix"] = [list(pair) for pair in self.mix]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SFTRecipe:
        """The recipe of :meth:`to_dict`'s output (validated again)."""
        fields = dict(data)
        fields["mix"] = tuple((str(t), int(n)) for t, n in data["mix"])
        return cls(**fields)

    @property
    def tiers(self) -> tuple[str, ...]:
        """The tier names of the mix, in order."""
        return tuple(t for t, _ in self.mix)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): linear warm-up to ``lr``, then
        cosine decay to a tenth of it at ``max_steps``, flat after."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        done = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, done))))

    @property
    def final_lr(self) -> float:
        """The learning rate the schedule ends at (``lr_at(max_steps)``: a tenth of ``lr``)."""
        return self.lr_at(self.max_steps)


DEFAULT_RECIPE = SFTRecipe()
"""The warm start of the default nano: the easy tiers in full, the RL tier (d3o2) sparse, so the
warm start solves it part of the time and RL has room to act. Measured on 2 cores: the copy
warm-up's loss falls from 2.8 to 1.5 nats in 800 steps (~7 min); SFT's held-out trace loss
then goes 10.0 → 0.005 in 800 steps and plateaus (~16 min). The result solves d3o2 at pass@1
0.35 (T = 1) and 0.64 greedily; without d3o2 in the mix it solves none (pass@8 = 0: no
compositional generalisation at this size), with 1,000 d3o2 traces 0.80 greedily (little room)."""

CI_RECIPE = SFTRecipe(
    mix=(("d1o1", 128), ("d2o1", 256)),
    heldout_per_tier=8,
    max_steps=100,
    batch_size=8,
    lr=5e-3,
    warmup_steps=10,
    eval_every=25,
    min_steps=50,
    patience=2,
    copy_steps=0,
)
"""About ten seconds of training for CI: the format and the tool call are learnt, not much more."""


@dataclass(frozen=True)
class Continuation:
    """How a continued SFT run (:mod:`spo_core.learner.sft_continue`) started and ran.

    Attributes:
        source: the folder whose model it continued.
        seed: seeds the batch order.
        trace_seed: the seed the source was warm-started with; its traces (training and
            held-out) are those of this seed.
        lr: the constant learning rate.
        wall_budget_s: the seconds of training asked for.
    """

    source: str
    seed: int
    trace_seed: int
    lr: float
    wall_budget_s: float


@dataclass
class SFTReport:
    """The figures of one warm start, or of a continuation of one.

    Attributes:
        steps: optimizer steps taken.
        stopped: "plateau" (the held-out loss stopped improving), "max_steps", or "wall" (a
            continuation's wall-time budget ran out).
        train_s: seconds of training (trace rendering and held-out evaluations excluded).
        train_traces: training traces; heldout_traces: held-out traces.
        train_tokens: trained-on (model) tokens per epoch of the training traces.
        heldout_loss: (step, held-out loss per model token) at every evaluation, step 0 first.
        train_loss: (step, mean training loss over the steps since the previous point).
        num_threads: torch threads used.
        parameters: model parameters.
        continued: set for a continuation: where it started and how it ran; ``None`` for a
            warm start.
    """

    steps: int = 0
    stopped: str = ""
    train_s: float = 0.0
    train_traces: int = 0
    heldout_traces: int = 0
    train_tokens: int = 0
    heldout_loss: list[tuple[int, float]] = field(default_factory=list)
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    num_threads: int = 1
    parameters: int = 0
    continued: Continuation | None = None

    def to_dict(self) -> dict[str, Any]:
        """The figures as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SFTReport:
        """The report of :meth:`to_dict`'s output."""
        continued = data.get("continued")
        report = cls(**{**data, "continued": Continuation(**continued) if continued else None})
        report.heldout_loss = [(int(s), float(v)) for s, v in report.heldout_loss]
        report.train_loss = [(int(s), float(v)) for s, v in report.train_loss]
        return report


def cache_key(config: NanoConfig, recipe: SFTRecipe, seed: int) -> str:
    """The warm start's cache key: a digest of the model config, the recipe and the seed."""
    payload = {"format": _FORMAT, "config": config.to_dict(), "recipe": recipe.to_dict()}
    payload["seed"] = seed
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def warm_start_dir(
    config: NanoConfig, recipe: SFTRecipe, seed: int, cache_root: Path | None = None
) -> Path:
    """Where the warm start of (config, recipe, seed) is cached."""
    root = cache_root if cache_root is not None else cache_dir() / "models" / "nano"
    return root / f"nano-{cache_key(config, recipe, seed)}"


def write_recipe(folder: Path, recipe: SFTRecipe, seed: int) -> None:
    """Name in ``folder`` the recipe and seed whose traces the model there was trained on."""
    data = {"recipe": recipe.to_dict(), "seed": seed}
    (folder / RECIPE_FILE).write_text(json.dumps(data, indent=1) + "\n")


def load_recipe(folder: Path) -> tuple[SFTRecipe, int] | None:
    """The (recipe, seed) a warm-start folder was trained with; None for a folder without
    :data:`RECIPE_FILE` (built before it existed)."""
    path = folder / RECIPE_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return SFTRecipe.from_dict(data["recipe"]), int(data["seed"])


def load_report(folder: Path) -> SFTReport:
    """The :class:`SFTReport` saved in a warm-start folder."""
    return SFTReport.from_dict(json.loads((folder / SFT_REPORT_FILE).read_text()))


def warm_start(
    config: NanoConfig = DEFAULT_CONFIG,
    recipe: SFTRecipe = DEFAULT_RECIPE,
    seed: int = 0,
    *,
    cache_root: Path | None = None,
    num_threads: int | None = None,
    progress: Progress | None = None,
) -> Path:
    """The warm-started nano folder for (config, recipe, seed): from the cache, or built.

    Args:
        config: the model shape; its own seed initialises the weights.
        recipe: the traces and the training.
        seed: the run seed (trace order and sampling of the training batches).
        cache_root: where warm starts are cached; default ``<cache>/models/nano``.
        num_threads: torch threads; default :func:`agents.hf_policy.default_num_threads`.
        progress: receives one line per stage and evaluation.
    """
    target = warm_start_dir(config, recipe, seed, cache_root)
    if (target / SFT_REPORT_FILE).is_file():
        if not (target / RECIPE_FILE).is_file():  # cached before folders named their recipe
            write_recipe(target, recipe, seed)
        return target
    say = progress or (lambda line: None)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target):
        if (target / SFT_REPORT_FILE).is_file():
            return target
        if target.exists():
            shutil.rmtree(target)  # an unfinished build: the report is written last
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            tokenizer = build_tokenizer()
            model = build_model(config, tokenizer)
            if recipe.copy_steps:
                threads = num_threads or default_num_threads()
                previous = torch.get_num_threads()
                torch.set_num_threads(threads)
                try:
                    copy_warmup(
                        model,
                        tokenizer,
                        steps=recipe.copy_steps,
                        batch_size=recipe.copy_batch_size,
                        lr=recipe.copy_lr,
                        seed=seed,
                        progress=say,
                    )
                finally:
                    torch.set_num_threads(previous)
            say(f"rendering traces for tiers {', '.join(recipe.tiers)}")
            train, heldout = recipe_traces(recipe, seed, tokenizer, config.context)
            report = train_sft(
                model, train, heldout, recipe, seed, num_threads=num_threads, progress=say
            )
            save_nano(tmp, config, model, tokenizer)
            write_recipe(tmp, recipe, seed)
            (tmp / SFT_REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def recipe_tasks(recipe: SFTRecipe, seed: int) -> tuple[list[Task], list[Task]]:
    """The training and held-out trace tasks of a recipe and seed. They come from seeds of their
    own, and the held-out ones share no expression with the training ones; an evaluation that
    must not score a problem the warm start was trained on excludes the training tasks."""
    task_seed = _TASK_SEED_OFFSET + seed
    train = [t for name, n in recipe.mix for t in Tier.parse(name).tasks(n, task_seed)]
    tiers = [Tier.parse(t) for t in recipe.tiers]
    return train, heldout_tasks(tiers, recipe.heldout_per_tier, task_seed + 1, exclude=train)


def recipe_traces(
    recipe: SFTRecipe, seed: int, tokenizer: Any, max_context_tokens: int
) -> tuple[list[Trace], list[Trace]]:
    """The training and held-out traces of :func:`recipe_tasks`."""
    train, held = recipe_tasks(recipe, seed)
    env = envs.make(recipe.env_id)
    try:
        return (
            render_traces(train, env, tokenizer, max_context_tokens=max_context_tokens),
            render_traces(held, env, tokenizer, max_context_tokens=max_context_tokens),
        )
    finally:
        env.close()


def collate(
    traces: Sequence[Trace], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of traces: right-padded ids, attention mask, and labels that are the ids on the
    model's own tokens and -100 (no loss) on the prompt, observations and padding."""
    width = max(len(t.input_ids) for t in traces)
    ids = torch.full((len(traces), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(traces), width), dtype=torch.long)
    labels = torch.full((len(traces), width), -100, dtype=torch.long)
    for row, trace in enumerate(traces):
        n = len(trace.input_ids)
        ids[row, :n] = torch.tensor(trace.input_ids)
        attention[row, :n] = 1
        mask = torch.tensor(trace.loss_mask, dtype=torch.bool)
        labels[row, :n] = torch.where(mask, ids[row, :n], -100)
    return ids, attention, labels


def _loss_sum(
    model: torch.nn.Module, traces: Sequence[Trace], pad_id: int
) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the traces' model tokens, and their count."""
    ids, attention, labels = collate(traces, pad_id)
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    targets = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
    )
    return loss, int((targets != -100).sum())


def heldout_loss(
    model: torch.nn.Module, traces: Sequence[Trace], pad_id: int, batch_size: int = 32
) -> float:
    """Mean cross-entropy per model token of ``traces``."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(traces), batch_size):
            loss, n = _loss_sum(model, traces[start : start + batch_size], pad_id)
            total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(count, 1)


def sft_optimizer(model: torch.nn.Module, recipe: SFTRecipe, lr: float) -> torch.optim.AdamW:
    """AdamW at ``lr`` with the recipe's weight decay on the matrices only (norms and
    embeddings are not decayed)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.95),
    )


def batch_indices(n: int, batch_size: int, rng: random.Random) -> Iterator[list[int]]:
    """Endless batches of indices into ``n`` traces: epochs shuffled by ``rng``, a batch may
    straddle two epochs."""
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            epoch = list(range(n))
            rng.shuffle(epoch)
            order += epoch
        picked, order = order[:batch_size], order[batch_size:]
        yield picked


def sft_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    traces: Sequence[Trace],
    pad_id: int,
    grad_clip: float,
) -> float:
    """One optimizer step on the mean cross-entropy per model token of ``traces`` (gradient
    norm clipped to ``grad_clip``); returns that loss."""
    loss, count = _loss_sum(model, traces, pad_id)
    loss = loss / max(count, 1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


def train_sft(
    model: torch.nn.Module,
    train: Sequence[Trace],
    heldout: Sequence[Trace],
    recipe: SFTRecipe,
    seed: int,
    *,
    num_threads: int | None = None,
    progress: Progress | None = None,
) -> SFTReport:
    """Trains ``model`` in place on ``train`` until the held-out loss plateaus (see the module
    docstring); returns the figures."""
    say = progress or (lambda line: None)
    threads = num_threads or default_num_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    pad_id = int(getattr(model.config, "pad_token_id", 0) or 0)
    optimizer = sft_optimizer(model, recipe, recipe.lr)
    report = SFTReport(
        train_traces=len(train),
        heldout_traces=len(heldout),
        train_tokens=sum(sum(t.loss_mask) for t in train),
        num_threads=threads,
        parameters=sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
    )
    batches = batch_indices(len(train), recipe.batch_size, random.Random(f"spo_gym.sft:{seed}"))
    best, stale = math.inf, 0
    window: list[float] = []
    t0 = time.monotonic()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.train()
            report.heldout_loss.append((0, heldout_loss(model, heldout, pad_id)))
            say(f"step 0: held-out loss {report.heldout_loss[-1][1]:.3f}")
            for step in range(recipe.max_steps):
                for group in optimizer.param_groups:
                    group["lr"] = recipe.lr_at(step)
                picked = [train[i] for i in next(batches)]
                window.append(sft_step(model, optimizer, picked, pad_id, recipe.grad_clip))
                report.steps = step + 1
                if report.steps % recipe.eval_every and report.steps != recipe.max_steps:
                    continue
                report.train_loss.append((report.steps, sum(window) / len(window)))
                window = []
                value = heldout_loss(model, heldout, pad_id)
                report.heldout_loss.append((report.steps, value))
                elapsed = time.monotonic() - t0
                say(
                    f"step {report.steps}: train loss {report.train_loss[-1][1]:.3f}, "
                    f"held-out loss {value:.3f} ({elapsed:.0f} s)"
                )
                if value < best * (1 - recipe.min_delta):
                    best, stale = value, 0
                else:
                    stale += 1
                    if stale >= recipe.patience and report.steps >= recipe.min_steps:
                        report.stopped = "plateau"
                        break
            else:
                report.stopped = "max_steps"
    finally:
        torch.set_num_threads(previous_threads)
        model.eval()
    report.train_s = time.monotonic() - t0
    return report


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    lock = target.parent / f".{target.name}.lock"
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
