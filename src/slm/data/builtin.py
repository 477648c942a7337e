"""`slm data builtin`: the built-in multi-domain corpus as per-domain token shards.

The text is committed under data/ (data/builtin/domains.json lists each domain's folder, source, licence
and fixed held-out documents); this module only tokenizes it, one shard folder per domain.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from slm import resources
from slm.data.shards import prepare_shards
from slm.data.text import ReadStats, read_documents
from slm.errors import SlmError
from slm.run import atomic_write_text, refuse_existing
from slm.tokenizer import load_tokenizer, train_tokenizer

BUILTIN = resources.root() / "data" / "builtin"


def domains() -> dict[str, dict]:
    spec = BUILTIN / "domains.json"
    if not spec.is_file():
        raise SlmError(f"{spec} not found; the built-in corpus ships inside the slm package; reinstall slm")
    return json.loads(spec.read_text())


def domain_files(name: str) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files) of one domain."""
    info = domains()[name]
    folder = (BUILTIN / info["folder"]).resolve()
    val = [folder / v for v in info["val"]]
    train = [p for p in sorted(folder.glob("*.txt")) if p not in val]
    return train, val


def build_builtin(
    out: Path,
    tokenizer: Path | None = None,
    vocab_size: int = 8192,
    only: list[str] | None = None,
    force: bool = False,
) -> dict:
    refuse_existing(out, force)
    spec = domains()
    names = only or list(spec)
    unknown = [n for n in names if n not in spec]
    if unknown:
        raise SlmError(f"unknown domain(s) {', '.join(unknown)}; built-in domains: {', '.join(spec)}")
    files = {n: domain_files(n) for n in names}
    if tokenizer is not None:
        tok: Tokenizer = load_tokenizer(tokenizer)
    else:
        texts = list(read_documents([p for n in names for p in files[n][0]], ReadStats()))
        tok = train_tokenizer(texts, vocab_size=vocab_size)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    summary: dict[str, dict] = {}
    for n in names:
        train, val = files[n]
        m = prepare_shards(tok, [str(p) for p in train], out / n, [str(p) for p in val])
        summary[n] = {
            "source": spec[n]["source"],
            "license": spec[n]["license"],
            **{
                split: {k: m["splits"][split][k] for k in ("documents", "tokens", "bytes")}
                for split in ("train", "val")
            },
        }
    atomic_write_text(out / "manifest.json", json.dumps({"domains": summary}, indent=2) + "\n")
    return summary
