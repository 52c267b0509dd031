"""How many leading items two sequences share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading items ``a`` and ``b`` (of one type: two strings, lists or tuples) share.

    A binary search over slice comparisons, which run at C speed: a prefix-cache lookup scans
    every entry, and a transcript check compares whole renderings.
    """
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low
