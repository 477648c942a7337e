"""Verifiable problems written by programs: each has a question, its answer, a step-by-step rationale the
program writes (what a small model can learn to imitate), and what its checker needs.

arithmetic  multi-digit + - * with a difficulty knob: digits per operand, the operations, and whether
            additions must carry (or subtractions borrow) at least once. The rationale works column by
            column (carries and borrows written out) or by partial products.
countdown   reach a target from given numbers with + - * / (each number at most once, exact division),
            as in the game show and the RL papers that use it. The rationale is the solution the
            program's search found, one operation per line. Many expressions are right: the checker
            evaluates the model's, it does not compare text.

Difficulty has one integer `level` per task (arithmetic: digits per operand; countdown: how many numbers),
so "one step harder" is level + 1.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from fractions import Fraction

from slm.data.checkers import check_countdown

TASKS = ("arithmetic", "countdown")


@dataclass
class Problem:
    task: str
    question: str
    answer: str
    rationale: str
    meta: dict = field(default_factory=dict)  # what the checker needs, and the difficulty


# ---------------------------------------------------------------- arithmetic


def _digits(n: int) -> list[int]:
    return [int(c) for c in reversed(str(n))]


def _add_steps(a: int, b: int) -> list[str]:
    da, db = _digits(a), _digits(b)
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x, y = (da[i] if i < len(da) else 0), (db[i] if i < len(db) else 0)
        total = x + y + carry
        with_carry = f" + {carry}" if carry else ""
        carry, digit = divmod(total, 10)
        note = f", carry {carry}" if carry else ""
        steps.append(f"{_place(i)}: {x} + {y}{with_carry} = {total}, write {digit}{note}")
    if carry:
        steps.append(f"write the final carry {carry}")
    return steps


def _sub_steps(a: int, b: int) -> list[str]:
    da, db = _digits(a), _digits(b)
    steps, borrow = [], 0
    for i in range(len(da)):
        x, y = da[i] - borrow, (db[i] if i < len(db) else 0)
        top = f"{da[i]} - {borrow}" if borrow else f"{da[i]}"
        if x < y:
            steps.append(f"{_place(i)}: {top} < {y}, borrow: {x + 10} - {y} = {x + 10 - y}")
            borrow = 1
        else:
            steps.append(f"{_place(i)}: {top} - {y} = {x - y}")
            borrow = 0
    return steps


def _mul_steps(a: int, b: int) -> list[str]:
    steps, total = [], 0
    for i, d in enumerate(_digits(b)):
        part = a * d * 10**i
        total += part
        steps.append(f"{a} x {d * 10**i} = {part}")
    if len(steps) > 1:
        steps.append(f"sum of the partial products = {total}")
    return steps


def _place(i: int) -> str:
    names = ["ones", "tens", "hundreds", "thousands"]
    return names[i] if i < len(names) else f"10^{i}"


def _carries(a: int, b: int, op: str) -> bool:
    da, db = _digits(a), _digits(b)
    if op == "+":
        return any((da[i] if i < len(da) else 0) + (db[i] if i < len(db) else 0) >= 10 for i in range(len(da)))
    if op == "-":
        return any(da[i] < (db[i] if i < len(db) else 0) for i in range(len(da)))
    return True


def arithmetic(rng: random.Random, level: int, ops: str = "+-", carries: bool | None = None) -> Problem:
    """Two operands of `level` digits (multiplication: the second has at most 2). carries: True, every
    addition carries (subtraction borrows) at least once; False, never; None, either."""
    op = rng.choice(ops)
    lo, hi = 10 ** (level - 1) if level > 1 else 0, 10**level - 1
    for _ in range(1000):
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if op == "*":
            b = rng.randint(2, min(hi, 99))
        if op == "-" and b > a:
            a, b = b, a
        if carries is None or op == "*" or _carries(a, b, op) == carries:
            break
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    steps = {"+": _add_steps, "-": _sub_steps, "*": _mul_steps}[op](a, b)
    sign = {"+": "+", "-": "-", "*": "x"}[op]
    question = f"What is {a} {sign} {b}?"
    rationale = "\n".join(steps) + f"\nSo {a} {sign} {b} = {value}."
    return Problem("arithmetic", question, str(value), rationale, {"a": a, "b": b, "op": op, "level": level})


# ---------------------------------------------------------------- countdown

_OPS = ("+", "-", "*", "/")


def _combine(x: Fraction, y: Fraction, op: str) -> Fraction | None:
    if op == "+":
        return x + y
    if op == "-":
        return x - y if x >= y else None  # the game keeps every intermediate positive
    if op == "*":
        return x * y
    return x / y if y != 0 and (x / y).denominator == 1 else None  # exact division only


def solve_countdown(numbers: list[int], target: int) -> list[tuple[int, str, int, int]] | None:
    """A shortest-first search: the steps (a, op, b, result) of one way to reach target, or None."""
    start = tuple(Fraction(n) for n in numbers)
    if target in start:
        return []
    frontier: list[tuple[tuple[Fraction, ...], list]] = [(start, [])]
    seen = {tuple(sorted(start))}
    while frontier:
        nxt = []
        for pool, steps in frontier:
            for i, j in itertools.permutations(range(len(pool)), 2):
                for op in _OPS:
                    r = _combine(pool[i], pool[j], op)
                    if r is None or r <= 0:
                        continue
                    rest = (*(p for k, p in enumerate(pool) if k not in (i, j)), r)
                    path = [*steps, (int(pool[i]), op, int(pool[j]), int(r))]
                    if r == target:
                        return path
                    key = tuple(sorted(rest))
                    if key not in seen and len(rest) > 1:
                        seen.add(key)
                        nxt.append((rest, path))
        frontier = nxt
    return None


def countdown(rng: random.Random, level: int) -> Problem:
    """`level` numbers from 1 to 25 and a reachable target from 10 to 200 that is not one of them."""
    while True:
        numbers = [rng.randint(1, 25) for _ in range(level)]
        target = rng.randint(10, 200)
        if target in numbers:
            continue
        steps = solve_countdown(numbers, target)
        if not steps:
            continue
        expr = _expression(steps)
        # the written answer must pass its own checker (an intermediate equal to a given number can
        # make the bracketed expression use that number twice)
        if check_countdown({"numbers": numbers, "target": target}, f"Answer: {expr}"):
            break
    listed = ", ".join(map(str, numbers))
    question = f"Using the numbers {listed} (each at most once) and + - * /, make {target}."
    lines = [f"{a} {op} {b} = {r}" for a, op, b, r in steps]
    rationale = "\n".join(lines) + f"\nSo {expr} = {target}."
    return Problem("countdown", question, expr, rationale, {"numbers": numbers, "target": target, "level": level})


def _expression(steps: list[tuple[int, str, int, int]]) -> str:
    """The steps as one bracketed expression over the original numbers."""
    built: dict[int, list[str]] = {}  # an intermediate value -> its expressions, most recent last

    def text(v: int) -> str:
        return built[v].pop() if built.get(v) else str(v)

    out = ""
    for a, op, b, r in steps:
        out = f"({text(a)} {op} {text(b)})"
        built.setdefault(r, []).append(out)
    return out[1:-1] if out.startswith("(") else out


def generate(task: str, rng: random.Random, level: int, **knobs) -> Problem:
    if task == "arithmetic":
        return arithmetic(rng, level, **knobs)
    if task == "countdown":
        return countdown(rng, level)
    raise ValueError(task)
