"""Arithmetic-with-tool tasks: exact arithmetic on long numbers, easy with code, hard without.

Each task is a random expression tree of ``operations`` binary operations (+, -, ×, and ÷ when
``division`` is on) over integers of exactly ``digits`` digits, e.g. with digits=5, operations=3::

    ... Compute the exact value of ((48213 * 90317) - 55120) / 73411

The answer is an exact integer or a fraction ``p/q`` in lowest terms. Products of several
five-digit numbers and exact fractions are beyond what a small model does reliably in its head,
and one line of Python away with the interpreter: the training ground for CPU runs. Difficulty
rises with both knobs.

Generation is deterministic: the same arguments give the same tasks on any machine, and a
shorter list is a prefix of a longer one.
"""

from __future__ import annotations

import random
from fractions import Fraction

from envs.tasks.task import Task

__all__ = ["DATA_SOURCE", "arithmetic_tasks"]

DATA_SOURCE = "spo_gym/arithmetic"
_MAX_DRAWS_PER_TASK = 100  # repeated expressions are skipped; a tiny space runs out of new ones


def _expression(rng: random.Random, digits: int, operations: int, ops: str) -> tuple[str, Fraction]:
    """A random expression with ``operations`` operators; returns (text, exact value)."""
    low, high = 10 ** (digits - 1), 10**digits - 1
    # Every internal node splits its remaining operators between its two children.
    if operations == 0:
        leaf = rng.randint(low, high)
        return str(leaf), Fraction(leaf)
    left_ops = rng.randint(0, operations - 1)
    left_text, left = _expression(rng, digits, left_ops, ops)
    right_text, right = _expression(rng, digits, operations - 1 - left_ops, ops)
    op = rng.choice(ops)
    if op == "/" and right == 0:
        op = "*"  # keep the draw sequence intact rather than retrying
    value: Fraction
    if op == "+":
        value = left + right
    elif op == "-":
        value = left - right
    elif op == "*":
        value = left * right
    else:
        value = left / right
    if left_ops > 0:
        left_text = f"({left_text})"
    if operations - 1 - left_ops > 0:
        right_text = f"({right_text})"
    return f"{left_text} {op} {right_text}", value


def _answer(value: Fraction) -> str:
    return (
        str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    )


def arithmetic_tasks(
    n: int, *, digits: int = 6, operations: int = 3, seed: int = 0, division: bool = True
) -> list[Task]:
    """Generate ``n`` distinct arithmetic tasks.

    Args:
        n: number of tasks.
        digits: digits of every operand (>= 1).
        operations: binary operations per expression (>= 1).
        seed: any integer; different seeds give different task sets.
        division: include ÷, which makes most answers fractions.

    Raises:
        ValueError: bad arguments, or fewer than ``n`` distinct expressions exist.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}")
    if operations < 1:
        raise ValueError(f"operations must be >= 1, got {operations}")
    ops = "+-*/" if division else "+-*"
    # String seeds are hashed with SHA-512 by `random`: stable across processes and versions.
    rng = random.Random(f"spo_gym.arithmetic:{seed}:{digits}:{operations}:{ops}")
    tasks: list[Task] = []
    seen: set[str] = set()
    draws = 0
    while len(tasks) < n:
        draws += 1
        if draws > _MAX_DRAWS_PER_TASK * max(n, 1):
            raise ValueError(
                f"only {len(tasks)} distinct expressions found for digits={digits}, "
                f"operations={operations}; ask for fewer tasks or raise the difficulty"
            )
        text, value = _expression(rng, digits, operations, ops)
        if text in seen:
            continue
        seen.add(text)
        # The expression ends the problem, so a solver copying it into code copies from the
        # nearest place in its context.
        problem = (
            "Give the answer as an integer, or as a fraction p/q in lowest terms. "
            f"Compute the exact value of {text}"
        )
        extra = {
            "expression": text,
            "digits": digits,
            "operations": operations,
            "division": division,
            "seed": seed,
            "index": len(tasks),
        }
        tasks.append(Task.create(problem, _answer(value), DATA_SOURCE, extra))
    return tasks
