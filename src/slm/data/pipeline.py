"""`slm data run RECIPE`: read → normalise → filter → deduplicate → tokenise → per-domain shards.

    OUT/
      manifest.json       domains (source, licence, documents, tokens, bytes per split), pipeline hash
      stats.json          the funnel: per step and per domain, seen / kept / dropped by reason
      tokenizer.json
      DOMAIN/             shards (train.bin, val.bin, manifest.json) or JSONL (output.format)
      .work/              resumable intermediate state, kept so a rerun does no work twice
        pipeline.json     hash of the recipe parts that change the output
        tasks/NNNNN/      one per input file: kept documents, content hashes, MinHash band keys, funnel
        dedup.npz         which documents are exact or near duplicates of an earlier one

Stage 1 runs one task per input file, in parallel (local processes, or Ray tasks given ray_address); each
task folder appears atomically when its file is done, so a killed run resumes at the first missing one.
Stage 2 deduplicates across the whole corpus. Stage 3 writes each domain atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from slm.config import PipelineConfig
from slm.data.dedup import Signer, find_duplicates
from slm.data.filters import check
from slm.data.normalize import normalize
from slm.data.readers import check_parquet, detect_format, read_hf, read_source_file
from slm.data.stats import Funnel
from slm.data.text import ReadStats, expand_inputs
from slm.errors import SlmError
from slm.executor import Outcome, run_jobs, usable_cpus
from slm.run import atomic_dir, atomic_write_text

# Fields that do not change what the pipeline writes, so changing them never invalidates finished work.
_NOT_HASHED = {"name", "out", "workers", "ray_address"}


def pipeline_hash(cfg: PipelineConfig) -> str:
    body = json.dumps(cfg.model_dump(exclude=_NOT_HASHED), sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclass
class Task:
    index: int
    source: int
    domain: str
    path: str | None  # None: a whole `datasets` source
    val: bool

    @property
    def name(self) -> str:
        return f"{self.index:05d}"


def plan(cfg: PipelineConfig, funnel: Funnel) -> list[Task]:
    """Every input file once, held-out files first (so a training copy of a held-out document is the one
    deduplication removes). Parquet columns are checked here, before any work starts."""
    tasks: list[Task] = []
    seen: set[Path] = set()
    held: set[Path] = set()
    for val in (True, False):
        for si, src in enumerate(cfg.sources):
            if src.format == "hf":
                if not val:
                    files = expand_inputs(src.paths) if src.paths else []
                    tasks.append(Task(len(tasks), si, src.domain, None, False))
                    seen.update(p.resolve() for p in files)
                continue
            patterns = src.val_paths if val else src.paths
            if not patterns:
                continue
            dup = ReadStats()
            for p in expand_inputs(patterns, dup):
                key = p.resolve()
                if not val and key in held:
                    continue  # a held-out file that the training glob also matches
                if key in seen:
                    funnel.notes["duplicate_paths_ignored"] += 1
                    funnel.error(f"{p}: listed more than once; read once")
                    continue
                seen.add(key)
                if val:
                    held.add(key)
                if (detect_format(p) if src.format == "auto" else src.format) == "parquet":
                    check_parquet(p, src.text_field)
                tasks.append(Task(len(tasks), si, src.domain, str(p), val))
            if dup.duplicate_paths:
                funnel.notes["duplicate_paths_ignored"] += len(dup.duplicate_paths)
    return tasks


# ---------------------------------------------------------------- stage 1: per file


def _documents(cfg: PipelineConfig, task: Task, funnel: Funnel) -> Iterator[tuple[str, str]]:
    src = cfg.sources[task.source]
    if task.path is None:
        files = expand_inputs(src.paths) if src.paths else []
        return read_hf(src, files, cfg.normalize.max_doc_chars, funnel)
    return read_source_file(src, Path(task.path), cfg.normalize.max_doc_chars, funnel)


def process_task(cfg_json: str, task: Task, work: str) -> dict:
    """Read, normalise, filter and sign one input; the task folder appears only when all of it is done."""
    cfg = PipelineConfig.model_validate_json(cfg_json)
    src = cfg.sources[task.source]
    funnel = Funnel()
    signer = Signer(cfg.dedup)
    near = cfg.dedup.near
    exact: list[int] = []
    sizes: list[int] = []
    bands: list[np.ndarray] = []
    with atomic_dir(Path(work) / "tasks" / task.name) as tmp, (tmp / "docs.jsonl").open("w", encoding="utf-8") as out:
        for text, _where in _documents(cfg, task, funnel):
            text = normalize(text, cfg.normalize)
            nbytes = len(text.encode("utf-8", "surrogatepass"))
            if not text:
                funnel.drop("normalize", "empty_after_normalize")
                continue
            funnel.keep("normalize", nbytes)
            if cfg.filters.enabled and src.filter:
                reason, text = check(text, cfg.filters)
                if reason:
                    funnel.drop("filter", reason, nbytes)
                    continue
                nbytes = len(text.encode("utf-8", "surrogatepass"))
            funnel.keep("filter", nbytes)
            exact.append(signer.exact(text))
            sizes.append(nbytes)
            if near:
                bands.append(signer.bands(text))
            out.write(json.dumps(text, ensure_ascii=False))
            out.write("\n")
        out.flush()
        np.save(tmp / "exact.npy", np.array(exact, dtype=np.uint64))
        np.save(tmp / "sizes.npy", np.array(sizes, dtype=np.int64))
        width = cfg.dedup.bands if near else 0
        np.save(tmp / "bands.npy", np.stack(bands) if bands else np.zeros((0, width), dtype=np.uint64))
        (tmp / "funnel.json").write_text(json.dumps(funnel.as_dict()))
    return {"task": task.index, "docs": len(exact)}


# ---------------------------------------------------------------- stage 3: output


def _task_docs(work: Path, task: Task, keep: np.ndarray) -> Iterator[str]:
    with (work / "tasks" / task.name / "docs.jsonl").open(encoding="utf-8") as f:
        for line, k in zip(f, keep, strict=True):
            if k:
                yield json.loads(line)


def _in_val(text: str, fraction: float) -> bool:
    return xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass")) / 2**64 < fraction


@dataclass
class Result:
    out: Path
    manifest: dict
    stats: dict
    seconds: float


def run_pipeline(
    cfg: PipelineConfig,
    force: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> Result:
    t0 = time.perf_counter()
    out = Path(cfg.out)
    work = out / ".work"
    h = pipeline_hash(cfg)
    marker = work / "pipeline.json"
    if out.is_file():
        raise SlmError(f"--out {out} is a file; name a folder for the corpus")
    if out.exists() and force:
        shutil.rmtree(out)
    if marker.exists():
        old = json.loads(marker.read_text()).get("hash")
        if old != h:
            raise SlmError(
                f"{out} holds the output of a different pipeline recipe ({old}, now {h}); "
                "pass --force to start over or choose another out"
            )
    elif out.exists() and any(out.iterdir()):
        raise SlmError(f"{out} exists and is not an slm data folder; pass --force to replace it or choose another out")
    plan_funnel = Funnel()
    tasks = plan(cfg, plan_funnel)
    atomic_write_text(marker, json.dumps({"hash": h, "recipe": cfg.model_dump()}, indent=2) + "\n")

    # stage 1
    pending = [t for t in tasks if not (work / "tasks" / t.name).is_dir()]
    if len(pending) < len(tasks):
        log(f"resuming: {len(tasks) - len(pending)} of {len(tasks)} input files already processed")
    finished = len(tasks) - len(pending)

    def done(_t: Task) -> None:
        nonlocal finished
        finished += 1
        if progress:
            progress("files", finished, len(tasks))

    if progress:
        progress("files", finished, len(tasks))
    failures: list[str] = []

    def ended(i: int, out: Outcome) -> None:
        if out.ok:
            done(pending[i])
        else:
            failures.append(f"{pending[i].path or cfg.sources[pending[i].source].dataset}: {out.reason}")

    # One task per input file: local worker processes (bounded memory: each serves 64 files, then a fresh
    # one) or Ray tasks, whose input and output paths must be on storage every node sees.
    cfg_json = cfg.model_dump_json()
    run_jobs(
        process_task,
        [(cfg_json, t, str(work)) for t in pending],
        min(cfg.workers or usable_cpus(), len(pending)),
        ended,
        ray_address=cfg.ray_address,
        max_tasks_per_worker=64,
    )
    if failures:
        raise SlmError(
            f"{len(failures)} input(s) failed, e.g. {failures[0]}; the others are kept: fix the input and rerun "
            "to continue"
        )

    # stage 2
    dirs = [work / "tasks" / t.name for t in tasks]
    funnels = [Funnel.from_dict(json.loads((d / "funnel.json").read_text())) for d in dirs]
    counts = [int(np.load(d / "exact.npy", mmap_mode="r").shape[0]) for d in dirs]
    dedup_file = work / "dedup.npz"
    if not dedup_file.exists():
        if progress:
            progress("dedup", 0, 1)
        exact_dup, near_dup = find_duplicates(
            [d / "exact.npy" for d in dirs], [d / "bands.npy" for d in dirs], counts, cfg.dedup.exact, cfg.dedup.near
        )
        tmp = work / ".dedup.tmp.npz"
        np.savez(tmp, exact=exact_dup, near=near_dup)
        os.replace(tmp, dedup_file)
    masks = np.load(dedup_file)
    exact_dup, near_dup = masks["exact"], masks["near"]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    keeps: list[np.ndarray] = []
    sizes_by_task = [np.load(d / "sizes.npy") for d in dirs]
    for t, sizes, f in zip(tasks, sizes_by_task, funnels, strict=True):
        sl = slice(offsets[t.index], offsets[t.index + 1])
        e, n = exact_dup[sl], near_dup[sl]
        _count_step(f, "exact_dedup", sizes, e, "exact_duplicate", cfg.dedup.exact)
        _count_step(f, "near_dedup", sizes[~e], n[~e], "near_duplicate", cfg.dedup.near)
        keeps.append(~(e | n))

    # stage 3
    domains = list(dict.fromkeys(s.domain for s in cfg.sources))
    by_domain = {dm: [t for t in tasks if t.domain == dm] for dm in domains}

    def write_stats() -> dict:
        total = Funnel()
        total += plan_funnel
        per_domain: dict[str, Funnel] = {dm: Funnel() for dm in domains}
        for t, f in zip(tasks, funnels, strict=True):
            total += f
            per_domain[t.domain] += f
        seconds = time.perf_counter() - t0
        read_bytes = total.bytes_seen["read"]
        stats = {
            "pipeline_hash": h,
            "total": total.as_dict(),
            "domains": {dm: f.as_dict() for dm, f in per_domain.items()},
            "seconds": round(seconds, 3),
            "documents_per_s": round(total.seen["read"] / seconds, 1) if seconds else None,
            "mb_per_s": round(read_bytes / 1e6 / seconds, 3) if seconds else None,
        }
        atomic_write_text(out / "stats.json", json.dumps(stats, indent=2) + "\n")
        return stats

    empty = [dm for dm in domains if not any(keeps[t.index].any() for t in by_domain[dm])]
    if empty:
        # Say why before any tokenizer or shard is made: the funnel is on disk, its first problem here.
        stats = write_stats()
        d = stats["domains"][empty[0]]
        why = (
            d["errors"][0]
            if d["errors"]
            else ", ".join(f"{r} {n}" for step in d["steps"].values() for r, n in step["dropped"].items())
        )
        raise SlmError(
            f"domain '{empty[0]}': no document survived the pipeline ({why or 'no input documents'}); "
            f"the funnel is in {out / 'stats.json'}"
        )
    tok = None
    if cfg.output.format == "shards":
        tok = _tokenizer(cfg, out, work, tasks, keeps, log)
    summary: dict[str, dict] = {}
    for i, dm in enumerate(domains):
        if progress:
            progress("write", i, len(domains))
        summary[dm] = _write_domain(cfg, out, work, dm, by_domain[dm], keeps, tok, h)
        for t in by_domain[dm]:
            for s in sizes_by_task[t.index][keeps[t.index]]:
                funnels[t.index].keep("write", int(s))
    if progress:
        progress("write", len(domains), len(domains))
    stats = write_stats()
    manifest = {
        "format": "slm-corpus/1",
        "name": cfg.name,
        "pipeline_hash": h,
        "output": cfg.output.format,
        "tokenizer_hash": _tok_hash(tok),
        "domains": summary,
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return Result(out, manifest, stats, stats["seconds"])


def _tok_hash(tok) -> str | None:
    if tok is None:
        return None
    from slm.tokenizer import tokenizer_hash

    return tokenizer_hash(tok)


def _count_step(f: Funnel, step: str, sizes: np.ndarray, dup: np.ndarray, reason: str, enabled: bool) -> None:
    for s, d in zip(sizes.tolist(), dup.tolist(), strict=True):
        if enabled and d:
            f.drop(step, reason, s)
        else:
            f.keep(step, s)


def _tokenizer(cfg: PipelineConfig, out: Path, work: Path, tasks: list[Task], keeps: list[np.ndarray], log):
    from slm.tokenizer import load_tokenizer, train_tokenizer

    path = out / "tokenizer.json"
    if path.exists():
        return load_tokenizer(path)
    t = cfg.tokenizer
    if t.path:
        tok = load_tokenizer(t.path)
    else:
        budget = int(t.sample_mb * 1e6)
        log(f"training a byte-level BPE tokenizer (vocab {t.vocab_size}) on up to {budget / 1e6:g} MB")

        def sample() -> Iterator[str]:
            # Round-robin over files, so every domain is in the sample even when the budget is small.
            used = 0
            streams = [_task_docs(work, t, keeps[t.index]) for t in tasks if not t.val]
            while streams and used < budget:
                alive = []
                for s in streams:
                    d = next(s, None)
                    if d is not None:
                        used += len(d)
                        alive.append(s)
                        yield d
                streams = alive

        tok = train_tokenizer(sample(), t.vocab_size or 8192, t.min_frequency, t.eos_token, t.chat_tokens)
    atomic_write_text(path, tok.to_str(pretty=True))
    return tok


def _summary(m: dict) -> dict:
    return {s: {k: m["splits"][s].get(k) for k in ("documents", "tokens", "bytes")} for s in ("train", "val")}


def _write_domain(cfg, out: Path, work: Path, domain: str, tasks: list[Task], keeps, tok, h: str) -> dict:
    folder = out / domain
    mf = folder / "manifest.json"
    sources = [s for s in cfg.sources if s.domain == domain]
    info = {
        "sources": sorted({s.source for s in sources if s.source}),
        "licenses": sorted({s.license for s in sources}),
    }
    if mf.exists():
        m = json.loads(mf.read_text())
        if m.get("pipeline_hash") == h:
            return {**info, **_summary(m)}

    def stream(val: bool) -> Iterator[str]:
        for t in tasks:
            if t.val == val:
                yield from _task_docs(work, t, keeps[t.index])

    has_val = any(t.val for t in tasks)
    frac = cfg.output.val_fraction
    if cfg.output.format == "shards":
        from slm.data.shards import write_shards

        m = write_shards(
            tok,
            stream(False),
            folder,
            stream(True) if has_val else None,
            frac,
            cfg.tokenizer.eos_token,
            extra=lambda: {"domain": domain, "pipeline_hash": h, **info},
            empty_hint=f"domain '{domain}': no document survived the pipeline; see stats.json for why",
        )
        return {**info, **_summary(m)}
    with atomic_dir(folder) as tmp:
        writers = {s: _JsonlWriter(tmp / f"{s}.jsonl") for s in ("train", "val")}
        for d in stream(False):
            writers["val" if not has_val and _in_val(d, frac) else "train"].add(d)
        for d in stream(True):
            writers["val"].add(d)
        splits = {s: w.close() for s, w in writers.items()}
        m = {"format": "slm-jsonl/1", "domain": domain, "pipeline_hash": h, "splits": splits, **info}
        atomic_write_text(tmp / "manifest.json", json.dumps(m, indent=2) + "\n")
    return {**info, **_summary(m)}


class _JsonlWriter:
    def __init__(self, path: Path):
        self.path, self.f = path, path.open("w", encoding="utf-8")
        self.documents = self.bytes = 0

    def add(self, text: str) -> None:
        self.f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        self.documents += 1
        self.bytes += len(text.encode("utf-8", "surrogatepass"))

    def close(self) -> dict:
        self.f.close()
        return {"file": self.path.name, "documents": self.documents, "bytes": self.bytes}
