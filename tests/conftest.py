from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slm.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


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
