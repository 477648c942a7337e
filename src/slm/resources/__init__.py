"""What the package ships besides code: the built-in corpora (`data/`), evaluation tasks (`tasks/`) and
recipes (`recipes/`). In a checkout the top-level data, tasks and recipes folders point here.

Found through importlib.resources, so a plain `pip install` (not only an editable one from a checkout)
runs the quickstart from any folder. A relative path under data/, tasks/ or recipes/ that does not exist
from the working directory falls back to the shipped copy (`find`).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SHIPPED = ("data", "tasks", "recipes")


def root() -> Path:
    """The folder holding data/, tasks/ and recipes/ (a real folder: slm is never installed zipped)."""
    return Path(str(files("slm.resources")))


def find(path: str | Path) -> Path:
    """`path` itself when it exists or is absolute; else the shipped file of that name when there is one."""
    p = Path(path)
    if p.exists() or p.is_absolute() or not p.parts or p.parts[0] not in SHIPPED:
        return p
    shipped = root() / p
    return shipped if shipped.exists() else p


def recipe(name: str) -> Path:
    """A shipped recipe by name (quickstart) or file name (quickstart.toml)."""
    return root() / "recipes" / (name if name.endswith(".toml") else f"{name}.toml")
