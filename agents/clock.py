"""Episode deadlines measured on an episode's own work, not on the wall clock.

An episode's deadline is a backstop against stalls. What the model can cause is already bounded
by token budgets, turn limits and per-cell timeouts, so the deadline should fire only when
something outside the episode stalls it. Wall time would also count time the episode spends
waiting for reasons that are nobody's fault: a queue for a concurrency slot, a paused engine
(weights being updated) or a learner busy between two batch calls. An :class:`ActiveClock` counts
only the seconds during which its owner declares the episode's work may progress, and a
:class:`Deadline` is a budget of those seconds.
"""

from __future__ import annotations

import time


class ActiveClock:
    """A stopwatch that runs only between :meth:`start` and :meth:`stop`.

    Args:
        running: whether it starts running (a plain monotonic clock if never stopped).
    """

    def __init__(self, *, running: bool = False) -> None:
        self._total = 0.0
        self._since: float | None = time.monotonic() if running else None

    @property
    def running(self) -> bool:
        """Whether active time is being counted now."""
        return self._since is not None

    def now(self) -> float:
        """Active seconds counted so far."""
        if self._since is None:
            return self._total
        return self._total + time.monotonic() - self._since

    def start(self) -> None:
        """Count time from now on (no-op if running)."""
        if self._since is None:
            self._since = time.monotonic()

    def stop(self) -> None:
        """Stop counting time (no-op if stopped)."""
        if self._since is not None:
            self._total += time.monotonic() - self._since
            self._since = None


class Deadline:
    """A budget of active seconds, counted on ``clock`` from the moment it is made.

    Active time never runs faster than wall time, so a wait of ``remaining()`` wall seconds
    never overshoots the deadline; a waiter whose wait times out re-checks :meth:`remaining`
    and waits again if the clock was stopped meanwhile.

    Args:
        budget_s: active seconds allowed.
        clock: the clock to count on; default a clock that always runs (wall time).
    """

    def __init__(self, budget_s: float, clock: ActiveClock | None = None) -> None:
        if not budget_s > 0:
            raise ValueError(f"a deadline needs a positive budget, got {budget_s}")
        self.budget_s = budget_s
        self.clock = clock if clock is not None else ActiveClock(running=True)
        self._end = self.clock.now() + budget_s

    def remaining(self) -> float:
        """Active seconds left (negative once expired)."""
        return self._end - self.clock.now()

    @property
    def expired(self) -> bool:
        """Whether the budget is used up."""
        return self.remaining() <= 0
