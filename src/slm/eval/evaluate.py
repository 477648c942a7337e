"""`slm eval`: one entry point for anything the loader takes (slm runs, transformers folders, GGUF files,
package:NAME). Every model becomes slm's own, so every model is scored by the same code."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from slm.errors import SlmError
from slm.eval.harness import paired_difference, score_generate, score_multiple_choice
from slm.eval.tasks import Task, load_task
from slm.infer.template import chat_format
from slm.model.load import load_model
from slm.model.quant import calibration_file
from slm.model.score import text_bpb
from slm.progress import progress
from slm.run import atomic_write_text
from slm.tokenizer import end_ids


def evaluate(
    source: str | Path,
    tasks: list[str],
    texts: list[str],
    limit: int | None = None,
    out: Path | None = None,
    console: Console | None = None,
    window: int | None = None,
    dtype: str = "float32",
    num_fewshot: int | None = None,
    quantize: str | None = None,
    calibration: str | Path | None = None,
    samples: Path | None = None,
    compare: Path | None = None,
) -> dict[str, Any]:
    """Score `source` on tasks and texts. samples: write every item's record (prompt, reply or choice
    log-likelihoods, right or not) to this JSONL file. compare: a samples file of an earlier evaluation on
    the same items; each task then also reports the accuracy difference with its paired standard error."""
    console = console or Console()
    if calibration is not None:
        calibration_file(calibration)
    if not tasks and not texts:
        raise SlmError("nothing to evaluate: pass --tasks NAME[,NAME] and/or --text FILE")
    loaded_tasks = [load_task(t, limit, num_fewshot) for t in tasks]  # parse every task file before the model loads
    texts_read = {}
    for t in texts:  # read and checked before the model loads
        if not Path(t).is_file():
            raise SlmError(f"text file {t} not found")
        raw = Path(t).read_bytes()
        if b"\x00" in raw[:8192]:
            raise SlmError(f"text file {t} is binary (it holds NUL bytes); pass a text file to score")
        texts_read[t] = raw.decode("utf-8", errors="replace")
        if not texts_read[t].strip():
            raise SlmError(f"text file {t} is empty; pass a file with text to score")
    if dtype not in ("float32", "bfloat16"):
        raise SlmError(f"--dtype {dtype} is not supported; use float32 or bfloat16")
    if out is not None and out.is_dir():
        raise SlmError(f"--out {out} is a folder; name the results file, e.g. {out / 'eval.json'}")
    if samples is not None and samples.is_dir():
        raise SlmError(f"--samples {samples} is a folder; name the file, e.g. {samples / 'samples.jsonl'}")
    earlier = read_compare(compare, loaded_tasks) if compare is not None else {}
    results: dict[str, Any] = {
        "model": str(source),
        "tasks": {},
        "texts": {},
        "limit": limit,
        "window": window,
        "dtype": dtype,
        "quantize": quantize,
        "calibration": str(calibration) if calibration is not None else None,
    }
    # Weights cast once for bfloat16 (autocast would re-cast them at every matmul); norms and
    # log-probabilities are still computed in fp32.
    loaded = load_model(
        source, dtype=torch.bfloat16 if dtype == "bfloat16" else None, quantize=quantize, calibration=calibration
    )
    model, tok = loaded.model, loaded.tokenizer
    records: list[dict] = []
    for task in loaded_tasks:
        t0 = time.perf_counter()
        mine: list[dict] = []
        with progress(console, task.spec.name, len(task.items), ["{rate} items/s"], transient=True, rate="-") as bar:

            def tick(bar=bar, t0=t0) -> None:
                done = bar.completed + 1
                bar.update(completed=done, rate=f"{done / (time.perf_counter() - t0):.1f}")

            if task.spec.type == "multiple_choice":
                r = score_multiple_choice(model, tok, task, tick, samples=mine)
            else:
                fmt = None
                if task.spec.chat:  # refused for a base model, with the reason
                    fmt = chat_format(tok, loaded.chat_template, None, loaded.config.tokenizer.eos_token)
                stops = end_ids(tok, loaded.config.tokenizer.eos_token)
                r = score_generate(model, tok, task, stops, tick, chat=fmt, samples=mine)
        r["num_fewshot"] = task.spec.num_fewshot
        if task.spec.name in earlier:
            paired = paired_difference([x["correct"] for x in mine], earlier[task.spec.name])
            r["compared"] = {"against": str(compare), **paired}
        records += mine
        r["items_per_sec"] = len(task.items) / (time.perf_counter() - t0)
        results["tasks"][task.spec.name] = r
    # The document separator is the natural start token; chat models' eos (<|im_end|>) is not.
    sep = tok.token_to_id("<|endoftext|>")
    start = loaded.eos_id if sep is None else sep
    for t in texts:
        results["texts"][t] = text_bpb(model, tok, texts_read[t], start, window)
    console.print(results_table(results))
    if samples is not None:
        try:
            atomic_write_text(samples, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in records))
        except OSError as e:
            raise SlmError(f"cannot write --samples {samples} ({e.strerror or e})") from None
        results["samples"] = str(samples)
    path = out or (loaded.run / "eval.json" if loaded.run else None)
    if path:
        try:
            atomic_write_text(path, json.dumps(results, indent=2) + "\n")
        except OSError as e:
            raise SlmError(f"cannot write {path} ({e.strerror or e}); the results are printed above") from None
        results["written_to"] = str(path)
    return results


def read_samples(path: Path) -> dict[str, list[dict]]:
    """A file `slm eval --samples` wrote: each task's records in item order; a line that is not one of its
    records is refused with its number."""
    by_task: dict[str, list[dict]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if (
            not isinstance(rec, dict)
            or not {"task", "index", "prompt", "correct"} <= rec.keys()
            or not isinstance(rec["index"], int)
        ):
            raise SlmError(f"{path}, line {n}: not a record of `slm eval --samples`")
        by_task.setdefault(str(rec["task"]), []).append(rec)
    return {name: sorted(recs, key=lambda r: r["index"]) for name, recs in by_task.items()}


def read_compare(path: Path, tasks: list[Task]) -> dict[str, list[bool]]:
    """Per task, the right/wrong of each item in an earlier `--samples` file, checked to be the same items
    (same count, same prompts) as this evaluation's, before any model loads."""
    if not path.is_file():
        raise SlmError(f"--compare {path} not found; pass a file written by `slm eval --samples`")
    try:
        by_task = read_samples(path)
    except SlmError as e:
        raise SlmError(f"--compare {e}") from None
    out = {}
    for task in tasks:
        name = task.spec.name
        recs = by_task.get(name, [])
        if not recs:
            raise SlmError(
                f"--compare {path} has no items of task {name}; evaluate the other model on it with --samples"
            )
        if len(recs) != len(task.items):
            raise SlmError(
                f"--compare {path} has {len(recs)} items of task {name}, this evaluation {len(task.items)}: "
                "score the same items (the same --limit)"
            )
        for i, (rec, item) in enumerate(zip(recs, task.items, strict=True)):
            if rec["prompt"] != item.prompt:
                raise SlmError(
                    f"--compare {path}: item {i + 1} of task {name} has another prompt; score the same items"
                )
        out[name] = [bool(r["correct"]) for r in recs]
    return out


def results_table(results: dict[str, Any]) -> Table:
    table = Table(title=f"evaluation of {results['model']}")
    for col in ("task / text", "metric", "value", "± stderr", "n"):
        table.add_column(col, justify="left" if col in ("task / text", "metric") else "right")
    for name, r in results["tasks"].items():
        label = f"{name} ({r['num_fewshot']}-shot)" if r.get("num_fewshot") else name
        for metric in ("acc", "acc_norm", "exact_match"):
            if metric in r:
                err = r.get(f"{metric}_stderr")
                table.add_row(label, metric, f"{r[metric]:.4f}", "-" if err is None else f"{err:.4f}", str(r["n"]))
        if "compared" in r:
            c = r["compared"]
            metric = (
                f"difference vs {Path(c['against']).name} "
                f"(paired; right only here {c['only_a']}, only there {c['only_b']})"
            )
            table.add_row(label, metric, f"{c['difference']:+.4f}", f"{c['difference_stderr']:.4f}", str(c["n"]))
    for name, r in results["texts"].items():
        table.add_row(Path(name).name, "bits-per-byte", f"{r['bpb']:.4f}", "", f"{r['bytes']:,} B")
    return table
