"""Local transformers policy: continuous batching with a KV cache, the CPU default backend.

Many episodes call :meth:`HFPolicy.generate` concurrently on one event loop. Their requests are
queued for an engine that runs in a worker thread (the event loop stays free for sandbox calls
meanwhile); the thread ends whenever no request is queued or running, and torch's thread team
with it (see :mod:`agents.passing_thread`). Between decode steps the engine admits every queued
request that fits the batch limits: it prefills them together and merges them into the running
batch, whose rows are left-padded in one KV cache and decoded step by step. Each row keeps its
own stop strings, ``max_tokens``, temperature/top-p/top-k and random generator, and leaves the
batch as soon as it finishes. Results carry the sampled ids exactly and each sampled token's
log-prob.

A finished request's keys and values are kept (:class:`~agents.prefix_cache.PrefixKVCache`,
bounded, least recently used first) under the tokens they hold, its prompt and all its sampled
tokens but the last. The episode's next turn repeats those tokens and appends the last one and
the observation, so it prefills only that suffix instead of the whole conversation; a new
episode borrows the opening it shares with a kept one (system prompt, demonstrations).

Cache layers grow in place (:class:`~agents.kv_batch.GrowingLayer`) and Llama models decode
through :func:`~agents.decode_step.decode_step`, whose logits equal the model's forward pass bit
for bit; prefill goes through the model's forward pass.

Log-probs are ``log_softmax(logits / temperature)`` over the full vocabulary, taken *before*
top-k/top-p filtering — the distribution a learner recomputes when it scores the trajectory
(verl's actor also divides logits by the rollout temperature): :data:`~agents.policy.LogProbMode`
``"tempered"``. With ``top_p=1`` and ``top_k=0`` that is exactly the distribution the token was
drawn from; with filtering it is the unfiltered parent of it. Greedy requests (temperature 0)
report ``log_softmax(logits)``.

Random draws use one generator per request, on the device of the logits it samples from (a CPU
generator cannot drive ``torch.multinomial`` on a GPU): seeded with the request's seed, or the
policy's own per-device generator when the request has none.

Weight updates (:meth:`HFPolicy.update_weights`) happen between decode steps: a gate checked
before every forward pass holds the worker while the policy is paused, the state dict is loaded
in place and the version bumped while no step runs, and a batch that resumes under new weights
rebuilds its KV cache from its rows' tokens (prompt and sampled so far) before the next step, so
every token's logits come from one version of the weights — the version recorded for it. Prefix
cache entries carry the version that computed them, match only that version, and are dropped
by the update.

Batched and one-at-a-time generation — and a cached prefix against a full prefill — compute the
same function, but padding and chunking change the fp32 summation order, so logits differ by
~1e-6 (log-probs by up to ~1.5e-5): greedy decoding can pick a different token only where
the top two logits are that close (a near-tie), and sampled tokens only where the uniform draw
lands that close to a bucket edge.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from agents.common_prefix import common_prefix
from agents.decode_step import decode_step, supports_decode_step
from agents.kv_batch import KVBatch, check_full_attention, make_cache
from agents.models import resolve_model
from agents.passing_thread import in_passing_thread, start_passing_thread
from agents.policy import SamplingParams, StopReason, TokenOutput
from agents.prefix_cache import PrefixHit, PrefixKVCache

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota if any.

    torch counts the host's cores, which oversubscribes a container limited to fewer.
    """
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, int(quota) // int(period)))


def default_num_threads() -> int:
    """Torch intra-op threads: ``$OMP_NUM_THREADS`` if set, else all CPUs but one.

    The spare core is for the event loop and the sandboxes that run beside generation. A torch
    thread team that shares its cores with busy processes stalls at every barrier (measured on
    2 busy cores: a 32-row linear layer took 16 ms with 2 threads and 1 ms with 1).
    """
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, available_cpus() - 1)


# Requests admitted together that share at least this many leading tokens beyond their cached
# prefixes prefill those tokens once: shorter openings are not worth a forward pass of their own.
_MIN_SHARED_OPENING = 32


def _never() -> bool:
    return False


def sampling_generator(device: torch.device, seed: int | None) -> torch.Generator:
    """A random generator on ``device``: seeded with ``seed``, or from fresh entropy if ``None``.

    ``torch.multinomial`` requires its generator on the device of the probabilities it samples.
    """
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


