"""llama.cpp runs slm's GGUF export and decodes greedily exactly as slm does. `make test-slow` builds
llama-cpp-python from source first (about 6 minutes on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from slm.export.gguf import export_gguf
from slm.model.load import load_model
from slm.run import Run
from slm.train.loop import train

from .conftest import greedy_ids


@pytest.mark.slow
@pytest.mark.parametrize("qtype", ["f32", "f16"])
def test_llama_cpp_greedy_matches_slm(tiny_cfg, tmp_path: Path, qtype: str):
    import llama_cpp

    train(tiny_cfg, Run(tmp_path / "run"), console=Console(quiet=True), progress=False)
    path = export_gguf(tmp_path / "run", tmp_path / f"m_{qtype}.gguf", qtype)
    loaded = load_model(tmp_path / "run")
    model, tok, cfg = loaded.model, loaded.tokenizer, loaded.config
    prompt = tok.encode("HAMLET.\nTo be").ids
    new = 12
    ours = greedy_ids(model, tok, prompt, new)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=cfg.model.max_seq_len, n_threads=2, verbose=False)
    theirs = []
    for t in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0):
        theirs.append(t)
        if len(theirs) == new:
            break
    if qtype == "f32":
        assert theirs == ours
    else:  # f16 weights may flip a near-tie late in the sequence, never the first tokens
        assert theirs[:4] == ours[:4]


@pytest.mark.slow
@pytest.mark.parametrize("qtype", ["q4_0", "q4_1"])
def test_llama_cpp_runs_the_4_bit_export(tmp_path: Path, qtype: str):
    """SmolLM2 exported at 4 bits: llama.cpp loads it and decodes what slm decodes from the same file."""
    import llama_cpp

    from slm.model.imports import import_model
    from slm.model.load import packaged_gguf

    import_model(packaged_gguf(), tmp_path / "smol")
    path = export_gguf(tmp_path / "smol", tmp_path / f"smol_{qtype}.gguf", qtype)
    loaded = load_model(path)  # slm reads its own 4-bit file back (dequantised)
    prompt = loaded.tokenizer.encode("The capital of France is").ids
    ours = greedy_ids(loaded.model, loaded.tokenizer, prompt, 8)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)
    theirs = []
    for t in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0):
        theirs.append(t)
        if len(theirs) == 8:
            break
    # llama.cpp rounds activations to 8 bits for 4-bit products, which may flip a near-tie late on
    assert theirs[:3] == ours[:3]
