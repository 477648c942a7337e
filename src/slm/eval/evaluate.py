"""`slm eval`: one entry point for slm runs, transformers folders and GGUF files.

Outside models are imported into a temporary slm run first, so every model is scored by the same code.
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from slm.errors import SlmError
from slm.eval.harness import score_generate, score_multiple_choice, text_bpb
from slm.eval.tasks import load_task
from slm.model.io import is_run, load_model, resolve_checkpoint
from slm.run import atomic_write_text
from slm.tokenizer import eos_id


def open_model(source: str | Path, stack: ExitStack):
    """(model, tokenizer, config, run folder or None) for any supported source."""
    src = Path(source)
    if is_run(src):
        model, tok, cfg, _ = load_model(src)
        return model, tok, cfg, resolve_checkpoint(src)[0].path
    from slm.export.imports import import_model

    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="slm-eval-")))
    import_model(src, tmp / "run")
    model, tok, cfg, _ = load_model(tmp / "run")
    return model, tok, cfg, None


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
) -> dict[str, Any]:
    console = console or Console()
    if not tasks and not texts:
        raise SlmError("nothing to evaluate: pass --tasks NAME[,NAME] and/or --text FILE")
    loaded = [load_task(t, limit, num_fewshot) for t in tasks]  # parse every task file before the model loads
    for t in texts:
        if not Path(t).is_file():
            raise SlmError(f"text file {t} not found")
    if dtype not in ("float32", "bfloat16"):
        raise SlmError(f"--dtype {dtype} is not supported; use float32 or bfloat16")
    results: dict[str, Any] = {
        "model": str(source),
        "tasks": {},
        "texts": {},
        "limit": limit,
        "window": window,
        "dtype": dtype,
    }
    with ExitStack() as stack:
        model, tok, cfg, run_dir = open_model(source, stack)
        eos = eos_id(tok, cfg.tokenizer.eos_token)
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} items/s"),
            TimeRemainingColumn(),
            console=console,
        )
        if dtype == "bfloat16":
            # Weights cast once (autocast would re-cast them at every matmul); norms and log-probabilities
            # are still computed in fp32.
            model = model.to(torch.bfloat16)
        with progress:
            for task in loaded:
                bar = progress.add_task(task.spec.name, total=len(task.items), rate="-")
                t0 = time.perf_counter()

                def tick(bar=bar, t0=t0) -> None:
                    done = progress.tasks[bar].completed + 1
                    progress.update(bar, completed=done, rate=f"{done / (time.perf_counter() - t0):.1f}")

                if task.spec.type == "multiple_choice":
                    r = score_multiple_choice(model, tok, task, tick)
                else:
                    r = score_generate(model, tok, task, eos, tick)
                r["num_fewshot"] = task.spec.num_fewshot
                r["items_per_sec"] = len(task.items) / (time.perf_counter() - t0)
                results["tasks"][task.spec.name] = r
            # The document separator is the natural start token; chat models' eos (<|im_end|>) is not.
            sep = tok.token_to_id("<|endoftext|>")
            start = eos if sep is None else sep
            for t in texts:
                text = Path(t).read_text(encoding="utf-8", errors="replace")
                results["texts"][t] = text_bpb(model, tok, text, start, window)
    path = out or (run_dir / "eval.json" if run_dir else None)
    if path:
        atomic_write_text(path, json.dumps(results, indent=2) + "\n")
        results["written_to"] = str(path)
    console.print(results_table(results))
    return results


def results_table(results: dict[str, Any]) -> Table:
    table = Table(title=f"evaluation of {results['model']}")
    for col in ("task / text", "metric", "value", "n"):
        table.add_column(col, justify="right" if col in ("value", "n") else "left")
    for name, r in results["tasks"].items():
        label = f"{name} ({r['num_fewshot']}-shot)" if r.get("num_fewshot") else name
        for metric in ("acc", "acc_norm", "exact_match"):
            if metric in r:
                table.add_row(label, metric, f"{r[metric]:.4f}", str(r["n"]))
    for name, r in results["texts"].items():
        table.add_row(Path(name).name, "bits-per-byte", f"{r['bpb']:.4f}", f"{r['bytes']:,} B")
    return table
