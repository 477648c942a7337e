"""`slm select`: perplexity-based data pruning (Ankner et al., "Perplexed by Perplexity").

A small reference model scores every training document of a corpus (mean negative log-likelihood per
token, i.e. log-perplexity); a strategy keeps a fraction: the lowest, the middle or the highest
perplexities, or a random subset as the control. The output is a new corpus folder in the same layout
(held-out splits copied unchanged), the scores, and a histogram of scores by domain.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from slm.data.mixture import corpus_domains
from slm.data.shards import FORMAT, Shards
from slm.errors import SlmError
from slm.model.load import load_model
from slm.model.score import score
from slm.run import atomic_dir, atomic_write_text, refuse_existing
from slm.tokenizer import load_tokenizer, tokenizer_hash

STRATEGIES = ("low", "medium", "high", "random")


def documents(tokens: np.ndarray, eos: int) -> list[tuple[int, int]]:
    """(start, end) of each document, its EOS included, in a shard's token stream."""
    ends = np.nonzero(np.asarray(tokens) == eos)[0] + 1
    starts = np.concatenate([[0], ends[:-1]])
    spans = list(zip(starts.tolist(), ends.tolist(), strict=True))
    if len(tokens) and (not len(ends) or ends[-1] < len(tokens)):
        spans.append((int(ends[-1]) if len(ends) else 0, len(tokens)))
    return spans


def units(spans: list[tuple[int, int]], max_tokens: int) -> list[tuple[int, int]]:
    """Documents cut into pieces of at most max_tokens (0: whole documents), so a corpus of a few long books
    can still be selected from at a useful grain."""
    if max_tokens <= 0:
        return spans
    return [(s, min(s + max_tokens, b)) for a, b in spans for s in range(a, b, max_tokens)]


