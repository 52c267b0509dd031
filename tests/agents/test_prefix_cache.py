"""The bounded store of finished requests' KV caches."""

from __future__ import annotations

import pytest
import torch

from agents.prefix_cache import LayerKV, PrefixKVCache


def kv(tokens: int, layers: int = 2) -> list[LayerKV]:
    """Keys and values of ``tokens`` tokens: 2 heads of 4 fp32 values, 64 bytes a token a layer."""
    return [(torch.randn(1, 2, tokens, 4), torch.randn(1, 2, tokens, 4)) for _ in range(layers)]


def test_takes_the_longest_proper_prefix_of_the_same_version_and_removes_it() -> None:
    cache = PrefixKVCache(max_bytes=1 << 20)
    short, long = kv(2), kv(4)
    cache.put([1, 2], short, version=0)
    cache.put([1, 2, 3, 4], long, version=0)
    cache.put([1, 2, 3], kv(3), version=1)
    cache.put([9, 9, 9], kv(3), version=0)
    hit = cache.take([1, 2, 3, 4, 5], version=0)
    assert hit is not None and hit.length == 4 and hit.layers is long
    assert cache.take([1, 2, 3, 4, 5], version=0) is not None  # now the shorter one
    assert cache.take([1, 2, 3, 4, 5], version=0) is None
    # A whole prompt is not a proper prefix: its last token must still be fed.
    hit = cache.take([9, 9, 9], version=0)
    assert hit is not None and hit.length == 2
    assert cache.take([1, 2, 3, 4], version=2) is None
    assert (cache.stats.lookups, cache.stats.hits, cache.stats.reused_tokens) == (5, 3, 8)


def test_a_shared_first_part_is_lent_and_the_entry_stays() -> None:
    cache = PrefixKVCache(max_bytes=1 << 20)
    layers = kv(5)
    cache.put([1, 2, 3, 4, 5], layers, version=0)
    hit = cache.take([1, 2, 3, 7, 8], version=0)  # another episode with the same first tokens
    assert hit is not None and hit.length == 3 and len(cache) == 1
    for (keys, values), (hit_keys, hit_values) in zip(layers, hit.layers, strict=True):
        assert torch.equal(hit_keys, keys[:, :, :3]) and torch.equal(hit_values, values[:, :, :3])
    # The episode's own next turn extends the whole entry and takes it.
    whole = cache.take([1, 2, 3, 4, 5, 6], version=0)
    assert whole is not None and whole.length == 5 and whole.layers is layers and len(cache) == 0


def test_least_recently_stored_entries_go_first_within_the_byte_and_entry_bounds() -> None:
    per_token = 2 * 64  # two layers
    cache = PrefixKVCache(max_bytes=10 * per_token, max_entries=3)
    cache.put([1] * 4, kv(4), version=0)
    cache.put([2] * 4, kv(4), version=0)
    cache.put([3] * 4, kv(4), version=0)  # 12 tokens > 10: the first goes
    assert len(cache) == 2 and cache.nbytes == 8 * per_token
    assert cache.take([1] * 5, version=0) is None
    cache.put([4], kv(1), version=0)
    cache.put([5], kv(1), version=0)  # a fourth entry: the oldest goes
    assert len(cache) == 3 and cache.take([2] * 5, version=0) is None
    cache.put([6] * 11, kv(11), version=0)  # larger than the whole budget: not kept
    assert len(cache) == 3 and cache.stats.evictions == 2
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_rejects_bad_bounds_and_can_be_disabled() -> None:
    with pytest.raises(ValueError, match="bounds"):
        PrefixKVCache(max_bytes=-1)
    disabled = PrefixKVCache(max_bytes=0)
    assert not disabled.enabled
    disabled.put([1, 2], kv(2), version=0)
    assert len(disabled) == 0
