"""Checkers: is a model's reply a right answer to a problem? Each takes the problem's record (its `meta`
fields) and the reply's text, and reads the final answer where the formats in data/problem_sets.py put it: the
text after the last "Answer:", else the reply's last line.

Countdown has many right answers, so its checker evaluates the expression (numbers and + - * / and
brackets only, parsed, never eval'd) and checks it uses the given numbers at most once each.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from typing import Any

INT = re.compile(r"-?\d[\d,]*")
ANSWER_MARK = "Answer:"  # where every reply format of data/problem_sets.py states its final answer


def final_answer(text: str) -> str:
    at = text.rfind(ANSWER_MARK)
    tail = text[at + len(ANSWER_MARK) :] if at >= 0 else text
    lines = [ln.strip() for ln in tail.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    return lines[0] if at >= 0 else lines[-1]


def check_arithmetic(row: dict[str, Any], text: str) -> bool:
    found = INT.findall(final_answer(text))
    if not found:
        return False
    try:
        return int(found[-1].replace(",", "")) == int(row["answer"])
    except ValueError:
        return False


def evaluate_expression(expr: str) -> tuple[Fraction, list[int]] | None:
    """The exact value of an arithmetic expression and the numbers it uses; None when it is not one."""
    expr = expr.strip().rstrip(".").replace("x", "*").replace("×", "*").replace("÷", "/")
    if "=" in expr:
        expr = expr.split("=")[0]
    if not expr or len(expr) > 200:
        return None
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError:
        return None
    used: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            used.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            a, b = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if b == 0:
                raise ZeroDivisionError
            return a / b
        raise ValueError("not allowed")

    try:
        return walk(tree), used
    except (ValueError, ZeroDivisionError, RecursionError):
        return None


def check_countdown(row: dict[str, Any], text: str) -> bool:
    meta = row.get("meta", row)
    got = evaluate_expression(final_answer(text))
    if got is None:
        return False
    value, used = got
    have = Counter(meta["numbers"])
    return value == meta["target"] and all(have[n] >= k for n, k in Counter(used).items())


CHECKERS: dict[str, Callable[[dict[str, Any], str], bool]] = {
    "arithmetic": check_arithmetic,
    "countdown": check_countdown,
}
