"""What a sweep trains: `--grid section.field=v1,v2,...` (every combination) and `--random N` draws over
grids' values and `--range section.field=lo:hi[:log]`, each point a list of `--set` overrides of one recipe.
Every point's config is validated before anything trains, so a bad value is named with its run."""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
from dataclasses import dataclass
from typing import Any

import tomli_w

from slm.config import Config, apply_override, load_recipe, parse_value
from slm.errors import SlmError


@dataclass(frozen=True)
class Axis:
    field: str
    values: tuple[Any, ...] = ()  # a grid's values
    lo: float = 0.0  # a range's bounds
    hi: float = 0.0
    log: bool = False
    integer: bool = False

    @property
    def is_range(self) -> bool:
        return not self.values


def is_number(v: Any) -> bool:
    """A number that is not a bool (True is an int to Python, not a figure to a sweep)."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_field(field: str, flag: str) -> None:
    try:  # unknown names are refused here, with a did-you-mean
        apply_override({}, f"{field}=0")
    except SlmError as e:
        raise SlmError(str(e).replace("--set", flag, 1)) from None


def parse_grid(text: str) -> Axis:
    if "=" not in text:
        raise SlmError(f"--grid {text!r}: expected section.field=v1,v2,... for example --grid train.lr=1e-3,3e-3")
    field, raw = (x.strip() for x in text.split("=", 1))
    _check_field(field, "--grid")
    # Commas inside brackets or braces belong to one value: --grid 'data.val_domains=["a","b"],["c"]'
    values, depth, cur = [], 0, ""
    for ch in raw:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            values.append(cur)
            cur = ""
        else:
            cur += ch
    values.append(cur)
    parsed = tuple(parse_value(v.strip()) for v in values if v.strip())
    if not parsed:
        raise SlmError(f"--grid {text!r}: no values after '='")
    if len(set(map(repr, parsed))) < len(parsed):
        raise SlmError(f"--grid {text!r}: a value is listed twice")
    return Axis(field, parsed)


def parse_range(text: str) -> Axis:
    if "=" not in text:
        raise SlmError(f"--range {text!r}: expected section.field=lo:hi[:log], e.g. --range train.lr=1e-4:1e-2:log")
    field, raw = (x.strip() for x in text.split("=", 1))
    _check_field(field, "--range")
    parts = raw.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("log", "linear")):
        raise SlmError(f"--range {text!r}: expected lo:hi, lo:hi:log or lo:hi:linear")
    lo, hi = parse_value(parts[0]), parse_value(parts[1])
    if not all(is_number(v) for v in (lo, hi)):
        raise SlmError(f"--range {text!r}: lo and hi must be numbers")
    if lo >= hi:
        raise SlmError(f"--range {text!r}: lo ({lo}) must be below hi ({hi})")
    log = len(parts) == 3 and parts[2] == "log"
    if log and lo <= 0:
        raise SlmError(f"--range {text!r}: a log range needs lo > 0")
    return Axis(field, (), float(lo), float(hi), log, isinstance(lo, int) and isinstance(hi, int))


def points(axes: list[Axis], draws: int = 0, seed: int = 0) -> list[dict[str, Any]]:
    """Every combination of the grids (in the order given, the last varying fastest), or with draws > 0
    that many random points (grids' values drawn uniformly, ranges uniformly or log-uniformly), fixed by seed."""
    fields = [a.field for a in axes]
    if len(set(fields)) < len(fields):
        raise SlmError(f"a field is swept twice: {', '.join(sorted({f for f in fields if fields.count(f) > 1}))}")
    if not draws:
        if any(a.is_range for a in axes):
            raise SlmError("--range needs --random N: how many points to draw from it")
        return [dict(zip(fields, combo, strict=True)) for combo in itertools.product(*(a.values for a in axes))]
    rng = random.Random(seed)
    out = []
    for _ in range(draws):
        point: dict[str, Any] = {}
        for a in axes:
            if not a.is_range:
                point[a.field] = rng.choice(a.values)
                continue
            u = rng.random()
            v = math.exp(math.log(a.lo) + u * (math.log(a.hi) - math.log(a.lo))) if a.log else a.lo + u * (a.hi - a.lo)
            point[a.field] = round(v) if a.integer else float(f"{v:.4g}")
        out.append(point)
    return out


def overrides(point: dict[str, Any]) -> list[str]:
    """A point as --set assignments; a string value is quoted so it stays a string."""
    return [f"{k}={json.dumps(v) if isinstance(v, str) else _toml(v)}" for k, v in point.items()]


def _toml(v: Any) -> str:
    return tomli_w.dumps({"v": v}).split("=", 1)[1].strip()


def configs(
    recipe: str | None, raw: dict[str, Any], sets: list[str], pts: list[dict[str, Any]], names: list[str]
) -> list[Config]:
    """Each point's config from the recipe's TOML (raw), validated now: a bad value is named with the run it
    belongs to, and a recipe for another command is refused as `slm train` refuses it."""
    from slm.train.objective import Objective
    from slm.train.start import check_recipe

    out = []
    for name, point in zip(names, pts, strict=True):
        shown = " ".join(overrides(point))
        try:
            cfg = load_recipe(Config, recipe, [*sets, *overrides(point)], raw=copy.deepcopy(raw))
        except SlmError as e:
            raise SlmError(f"sweep run {name} ({shown}): {e}") from None
        try:
            check_recipe(cfg, Objective(cfg), str(recipe))  # type: ignore[arg-type]
        except SlmError as e:
            raise SlmError(f"{e}; slm sweep trains plain `slm train` recipes") from None
        cfg.name = name  # type: ignore[attr-defined]
        out.append(cfg)  # type: ignore[arg-type]
    return out
