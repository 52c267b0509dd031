"""A batch of rows' KV caches in one padded transformers cache, and the row operations on it.

Each row's cached tokens sit anywhere in the batch's columns, with padding columns masked out by
the attention mask; rows of different lengths, or whose prefix came from a cache and whose
suffix was prefilled separately, share one dense tensor per layer that the model attends over.
Only full-attention layers (transformers' ``DynamicLayer``) are supported: a sliding window
drops columns by position, which padding would shift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from agents.prefix_cache import LayerKV


def check_full_attention(config: Any) -> None:
    """Raise ``ValueError`` unless every layer of the model ``config`` caches full attention."""
    layers = DynamicCache(config=config).layers
    if any(type(layer) is not DynamicLayer for layer in layers):
        raise ValueError("only models whose layers all use full attention are supported")


def dynamic_layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The layers of ``cache``, all full-attention (see :func:`check_full_attention`)."""
    layers = []
    for layer in cache.layers:
        assert isinstance(layer, DynamicLayer), "a layer that is not full attention"
        layers.append(layer)
    return layers


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer whose keys and values are views of buffers with spare
    columns: a decode step writes its column in place instead of copying the whole cache
    (``torch.cat`` of every layer was ~17% of a decode step).

    The views hold exactly the columns written so far, so attention sees the same tensors as
    with :class:`DynamicLayer`. Keys or values assigned from outside (row selection, merging)
    are detected as not being views of the buffers and copied into new buffers at the next
    update.
    """

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        end = length + key_states.shape[-2]
        if not self._owns_views(key_states, end):
            self._key_buffer = _with_room(self.keys, key_states, length, end)
            self._value_buffer = _with_room(self.values, value_states, length, end)
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer[:, :, length:end].copy_(key_states)
        self._value_buffer[:, :, length:end].copy_(value_states)
        self.keys = self._key_buffer[:, :, :end]
        self.values = self._value_buffer[:, :, :end]
        return self.keys, self.values

    def _owns_views(self, new: torch.Tensor, end: int) -> bool:
        """Whether the current keys and values are the leading columns of the buffers, which
        have room up to column ``end`` for rows shaped like ``new``."""
        for view, buffer in ((self.keys, self._key_buffer), (self.values, self._value_buffer)):
            if (
                buffer is None
                or view is None
                or view.dim() != 4
                or view.data_ptr() != buffer.data_ptr()
                or view.stride() != buffer.stride()
                or view.shape[:2] != new.shape[:2]
                or buffer.shape[2] < end
            ):
                return False
        return True


# Spare columns a buffer is grown by: a decode step then copies the cache once every this many
# steps instead of at every step.
_GROWTH = 128


def _with_room(old: torch.Tensor | None, new: torch.Tensor, length: int, end: int) -> torch.Tensor:
    """A buffer shaped like ``new`` with ``end`` plus spare columns, holding ``old``'s first
    ``length`` columns."""
    rows, heads, _, dim = new.shape
    buffer = new.new_empty((rows, heads, end + _GROWTH, dim))
    if length and old is not None:
        buffer[:, :, :length].copy_(old)
    return buffer


def make_cache(config: Any, layers: Sequence[LayerKV] | None = None) -> DynamicCache:
    """A transformers cache for ``config``'s model, holding ``layers`` (none: empty); its layers
    grow in place (:class:`GrowingLayer`)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() for _ in cache.layers]
    if layers is not None:
        for layer, (keys, values) in zip(dynamic_layers(cache), layers, strict=True):
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
    return cache


def layer_tensors(cache: DynamicCache) -> list[LayerKV]:
    """The keys and values of every layer of ``cache`` (each layer must hold some)."""
    tensors = []
    for layer in dynamic_layers(cache):
        assert layer.keys is not None and layer.values is not None, "an empty cache layer"
        tensors.append((layer.keys, layer.values))
    return tensors


@dataclass
class KVBatch:
    """Rows' caches: ``cache`` holds ``[rows, heads, width, dim]`` per layer and ``attention``
    (``[rows, width]``, 1 for a real token) says which columns each row holds.
    """

    cache: DynamicCache
    attention: torch.Tensor

    @property
    def rows(self) -> int:
        return int(self.attention.shape[0])

    @property
    def width(self) -> int:
        return int(self.attention.shape[1])

    def select(self, index: Sequence[int]) -> None:
        """Keep only the rows at ``index`` (in that order), and drop columns none of them uses."""
        positions = torch.tensor(index, device=self.attention.device)
        self.cache.batch_select_indices(positions)
        self.attention = self.attention[positions]
        self.trim()

    def trim(self) -> None:
        """Drop leading columns that are padding in every row."""
        used = self.attention.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else self.width
        if start == 0:
            return
        for layer, (keys, values) in zip(
            dynamic_layers(self.cache), layer_tensors(self.cache), strict=True
        ):
            layer.keys, layer.values = keys[..., start:, :], values[..., start:, :]
        self.attention = self.attention[:, start:]

    def row_layers(self, row: int) -> list[LayerKV]:
        """Row ``row``'s real tokens' keys and values, contiguous, in order."""
        columns = self.attention[row].nonzero().squeeze(-1)
        return [
            (keys[row : row + 1, :, columns], values[row : row + 1, :, columns])
            for keys, values in layer_tensors(self.cache)
        ]

    def real_tokens(self, row: int) -> int:
        """How many tokens row ``row`` holds."""
        return int(self.attention[row].sum())

    def extend(self, other: KVBatch) -> None:
        """Append ``other``'s rows, left-padding the narrower of the two to a common width."""
        if other.rows == 0:
            return
        if self.rows == 0:
            self.cache, self.attention = other.cache, other.attention
            return
        width = max(self.width, other.width)
        merged = [
            (_cat_rows(k1, k2, width), _cat_rows(v1, v2, width))
            for (k1, v1), (k2, v2) in zip(
                layer_tensors(self.cache), layer_tensors(other.cache), strict=True
            )
        ]
        for layer, (keys, values) in zip(dynamic_layers(self.cache), merged, strict=True):
            layer.keys, layer.values = keys, values
        self.attention = _cat_rows(self.attention, other.attention, width)


def _cat_rows(a: torch.Tensor, b: torch.Tensor, width: int) -> torch.Tensor:
    """Stack ``a`` over ``b`` along dim 0, each right-aligned in ``width`` columns (dim 2 for
    caches, dim 1 for masks) with zeros on the left."""
    dim = 2 if a.dim() == 4 else 1
    shape = list(a.shape)
    shape[0] = a.shape[0] + b.shape[0]
    shape[dim] = width
    out = a.new_zeros(shape)
    out.narrow(0, 0, a.shape[0]).narrow(dim, width - a.shape[dim], a.shape[dim]).copy_(a)
    out.narrow(0, a.shape[0], b.shape[0]).narrow(dim, width - b.shape[dim], b.shape[dim]).copy_(b)
    return out
