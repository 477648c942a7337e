"""`slm select` on instruction data: a small reference model scores every conversation, a method keeps a fraction.

ifd         instruction-following difficulty (Li et al., "From Quantity to Quality"; with a small reference,
            "Superfiltering"): the answer's mean loss given its conversation over its mean loss alone. Near
            or above 1 the instruction does not help predict the answer (noise, or a misaligned pair); well
            below 1 the answer is easy once asked. Keeps the highest scores below 1: the pairs where the
            instruction matters and the answer is still hard.
perplexity  the answer's mean loss given its conversation; --strategy low, medium (default) or high.
s2l         SmallToLarge (Yang et al.): the answer's loss at every checkpoint of a small reference trained
            on this data is a trajectory; trajectories are clustered (k-means) and the budget is spread
            evenly over the clusters, smallest first, so rare kinds of example are kept as much as common.
--strategy random (any method) keeps a seeded random subset without scoring: the control.

The reference reads conversations with its own chat template (ChatML when its tokenizer has the tokens;
a base model without either reads them as plain text). The output is the kept records, byte for byte as
they were in the input; beside it, every record's scores, a summary and an HTML report.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from slm.data.conversations import ReadReport, to_messages
from slm.errors import SlmError
from slm.infer.template import ChatFormat, chat_format
from slm.model.load import load_model
from slm.model.score import score_masked
from slm.run import Run, atomic_write_text, refuse_existing

METHODS = ("perplexity", "ifd", "s2l")
PLAIN = "{% for message in messages %}{{ message['content'] }}\n\n{% endfor %}"  # a base model's reading


def check_method(method: str, strategy: str | None, fraction: float, clusters: int | None) -> str:
    """The strategy to use; every refusal before any model is loaded or any record read."""
    if method not in METHODS:
        raise SlmError(f"--method {method}: use one of {', '.join(METHODS)}")
    if not 0 < fraction <= 1:
        raise SlmError(f"--fraction must be in (0, 1] (got {fraction})")
    if strategy not in (None, "low", "medium", "high", "random"):
        raise SlmError(f"--strategy {strategy}: use low, medium, high or random")
    if method != "perplexity" and strategy not in (None, "random"):
        raise SlmError(
            f"--strategy {strategy} applies to --method perplexity; {method} keeps by its own rule "
            "(or give --strategy random for the control)"
        )
    if clusters is not None and clusters < 1:
        raise SlmError(f"--clusters must be at least 1 (got {clusters})")
    return strategy or ("medium" if method == "perplexity" else method)


def read_records(path: Path, report: ReadReport) -> list[tuple[str, list]]:
    """(the line as it was, its messages) of every valid record of a JSONL file; the rest named and counted."""
    if path.is_dir() or path.suffix != ".jsonl":
        raise SlmError(f"{path}: give a JSONL file of conversations (messages, instruction/output, prompt/completion)")
    if not path.is_file():
        raise SlmError(f"{path} not found; give a JSONL file of conversations")
    out = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            try:
                out.append((line, to_messages(json.loads(line))))
                report.read += 1
            except json.JSONDecodeError:
                report.skip(f"{path}:{n}", "invalid_json: not valid JSON")
            except SlmError as e:
                report.skip(f"{path}:{n}", f"malformed: {e}")
    if not out:
        raise SlmError(f"{path} holds no valid conversation ({report.errors[0] if report.errors else 'it is empty'})")
    return out


def _reader(loaded) -> ChatFormat:
    try:
        return chat_format(loaded.tokenizer, loaded.chat_template, None, loaded.config.tokenizer.eos_token)
    except SlmError:
        return ChatFormat(loaded.tokenizer, PLAIN)


def conversation_scores(
    source: str,
    convs: list[list],
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    alone: bool = True,
) -> list[dict[str, float]]:
    """Per conversation: the answers' mean NLL given the conversation (`nll_given`) and, with `alone`, the
    answers' mean NLL without it (`nll_alone`) and their ratio (`ifd`). Text past the reference's context
    is cut from the end."""
    loaded = load_model(source)
    fmt, tok, model = _reader(loaded), loaded.tokenizer, loaded.model
    limit = model.cfg.max_seq_len
    given = [fmt.render(c) for c in convs]
    answers = [
        [loaded.eos_id, *tok.encode("".join(m["content"] for m in c if m["role"] == "assistant")).ids][:limit]
        for c in convs
    ]
    out: list[dict[str, float]] = []
    step = max(1, batch_size * 8)
    for a in range(0, len(convs), step):
        g = [(r.ids[:limit], r.mask[:limit]) for r in given[a : a + step]]
        cond = score_masked(model, [i for i, _ in g], [m for _, m in g], batch_size)
        rows = [{"nll_given": n / max(t, 1)} for n, t in cond]
        if alone:
            s = answers[a : a + step]
            bare = score_masked(model, s, [[False] + [True] * (len(x) - 1) for x in s], batch_size)
            for row, (nb, tb) in zip(rows, bare, strict=True):
                row["nll_alone"] = nb / max(tb, 1)
                row["ifd"] = row["nll_given"] / row["nll_alone"] if row["nll_alone"] > 0 else float("inf")
        out += rows
        if progress:
            progress(min(a + step, len(convs)), len(convs))
    return out


def checkpoints_of(source: str) -> list[Path]:
    """The checkpoints of an slm run, oldest first: S2L's trajectory points."""
    run = Run(Path(source))
    if not Path(source).is_dir() or not run.config_path.is_file():
        raise SlmError(f"--method s2l needs an slm run folder with checkpoints as --model (got {source})")
    ckpts = run.checkpoints()
    if len(ckpts) < 2:
        raise SlmError(
            f"{source} has {len(ckpts)} checkpoint(s); S2L needs the losses at several: train the reference "
            "on this data with e.g. --set train.ckpt_every=20 --set train.keep_checkpoints=10"
        )
    return ckpts


