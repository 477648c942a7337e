"""Readers: turn a source (text, JSONL, Parquet, compressed or not, or a Hugging Face dataset) into a
stream of (text, where) documents, with bounded memory whatever the input looks like.

Nothing is dropped silently: every record that does not become a document is counted in the funnel's
"read" step with its reason, and malformed lines are listed as file:line.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from slm.config import SourceConfig
from slm.data.stats import Funnel
from slm.errors import SlmError

CHUNK = 1 << 20
try:
    from zstandard import ZstdError

    READ_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, zlib.error, ZstdError)
except ImportError:  # pragma: no cover - zstandard is a dependency
    READ_ERRORS = (OSError, EOFError, zlib.error)
Doc = tuple[str, str]  # (text, where it came from)


def detect_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in (".gz", ".dz", ".zst", ".zstd"):
        suffixes.pop()
    last = suffixes[-1] if suffixes else ""
    if last in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if last == ".parquet":
        return "parquet"
    return "text"


def open_binary(path: Path) -> IO[bytes]:
    """Decompress .gz (and dictd's gzip-compatible .dz) and .zst transparently, as streams."""
    name = path.name.lower()
    if name.endswith((".gz", ".dz")):
        return gzip.open(path, "rb")
    if name.endswith((".zst", ".zstd")):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(path.open("rb")))
    return path.open("rb")


def _lines(f: IO[bytes], limit: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) per line; a line longer than `limit` is skipped as it streams past and
    reported as None, so one line of tens of MB never has to sit in memory."""
    lineno = 0
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        lineno += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while True:
                rest = f.readline(CHUNK)
                if not rest or rest.endswith(b"\n"):
                    break
            yield lineno, None
            continue
        yield lineno, line


def _decode(raw: bytes, funnel: Funnel) -> str:
    text = raw.decode("utf-8", errors="replace")
    if "\ufffd" in text and "\ufffd".encode() not in raw:
        funnel.notes["invalid_utf8_replaced"] += 1
    return text


def _field(text: object, where: str, max_chars: int, funnel: Funnel) -> Iterator[Doc]:
    """A Parquet or `datasets` record's text field: a document, or a counted skip."""
    if not isinstance(text, str):
        funnel.drop("read", "missing_field")
        return
    yield from _emit(text, where, funnel, len(text.encode()), max_chars)


def _emit(text: str, where: str, funnel: Funnel, nbytes: int, max_chars: int) -> Iterator[Doc]:
    # The byte limits while reading only bound memory (a character is up to 4 bytes); the
    # character limit itself is enforced here, on every document whatever its source.
    if len(text) > max_chars:
        funnel.drop("read", "too_long", nbytes)
        funnel.error(f"{where}: longer than normalize.max_doc_chars={max_chars}; skipped")
    elif text.strip():
        funnel.keep("read", nbytes)
        yield text, where
    else:
        funnel.drop("read", "empty", nbytes)


def read_text(path: Path, split: str, max_chars: int, funnel: Funnel) -> Iterator[Doc]:
    limit = max_chars * 4  # UTF-8 needs at most 4 bytes a character
    with open_binary(path) as f:
        head = f.peek(8192)[:8192] if hasattr(f, "peek") else b""
        if b"\x00" in head:
            funnel.drop("read", "binary_file")
            funnel.error(f"{path}: binary file skipped")
            return
        if split == "file":
            raw = f.read(limit + 1)
            if len(raw) > limit:
                funnel.drop("read", "too_long", len(raw))
                funnel.error(f"{path}: longer than normalize.max_doc_chars={max_chars}; skipped")
                return
            yield from _emit(_decode(raw, funnel), str(path), funnel, len(raw), max_chars)
            return
        para: list[str] = []
        start = 1
        for lineno, raw in _lines(f, limit):
            if raw is None:
                funnel.drop("read", "too_long")
                funnel.error(f"{path}:{lineno}: line longer than normalize.max_doc_chars={max_chars}; skipped")
                continue
            line = _decode(raw, funnel)
            if split == "line":
                yield from _emit(line, f"{path}:{lineno}", funnel, len(raw), max_chars)
            elif line.strip():
                if not para:
                    start = lineno
                para.append(line)
            elif para:
                text = "".join(para)
                para = []
                yield from _emit(text, f"{path}:{start}", funnel, len(text.encode()), max_chars)
        if para:
            text = "".join(para)
            yield from _emit(text, f"{path}:{start}", funnel, len(text.encode()), max_chars)


