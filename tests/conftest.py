from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from slm.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def environment_as_it_was():
    """slm commands run in a test's process set OMP_NUM_THREADS (executor.default_torch_threads); the tests after
    them, and the processes those start, get the environment as it was."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


def make_corpus(folder: Path, chars: int = 12000) -> Path:
    """Three small Shakespeare excerpts as separate documents in folder/corpus, plus folder/heldout.txt."""
    d = folder / "corpus"
    d.mkdir()
    for name in ("hamlet", "tempest", "sonnets"):
        text = (REPO / "data" / "shakespeare" / f"{name}.txt").read_text()
        (d / f"{name}.txt").write_text(text[:chars])
    (folder / "heldout.txt").write_text((REPO / "data" / "shakespeare" / "macbeth.txt").read_text()[:6000])
    return d


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return make_corpus(tmp_path)


def tiny_overrides(corpus: Path, out: Path) -> list[str]:
    return [
        f'data.inputs=["{corpus}/*.txt"]',
        f'data.val_inputs=["{corpus.parent / "heldout.txt"}"]',
        "tokenizer.vocab_size=300",
        "tokenizer.min_frequency=1",
        "model.n_layer=2",
        "model.n_head=2",
        "model.n_kv_head=1",
        "model.d_model=32",
        "model.max_seq_len=32",
        "train.batch_size=4",
        "train.max_steps=12",
        "train.warmup_steps=2",
        "train.eval_every=6",
        "train.eval_tokens=512",
        "train.ckpt_every=6",
        "train.log_every=1",
        "train.threads=1",
        "train.dtype='float32'",
        "train.lr=1e-2",
        f"out_dir='{out}'",
        "name='tiny'",
        "sample.max_tokens=8",
    ]


@pytest.fixture
def tiny_cfg(corpus: Path, tmp_path: Path) -> Config:
    return load_config(None, tiny_overrides(corpus, tmp_path / "runs"))


def greedy_ids(model, tok, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens from the generation engine (no end-of-text stop), for comparisons with other tools."""
    from slm.config import SamplingParams
    from slm.infer.engine import Engine

    with Engine(model, tok) as engine:
        return engine.run([prompt], SamplingParams(max_tokens=n, temperature=0))[0].tokens


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory) -> Path:
    """A 0.1M-parameter chat model (RUN/sft) that answers one-digit sums in the reply format ("Answer: N"),
    and the tasks it was trained on (RUN/t): a teacher and a policy for the synth and RL tests."""
    import json

    from rich.console import Console

    from slm.data.problem_sets import make_tasks
    from slm.run import Run
    from slm.sft.objective import SftObjective
    from slm.tokenizer import train_tokenizer
    from slm.train.loop import train

    tmp = tmp_path_factory.mktemp("rl")
    make_tasks("arithmetic", tmp / "t", train=60, test=10, level=1, style="answer", ops="+")
    rows = [json.loads(x) for x in (tmp / "t/train.jsonl").read_text().splitlines()]
    tok = train_tokenizer([m["content"] for r in rows for m in r["messages"]] * 4, vocab_size=300, chat_tokens=True)
    tok.save(str(tmp / "tok.json"))
    cfg = load_config(
        None,
        [
            f"tokenizer.path='{tmp / 'tok.json'}'",
            f"sft.data=['{tmp / 't/train.jsonl'}']",
            "sft.template='chatml'",
            "sft.batching='packed'",
            "model.n_layer=2",
            "model.n_head=4",
            "model.d_model=64",
            "model.max_seq_len=64",
            "train.seq_len=64",
            "train.batch_size=16",
            "train.max_steps=120",
            "train.lr=3e-3",
            "train.warmup_steps=10",
            "train.eval_every=1000",
            "train.ckpt_every=1000",
            "train.threads=1",
            "train.dtype='float32'",
        ],
    )
    train(cfg, Run(tmp / "sft"), SftObjective(cfg), console=Console(quiet=True), progress=False)
    return tmp
