"""The data pipeline: throughput against datatrove, peak memory at two corpus sizes, near-dedup quality.

    python benchmarks/data_pipeline.py corpus --mb 100 --out /tmp/corpus100
    python benchmarks/data_pipeline.py throughput --corpus /tmp/corpus100 --datatrove-python /tmp/dtv/bin/python
    python benchmarks/data_pipeline.py memory --corpus /tmp/corpus100 --corpus /tmp/corpus400
    python benchmarks/data_pipeline.py neardup

corpus      JSONL files of ~2 MB made from the committed real text (data/builtin and data/shakespeare):
            every document is 2-8 paragraphs drawn at random, then 3 % exact copies, 3 % near copies (2 %
            of words edited) and 4 % junk (too short, symbol soup, lorem ipsum, repeated lines) are planted.
throughput  `slm data run` (JSONL output, 2 workers) and a datatrove pipeline with the same steps, each
            run `--rounds` times alternately on the same corpus; median wall-clock, docs/s, MB/s, ratio.
            datatrove runs from its own venv (`python -m venv /tmp/dtv && /tmp/dtv/bin/pip install
            datatrove==0.10.1 spacy`), as its dependencies differ from slm's. Its steps: JsonlReader →
            the same NFC/whitespace normaliser → GopherRepetitionFilter → GopherQualityFilter →
            C4QualityFilter (lorem ipsum only, as slm's default) → JsonlWriter; then MinHash (14 buckets ×
            8 hashes, 5-grams: signatures, buckets, clusters, filter) → JsonlWriter. datatrove has no
            one-pass exact dedup next to MinHash, so it relies on MinHash to remove exact copies (which
            it does: identical documents share every bucket); slm runs both. Its Gopher filters use its
            English default word tokenizer (spaCy), slm splits on whitespace.
memory      `slm data run` (full pipeline to token shards, 2 workers) on each corpus, peak resident memory
            of the largest process (the parent or a worker), from getrusage.
neardup     A labelled set: 1,000 original documents sharing no paragraph, and 100 copies of each kind:
            random word edits (1, 3, 5, 10 % of words) and reordered paragraphs; recall per kind and
            precision of slm's near-dedup, at the default LSH setting and others (--bands, --rows).

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from generation import scratch

REPO = Path(__file__).resolve().parents[1]
JUNK = [
    lambda r: "buy now",
    lambda r: " ".join(r.choice(["#", "$$", "%%", "@@", "&&", "..."]) for _ in range(200)),
    lambda r: "Lorem ipsum dolor sit amet, the consectetur adipiscing elit, and " * 30,
    lambda r: "\n".join(["Click here to subscribe to the newsletter and win."] * 40),
]


def _paragraphs() -> list[str]:
    out = []
    for p in sorted((REPO / "data").rglob("*.txt")):
        for para in re.split(r"\n\s*\n", p.read_text(encoding="utf-8", errors="replace")):
            if len(para.split()) >= 20:
                out.append(para.strip())
    return out


def _edit(words: list[str], frac: float, r: random.Random) -> list[str]:
    w = list(words)
    for i in r.sample(range(len(w)), max(1, int(len(w) * frac))):
        w[i] = r.choice(["alpha", "omega", "river", "stone", "light", "north"])
    return w


def make_corpus(out: Path, mb: float, file_mb: float = 2.0, seed: int = 0) -> None:
    r = random.Random(seed)
    pool = _paragraphs()
    out.mkdir(parents=True, exist_ok=True)
    target, written, k = mb * 1e6, 0, 0
    recent: list[str] = []
    while written < target:
        lines, size = [], 0
        while size < file_mb * 1e6:
            x = r.random()
            if x < 0.03 and recent:
                doc = r.choice(recent)
            elif x < 0.06 and recent:
                doc = " ".join(_edit(r.choice(recent).split(" "), 0.02, r))
            elif x < 0.10:
                doc = r.choice(JUNK)(r)
            else:
                doc = "\n\n".join(r.sample(pool, r.randint(2, 8)))
                recent = [*recent, doc][-500:]
            line = json.dumps({"text": doc, "id": f"{k}-{len(lines)}"})
            lines.append(line)
            size += len(line) + 1
        (out / f"part{k:04d}.jsonl").write_text("\n".join(lines) + "\n")
        written += size
        k += 1
    print(json.dumps({"corpus": str(out), "files": k, "mb": round(written / 1e6, 1), "paragraph_pool": len(pool)}))


def corpus_stats(corpus: Path) -> tuple[int, int]:
    docs = size = 0
    for p in corpus.glob("*.jsonl"):
        size += p.stat().st_size
        with p.open("rb") as f:
            docs += sum(1 for _ in f)
    return docs, size


def slm_recipe(corpus: Path, out: Path, fmt: str, workers: int) -> Path:
    recipe = out.parent / f"{out.name}.toml"
    recipe.write_text(
        f'name = "bench"\nout = "{out}"\nworkers = {workers}\n'
        f'[[sources]]\ndomain = "web"\npaths = ["{corpus}/*.jsonl"]\n'
        f'[output]\nformat = "{fmt}"\n'
    )
    return recipe


def run_slm(corpus: Path, work: Path, fmt: str = "jsonl", workers: int = 2) -> dict:
    out = work / f"slm_{fmt}"
    shutil.rmtree(out, ignore_errors=True)
    recipe = slm_recipe(corpus, out, fmt, workers)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "slm", "data", "run", str(recipe)], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if p.returncode:
        sys.exit(p.stderr[-3000:])
    stats = json.loads((out / "stats.json").read_text())
    kept = stats["total"]["steps"]["write"]["kept"]
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": seconds, "kept": kept, "peak_rss_mb": peak}


# ---------------------------------------------------------------- datatrove (runs in its own venv)

DATATROVE = r"""
import re, sys, time, unicodedata
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.filters import GopherRepetitionFilter, GopherQualityFilter, C4QualityFilter
from datatrove.pipeline.dedup import MinhashDedupSignature, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
from datatrove.pipeline.dedup.minhash import MinhashConfig

