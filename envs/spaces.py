"""Text spaces for tool envs: actions and observations are arbitrary strings."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.spaces import Text
from numpy.typing import NDArray

__all__ = ["AnyText"]


class AnyText(Text):
    """A :class:`gymnasium.spaces.Text` holding any string of at most ``max_length`` characters.

    Gymnasium's ``Text`` checks each character against a finite charset (alphanumerics by
    default), which rejects the punctuation, newlines, LaTeX and non-Latin text of every
    model turn. Here :meth:`contains` checks only the type and the length. :meth:`sample`
    still draws from a finite charset — printable ASCII plus newline — and, unless told a
    length, keeps samples short (up to ``sample_max_length``): enough to fuzz an env, as
    gymnasium's env checker does. Not flattenable to arrays (characters have no index).
    """

    CHARSET = "".join(chr(c) for c in range(32, 127)) + "\n"

    def __init__(
        self,
        max_length: int = 1 << 20,
        *,
        min_length: int = 0,
        sample_max_length: int = 64,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__(max_length, min_length=min_length, charset=self.CHARSET, seed=seed)
        self.sample_max_length = max(min_length, min(sample_max_length, max_length))

    def contains(self, x: Any) -> bool:
        """Any ``str`` whose length is within the bounds."""
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def sample(
        self,
        mask: tuple[int | None, NDArray[np.int8] | None] | None = None,
        probability: tuple[int | None, NDArray[np.float64] | None] | None = None,
    ) -> str:
        """A random printable string; short unless ``mask``/``probability`` gives a length."""
        if mask is None and probability is None:
            length = int(self.np_random.integers(self.min_length, self.sample_max_length + 1))
            return super().sample(mask=(length, None))
        return super().sample(mask=mask, probability=probability)

    @property
    def is_np_flattenable(self) -> bool:
        """False: arbitrary text has no fixed character index."""
        return False

    def __repr__(self) -> str:
        return f"AnyText({self.min_length}, {self.max_length})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, AnyText)
            and self.min_length == other.min_length
            and self.max_length == other.max_length
        )
