"""Find input files and read them as documents, counting (never hiding) what had to be skipped."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from slm import resources
from slm.errors import SlmError


@dataclass
class ReadStats:
    files: int = 0
    documents: int = 0
    bytes: int = 0
    skipped_binary: list[str] = field(default_factory=list)
    skipped_empty: list[str] = field(default_factory=list)
    invalid_utf8: list[str] = field(default_factory=list)
    duplicate_paths: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "documents": self.documents,
            "bytes": self.bytes,
            "skipped_binary": self.skipped_binary,
            "skipped_empty": self.skipped_empty,
            "invalid_utf8_replaced": self.invalid_utf8,
            "duplicate_paths": self.duplicate_paths,
        }

    def notes(self) -> list[str]:
        out = []
        if self.skipped_binary:
            out.append(f"skipped {len(self.skipped_binary)} binary file(s): {', '.join(self.skipped_binary[:3])}")
        if self.skipped_empty:
            out.append(f"skipped {len(self.skipped_empty)} empty file(s): {', '.join(self.skipped_empty[:3])}")
        if self.invalid_utf8:
            out.append(
                f"replaced invalid UTF-8 bytes with U+FFFD in {len(self.invalid_utf8)} file(s): "
                + ", ".join(self.invalid_utf8[:3])
            )
        if self.duplicate_paths:
            out.append(
                f"ignored {len(self.duplicate_paths)} path(s) listed twice: {', '.join(self.duplicate_paths[:3])}"
            )
        return out


def _resolve(pattern: str) -> list[Path]:
    # Relative patterns are tried from the working directory, then from the data slm ships, so recipes
    # that name data/... work from any folder and from a plain pip install.
    bases = [Path.cwd(), resources.root()] if not Path(pattern).is_absolute() else [Path("/")]
    for base in bases:
        full = str(base / pattern) if not Path(pattern).is_absolute() else pattern
        hits = sorted(glob.glob(full, recursive=True))
        if hits:
            out: list[Path] = []
            for h in hits:
                p = Path(h)
                out.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
            return out
    return []


def expand_inputs(patterns: list[str], stats: ReadStats | None = None) -> list[Path]:
    """Files named by paths, folders (recursively) and globs, each once, in a stable order."""
    if not patterns:
        raise SlmError("no inputs given; name text files, folders or globs (data.inputs in the recipe)")
    seen: set[Path] = set()
    files: list[Path] = []
    for pattern in patterns:
        hits = _resolve(pattern)
        if not hits:
            raise SlmError(f"input '{pattern}' matches no file; check the path (relative paths start at {Path.cwd()})")
        for p in hits:
            key = p.resolve()
            if key in seen:
                if stats is not None:
                    stats.duplicate_paths.append(str(p))
                continue
            seen.add(key)
            files.append(p)
    return files


def split_inputs(
    inputs: list[str], val_inputs: list[str] | None, stats: ReadStats | None = None
) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files): a file named in both is held out, never trained on."""
    val = expand_inputs(val_inputs, stats) if val_inputs else []
    held = {p.resolve() for p in val}
    every = expand_inputs(inputs, stats)
    train = [p for p in every if p.resolve() not in held]
    if not train:
        raise SlmError(
            f"every file of data.inputs {inputs} is also in data.val_inputs {val_inputs}, so nothing is left to "
            "train on; name different files for the held-out set"
        )
    return train, val


def read_documents(files: list[Path], stats: ReadStats) -> Iterator[str]:
    """One document per file. Binary files and empty files are skipped and counted."""
    for p in files:
        try:
            raw = p.read_bytes()
        except OSError as e:
            raise SlmError(f"cannot read {p}: {e.strerror}") from None
        if b"\x00" in raw[:8192]:
            stats.skipped_binary.append(str(p))
            continue
        text = raw.decode("utf-8", errors="replace")
        if "\ufffd" in text and "\ufffd".encode() not in raw:
            stats.invalid_utf8.append(str(p))
        if not text.strip():
            stats.skipped_empty.append(str(p))
            continue
        stats.files += 1
        stats.documents += 1
        stats.bytes += len(text.encode("utf-8"))
        yield text