corpus, work, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufeff]")
TRAILING = re.compile(r"[ \t]+\n")
BLANKS = re.compile(r"\n{3,}")

class Normalize(BaseFormatter):
    name = "nfc + whitespace"
    def format(self, text):
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        return BLANKS.sub("\n\n", TRAILING.sub("\n", CONTROL.sub("", text))).strip()

import glob
cfg = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)

def run(pipeline, n, name):
    LocalPipelineExecutor(pipeline=pipeline, tasks=n, workers=workers, logging_dir=f"{work}/logs/{name}").run()

if __name__ == "__main__":  # datatrove's workers re-import this file
    tasks = len(glob.glob(corpus + "/*.jsonl"))
    run([JsonlReader(corpus, glob_pattern="*.jsonl"), Normalize(), GopherRepetitionFilter(), GopherQualityFilter(),
         C4QualityFilter(split_paragraph=True, remove_citations=False, filter_no_terminal_punct=False,
                         min_num_sentences=-1, min_words_per_line=-1, max_word_length=-1, filter_lorem_ipsum=True,
                         filter_javascript=False, filter_curly_bracket=False, filter_policy=False),
         JsonlWriter(f"{work}/filtered", output_filename="${rank}.jsonl", compression=None)], tasks, "filter")
    run([JsonlReader(f"{work}/filtered"), MinhashDedupSignature(f"{work}/sigs", config=cfg)], tasks, "sig")
    run([MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets", config=cfg)], cfg.num_buckets, "buckets")
    run([MinhashDedupCluster(f"{work}/buckets", f"{work}/remove", config=cfg)], 1, "cluster")
    run([JsonlReader(f"{work}/filtered"), MinhashDedupFilter(f"{work}/remove"),
         JsonlWriter(f"{work}/final", output_filename="${rank}.jsonl", compression=None)], tasks, "final")
"""


def run_datatrove(python: str, corpus: Path, work: Path, workers: int = 2) -> dict:
    out = work / "datatrove"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    script = work / "datatrove_pipeline.py"
    script.write_text(DATATROVE)
    t0 = time.perf_counter()
    p = subprocess.run([python, str(script), str(corpus), str(out), str(workers)], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if p.returncode:
        sys.exit(p.stderr[-3000:])
    kept = sum(1 for f in (out / "final").glob("*.jsonl") for _ in f.open("rb"))
    return {"seconds": seconds, "kept": kept}


def throughput(args) -> None:
    corpus = Path(args.corpus[0])
    docs, size = corpus_stats(corpus)
    work = scratch("slm-data-bench-")
    times: dict[str, list[float]] = {"slm": [], "datatrove": []}
    for rnd in range(args.rounds):
        for name in ("datatrove", "slm") if rnd % 2 else ("slm", "datatrove"):
            r = run_slm(corpus, work) if name == "slm" else run_datatrove(args.datatrove_python, corpus, work)
            times[name].append(r["seconds"])
            rate = {"docs_per_s": round(docs / r["seconds"]), "mb_per_s": round(size / 1e6 / r["seconds"], 2)}
            print(json.dumps({"round": rnd, "tool": name, **{k: round(v, 2) for k, v in r.items()}, **rate}))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "summary": "throughput",
                "corpus_mb": round(size / 1e6, 1),
                "documents": docs,
                "slm_s": round(med["slm"], 1),
                "datatrove_s": round(med["datatrove"], 1),
                "slm_docs_per_s": round(docs / med["slm"]),
                "datatrove_docs_per_s": round(docs / med["datatrove"]),
                "slm_mb_per_s": round(size / 1e6 / med["slm"], 2),
                "datatrove_mb_per_s": round(size / 1e6 / med["datatrove"], 2),
                "ratio": round(med["datatrove"] / med["slm"], 2),
            }
        )
    )
    shutil.rmtree(work, ignore_errors=True)


def memory(args) -> None:
    for c in args.corpus:
        corpus = Path(c)
        _, size = corpus_stats(corpus)
        work = scratch("slm-data-mem-")
        # A fresh interpreter per corpus, so getrusage's children maximum belongs to this corpus alone.
        here = str(Path(__file__).parent)
        code = (
            f"import json,sys;sys.path.insert(0,{here!r});from data_pipeline import run_slm;from pathlib import Path;"
            f"print(json.dumps(run_slm(Path({c!r}), Path({str(work)!r}), 'shards')))"
        )
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        r = json.loads(p.stdout.strip().splitlines()[-1])
        print(
            json.dumps(
                {
                    "summary": "memory",
                    "corpus_mb": round(size / 1e6, 1),
                    "seconds": round(r["seconds"], 1),
                    "peak_rss_mb": round(r["peak_rss_mb"], 1),
                    "kept": r["kept"],
                }
            )
        )
        shutil.rmtree(work, ignore_errors=True)


def neardup(args) -> None:
    import numpy as np

    from slm.config import DedupConfig
    from slm.data.dedup import Signer, find_duplicates

    r = random.Random(args.seed)
    # Originals share no paragraph (drawn without replacement from the distinct paragraphs), so any
    # original flagged as a duplicate is a true false positive.
    pool = sorted(set(_paragraphs()))
    r.shuffle(pool)
    originals, at = [], 0
    for _ in range(1000):
        k = r.randint(3, 5)
        originals.append("\n\n".join(pool[at : at + k]))
        at += k
    kinds = {"edit_1pct": 0.01, "edit_3pct": 0.03, "edit_5pct": 0.05, "edit_10pct": 0.10, "reorder": None}
    docs, label = list(originals), ["original"] * len(originals)
    for kind, frac in kinds.items():
        for o in r.sample(originals, 100):
            if frac is None:
                paras = o.split("\n\n")
                r.shuffle(paras)
                docs.append("\n\n".join(paras))
            else:
                docs.append(" ".join(_edit(o.split(" "), frac, r)))
            label.append(kind)
    order = list(range(len(docs)))
    signer = Signer(DedupConfig(bands=args.bands, rows=args.rows))
    work = scratch("slm-dedup-")
    np.save(work / "e.npy", np.array([signer.exact(docs[i]) for i in order], dtype=np.uint64))
    np.save(work / "b.npy", np.stack([signer.bands(docs[i]) for i in order]))
    exact, near = find_duplicates([work / "e.npy"], [work / "b.npy"], [len(docs)], True, True)
    flagged = exact | near
    # Originals come first, so a correct dedup flags every copy and no original. Originals drawn from the
    # same paragraph pool can overlap by chance; those count against precision.
    tp_all = 0
    for kind in kinds:
        idx = [i for i, lab in enumerate(label) if lab == kind]
        hit = int(flagged[idx].sum())
        tp_all += hit
        print(json.dumps({"kind": kind, "copies": len(idx), "found": hit, "recall": round(hit / len(idx), 3)}))
    fp = int(flagged[: len(originals)].sum())
    print(
        json.dumps(
            {
                "summary": "neardup",
                "bands": args.bands,
                "rows": args.rows,
                "documents": len(docs),
                "copies": len(docs) - len(originals),
                "recall": round(tp_all / (len(docs) - len(originals)), 3),
                "precision": round(tp_all / max(tp_all + fp, 1), 3),
                "false_positives": fp,
            }
        )
    )
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["corpus", "throughput", "memory", "neardup"])
    ap.add_argument("--mb", type=float, default=100)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--corpus", action="append", default=[])
    ap.add_argument("--datatrove-python", default=os.environ.get("DATATROVE_PYTHON", "/tmp/dtv/bin/python"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bands", type=int, default=14, help="neardup: MinHash LSH bands")
    ap.add_argument("--rows", type=int, default=8, help="neardup: hashes per band")
    args = ap.parse_args()
    if args.part == "corpus":
        make_corpus(args.out, args.mb)
    elif args.part == "throughput":
        throughput(args)
    elif args.part == "memory":
        memory(args)
    else:
        neardup(args)


if __name__ == "__main__":
    main()
