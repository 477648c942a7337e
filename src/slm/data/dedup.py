"""Deduplication across the whole corpus, in two halves.

Per document (in the parallel workers): an exact content hash, and MinHash LSH band keys computed with
`datasketch` over word n-gram shingles of the lower-cased, punctuation-free text. Workers write these
next to the documents they kept, 8 bytes per band per document.

Once for the corpus (`find_duplicates`): exact duplicates are the repeats of a content hash; near
duplicates are documents that share any band key, grouped transitively (connected components), and each
group keeps its first document in input order. The work is sorting one band column at a time, so memory
is a few bytes per document rather than an in-memory LSH index.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import xxhash
from datasketch import MinHash
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from slm.config import DedupConfig

_PUNCT = re.compile(r"[^\w\s]+")
SCHEME = "affine32"


class Signer:
    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self.num_perm = cfg.bands * cfg.rows
        self.perms = MinHash(num_perm=self.num_perm, seed=cfg.seed, scheme=SCHEME).permutations

    @staticmethod
    def exact(text: str) -> int:
        return xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))

    def shingles(self, text: str) -> set[bytes]:
        words = _PUNCT.sub(" ", text.lower()).split()
        n = self.cfg.ngram
        if len(words) <= n:
            return {" ".join(words).encode()}
        return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}

    def bands(self, text: str) -> np.ndarray:
        m = MinHash(num_perm=self.num_perm, hashfunc=xxhash.xxh32_intdigest, permutations=self.perms, scheme=SCHEME)
        m.update_batch(self.shingles(text))
        rows = np.ascontiguousarray(m.hashvalues.reshape(self.cfg.bands, self.cfg.rows))
        # Mixing in the band number keeps equal rows in different bands from meaning anything.
        return np.array([xxhash.xxh3_64_intdigest(r.tobytes(), seed=b) for b, r in enumerate(rows)], dtype=np.uint64)


def _runs(column: np.ndarray, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges (first member, other member) for every group of alive documents sharing a key."""
    idx = np.nonzero(alive)[0]
    order = idx[np.argsort(column[idx], kind="stable")]
    keys = column[order]
    same = np.concatenate([[False], keys[1:] == keys[:-1]])
    if not same.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    group_start = np.maximum.accumulate(np.where(same, 0, np.arange(len(order))))
    return order[group_start[same]], order[same]


def find_duplicates(
    exact_files: list[Path], band_files: list[Path], counts: list[int], exact: bool, near: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Masks over all documents in input order: (exact duplicate, near duplicate). Band files are read
    one column at a time through memory maps."""
    total = int(sum(counts))
    exact_dup = np.zeros(total, dtype=bool)
    if exact and total:
        hashes = np.concatenate([np.load(f) for f in exact_files]) if exact_files else np.zeros(0, np.uint64)
        _, first = np.unique(hashes, return_index=True)  # index of each hash's first occurrence
        exact_dup[:] = True
        exact_dup[first] = False
    near_dup = np.zeros(total, dtype=bool)
    if not near or not total:
        return exact_dup, near_dup
    alive = ~exact_dup
    maps = [np.load(f, mmap_mode="r") for f in band_files]
    n_bands = next((m.shape[1] for m in maps if m.size), 0)
    src, dst = [], []
    for b in range(n_bands):
        column = np.concatenate([np.asarray(m[:, b]) if m.size else np.zeros(0, np.uint64) for m in maps])
        s, d = _runs(column, alive)
        src.append(s)
        dst.append(d)
    s, d = np.concatenate(src), np.concatenate(dst)
    if len(s):
        graph = coo_matrix((np.ones(len(s), dtype=np.int8), (s, d)), shape=(total, total))
        _, labels = connected_components(graph, directed=False)
        _, keep = np.unique(labels, return_index=True)  # first document of each group, in input order
        near_dup[:] = True
        near_dup[keep] = False
        near_dup &= alive
    return exact_dup, near_dup
