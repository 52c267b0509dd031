"""A bounded store of finished requests' KV caches, keyed by the tokens they hold.

A multi-turn episode's next request repeats its previous context, the tokens sampled for it and
the observation after them. Keeping the keys and values of the finished request lets the next
one prefill only the new suffix. Episodes of one environment also share their first tokens
(system prompt, demonstrations): a request takes the longest common prefix of any entry, so a new
episode prefills only what follows the shared part. Entries are tagged with the weights version
that computed them and never match under another version.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from agents.common_prefix import common_prefix

LayerKV = tuple[torch.Tensor, torch.Tensor]
"""One layer's keys and values, each ``[1, kv_heads, tokens, head_dim]``."""


@dataclass(frozen=True)
class PrefixHit:
    """A cached prefix of a prompt.

    Attributes:
        length: how many leading prompt tokens the cache holds.
        layers: the keys and values of those tokens, one pair per layer.
    """

    length: int
    layers: list[LayerKV]


@dataclass
class PrefixCacheStats:
    """Counters since the cache was made.

    Attributes:
        lookups: prompts looked up.
        hits: lookups that found a cached prefix.
        reused_tokens: prompt tokens not prefilled thanks to hits.
        evictions: entries dropped to stay within the bounds.
    """

    lookups: int = 0
    hits: int = 0
    reused_tokens: int = 0
    evictions: int = 0


@dataclass
class _Entry:
    version: int
    layers: list[LayerKV]
    nbytes: int


class PrefixKVCache:
    """Least-recently-used KV caches of finished requests, bounded by bytes and entries.

    Thread-safe: the generation worker stores and takes entries while a weight update may clear
    them from another thread.

    Args:
        max_bytes: most bytes of keys and values held; ``0`` disables the cache.
        max_entries: most entries held.
    """

    def __init__(self, max_bytes: int, max_entries: int = 256) -> None:
        if max_bytes < 0 or max_entries < 1:
            raise ValueError("prefix cache bounds must be non-negative (bytes) and positive")
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.stats = PrefixCacheStats()
        self._entries: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether entries are kept at all."""
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        """Bytes of keys and values held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, tokens: Sequence[int], layers: list[LayerKV], version: int) -> None:
        """Keep the keys and values of ``tokens`` (computed by weights ``version``).

        An entry larger than the whole budget is not kept; older entries make room otherwise.
        """
        nbytes = sum(k.nbytes + v.nbytes for k, v in layers)
        if not tokens or nbytes > self.max_bytes:
            return
        key = tuple(tokens)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = _Entry(version, layers, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes or len(self._entries) > self.max_entries:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.stats.evictions += 1

    def take(self, prompt: Sequence[int], version: int) -> PrefixHit | None:
        """The longest cached prefix of ``prompt`` (leaving at least one prompt token to feed,
        whose logits start the completion) among the entries of ``version``.

        An entry that is wholly a prefix of ``prompt`` is removed: the request that takes it will
        store a longer one (an episode's next turn). An entry that shares only its first tokens
        with ``prompt`` (another episode with the same system prompt and demonstrations) stays
        for others, and the hit holds views of those first tokens.
        """
        wanted = tuple(prompt[: len(prompt) - 1])
        with self._lock:
            self.stats.lookups += 1
            best: tuple[int, ...] | None = None
            best_length = 0
            for key, entry in self._entries.items():
                if entry.version == version:
                    length = common_prefix(key, wanted)
                    if length > best_length:
                        best, best_length = key, length
            if best is None:
                return None
            self.stats.hits += 1
            self.stats.reused_tokens += best_length
            if best_length == len(best):
                entry = self._entries.pop(best)
                self._bytes -= entry.nbytes
                return PrefixHit(best_length, entry.layers)
            self._entries.move_to_end(best)
            layers = [
                (keys[:, :, :best_length], values[:, :, :best_length])
                for keys, values in self._entries[best].layers
            ]
            return PrefixHit(best_length, layers)

    def clear(self) -> None:
        """Drop every entry (e.g. after the weights changed)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
