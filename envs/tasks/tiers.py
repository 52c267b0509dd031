"""Difficulty tiers of the arithmetic family, and train / held-out task sets drawn from them.

A tier is one setting of :func:`~envs.tasks.arithmetic.arithmetic_tasks`' knobs, named like
``d3o2`` (three-digit operands, two operations; ``d3o2n`` without division). Training runs mix
several tiers; a held-out set comes from a separate seed and shares no expression with the
training set, so an evaluation never scores a problem the learner has seen.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from envs.tasks.arithmetic import arithmetic_tasks
from envs.tasks.task import Task

__all__ = ["Tier", "TierError", "heldout_tasks", "tier_of", "tier_tasks"]

_NAME = re.compile(r"^d(?P<digits>[1-9]\d*)o(?P<operations>[1-9]\d*)(?P<no_div>n?)$")
_SPARE_DRAWS = 4  # held-out candidates drawn per wanted task, to survive deduplication


class TierError(ValueError):
    """A tier name or tier mix that cannot be used."""


@dataclass(frozen=True)
class Tier:
    """One difficulty setting of the arithmetic family.

    Attributes:
        digits: digits of every operand.
        operations: binary operations per expression.
        division: whether ÷ (and so exact fractions) can appear.
    """

    digits: int
    operations: int
    division: bool = True

    def __post_init__(self) -> None:
        if self.digits < 1 or self.operations < 1:
            raise TierError(f"a tier needs digits >= 1 and operations >= 1, got {self}")

    @property
    def name(self) -> str:
        """``d{digits}o{operations}``, with an ``n`` suffix when division is off."""
        return f"d{self.digits}o{self.operations}{'' if self.division else 'n'}"

    @classmethod
    def parse(cls, name: str) -> Tier:
        """The tier named ``name`` (e.g. ``"d3o2"``, ``"d4o1n"``).

        Raises:
            TierError: the name does not follow the pattern.
        """
        match = _NAME.match(name.strip())
        if match is None:
            raise TierError(
                f"bad tier name {name!r}: expected d<digits>o<operations>[n], e.g. d3o2 or d4o1n"
            )
        return cls(int(match["digits"]), int(match["operations"]), division=not match["no_div"])

    def tasks(self, n: int, seed: int) -> list[Task]:
        """``n`` distinct tasks of this tier (deterministic for a seed)."""
        return arithmetic_tasks(
            n,
            digits=self.digits,
            operations=self.operations,
            seed=seed,
            division=self.division,
        )


def tier_of(task: Task) -> str:
    """The tier name of an arithmetic task (from the generator settings it carries).

    Raises:
        TierError: the task was not made by the arithmetic generator.
    """
    try:
        digits, operations = int(task.extra["digits"]), int(task.extra["operations"])
    except (KeyError, TypeError, ValueError):
        raise TierError(f"task {task.key} carries no arithmetic tier") from None
    return Tier(digits, operations, bool(task.extra.get("division", True))).name


def _expressions(tasks: Iterable[Task]) -> set[str]:
    return {str(t.extra["expression"]) for t in tasks if "expression" in t.extra}


def tier_tasks(tiers: Sequence[Tier], n_per_tier: int, seed: int) -> list[Task]:
    """``n_per_tier`` tasks of each tier, tiers in the order given.

    Raises:
        TierError: no tiers, or a duplicated tier.
    """
    _check_mix(tiers)
    return [task for tier in tiers for task in tier.tasks(n_per_tier, seed)]


def heldout_tasks(
    tiers: Sequence[Tier], n_per_tier: int, seed: int, exclude: Iterable[Task] = ()
) -> list[Task]:
    """``n_per_tier`` tasks per tier from ``seed``, none sharing an expression with ``exclude``.

    Raises:
        TierError: bad mix, or a tier too small to give that many unseen expressions.
    """
    _check_mix(tiers)
    seen = _expressions(exclude)
    out: list[Task] = []
    for tier in tiers:
        try:
            candidates = tier.tasks(n_per_tier * _SPARE_DRAWS, seed)
        except ValueError as exc:
            raise TierError(f"tier {tier.name}: {exc}") from None
        fresh = [t for t in candidates if t.extra["expression"] not in seen]
        if len(fresh) < n_per_tier:
            raise TierError(
                f"tier {tier.name} has only {len(fresh)} expressions unseen in training for "
                f"seed {seed}; ask for fewer held-out tasks"
            )
        out.extend(fresh[:n_per_tier])
    return out


def _check_mix(tiers: Sequence[Tier]) -> None:
    if not tiers:
        raise TierError("a task mix needs at least one tier")
    names = [t.name for t in tiers]
    if len(set(names)) != len(names):
        raise TierError(f"tier listed twice in {names}")
