"""Turn a recipe into what the training loop needs: a tokenizer and token shards inside the run folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tokenizers import Tokenizer

from slm.config import Config
from slm.data.mixture import MixtureShards, is_corpus, natural_weights
from slm.data.shards import Shards, prepare_shards
from slm.data.text import ReadStats, read_documents, split_inputs
from slm.errors import SlmError
from slm.run import Run, atomic_write_text
from slm.tokenizer import load_tokenizer, train_tokenizer


def train_tokenizer_from_inputs(cfg: Config) -> Tokenizer:
    stats = ReadStats()
    files, _ = split_inputs(cfg.data.inputs, cfg.data.val_inputs, stats)
    t = cfg.tokenizer
    budget, used, docs = t.sample_mb * 1e6, 0, []
    for doc in read_documents(files, stats):
        docs.append(doc)
        used += len(doc)
        if used >= budget:
            break
    if not docs:
        raise SlmError(f"no text found in {cfg.data.inputs}: every file was empty or binary")
    return train_tokenizer(docs, t.vocab_size or 4096, t.min_frequency, t.eos_token, t.chat_tokens)


def prepare_run(cfg: Config, run: Run, log: Callable[[str], None] = print) -> tuple[Tokenizer, Shards]:
    """Tokenizer first (reuse, load, or train), then shards (reuse, or tokenize the inputs)."""
    run.path.mkdir(parents=True, exist_ok=True)
    if run.tokenizer_path.exists():
        tok = load_tokenizer(run.tokenizer_path)
    else:
        if cfg.tokenizer.path:
            tok = load_tokenizer(cfg.tokenizer.path)
        elif cfg.data.shards:
            tok = load_tokenizer(Path(cfg.data.shards) / "tokenizer.json")
        else:
            log(f"training a byte-level BPE tokenizer (vocab {cfg.tokenizer.vocab_size or 4096}) on {cfg.data.inputs}")
            tok = train_tokenizer_from_inputs(cfg)
        atomic_write_text(run.tokenizer_path, tok.to_str(pretty=True))
    corpus = bool(cfg.data.shards) and is_corpus(Path(cfg.data.shards))
    if cfg.data.mixture or corpus:
        if not corpus:
            where = cfg.data.shards or "not set"
            raise SlmError(f"data.mixture needs data.shards = a corpus folder of per-domain shards ({where})")
        # No mixture given: every training token of the corpus is equally likely, its natural mixture.
        mixture = cfg.data.mixture or natural_weights(Path(cfg.data.shards))
        shards = MixtureShards(Path(cfg.data.shards), mixture, cfg.data.val_domains, log)
    elif cfg.data.shards:
        shards = Shards.open(cfg.data.shards)
    elif (run.data_dir / "manifest.json").exists():
        shards = Shards.open(run.data_dir)
    else:
        log(f"tokenizing {cfg.data.inputs} into {run.data_dir}")
        manifest = prepare_shards(
            tok,
            cfg.data.inputs,
            run.data_dir,
            cfg.data.val_inputs,
            cfg.data.val_fraction,
            cfg.tokenizer.eos_token,
        )
        for note in manifest["notes"]:
            log(f"note: {note}")
        shards = Shards.open(run.data_dir)
    shards.check_tokenizer(tok)
    return tok, shards


def write_tokenizer(inputs: list[str], out: Path, vocab_size: int, min_frequency: int, force: bool) -> Tokenizer:
    """`slm tokenizer train`: a byte-level BPE trained on text files, written to `out`."""
    from slm.config import load_config
    from slm.run import refuse_existing

    refuse_existing(out, force)
    cfg = load_config(
        None,
        [
            f"data.inputs={json.dumps(inputs)}",
            f"tokenizer.vocab_size={vocab_size}",
            f"tokenizer.min_frequency={min_frequency}",
        ],
    )
    tok = train_tokenizer_from_inputs(cfg)
    atomic_write_text(out, tok.to_str(pretty=True))
    return tok
