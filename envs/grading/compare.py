r"""How a gold answer and a candidate are compared: the decisions made without math-verify.

:func:`plan` reads both answers and decides what it can in microseconds — equal canonical
strings, plain numbers (with percent and decimal-comma readings), lists part by part — and
leaves the rest as :class:`Leaf` comparisons for math-verify, combined in a small tree
(:class:`AllOf`, :class:`AnyOf`, :class:`Cover`). :func:`evaluate` folds the leaves' verdicts
back into one.

Lists. ``(1, 2)``, ``[0, 1)``, ``\{1, 2\}`` and bare ``1, 2`` are compared part by part, with
their brackets: a set and a tuple, or ``[`` and ``(``, never match. Whether order matters is
:data:`AnswerOrder`; a sequence with an ellipsis (``1, 2, \ldots, 10``) is always ordered, and
its parts are compared as written (math-verify drops the ellipsis and would equate different
sequences).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

from envs.grading.normalize import (
    ELLIPSIS,
    Items,
    as_number,
    comma_decimal,
    light_latex,
    normalize_answer,
    split_items,
    split_percent,
)

__all__ = [
    "AllOf",
    "AnswerOrder",
    "AnyOf",
    "Cover",
    "Failure",
    "Leaf",
    "Node",
    "Plan",
    "evaluate",
    "leaves",
    "plan",
]

AnswerOrder = Literal["notation", "ordered", "unordered"]
r"""Whether the order of a list answer matters.

* "notation" (the default): the gold's notation decides. Order does not matter for a set
  (``\{…\}``), a bare list of tuples or sets (``(1, 2), (3, 4)``: a collection of
  solutions, which has no order), or a bare list of named values (``a = 1, b = 2``: the names
  say which is which). Everything else is ordered: a tuple, a point, an interval, a sequence
  and a bare list of values (``10, 4, -2``). A permuted answer to an ordered question graded
  correct would reward a wrong answer, while the opposite mistake only withholds a reward,
  so a list whose notation does not say is taken as ordered; a task whose answer is an
  unordered list of values ("enter all solutions") declares "unordered".
* "ordered": order matters, whatever the notation.
* "unordered": the top-level list is compared as a set (each part of either side equals some
  part of the other), whatever the notation. Nested lists follow their own notation.
