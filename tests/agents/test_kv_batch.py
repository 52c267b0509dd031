"""The growing cache layer: in-place column writes that match transformers' own cache."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from agents.kv_batch import GrowingLayer


def test_growing_layer_holds_what_a_dynamic_layer_holds_across_row_changes() -> None:
    torch.manual_seed(0)
    growing, dynamic = GrowingLayer(), DynamicLayer()
    chunks = [torch.randn(3, 2, n, 4) for n in (5, 1, 1, 200, 1)]
    for i, chunk in enumerate(chunks):
        if i == 3:
            # A row selection from outside replaces the views; the next update copies them.
            for layer in (growing, dynamic):
                layer.keys, layer.values = layer.keys[[2, 0, 1]], layer.values[[2, 0, 1]]
        got = growing.update(chunk, chunk * 2)
        want = dynamic.update(chunk, chunk * 2)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # Single-column steps write in place: the buffer is not reallocated.
    buffer = growing.keys.data_ptr()
    growing.update(chunks[-1], chunks[-1])
    assert growing.keys.data_ptr() == buffer and growing.get_seq_length() == 209