def read_jsonl(path: Path, field: str, max_chars: int, funnel: Funnel) -> Iterator[Doc]:
    with open_binary(path) as f:
        for lineno, raw in _lines(f, max_chars * 4 + 4096):
            where = f"{path}:{lineno}"
            if raw is None:
                funnel.drop("read", "too_long")
                funnel.error(f"{where}: line longer than normalize.max_doc_chars; skipped")
                continue
            if not raw.strip():
                continue  # blank lines are layout, not records
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                funnel.drop("read", "invalid_json", len(raw))
                funnel.error(f"{where}: not a JSON object; line skipped")
                continue
            text = obj.get(field) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                funnel.drop("read", "missing_field", len(raw))
                funnel.error(f"{where}: no string field '{field}'; line skipped (set text_field)")
                continue
            yield from _emit(text, where, funnel, len(raw), max_chars)


def check_parquet(path: Path, field: str) -> None:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise SlmError(f"{path}: cannot read as Parquet ({e})") from None
    if field not in schema.names:
        raise SlmError(f"{path}: no column '{field}' (columns: {', '.join(schema.names)}); set text_field")


def read_parquet(path: Path, field: str, max_chars: int, funnel: Funnel) -> Iterator[Doc]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    row = 0
    for batch in pf.iter_batches(columns=[field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            row += 1
            yield from _field(text, f"{path}:row{row}", max_chars, funnel)


def load_hf(src: SourceConfig, paths: list[Path]):
    """A `datasets` IterableDataset; local files go through the json/parquet/text builders."""
    try:
        import datasets
    except ImportError:
        raise SlmError("format='hf' needs the datasets package: pip install 'slm[interop]'") from None
    kwargs: dict = {"split": src.dataset_split, "streaming": True}
    if paths:
        kwargs["data_files"] = [str(p) for p in paths]
    try:
        return datasets.load_dataset(src.dataset, src.dataset_config, **kwargs)
    except Exception as e:  # offline hub lookups and bad names surface as many exception types
        raise SlmError(f"source '{src.domain}': cannot load dataset '{src.dataset}': {e}") from None


def read_hf(src: SourceConfig, paths: list[Path], max_chars: int, funnel: Funnel) -> Iterator[Doc]:
    ds = load_hf(src, paths)
    for i, ex in enumerate(ds):
        text = ex.get(src.text_field)
        if i == 0 and not isinstance(text, str):
            raise SlmError(f"dataset '{src.dataset}': no text field '{src.text_field}' (fields: {', '.join(ex)})")
        yield from _field(text, f"{src.dataset}:{i}", max_chars, funnel)


def read_source_file(src: SourceConfig, path: Path, max_chars: int, funnel: Funnel) -> Iterator[Doc]:
    fmt = detect_format(path) if src.format == "auto" else src.format
    try:
        if fmt == "jsonl":
            yield from read_jsonl(path, src.text_field, max_chars, funnel)
        elif fmt == "parquet":
            yield from read_parquet(path, src.text_field, max_chars, funnel)
        else:
            yield from read_text(path, src.split, max_chars, funnel)
    except READ_ERRORS as e:
        # A truncated archive or an unreadable file: what was read stays, the rest is reported.
        funnel.drop("read", "unreadable_file")
        funnel.error(f"{path}: {getattr(e, 'strerror', None) or e}; rest of the file skipped")