class _DecodeGate:
    """Holds the worker thread before a forward pass while the policy is paused.

    :meth:`wait_idle` returns once no forward pass runs; with the gate closed none starts, so
    weights can be swapped safely in between.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._cond:
            self._closed = True

    def open(self) -> None:
        with self._cond:
            self._closed = False
            self._cond.notify_all()

    def wait_idle(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._busy)

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Wraps one forward pass: waits while closed, then marks the worker busy."""
        with self._cond:
            self._cond.wait_for(lambda: not self._closed)
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


@dataclass
class _Row:
    """One request's decoding state inside a batch."""

    prompt: list[int]
    sampling: SamplingParams
    stop_window: int
    is_cancelled: Callable[[], bool] = _never
    # Called in the worker thread the moment the row finishes, so a short request is not held
    # back until the longest row of its batch is done.
    on_finish: Callable[[TokenOutput], None] | None = None
    # Called in the worker thread if the engine fails while the row is in it.
    on_error: Callable[[BaseException], None] | None = None
    token_ids: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    stop_reason: StopReason | None = None
    # Made on first use, on the device of the logits the row samples from.
    generator: torch.Generator | None = None

    @property
    def done(self) -> bool:
        return self.stop_reason is not None or self.is_cancelled()

    @property
    def fed(self) -> list[int]:
        """The tokens whose keys and values the row's cache holds: all but the newest."""
        return self.prompt + self.token_ids[:-1]

    def output(self) -> TokenOutput:
        assert self.stop_reason is not None, "the row has not finished"
        return TokenOutput(
            tuple(self.token_ids),
            tuple(self.log_probs),
            self.stop_reason,
            policy_versions=tuple(self.versions),
            log_prob_mode="tempered",
        )


@dataclass
class PolicyStats:
    """Counters since the policy was made: how well requests were batched.

    Attributes:
        batches: admissions — groups of requests prefilled together and merged into the
            running batch (without continuous batching, one per batch run to completion).
        requests: requests completed (cancelled ones excluded).
        tokens: tokens generated for completed requests.
        largest_batch: most rows decoded together.
        prefilled_tokens: prompt tokens run through the model at admission (prefix-cache hits
            excluded).
        reused_tokens: prompt tokens whose keys and values came from the prefix cache.
        decode_steps: decode steps run (one token for every row of the batch).
        decode_tokens: tokens those steps sampled.
        decode_s: wall seconds in those steps (forward pass and sampling): with
            ``decode_tokens`` the decode rate, prefill excluded.
    """

    batches: int = 0
    requests: int = 0
    tokens: int = 0
    largest_batch: int = 0
    prefilled_tokens: int = 0
    reused_tokens: int = 0
    decode_steps: int = 0
    decode_tokens: int = 0
    decode_s: float = 0.0


@dataclass
class _Running:
    """The rows being decoded, their caches and the weights version that computed those."""

    rows: list[_Row]
    kv: KVBatch | None
    version: int


def _delivery(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[TokenOutput]
) -> tuple[Callable[[TokenOutput], None], Callable[[BaseException], None]]:
    """Callbacks for the worker thread that complete ``future`` on its event loop."""

    def resolve(output: TokenOutput) -> None:
        if not future.done():
            future.set_result(output)

    def reject(exc: BaseException) -> None:
        if not future.done():
            future.set_exception(exc)

    def deliver(output: TokenOutput) -> None:
        loop.call_soon_threadsafe(resolve, output)

    def fail(exc: BaseException) -> None:
        loop.call_soon_threadsafe(reject, exc)

    return deliver, fail


