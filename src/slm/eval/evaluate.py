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
from slm.eval.harness import score_generate, score_multiple_choice
from slm.eval.tasks import load_task
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
) -> dict[str, Any]:
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
    for task in loaded_tasks:
        t0 = time.perf_counter()
        with progress(console, task.spec.name, len(task.items), ["{rate} items/s"], transient=True, rate="-") as bar:

            def tick(bar=bar, t0=t0) -> None:
                done = bar.completed + 1
                bar.update(completed=done, rate=f"{done / (time.perf_counter() - t0):.1f}")

            if task.spec.type == "multiple_choice":
                r = score_multiple_choice(model, tok, task, tick)
            else:
                fmt = None
                if task.spec.chat:  # refused for a base model, with the reason
                    fmt = chat_format(tok, loaded.chat_template, None, loaded.config.tokenizer.eos_token)
                stops = end_ids(tok, loaded.config.tokenizer.eos_token)
                r = score_generate(model, tok, task, stops, tick, chat=fmt)
        r["num_fewshot"] = task.spec.num_fewshot
        r["items_per_sec"] = len(task.items) / (time.perf_counter() - t0)
        results["tasks"][task.spec.name] = r
    # The document separator is the natural start token; chat models' eos (<|im_end|>) is not.
    sep = tok.token_to_id("<|endoftext|>")
    start = loaded.eos_id if sep is None else sep
    for t in texts:
        results["texts"][t] = text_bpb(model, tok, texts_read[t], start, window)
    console.print(results_table(results))
    path = out or (loaded.run / "eval.json" if loaded.run else None)
    if path:
        try:
            atomic_write_text(path, json.dumps(results, indent=2) + "\n")
        except OSError as e:
            raise SlmError(f"cannot write {path} ({e.strerror or e}); the results are printed above") from None
        results["written_to"] = str(path)
    return results


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
    for name, r in results["texts"].items():
        table.add_row(Path(name).name, "bits-per-byte", f"{r['bpb']:.4f}", "", f"{r['bytes']:,} B")
    return table