"""

_MAX_PAIRS = 400  # parts compared pairwise in an unordered list; larger lists go whole
_NAMED = re.compile(r"^([A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?)\s*=\s*([^=]+)$")
_OPTION = re.compile(r"^\(?([A-Z])\)?(?:[.:)]\s+\S.*)?$", re.S)


@dataclass(frozen=True)
class Leaf:
    """A comparison only math-verify can make.

    Attributes:
        gold: the gold answer's LaTeX (:func:`~envs.grading.normalize.light_latex`), or prose.
        answer: likewise for the answer.
        gold_prose: ``gold`` is prose, for math-verify's own answer extraction.
        answer_prose: likewise for ``answer``.
    """

    gold: str
    answer: str
    gold_prose: bool = False
    answer_prose: bool = False


@dataclass(frozen=True)
class AllOf:
    """True when every part is."""

    parts: tuple[Node, ...]


@dataclass(frozen=True)
class AnyOf:
    """True when some part is (the readings of an ambiguous answer)."""

    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Cover:
    """Set equality: ``rows[i][j]`` compares gold part i with answer part j; true when every
    gold part equals some answer part and every answer part some gold part."""

    rows: tuple[tuple[Node, ...], ...]


Node: TypeAlias = bool | Leaf | AllOf | AnyOf | Cover


@dataclass(frozen=True)
class Failure:
    """A leaf (or a tree) without a verdict: "error" (math-verify failed on the answer) or
    "unavailable" (the gold cannot be read)."""

    status: Literal["error", "unavailable"]
    detail: str


Method = Literal["string", "numeric", "structure"]


@dataclass(frozen=True)
class Plan:
    """What :func:`plan` decided: a verdict (``node`` a bool) and the step that reached it, or
    a tree with math-verify leaves."""

    node: Node
    method: Method


# --------------------------------------------------------------------------- combinators


def _all_of(parts: Iterable[Node]) -> Node:
    kept: list[Node] = []
    for part in parts:
        if part is False:
            return False
        if part is not True:
            kept.append(part)
    if not kept:
        return True
    return kept[0] if len(kept) == 1 else AllOf(tuple(kept))


def _any_of(parts: Iterable[Node]) -> Node:
    kept: list[Node] = []
    for part in parts:
        if part is True:
            return True
        if part is not False and part not in kept:
            kept.append(part)
    if not kept:
        return False
    return kept[0] if len(kept) == 1 else AnyOf(tuple(kept))


def _covers(rows: list[list[bool]]) -> bool:
    return all(any(row) for row in rows) and all(any(col) for col in zip(*rows, strict=True))


def _cover(rows: list[list[Node]]) -> Node:
    if all(isinstance(cell, bool) for row in rows for cell in row):
        return _covers([[bool(cell) for cell in row] for row in rows])
    # Decided already if no leaf verdict can change the answer.
    if not _covers([[cell is not False for cell in row] for row in rows]):
        return False
    if _covers([[cell is True for cell in row] for row in rows]):
        return True
    return Cover(tuple(tuple(row) for row in rows))


# --------------------------------------------------------------------------- planning


def _name_and_value(s: str) -> tuple[str | None, str]:
    m = _NAMED.match(s)
    return (m.group(1), m.group(2).strip()) if m else (None, s)


def _scalar(gold: str, answer: str) -> tuple[Node, Method]:
    """Two answers (:func:`light_latex`) that are not lists, whose canonical forms differ."""
    if ELLIPSIS in gold or ELLIPSIS in answer:
        return False, "structure"  # written forms differ, and math-verify drops ellipses
    gn, an = normalize_answer(gold), normalize_answer(answer)
    option = _option_letters(gn, an, gold, answer)
    if option is not None:
        return option, "structure"
    g_text, g_pct = split_percent(gold)
    a_text, a_pct = split_percent(answer)
    g_name, a_name = _name_and_value(gold)[0], _name_and_value(answer)[0]
    gv, av = as_number(gn), as_number(an)
    if gv is not None and av is not None and not (g_name and a_name and g_name != a_name):
        # A percent on one side only: 10% is 10 (the unit left out) or 0.1.
        g_values = [gv[0], gv[0] / 100] if g_pct and not a_pct else [gv[0]]
        a_values = [av[0], av[0] / 100] if a_pct and not g_pct else [av[0]]
        if any(x == y for x in g_values for y in a_values):
            return True, "numeric"
        if gv[1] and av[1]:
            return False, "numeric"
    base = Leaf(g_text, a_text)
    if g_pct != a_pct:
        scaled = (
            Leaf(f"\\frac{{{g_text}}}{{100}}", a_text)
            if g_pct
            else Leaf(g_text, f"\\frac{{{a_text}}}{{100}}")
        )
        return _any_of([base, scaled]), "numeric"
    return base, "numeric"


def _option_letters(gn: str, an: str, gold: str, answer: str) -> bool | None:
    """A multiple-choice letter against "C. x = 42" / "(C) 42": compare the letters only."""
    if (len(gn) == 1) == (len(an) == 1):
        return None  # two bare letters were compared as strings; two longer texts are not
    g, a = _OPTION.match(gold.strip()), _OPTION.match(answer.strip())
    if not g or not a:
        return None
    return g.group(1) == a.group(1)


_FAMILY = {"(": "tuple", r"\langle": "tuple", ")": "tuple", r"\rangle": "tuple"}
_FAMILY |= {"[": "closed", "]": "closed", r"\{": "set", r"\}": "set", "{": "set", "}": "set"}


def _compatible(x: str, y: str) -> bool:
    return not x or not y or _FAMILY.get(x) == _FAMILY.get(y)


def _unordered_by_notation(gold: Items) -> bool:
    if gold.is_set:
        return True
    if gold.open or gold.close:
        return False
    if all(split_items(part) is not None for part in gold.parts):
        return True  # a bare list of tuples or sets: a collection of solutions
    names = [_name_and_value(part)[0] for part in gold.parts]
    return all(names) and len(set(names)) == len(names)


def _lists(gold: Items, answer: Items, order: AnswerOrder, whole: Leaf) -> Node:
    if not (_compatible(gold.open, answer.open) and _compatible(gold.close, answer.close)):
        return False
    if gold.has_ellipsis or answer.has_ellipsis:
        ordered = True
    elif order == "notation":
        ordered = not _unordered_by_notation(gold)
    else:
        ordered = order == "ordered"
    if ordered:
        if len(gold.parts) != len(answer.parts):
            return False
        return _all_of(_part(g, a) for g, a in zip(gold.parts, answer.parts, strict=True))
    if len(gold.parts) * len(answer.parts) > _MAX_PAIRS:
        return whole
    return _cover([[_part(g, a) for a in answer.parts] for g in gold.parts])


def _part(gold: str, answer: str) -> Node:
    return _compare(gold, answer, "notation")[0]


def _readings(s: str) -> list[str | Items]:
    """How an answer can be read: one way, or two for ``1000,99`` (a decimal comma, or the
    list 1000, 99)."""
    decimal = comma_decimal(s)
    if decimal is None and as_number(normalize_answer(s)) is not None:
        return [s]  # a plain number, 1,234 included: never a list
    items = split_items(_name_and_value(s)[1] if "=" in s else s)
    if decimal is not None and items is not None:
        return [decimal, items]
    return [items if items is not None else s]


def _same_form(gold: str, answer: str) -> bool:
    if normalize_answer(gold) != normalize_answer(answer):
        return False
    g_name, a_name = _name_and_value(gold)[0], _name_and_value(answer)[0]
    return g_name == a_name or not (g_name and a_name)  # x = 1 is not y = 1


def _compare(gold: str, answer: str, order: AnswerOrder) -> tuple[Node, Method]:
    """Two answers as :func:`light_latex` gives them."""
    if _same_form(gold, answer):
        return True, "string"
    results: list[tuple[Node, Method]] = []
    g_readings, a_readings = _readings(gold), _readings(answer)
    for g in g_readings:
        for a in a_readings:
            if isinstance(g, Items) and isinstance(a, Items):
                results.append((_lists(g, a, order, Leaf(gold, answer)), "structure"))
            elif isinstance(g, Items) or isinstance(a, Items):
                # A list against a single value: math-verify may read the value as a list
                # (\pm 3 is -3, 3). Not a sequence, and not the decimal reading of "1,5".
                sequence = (isinstance(g, Items) and g.has_ellipsis) or (
                    isinstance(a, Items) and a.has_ellipsis
                )
                alternative = len(g_readings) > 1 or len(a_readings) > 1
                node: Node = False if sequence or alternative else Leaf(gold, answer)
                results.append((node, "structure"))
            else:
                results.append(_scalar(g, a))
    decided = next((r for r in results if r[0] is True), None)
    if decided is not None:
        return decided
    return _any_of(node for node, _ in results), results[0][1]


def plan(
    gold: str,
    answer: str,
    order: AnswerOrder = "notation",
    *,
    gold_prose: bool = False,
    answer_prose: bool = False,
) -> Plan:
    """Compare a gold answer with a candidate (both answers, not responses) as far as can be
    done without math-verify. Prose (see :func:`~envs.grading.extract.is_prose`) is left to
    math-verify's answer extraction whole."""
    if gold_prose or answer_prose:
        g = gold if gold_prose else light_latex(gold)
        a = answer if answer_prose else light_latex(answer)
        return Plan(Leaf(g, a, gold_prose, answer_prose), "numeric")
    node, method = _compare(light_latex(gold), light_latex(answer), order)
    return Plan(node, method)


