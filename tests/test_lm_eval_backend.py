"""slm as a model of lm-evaluation-harness: a local task through lm-eval with model "slm" on an slm run scores
what lm-eval's own `hf` model scores on the transformers export of the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from slm.export.hf import export_hf
from slm.run import Run
from slm.train.loop import train

TASK = """task: slm_local_{kind}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {kind}
doc_to_text: "{{{{question}}}}"
{extra}
metric_list:
  - metric: {metric}
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path, Path]:
    from slm.config import load_config

    from .conftest import REPO, tiny_overrides

    w = tmp_path_factory.mktemp("lmeval")
    corpus = w / "corpus"
    corpus.mkdir()
    for name in ("hamlet", "tempest", "sonnets"):
        (corpus / f"{name}.txt").write_text((REPO / "data/shakespeare" / f"{name}.txt").read_text()[:12000])
    (w / "heldout.txt").write_text((REPO / "data/shakespeare/macbeth.txt").read_text()[:6000])
    cfg = load_config(None, [*tiny_overrides(corpus, w / "runs"), "train.max_steps=30", "model.max_seq_len=64"])
    train(cfg, Run(w / "run"), console=Console(quiet=True), progress=False)
    export_hf(w / "run", w / "hf")
    rows = [
        {"question": "HAMLET. To be, or not to", "choices": [" be", " sleep", " the"], "answer": 0},
        {"question": "Enter the", "choices": [" King", " Queen and", " ghost of Hamlet"], "answer": 1},
        {"question": "O, what a", "choices": [" rogue", " noble mind", " piece"], "answer": 2},
        {"question": "", "choices": ["The", "And"], "answer": 0},
    ]
    data = w / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = w / "tasks"
    tasks.mkdir()
    (tasks / "mc.yaml").write_text(
        TASK.format(
            kind="multiple_choice",
            data=data,
            extra='doc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"',
            metric="acc",
        )
    )
    text = w / "text.jsonl"
    text.write_text(
        "".join(
            json.dumps({"question": (REPO / "data/shakespeare/macbeth.txt").read_text()[i : i + 600]}) + "\n"
            for i in (0, 5000)
        )
    )
    (tasks / "ppl.yaml").write_text(
        TASK.format(kind="loglikelihood_rolling", data=text, extra='doc_to_target: ""', metric="word_perplexity")
    )
    (tasks / "gen.yaml").write_text(
        TASK.format(
            kind="generate_until",
            data=data,
            extra='doc_to_target: "{{answer}}"\n'
            'generation_kwargs:\n  until: ["\\n\\n"]\n  max_gen_toks: 12\n  do_sample: false',
            metric="exact_match",
        )
    )
    return w / "run", w / "hf", tasks


def lm_eval(model: str, args: str, tasks: Path, out: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # Our model through the console script a user runs; lm-eval's own `hf` model through its module.
    script = Path(sys.executable).parent / "slm-lm-eval"
    cmd = [str(script)] if model == "slm" else [sys.executable, "-m", "slm.eval.lm_eval_backend"]
    cmd += [
        "--model",
        model,
        "--model_args",
        args,
        "--tasks",
        "slm_local_multiple_choice,slm_local_loglikelihood_rolling,slm_local_generate_until",
    ]
    cmd += ["--include_path", str(tasks), "--output_path", str(out), "--log_samples", "--batch_size", "4"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    samples = {}
    for f in out.rglob("samples_*.jsonl"):
        task = f.name.split("samples_")[1].rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in f.read_text().splitlines()]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    return {"results": results, "samples": samples}


def test_slm_backend_scores_like_lm_evals_hf_model(models, tmp_path: Path):
    run, hf, tasks = models
    ours = lm_eval("slm", f"pretrained={run}", tasks, tmp_path / "slm")
    theirs = lm_eval("hf", f"pretrained={hf},dtype=float32", tasks, tmp_path / "hf")
    mc = "slm_local_multiple_choice"
    assert ours["results"][mc]["acc,none"] == theirs["results"][mc]["acc,none"]
    for a, b in zip(ours["samples"][mc], theirs["samples"][mc], strict=True):
        la = [float(x[0][0]) for x in a["resps"]]
        lb = [float(x[0][0]) for x in b["resps"]]
        assert la == pytest.approx(lb, abs=1e-3)  # the same log-likelihood of every choice
    ppl = "slm_local_loglikelihood_rolling"
    wa, wb = ours["results"][ppl]["word_perplexity,none"], theirs["results"][ppl]["word_perplexity,none"]
    assert wa == pytest.approx(wb, rel=1e-3)
    gen = "slm_local_generate_until"
    # The empty question is left out: in a left-padded batch, transformers attends to padding alone.
    ga = [a["resps"][0][0] for a in ours["samples"][gen] if a["doc"]["question"]]
    gb = [b["resps"][0][0] for b in theirs["samples"][gen] if b["doc"]["question"]]
    assert len(ga) == 3 and ga == gb and all(ga)  # greedy generation through the engine writes what transformers writes
