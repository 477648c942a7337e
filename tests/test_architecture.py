"""The floors of ARCHITECTURE.md, checked: every module imports only from its own floor's package or from
floors below it, and no module reaches for another package's private names."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "slm"

# bottom to top; a name is a package (folder) or a top-level module of slm
FLOORS = [
    {"__init__", "errors"},
    {"config", "resources", "progress", "executor"},
    {"run", "tokenizer"},
    {"data"},
    {"model"},
    {"infer"},
    {"eval"},
    {"train"},
    {"export", "report", "serve"},
    {"sweep"},
    {"distill", "select", "mix", "sft", "rl", "synth"},
    {"quickstart"},
    {"cli"},
    {"__main__"},
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}


def unit(module: str) -> str:
    """slm.data.shards -> data; slm.config -> config."""
    return module.split(".")[1] if module.count(".") else module


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("slm"):
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("slm")]
    return out


def test_every_import_goes_down_the_floors():
    wrong = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        here = unit(".".join(rel.parts))
        assert here in FLOOR, f"{rel} belongs to no floor; add it to ARCHITECTURE.md and FLOORS"
        for module, _, line in imports(path):
            if module == "slm":
                continue  # the package itself: __version__
            there = unit(module)
            if there != here and FLOOR[there] >= FLOOR[here]:
                wrong.append(f"{rel}:{line} imports {module} (floor {FLOOR[there]} from floor {FLOOR[here]})")
    assert not wrong, "\n".join(wrong)


def test_private_names_stay_in_their_module():
    wrong = []
    for path in SRC.rglob("*.py"):
        rel = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
        for module, names, line in imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and module != rel:
                wrong.append(f"{rel}:{line} imports {private} from {module}")
    assert not wrong, "\n".join(wrong)
