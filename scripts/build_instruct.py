"""Build the vendored instruction sets in src/slm/resources/data/instruct/ from text written by others.

    python scripts/build_instruct.py

docstrings: "What does this Python function do?" over a function of CPython's standard library (its
    docstring removed), answered by the first sentence of that docstring. Source: the running Python's
    standard library (PSF licence). Split by module, so held-out functions come from modules never seen.
wordnet: "Define the word W (part of speech)." answered by WordNet's gloss (without its usage examples),
    from the WordNet entries the built-in corpus already vendors (WordNet 3.0 licence). Split by word.

Both are JSONL in the OpenAI messages layout, with the source of each record beside it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src/slm/resources/data/instruct"
MAX_CODE = 1200  # characters of code: a question and its answer fit 512 tokens of SmolLM2's tokenizer
VAL_SHARE = 0.1
VAL_MAX = 200  # held-out records kept (the first by a hash of their question): a final evaluation in ~1 minute


def held_out(key: str) -> bool:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") / 2**64 < VAL_SHARE


def first_sentence(doc: str) -> str | None:
    para = " ".join(doc.strip().split("\n\n")[0].split())
    m = re.match(r"(.+?[.!?])(\s|$)", para)
    text = m.group(1) if m else None
    if not text or len(text) < 20 or len(text) > 300 or text.lower().startswith(("deprecated", "todo", "xxx")):
        return None
    return text


def functions(path: Path) -> list[tuple[str, str, str]]:
    """(qualified name, code without its docstring, first sentence) of each documented function."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        answer = first_sentence(doc) if doc else None
        if not answer or len(node.body) < 2:
            continue
        node.body = node.body[1:]  # the docstring goes: the model must read the code
        code = ast.unparse(node)
        if len(code) <= MAX_CODE:
            out.append((node.name, code, answer))
    return out


def build_docstrings() -> dict[str, int]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows: dict[str, list[dict]] = {"train": [], "val": []}
    seen: set[str] = set()
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if any(p in ("test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo") for p in rel.parts):
            continue
        module = ".".join(rel.with_suffix("").parts)
        split = "val" if held_out(module.split(".")[0]) else "train"
        for name, code, answer in functions(path):
            if code in seen:
                continue
            seen.add(code)
            rows[split].append(
                {
                    "messages": [
                        {"role": "user", "content": f"What does this Python function do?\n\n```python\n{code}\n```"},
                        {"role": "assistant", "content": answer},
                    ],
                    "source": f"cpython {sys.version.split()[0]} Lib/{rel.as_posix()}:{name}",
                }
            )
    return write("docstrings", rows)


def build_wordnet() -> dict[str, int]:
    rows: dict[str, list[dict]] = {"train": [], "val": []}
    folder = ROOT / "src/slm/resources/data/builtin/definitions"
    for path in sorted(folder.glob("wordnet_*.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            m = re.match(r"^(.+?) \((noun|verb|adjective|adverb)\): (.+)$", line)
            if not m:
                continue
            word, pos, gloss = m.groups()
            answer = gloss.split('; "')[0].strip()
            if len(answer) < 8:
                continue
            answer = answer[0].upper() + answer[1:] + ("" if answer.endswith(".") else ".")
            rows["val" if held_out(word) else "train"].append(
                {
                    "messages": [
                        {"role": "user", "content": f"Define the word “{word}” ({pos})."},
                        {"role": "assistant", "content": answer},
                    ],
                    "source": f"WordNet 3.0 via data/builtin/definitions/{path.name}",
                }
            )
    return write("wordnet", rows)


def write(name: str, rows: dict[str, list[dict]]) -> dict[str, int]:
    key = lambda r: hashlib.blake2b(r["messages"][0]["content"].encode(), digest_size=8).digest()  # noqa: E731
    rows["val"] = sorted(rows["val"], key=key)[:VAL_MAX]
    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items))
    return {split: len(items) for split, items in rows.items()}


if __name__ == "__main__":
    print(json.dumps({"docstrings": build_docstrings(), "wordnet": build_wordnet()}))