# --------------------------------------------------------------------------- evaluation


def leaves(node: Node) -> list[Leaf]:
    """The distinct math-verify comparisons a tree needs, in order."""
    found: list[Leaf] = []

    def walk(n: Node) -> None:
        if isinstance(n, Leaf):
            if n not in found:
                found.append(n)
        elif isinstance(n, AllOf | AnyOf):
            for part in n.parts:
                walk(part)
        elif isinstance(n, Cover):
            for row in n.rows:
                for cell in row:
                    walk(cell)

    walk(node)
    return found


def _worst(failures: list[Failure]) -> Failure:
    return next((f for f in failures if f.status == "unavailable"), failures[0])


def evaluate(node: Node, verdicts: Mapping[Leaf, bool | Failure]) -> bool | Failure:
    """Fold leaf verdicts into the tree's verdict. A failed leaf fails the tree only when the
    verdict depends on it (``AnyOf`` with a true part is true whatever its other parts)."""
    if isinstance(node, bool):
        return node
    if isinstance(node, Leaf):
        return verdicts[node]
    if isinstance(node, AllOf | AnyOf):
        values = [evaluate(part, verdicts) for part in node.parts]
        decisive = isinstance(node, AnyOf)  # the value that settles it: True for any, False for all
        if decisive in values:
            return decisive
        failures = [v for v in values if isinstance(v, Failure)]
        return _worst(failures) if failures else not decisive
    cells = [[evaluate(cell, verdicts) for cell in row] for row in node.rows]
    if _covers([[cell is True for cell in row] for row in cells]):
        return True
    if not _covers([[cell is not False for cell in row] for row in cells]):
        return False
    return _worst([cell for row in cells for cell in row if isinstance(cell, Failure)])