def trajectories(
    source: str, convs: list[list], batch_size: int = 8, progress: Callable[[int, int], None] | None = None
) -> np.ndarray:
    """(conversations, checkpoints): each answer's mean loss at each checkpoint of the reference run."""
    ckpts = checkpoints_of(source)
    cols = []
    for j, ck in enumerate(ckpts):
        tick = None if progress is None else (lambda i, n, j=j: progress(j * n + i, len(ckpts) * n))
        cols.append([s["nll_given"] for s in conversation_scores(str(ck), convs, batch_size, tick, alone=False)])
    return np.array(cols, dtype=np.float64).T


def balanced(labels: np.ndarray, k: int, seed: int) -> list[int]:
    """k indices spread over the clusters as evenly as their sizes allow: clusters smallest first, each gives
    min(its size, what is left / clusters left), drawn at random within it (S2L's sampling)."""
    rng = np.random.default_rng(seed)
    groups = sorted((np.flatnonzero(labels == c) for c in np.unique(labels)), key=lambda g: (len(g), g[0]))
    out: list[int] = []
    left = k
    for n, g in enumerate(groups):
        take = min(len(g), left // (len(groups) - n))
        out += rng.choice(g, size=take, replace=False).tolist()
        left -= take
    return out


def choose(
    scores: list[dict[str, float]], fraction: float, strategy: str, seed: int, labels: np.ndarray | None = None
) -> list[int]:
    """Indices of the kept conversations, in input order."""
    n = len(scores)
    k = max(1, round(fraction * n))
    if strategy == "random":
        idx = np.random.default_rng(seed).permutation(n)[:k].tolist()
    elif strategy == "s2l":
        assert labels is not None
        idx = balanced(labels, k, seed)
    elif strategy == "ifd":
        ifd = np.array([s["ifd"] for s in scores])
        useful = np.flatnonzero(ifd < 1.0)  # the instruction helps
        idx = useful[np.argsort(-ifd[useful], kind="stable")][:k].tolist()
    else:
        nll = np.array([s["nll_given"] for s in scores])
        order = np.argsort(nll, kind="stable")
        lo = {"low": 0, "medium": (n - k) // 2, "high": n - k}[strategy]
        idx = order[lo : lo + k].tolist()
    return sorted(int(i) for i in idx)


def select_conversations(
    data: Path,
    source: str | None,
    out: Path,
    fraction: float,
    method: str = "perplexity",
    strategy: str | None = None,
    seed: int = 0,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    clusters: int | None = None,
) -> dict:
    rule = check_method(method, strategy, fraction, clusters)
    if out.suffix != ".jsonl":
        raise SlmError(f"--out {out}: name a .jsonl file for the kept conversations")
    if rule != "random" and not source:
        raise SlmError(f"--method {method} needs a reference model: --model RUN")
    if rule == "s2l":
        checkpoints_of(str(source))
    refuse_existing(out, force)
    report = ReadReport()
    records = read_records(data, report)
    convs = [m for _, m in records]
    labels = None
    extra: dict = {}
    if rule == "random":
        scores: list[dict] = [{} for _ in convs]
    elif rule == "s2l":
        from sklearn.cluster import KMeans

        traj = trajectories(str(source), convs, progress=progress)
        k = min(clusters or max(2, min(50, len(convs) // 20)), len(convs))
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(traj)
        scores = [
            {"trajectory": [round(float(x), 5) for x in t], "cluster": int(c)}
            for t, c in zip(traj, labels, strict=True)
        ]
        extra = {"clusters": k, "checkpoints": traj.shape[1]}
    else:
        scores = conversation_scores(str(source), convs, progress=progress, alone=rule == "ifd")
    kept = choose(scores, fraction, rule, seed, labels)
    keep = set(kept)
    atomic_write_text(out, "".join(records[i][0] + "\n" for i in kept))
    rows = [{"index": i, "kept": i in keep, **s} for i, s in enumerate(scores)]
    atomic_write_text(out.with_suffix(".scores.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "input": str(data),
        "reference": source,
        "method": method,
        "strategy": rule,
        "fraction": fraction,
        "seed": seed,
        "read": report.as_dict(),
        "conversations": len(convs),
        "kept": len(kept),
        **extra,
        "mean_ifd_kept": _mean([scores[i].get("ifd") for i in kept]),
        "mean_ifd_all": _mean([s.get("ifd") for s in scores]),
    }
    atomic_write_text(out.with_suffix(".summary.json"), json.dumps(summary, indent=2) + "\n")
    _report(rows, summary, out.with_suffix(".html"))
    return summary


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _report(rows: list[dict], summary: dict, path: Path) -> None:
    """What was kept, on the scores that chose it: a histogram (ifd, perplexity), clusters and their mean
    trajectories (s2l); nothing to plot for a random subset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slm.report.html import CSS, html_table, svg

    figs = []
    rule = summary["strategy"]
    if rule == "s2l":
        labels = np.array([r["cluster"] for r in rows])
        kept = np.array([r["kept"] for r in rows])
        ids = sorted(np.unique(labels), key=lambda c: -(labels == c).sum())
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.bar(range(len(ids)), [(labels == c).sum() for c in ids], color="#bbb", label="all")
        ax.bar(range(len(ids)), [(kept & (labels == c)).sum() for c in ids], color="#3465a4", label="kept")
        ax.set_xlabel("cluster (largest first)")
        ax.set_ylabel("conversations")
        ax.legend(fontsize=8)
        figs.append(fig)
        fig, ax = plt.subplots(figsize=(7, 3.5))
        traj = np.array([r["trajectory"] for r in rows])
        for c in ids[:12]:
            ax.plot(traj[labels == c].mean(axis=0), lw=1)
        ax.set_xlabel("reference checkpoint")
        ax.set_ylabel("mean answer loss (nats)")
        ax.set_title("mean loss trajectory of the 12 largest clusters")
        figs.append(fig)
    elif rule != "random":
        key = "ifd" if rule == "ifd" else "nll_given"
        vals = np.array([r[key] for r in rows])
        kept = np.array([r["kept"] for r in rows])
        finite = np.isfinite(vals)
        fig, ax = plt.subplots(figsize=(7, 3.5))
        bins = np.linspace(vals[finite].min(), vals[finite].max(), 40) if finite.any() else 10
        ax.hist(vals[finite], bins=bins, color="#bbb", label="all")
        ax.hist(vals[finite & kept], bins=bins, color="#3465a4", label="kept")
        ax.set_xlabel("IFD: answer loss with the instruction / alone" if key == "ifd" else "answer loss (nats)")
        ax.set_ylabel("conversations")
        ax.legend(fontsize=8)
        figs.append(fig)
    table = html_table(["field", "value"], [[k, v] for k, v in summary.items() if not isinstance(v, dict)])
    body = "".join(svg(f) for f in figs)
    page = f"<!doctype html><html><head><meta charset=utf-8><title>slm select</title><style>{CSS}</style></head>"
    atomic_write_text(path, page + f"<body><h1>slm select: {rule}</h1>{body}{table}</body></html>\n")
