r"""A new spo-gym tool env in one file: word problems solved with a calculator tool.

What it shows, step by step:

1. a tool declared once (:class:`envs.Tool`), which the hermes chat template shows the model;
2. the hermes call format (``<tool_call>{"name": "calculator", ...}</tool_call>``), with its
   stop sequence and ``tool``-message placement, from ``GenerationSpec.for_format("hermes")``;
3. ``call_tool`` answering on the host — an env needs no sandbox when its tool is safe to run
   in-process (this one parses the expression with :mod:`ast` and allows only arithmetic);
4. ``score`` reusing spo-gym's grader on the last ``\boxed{}``;
5. a default task source (:meth:`envs.ToolEnv.default_task_source`): a function of the env's
   seeded RNG, so ``reset(seed=…)`` is reproducible and ``spo-gym run --env`` has problems;
6. ``demo_actions``, the scripted episode ``spo-gym envs validate`` plays;
7. registration by entry point in ``pyproject.toml``: installed, the env is
   ``envs.make("calculator/Calculator-v0")``.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

from envs import (
    Episode,
    GenerationSpec,
    Score,
    Task,
    TaskSource,
    Tool,
    ToolCall,
    ToolEnv,
    agrade,
    extract_boxed,
    render_call,
)

__all__ = ["CALCULATOR", "CalculatorEnv", "evaluate", "random_task"]

CALCULATOR = Tool(
    name="calculator",
    description="Evaluates an arithmetic expression exactly: + - * / // % ** and parentheses.",
    parameters={
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "e.g. (12 + 3) * 4"}},
        "required": ["expression"],
    },
)

_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_MAX_EXPONENT = 1000  # 10**1000 is fine; 10**10**10 would hang the host


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression; raises ValueError for anything else."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {exc.msg}") from exc
    return _eval(tree.body)


def _eval(node: ast.expr) -> Fraction:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (right.denominator != 1 or abs(right) > _MAX_EXPONENT):
            raise ValueError(f"exponents must be integers up to {_MAX_EXPONENT}")
        if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
            raise ValueError("division by zero")
        return Fraction(_OPS[type(node.op)](left, right))
    raise ValueError(f"unsupported syntax: {ast.unparse(node)}")


def _show(value: Fraction) -> str:
    return (
        str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    )


def random_task(rng: np.random.Generator) -> Task:
    """A fresh word problem drawn with the env's RNG."""
    boxes, per_box, sold = (int(v) for v in rng.integers(100, 10_000, size=3))
    prompt = (
        f"A warehouse holds {boxes} boxes of {per_box} screws each and ships out {sold} screws. "
        "How many screws are left? Put the final answer in \\boxed{}."
    )
    return Task.create(prompt, str(boxes * per_box - sold), "calculator")


class CalculatorEnv(ToolEnv):
    """Word problems with a calculator tool (hermes calls, no sandbox).

    Takes :class:`envs.ToolEnv`'s arguments; ``tasks`` defaults to :func:`random_task`.
    """

    tools = (CALCULATOR,)
    default_generation = GenerationSpec.for_format("hermes", max_turns=4)

    def default_task_source(self) -> TaskSource:
        return random_task

    def prompt(self, task: Task) -> list[dict[str, str]]:
        system = "Use the calculator tool for arithmetic; give the final answer in \\boxed{}."
        return [{"role": "system", "content": system}, *task.messages()]

    async def call_tool(self, call: ToolCall) -> str:
        try:
            return _show(evaluate(call.arguments["expression"]))
        except ValueError as exc:
            return f"Error: {exc}"

    def answered(self, action: str) -> bool:
        return extract_boxed(action) is not None

    async def score(self, episode: Episode) -> Score:
        return Score.from_grade(await agrade(episode.task.answer, episode.response))

    def demo_actions(self) -> list[str]:
        if self.episode is None:
            raise RuntimeError("call reset() first")
        task = self.episode.task
        boxes, per_box, sold = (int(w) for w in task.problem.split() if w.isdigit())
        call = ToolCall(CALCULATOR.name, {"expression": f"{boxes} * {per_box} - {sold}"})
        return [render_call(call, "hermes"), f"The answer is \\boxed{{{task.answer}}}."]
