"""The offline teacher cache: top-k log-probabilities per position, computed once, reused by every student.

    CACHE/
      manifest.json        teacher and shards it was made from (content hashes), seq_len, top_k, temperature,
                           the windows it covers, bytes per token
      part_00000/          idx.npy (windows, seq_len, k) token ids, logp.npy (same, float16) log-probabilities
      ...

The cache covers fixed windows of the training split, spread evenly over it; students then sample whole
cached windows. Each part folder appears atomically when complete, so a killed build resumes where it
stopped. The teacher's remaining probability mass is 1 - sum(exp(logp)), recovered at use (losses.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from slm.data.shards import Shards
from slm.errors import SlmError
from slm.run import atomic_dir, atomic_write_text

FORMAT = "slm-teacher-cache/1"


def shards_hash(shards: Shards) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(shards.manifest["tokenizer_hash"].encode())
    with (shards.folder / shards.manifest["splits"]["train"]["file"]).open("rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def window_starts(n_tokens: int, seq_len: int, windows: int) -> np.ndarray:
    total = (n_tokens - 1) // seq_len
    if total < 1:
        raise SlmError(f"the training split has {n_tokens} tokens, fewer than one window of {seq_len + 1}")
    n = min(windows, total)
    return (np.arange(n, dtype=np.int64) * total // n) * seq_len


def build_cache(
    teacher,
    teacher_id: dict,
    shards: Shards,
    out: Path,
    seq_len: int,
    windows: int,
    top_k: int,
    temperature: float,
    batch: int = 4,
    part_windows: int = 32,
    autocast=None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    if temperature <= 0:
        raise SlmError(f"distill.temperature must be above 0 (got {temperature})")
    vocab = teacher.vocab_size
    if not 1 <= top_k < vocab:
        raise SlmError(f"distill.top_k={top_k} must be between 1 and the vocabulary size {vocab}")
    tokens = shards.tokens("train")
    starts = window_starts(len(tokens), seq_len, windows)
    want = {
        "format": FORMAT,
        "teacher": teacher_id,
        "shards_hash": shards_hash(shards),
        "tokenizer_hash": shards.manifest["tokenizer_hash"],
        "seq_len": seq_len,
        "top_k": top_k,
        "temperature": temperature,
        "windows": len(starts),
        "part_windows": part_windows,
        "index_dtype": "uint16" if vocab <= 2**16 else "int32",
    }
    mf = out / "manifest.json"
    if mf.exists():
        have = json.loads(mf.read_text())
        same = {k: have.get(k) for k in want} == want
        if not same:
            diff = [k for k in want if have.get(k) != want[k]]
            raise SlmError(f"{out} is a cache of other inputs ({', '.join(diff)} differ); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    info = {"shards": str(shards.folder.resolve())}
    atomic_write_text(mf, json.dumps({**want, **info, "complete": False}, indent=2) + "\n")
    idx_dtype = np.dtype(want["index_dtype"])
    n_parts = (len(starts) + part_windows - 1) // part_windows
    t0, made = time.perf_counter(), 0
    for part in range(n_parts):
        folder = out / f"part_{part:05d}"
        if folder.is_dir():
            if progress:
                progress(part + 1, n_parts)
            continue
        ws = starts[part * part_windows : (part + 1) * part_windows]
        idx_all = np.empty((len(ws), seq_len, top_k), dtype=idx_dtype)
        lp_all = np.empty((len(ws), seq_len, top_k), dtype=np.float16)
        for b in range(0, len(ws), batch):
            x = torch.from_numpy(np.stack([tokens[s : s + seq_len] for s in ws[b : b + batch]]).astype(np.int64))
            with torch.no_grad(), autocast or torch.autocast("cpu", enabled=False):
                z, _ = teacher(x)
            logp = torch.log_softmax(z.float() / temperature, dim=-1)
            v, i = logp.topk(top_k, dim=-1)
            lp_all[b : b + len(x)] = v.numpy().astype(np.float16)
            idx_all[b : b + len(x)] = i.numpy().astype(idx_dtype)
        with atomic_dir(folder) as tmp:
            np.save(tmp / "idx.npy", idx_all)
            np.save(tmp / "logp.npy", lp_all)
        made += len(ws) * seq_len
        if progress:
            progress(part + 1, n_parts)
    seconds = time.perf_counter() - t0
    bytes_per_token = top_k * (idx_dtype.itemsize + 2)
    final = {**want, **info, "complete": True, "bytes_per_token": bytes_per_token}
    if made:
        final["build_tokens_per_sec"] = made / seconds
    elif mf.exists():
        final["build_tokens_per_sec"] = json.loads(mf.read_text()).get("build_tokens_per_sec")
    atomic_write_text(mf, json.dumps(final, indent=2) + "\n")
    return final


class TeacherCache:
    """Reads a finished cache, after checking it belongs to these shards and this tokenizer."""

    def __init__(self, folder: Path, shards: Shards, tok_hash: str, seq_len: int, temperature: float):
        mf = folder / "manifest.json"
        if not mf.is_file():
            raise SlmError(f"{folder} is not a teacher cache; build one with `slm distill cache`")
        m = json.loads(mf.read_text())
        if m.get("format") != FORMAT or not m.get("complete"):
            raise SlmError(f"{folder}: the cache is incomplete; rerun `slm distill cache` to finish it")
        if m["tokenizer_hash"] != tok_hash:
            raise SlmError(f"{folder} was made with tokenizer {m['tokenizer_hash']}, the student uses {tok_hash}")
        if m["shards_hash"] != shards_hash(shards):
            raise SlmError(f"{folder} was made from other shards than {shards.folder} (content hash differs)")
        if m["seq_len"] != seq_len:
            raise SlmError(f"{folder} holds windows of {m['seq_len']} tokens; set train.seq_len = {m['seq_len']}")
        if abs(m["temperature"] - temperature) > 1e-9:
            raise SlmError(f"{folder} was made at temperature {m['temperature']}; set distill.temperature to match")
        self.manifest = m
        self.starts = window_starts(len(shards.tokens("train")), seq_len, m["windows"])
        pw = m["part_windows"]
        n_parts = (len(self.starts) + pw - 1) // pw
        self.idx = [np.load(folder / f"part_{p:05d}" / "idx.npy", mmap_mode="r") for p in range(n_parts)]
        self.logp = [np.load(folder / f"part_{p:05d}" / "logp.npy", mmap_mode="r") for p in range(n_parts)]
        self.pw = pw

    def __len__(self) -> int:
        return len(self.starts)

    def rows(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.stack([self.idx[i // self.pw][i % self.pw] for i in ids]).astype(np.int64)
        lp = np.stack([self.logp[i // self.pw][i % self.pw] for i in ids]).astype(np.float32)
        return torch.from_numpy(idx), torch.from_numpy(lp)