def check_choice(fraction: float, strategy: str) -> None:
    """Checked before any scoring: a bad argument must not cost minutes first."""
    if strategy not in STRATEGIES:
        raise SlmError(f"unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
    if not 0 < fraction <= 1:
        raise SlmError(f"--fraction must be in (0, 1] (got {fraction})")


def keep_mask(scores: np.ndarray, sizes: np.ndarray, fraction: float, strategy: str, seed: int) -> np.ndarray:
    """Keep documents holding `fraction` of the tokens, chosen by `strategy` over their scores."""
    check_choice(fraction, strategy)
    if strategy == "random":
        order = np.random.default_rng(seed).permutation(len(scores))
    else:
        order = np.argsort(scores, kind="stable")
        if strategy == "high":
            order = order[::-1]
        elif strategy == "medium":
            # outwards from the median, so the kept set is the middle of the distribution
            ranks = np.empty(len(order), dtype=np.int64)
            ranks[order] = np.arange(len(order))
            order = np.argsort(np.abs(ranks - (len(order) - 1) / 2), kind="stable")
    budget = fraction * sizes.sum()
    take = np.searchsorted(np.cumsum(sizes[order]), budget, side="left") + 1
    mask = np.zeros(len(scores), dtype=bool)
    mask[order[: min(take, len(order))]] = True
    return mask


def select(
    corpus: Path,
    reference: str,
    out: Path,
    fraction: float,
    strategy: str,
    seed: int = 0,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    unit_tokens: int = 0,
) -> dict:
    """Score and keep units (documents, or pieces of unit_tokens); a kept piece that does not end its
    document gets a separator, so pieces from different places never run together in training."""
    if unit_tokens < 0:
        raise SlmError(f"--unit-tokens must be 0 (whole documents) or positive (got {unit_tokens})")
    check_choice(fraction, strategy)
    refuse_existing(out, force)
    domains = corpus_domains(corpus)
    tok = load_tokenizer(corpus / "tokenizer.json")
    loaded = load_model(reference)
    model, ref_tok = loaded.model, loaded.tokenizer
    same = tokenizer_hash(ref_tok) == tokenizer_hash(tok)
    shards = {d: Shards.open(corpus / d) for d in domains}
    eos = shards[domains[0]].manifest["eos_id"]
    spans = {d: units(documents(shards[d].tokens("train"), eos), unit_tokens) for d in domains}
    rows, encoded = [], []
    seq = model.cfg.max_seq_len
    for d in domains:
        toks = shards[d].tokens("train")
        for a, b in spans[d]:
            ids = np.asarray(toks[a:b])
            if not same:
                text = tok.decode(ids.tolist(), skip_special_tokens=True)
                enc = ref_tok.encode(text, add_special_tokens=False)
                if ref_tok.decode(enc.ids) != text:
                    raise SlmError(
                        f"the reference model's tokenizer cannot encode the corpus ({d}, document {len(rows)}); "
                        "use a byte-level tokenizer or a model trained on this corpus"
                    )
                ids = np.array(enc.ids, dtype=np.int64)
            encoded.append(ids)
            rows.append({"domain": d, "start": a, "end": b, "tokens": b - a})
    # The reference model is only needed here: it is freed before the new corpus is written.
    for r, (nll, n) in zip(rows, score(model, encoded, seq, progress=progress), strict=True):
        r["nll"] = nll / max(n, 1)
    del model, loaded
    scores = np.array([r["nll"] for r in rows])
    sizes = np.array([r["tokens"] for r in rows])
    mask = keep_mask(scores, sizes, fraction, strategy, seed)
    summary: dict[str, dict] = {}
    with atomic_dir(out) as tmp:
        shutil.copy(corpus / "tokenizer.json", tmp / "tokenizer.json")
        i = 0
        for d in domains:
            src = shards[d]
            n_docs = len(spans[d])
            keep = mask[i : i + n_docs]
            toks = src.tokens("train")
            kept = [
                np.asarray(toks[a:b]) if toks[b - 1] == eos else np.append(np.asarray(toks[a:b]), eos)
                for (a, b), k in zip(spans[d], keep, strict=True)
                if k
            ]
            folder = tmp / d
            folder.mkdir()
            dtype = np.dtype(src.manifest["dtype"])
            arr = np.concatenate(kept).astype(dtype) if kept else np.zeros(0, dtype)
            arr.tofile(folder / "train.bin")
            shutil.copy(src.folder / src.manifest["splits"]["val"]["file"], folder / "val.bin")
            m = dict(src.manifest)
            m["splits"] = {
                "train": {"file": "train.bin", "tokens": len(arr), "documents": int(keep.sum()), "bytes": None},
                "val": dict(src.manifest["splits"]["val"], file="val.bin"),
            }
            m["selection"] = {
                "reference": str(reference),
                "strategy": strategy,
                "fraction": fraction,
                "unit_tokens": unit_tokens,
            }
            assert m["format"] == FORMAT
            (folder / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
            summary[d] = {
                "documents": n_docs,
                "kept": int(keep.sum()),
                "tokens": int(sizes[i : i + n_docs].sum()),
                "kept_tokens": len(arr),
                "mean_nll": float(scores[i : i + n_docs].mean()) if n_docs else None,
            }
            i += n_docs
        manifest = {
            "format": "slm-corpus/1",
            "selection": {
                "reference": str(reference),
                "strategy": strategy,
                "fraction": fraction,
                "seed": seed,
                "unit_tokens": unit_tokens,
            },
            "domains": summary,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        with (tmp / "scores.jsonl").open("w") as f:
            for r, k in zip(rows, mask, strict=True):
                f.write(json.dumps({**r, "kept": bool(k)}) + "\n")
        _histogram(rows, mask, tmp / "report.html", strategy, fraction)
    return manifest


def _histogram(rows: list[dict], mask: np.ndarray, path: Path, strategy: str, fraction: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slm.report.html import CSS, html_table, svg

    domains = list(dict.fromkeys(r["domain"] for r in rows))
    scores = np.array([r["nll"] for r in rows])
    bins = np.linspace(scores.min(), scores.max(), 40) if len(scores) else 10
    fig, ax = plt.subplots(figsize=(7, 4))
    for d in domains:
        ax.hist([r["nll"] for r in rows if r["domain"] == d], bins=bins, alpha=0.5, label=d)
    kept = scores[mask]
    if len(kept):
        for v in (kept.min(), kept.max()):
            ax.axvline(v, color="#333", ls="--", lw=1)
    ax.set_xlabel("reference model NLL per token (log-perplexity)")
    ax.set_ylabel("documents")
    ax.set_title(f"scores by domain; dashed: kept range ({strategy}, {fraction:.0%} of tokens)")
    ax.legend(fontsize=8)
    table = html_table(
        ["domain", "documents", "kept"],
        [
            [
                d,
                sum(r["domain"] == d for r in rows),
                int(sum(k for r, k in zip(rows, mask, strict=True) if r["domain"] == d)),
            ]
            for d in domains
        ],
    )
    page = f"<!doctype html><html><head><meta charset=utf-8><title>slm select</title><style>{CSS}</style></head>"
    atomic_write_text(path, page + f"<body><h1>slm select</h1>{svg(fig)}{table}</body></html>\n")