class HFPolicy:
    """A :class:`~agents.policy.Policy` backed by a local transformers causal LM.

    Args:
        model: a causal LM whose layers all use full attention; it is put in eval mode and
            run on its current device.
        tokenizer: its tokenizer (used to detect stop strings and to find end-of-sequence ids).
        max_batch_size: most requests decoded together.
        max_batch_tokens: most padded tokens (longest prompt + largest ``max_tokens``, times the
            rows) in one batch; bounds the KV cache (a longer request still runs, alone).
        prefill_chunk_tokens: prompts are prefilled in chunks of about this many tokens across
            the batch, so attention scores never span a whole long batch at once.
        num_threads: torch intra-op threads (process-wide); default :func:`default_num_threads`.
        seed: seeds the generators used by requests that carry no seed of their own.
        eos_token_ids: ids that end generation; default the generation config's and the
            tokenizer's end-of-sequence ids.
        max_context_tokens: most prompt plus generated tokens per request; default the
            model config's ``max_position_embeddings``.
        prefix_cache_bytes: bound on the keys and values of finished requests kept for the
            requests that extend them (an episode's next turn); ``0`` disables the cache.
        continuous_batching: admit queued requests between decode steps; ``False`` runs each
            batch to completion before the next starts.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch_size: int = 32,
        max_batch_tokens: int = 32768,
        prefill_chunk_tokens: int = 4096,
        num_threads: int | None = None,
        seed: int | None = None,
        eos_token_ids: Sequence[int] | None = None,
        max_context_tokens: int | None = None,
        prefix_cache_bytes: int = 1 << 30,
        continuous_batching: bool = True,
    ) -> None:
        if max_batch_size < 1 or max_batch_tokens < 1 or prefill_chunk_tokens < 1:
            raise ValueError("batch limits must be positive")
        check_full_attention(model.config)
        torch.set_num_threads(num_threads or default_num_threads())
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.continuous_batching = continuous_batching
        self.prefix_cache = PrefixKVCache(prefix_cache_bytes)
        self.eos_token_ids = frozenset(
            eos_token_ids if eos_token_ids is not None else _eos_ids(model, tokenizer)
        )
        pad = tokenizer.pad_token_id
        # Pad positions are masked out, so any valid id will do.
        self._pad_id = int(pad if pad is not None else min(self.eos_token_ids, default=0))
        self._max_context_tokens: int | None = (
            max_context_tokens
            if max_context_tokens is not None
            else getattr(model.config, "max_position_embeddings", None)
        )
        self._device = next(model.parameters()).device
        self._lean_decode = supports_decode_step(model)
        self._seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self._version = 0
        self._gate = _DecodeGate()
        # The engine's thread while it runs: one at a time, one forward pass at a time.
        self._engine_thread: threading.Thread | None = None
        self.stats = PolicyStats()
        # Requests waiting for admission; appended on the event loop, taken by the worker.
        self._inbox: collections.deque[_Row] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._server: asyncio.Task[None] | None = None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        dtype: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> HFPolicy:
        """Load an embedded model by name (e.g. ``"smollm2-135m"``) or a local HF folder.

        ``dtype`` is the weights' and activations' dtype. ``torch.bfloat16`` is opt-in: on a
        CPU with AMX or AVX512-BF16 it decodes ~1.4-1.6x faster at batch 4-8 (half the bytes
        to read per step); its log-probs are exact for its bf16 logits, and differ from
        float32's for the same tokens by ~0.03 nats on average and up to ~0.5 for an unlikely
        sampled token (tested bounds: mean 0.06, max 1.0), which a learner scoring in float32
        sees as an off-policy ratio. Keyword arguments go to :class:`HFPolicy`.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_model(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        return cls(model, tokenizer, **kwargs)

    @property
    def version(self) -> int:
        """The version of the weights new decode steps use."""
        return self._version

    @property
    def max_context_tokens(self) -> int | None:
        """Most prompt plus generated tokens one request may hold."""
        return self._max_context_tokens

    # -- the weight-update protocol ----------------------------------------------------------

    async def pause(self) -> None:
        """Return once no forward pass runs; none starts until :meth:`resume`.

        Rows being decoded keep their state and continue after :meth:`resume`.
        """
        self._gate.close()
        await asyncio.to_thread(self._gate.wait_idle)

    def resume(self) -> None:
        """Let decoding continue."""
        self._gate.open()

    async def update_weights(self, state: Mapping[str, Any], version: int) -> None:
        """Load ``state`` into the model in place and make ``version`` current.

        Decoding is paused for the load; the running batch rebuilds its KV cache under the new
        weights before its next step, and the prefix cache is emptied. Resumes afterwards
        unless the caller had paused.

        Raises:
            ValueError: ``version`` is not greater than the current version.
            RuntimeError: ``state`` does not match the model's parameters (from
                ``load_state_dict``).
        """
        if version <= self._version:
            raise ValueError(f"version must increase: {version} after {self._version}")
        was_paused = self._gate.closed
        await self.pause()
        try:
            await in_passing_thread(self._load, state, version, name="hf-policy-load")
        finally:
            if not was_paused:
                self.resume()

    def _load(self, state: Mapping[str, Any], version: int) -> None:
        with torch.no_grad():
            self.model.load_state_dict(dict(state), strict=True)
        self._version = version
        # Entries are version-tagged and never match another version; this frees their memory.
        self.prefix_cache.clear()

    # -- asyncio front ---------------------------------------------------------------------

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> TokenOutput:
        """Queue one request; it joins the running batch at the next decode step. Cancelling
        the call drops its row."""
        self._check_request(prompt_ids, sampling)
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._wakeup is None:
            # A new event loop (e.g. a second asyncio.run): the old serving task died with its loop.
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._server = loop.create_task(self._serve(self._wakeup), name="hf-policy-batcher")
        future: asyncio.Future[TokenOutput] = loop.create_future()
        on_finish, on_error = _delivery(loop, future)
        self._inbox.append(
            self._row(
                prompt_ids,
                sampling,
                is_cancelled=future.cancelled,
                on_finish=on_finish,
                on_error=on_error,
            )
        )
        self._wakeup.set()
        return await future

    async def _serve(self, wakeup: asyncio.Event) -> None:
        while True:
            await wakeup.wait()
            # One loop iteration lets every episode that is ready right now enqueue too.
            await asyncio.sleep(0)
            # Cleared before the engine starts: a request queued after the engine's last look at
            # the inbox sets it again, so none is left waiting.
            wakeup.clear()
            thread, done = start_passing_thread(self._serve_inbox, name="hf-policy")
            self._engine_thread = thread
            await done

    def _serve_inbox(self) -> None:
        """Run the engine on queued requests until none is running or queued (worker thread).

        A failure is handed to every request in the engine at the time.
        """
        admitted: list[_Row] = []

        def take(running: list[_Row]) -> list[_Row]:
            admitted[:] = [row for row in admitted if row.stop_reason is None]
            rows = self._take_from_inbox(running)
            admitted.extend(rows)
            return rows

        try:
            self._engine(take)
        except Exception as exc:
            for row in admitted:
                if row.stop_reason is None and row.on_error is not None:
                    row.on_error(exc)

    def _take_from_inbox(self, running: list[_Row]) -> list[_Row]:
        """The queued requests (FIFO) that fit beside ``running`` in the batch limits.

        Without continuous batching nothing joins a batch that is still running.
        """
        live = [row for row in running if not row.done]
        if live and not self.continuous_batching:
            return []
        taken: list[_Row] = []
        widest = max((len(r.prompt) + r.sampling.max_tokens for r in live), default=0)
        while self._inbox:
            row = self._inbox[0]
            if row.done:
                self._inbox.popleft()
                continue
            rows = len(live) + len(taken) + 1
            wide = max(widest, len(row.prompt) + row.sampling.max_tokens)
            if rows > 1 and (rows > self.max_batch_size or wide * rows > self.max_batch_tokens):
                break
            taken.append(self._inbox.popleft())
            widest = wide
        return taken

    async def aclose(self) -> None:
        """Stop the batching task and the worker thread (a paused policy is resumed so that
        the batch still running can end)."""
        self.resume()
        if self._server is not None:
            self._server.cancel()
            await asyncio.wait([self._server])
            self._server = None
        # A batch still running in the worker finishes first; the event loop stays free meanwhile.
        if self._engine_thread is not None:
            await asyncio.to_thread(self._engine_thread.join)

    def _check_request(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> None:
        if not prompt_ids:
            raise ValueError("prompt_ids is empty")
        limit = self._max_context_tokens
        if limit is not None and len(prompt_ids) + sampling.max_tokens > limit:
            raise ValueError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({sampling.max_tokens}) exceeds "
                f"the model's {limit} positions"
            )

    # -- the engine (worker thread) -----------------------------------------------------------

    def generate_batch(
        self, prompts: Sequence[Sequence[int]], samplings: Sequence[SamplingParams]
    ) -> list[TokenOutput]:
        """Generate for several prompts as one batch, blocking.

        Args:
            prompts: token-id contexts, one per row.
            samplings: sampling controls, one per row.

        Returns:
            One output per row, in order.
        """
        if len(prompts) != len(samplings):
            raise ValueError(f"{len(prompts)} prompts but {len(samplings)} sampling params")
        for prompt, sampling in zip(prompts, samplings, strict=True):
            self._check_request(prompt, sampling)
        rows = [self._row(p, s) for p, s in zip(prompts, samplings, strict=True)]
        queued = [rows]
        self._engine(lambda running: queued.pop() if queued else [])
        return [row.output() for row in rows]

    def _row(
        self,
        prompt: Sequence[int],
        sampling: SamplingParams,
        *,
        is_cancelled: Callable[[], bool] = _never,
        on_finish: Callable[[TokenOutput], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> _Row:
        return _Row(
            prompt=list(prompt),
            sampling=sampling,
            stop_window=self._stop_window(sampling),
            is_cancelled=is_cancelled,
            on_finish=on_finish,
            on_error=on_error,
        )

    def _engine(self, take: Callable[[list[_Row]], list[_Row]]) -> None:
        """Decode until no row runs and ``take`` (asked before every step with the running rows)
        admits none."""
        running = _Running([], None, self._version)
        with torch.inference_mode():
            while True:
                new = take(running.rows)
                if new:
                    self._admit(running, new)
                if running.rows:
                    self._decode(running)
                elif not new:
                    return

    def _admit(self, running: _Running, rows: list[_Row]) -> None:
        """Prefill ``rows`` (from the prefix cache where it holds a prefix), sample their first
        tokens and merge those still going into the running batch."""
        self.stats.batches += 1
        with self._gate.step():
            self._sync(running)
            version = running.version
            prompts = [row.prompt for row in rows]
            hits = [
                self.prefix_cache.take(prompt, version) if self.prefix_cache.enabled else None
                for prompt in prompts
            ]
            if self.prefix_cache.enabled:
                self._share_openings(prompts, hits, version)
            logits, kv = self._prefill(prompts, hits)
        self._step_rows(rows, logits, kv, version)
        live = [j for j, row in enumerate(rows) if not row.done]
        if not live:
            return
        if len(live) < len(rows):
            kv.select(live)
        self._drop_finished(running, always=True)
        running.rows.extend(rows[j] for j in live)
        if running.kv is None:
            running.kv = kv
        else:
            running.kv.extend(kv)
        self.stats.largest_batch = max(self.stats.largest_batch, len(running.rows))

    def _decode(self, running: _Running) -> None:
        """One decode step of the running batch: feed every row's newest token, sample the next."""
        started = time.perf_counter()
        with self._gate.step():
            self._sync(running)
            kv = running.kv
            assert kv is not None
            rows = running.rows
            device = self._device
            tokens = torch.tensor([[row.token_ids[-1]] for row in rows], device=device)
            positions = torch.tensor(
                [[len(row.prompt) + len(row.token_ids) - 1] for row in rows], device=device
            )
            kv.attention = torch.cat([kv.attention, kv.attention.new_ones((kv.rows, 1))], dim=-1)
            if self._lean_decode:
                logits = decode_step(self.model, tokens, kv.attention, positions, kv.cache)
            else:
                logits = self.model(
                    input_ids=tokens,
                    attention_mask=kv.attention,
                    position_ids=positions,
                    past_key_values=kv.cache,
                    use_cache=True,
                ).logits[:, -1, :]
        live = sum(1 for row in rows if not row.done)
        self._step_rows(rows, logits.float(), kv, running.version)
        self.stats.decode_steps += 1
        self.stats.decode_tokens += live
        self.stats.decode_s += time.perf_counter() - started
        self._drop_finished(running, always=False)

    def _step_rows(self, rows: list[_Row], logits: torch.Tensor, kv: KVBatch, version: int) -> None:
        """Sample and record one token per unfinished row; keep the caches of rows it ends."""
        tokens = self._sample(rows, logits, version).tolist()
        for j, row in enumerate(rows):
            if row.done:
                continue
            self._record(row, tokens[j])
            if row.stop_reason is None:
                continue
            if self.prefix_cache.enabled:
                fed = row.fed
                assert kv.real_tokens(j) == len(fed), "the cache lost track of the row's tokens"
                self.prefix_cache.put(fed, kv.row_layers(j), version)
            # Delivered after its cache is stored, so that the next turn finds it.
            if row.on_finish is not None:
                row.on_finish(row.output())

    def _drop_finished(self, running: _Running, *, always: bool) -> None:
        """Remove finished rows from the batch: ``always``, or once they are a quarter of it
        (the cache copy costs about as much as a few decode steps of the dead rows)."""
        keep = [j for j, row in enumerate(running.rows) if not row.done]
        gone = len(running.rows) - len(keep)
        if not gone or (not always and gone * 4 < len(running.rows)):
            return
        running.rows = [running.rows[j] for j in keep]
        if not keep:
            running.kv = None
        elif running.kv is not None:
            running.kv.select(keep)

    def _share_openings(
        self, prompts: list[list[int]], hits: list[PrefixHit | None], version: int
    ) -> None:
        """Prefill once the opening that requests admitted together share beyond their cached
        prefixes (episodes of one environment starting together: system prompt and
        demonstrations), and lend it to each of them through ``hits`` (in place) and to later
        requests through the prefix cache."""
        if len(prompts) < 2:
            return
        groups: dict[tuple[int, ...], list[int]] = {}
        for j, prompt in enumerate(prompts):
            if len(prompt) > _MIN_SHARED_OPENING:
                groups.setdefault(tuple(prompt[:_MIN_SHARED_OPENING]), []).append(j)
        for members in groups.values():
            # The last prompt token is always fed: its logits start the completion.
            fed = [tuple(prompts[j][:-1]) for j in members]
            opening = min(common_prefix(fed[0], other) for other in fed[1:]) if fed[1:] else 0
            cached = {j: hit.length if (hit := hits[j]) is not None else 0 for j in members}
            borrowers = [j for j in members if cached[j] + _MIN_SHARED_OPENING <= opening]
            if len(borrowers) < 2:
                continue
            # The opening itself starts from the longest cached prefix among its borrowers.
            start = max(borrowers, key=lambda j: cached[j])
            tokens = prompts[start][:opening]
            base = hits[start]
            _, kv = self._prefill([tokens], [base] if base is not None else None)
            layers = kv.row_layers(0)
            self.prefix_cache.put(tokens, layers, version)
            for j in borrowers:
                hits[j] = PrefixHit(opening, layers)

    def _sync(self, running: _Running) -> None:
        """Bring the running batch to the current weights (inside a gate step): under new
        weights its cache is rebuilt from every row's tokens so far."""
        if running.version == self._version:
            return
        running.version = self._version
        running.rows = [row for row in running.rows if not row.done]
        if not running.rows:
            running.kv = None
            return
        _, running.kv = self._prefill([row.fed for row in running.rows], None)

    def _row_generator(self, row: _Row, device: torch.device) -> torch.Generator:
        """The row's generator, made on ``device`` (the logits') the first time it samples."""
        if row.generator is None:
            if row.sampling.seed is not None:
                row.generator = sampling_generator(device, row.sampling.seed)
            else:
                shared = self._generators.get(device)
                if shared is None:
                    shared = self._generators[device] = sampling_generator(device, self._seed)
                row.generator = shared
        return row.generator

    def _stop_window(self, sampling: SamplingParams) -> int:
        # A stop string of n UTF-8 bytes spans at most n tokens, plus one it may start inside.
        return max((len(s.encode()) for s in sampling.stop), default=0) + 1

    def _prefill(
        self, contexts: Sequence[list[int]], hits: Sequence[PrefixHit | None] | None
    ) -> tuple[torch.Tensor, KVBatch]:
        """Prefill the contexts, each after its cached prefix if ``hits`` has one.

        Each row's cached prefix is right-aligned in the first columns and its suffix in the
        last ones; padding in between is masked out. Returns the last position's logits and
        the caches.
        """
        n = len(contexts)
        reused = [hit.length if hit is not None else 0 for hit in hits or [None] * n]
        cached = max(reused)
        suffixes = [context[start:] for context, start in zip(contexts, reused, strict=True)]
        width = max(len(s) for s in suffixes)
        input_ids = torch.full((n, width), self._pad_id, dtype=torch.long)
        attention = torch.zeros((n, cached + width), dtype=torch.long)
        positions = torch.zeros((n, width), dtype=torch.long)
        for i, (suffix, start) in enumerate(zip(suffixes, reused, strict=True)):
            input_ids[i, width - len(suffix) :] = torch.tensor(suffix)
            attention[i, cached - start : cached] = 1
            attention[i, cached + width - len(suffix) :] = 1
            positions[i, width - len(suffix) :] = torch.arange(start, start + len(suffix))
        self.stats.prefilled_tokens += sum(len(s) for s in suffixes)
        self.stats.reused_tokens += sum(reused)
        device = self._device
        input_ids, attention, positions = (
            input_ids.to(device),
            attention.to(device),
            positions.to(device),
        )
        cache = make_cache(self.model.config, self._prefix_layers(hits, cached) if cached else None)
        chunk = max(1, self.prefill_chunk_tokens // n)
        logits = None
        for start in range(0, width, chunk):
            end = min(width, start + chunk)
            out = self.model(
                input_ids=input_ids[:, start:end],
                attention_mask=attention[:, : cached + end],
                position_ids=positions[:, start:end],
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits = out.logits[:, -1, :].float()
        assert logits is not None
        return logits, KVBatch(cache, attention)

    def _prefix_layers(
        self, hits: Sequence[PrefixHit | None] | None, width: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The hits' keys and values right-aligned in ``width`` columns, zeros elsewhere."""
        assert hits is not None
        some = next(hit for hit in hits if hit is not None)
        layers = []
        for layer, (keys, values) in enumerate(some.layers):
            shape = (len(hits), keys.shape[1], width, keys.shape[3])
            batch_keys, batch_values = keys.new_zeros(shape), values.new_zeros(shape)
            for i, hit in enumerate(hits):
                if hit is not None:
                    hit_keys, hit_values = hit.layers[layer]
                    batch_keys[i, :, width - hit.length :] = hit_keys[0]
                    batch_values[i, :, width - hit.length :] = hit_values[0]
            layers.append((batch_keys, batch_values))
        return layers

    def _sample(self, rows: list[_Row], logits: torch.Tensor, version: int) -> torch.Tensor:
        """One token per row from its own distribution; records each token's log-prob and the
        weights ``version`` the logits came from."""
        temperatures = torch.tensor(
            [row.sampling.temperature if not row.sampling.greedy else 1.0 for row in rows],
            dtype=logits.dtype,
            device=logits.device,
        ).unsqueeze(-1)
        scaled = logits / temperatures
        log_probs = torch.log_softmax(scaled, dim=-1)
        tokens = scaled.argmax(dim=-1)
        for j, row in enumerate(rows):
            if row.done or row.sampling.greedy:
                continue
            filtered = _filter(scaled[j], row.sampling.top_k, row.sampling.top_p)
            probs = torch.softmax(filtered, dim=-1)
            generator = self._row_generator(row, probs.device)
            tokens[j] = torch.multinomial(probs, 1, generator=generator)[0]
        chosen = log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).tolist()
        for row, log_prob in zip(rows, chosen, strict=True):
            if not row.done:
                row.log_probs.append(log_prob)
                row.versions.append(version)
        return tokens

    def _record(self, row: _Row, token: int) -> None:
        """Append a sampled token and decide whether the row is finished."""
        row.token_ids.append(token)
        if token in self.eos_token_ids or (row.sampling.stop and self._hits_stop(row)):
            row.stop_reason = "stop"
        elif len(row.token_ids) >= row.sampling.max_tokens:
            row.stop_reason = "length"
        if row.stop_reason is None:
            return
        self.stats.requests += 1
        self.stats.tokens += len(row.token_ids)

    def _hits_stop(self, row: _Row) -> bool:
        # Checked after every token, so any stop string in the window ends with the newest one.
        tail = self.tokenizer.decode(row.token_ids[-row.stop_window :], skip_special_tokens=False)
        return any(stop in tail for stop in row.sampling.stop)


def _filter(scaled: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits outside the top-k and outside the top-p nucleus with -inf."""
    if top_k and top_k < scaled.numel():
        kth = torch.topk(scaled, top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass before it already reaches top_p; the first always stays.
        drop = (probs.cumsum(-1) - probs) >= top_p
        scaled = scaled.masked_fill(torch.empty_like(drop).scatter_(0, order, drop), float("-inf"))
    return scaled


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids: set[int] = set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif config_eos is not None:
        ids.update(int(i) for i in config_eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
