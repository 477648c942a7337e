from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from rich.console import Console

from slm.config import Config
from slm.errors import SlmError
from slm.export.hf import export_hf
from slm.model.imports import import_model
from slm.model.load import load_model
from slm.run import Run
from slm.train.loop import train

from .conftest import greedy_ids


def trained(cfg: Config, path: Path, qk_norm: bool) -> Path:
    cfg = cfg.model_copy(deep=True)
    cfg.model.qk_norm = qk_norm
    cfg.model.tie_embeddings = not qk_norm  # cover both tied and untied heads
    train(cfg, Run(path), console=Console(quiet=True), progress=False)
    return path


@pytest.mark.parametrize("qk_norm", [False, True])
def test_transformers_loads_export_with_same_logits_and_greedy(tiny_cfg, tmp_path: Path, qk_norm: bool):
    run = trained(tiny_cfg, tmp_path / "run", qk_norm)
    out = export_hf(run, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == ("Qwen3ForCausalLM" if qk_norm else "LlamaForCausalLM")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    loaded = load_model(run)
    model, tok = loaded.model, loaded.tokenizer
    text = "HAMLET. To be, or not to be"
    ids = tok.encode(text).ids
    assert hf_tok(text)["input_ids"] == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf(x).logits
    assert (ours - theirs).abs().max() < 1e-4
    new = 12
    ref = hf.generate(x, max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(ids) :]
    mine = greedy_ids(model, tok, ids, new)
    assert mine == ref.tolist()


def test_import_export_round_trip(tiny_cfg, tmp_path: Path):
    run = trained(tiny_cfg, tmp_path / "run", qk_norm=False)
    export_hf(run, tmp_path / "hf")
    import_model(tmp_path / "hf", tmp_path / "back")
    loaded = load_model(run)
    a, tok = loaded.model, loaded.tokenizer
    loaded = load_model(tmp_path / "back")
    b, tok_b, cfg_b = loaded.model, loaded.tokenizer, loaded.config
    assert tok_b.to_str() == tok.to_str()
    assert cfg_b.model.n_kv_head == tiny_cfg.model.n_kv_head
    x = torch.tensor([tok.encode("To be").ids])
    with torch.no_grad():
        assert torch.equal(a(x)[0], b(x)[0])
    export_hf(tmp_path / "back", tmp_path / "hf2")
    import_model(tmp_path / "hf2", tmp_path / "back2")
    with torch.no_grad():
        assert torch.equal(a(x)[0], load_model(tmp_path / "back2").model(x)[0])


def test_bad_sources_fail_clearly(tiny_cfg, tmp_path: Path):
    run = trained(tiny_cfg, tmp_path / "run", qk_norm=False)
    hf = export_hf(run, tmp_path / "hf")
    with pytest.raises(SlmError, match="exists; pass --force"):
        export_hf(run, hf)
    cfg = json.loads((hf / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (hf / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SlmError, match="GPT2LMHeadModel is not supported; supported: LlamaForCausalLM"):
        import_model(hf, tmp_path / "x")
    export_hf(run, hf, force=True)
    (hf / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(SlmError, match="corrupt or incomplete"):
        import_model(hf, tmp_path / "y")
    with pytest.raises(SlmError, match=r"nothing not found; pass an slm run .*a transformers model folder, a \.gguf"):
        import_model(tmp_path / "nothing", tmp_path / "z")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_gguf_export_reads_back_through_transformers(tiny_cfg, tmp_path: Path):
    from slm.export.gguf import export_gguf

    run = trained(tiny_cfg, tmp_path / "run", qk_norm=False)
    loaded = load_model(run)
    model, tok = loaded.model, loaded.tokenizer
    x = torch.tensor([tok.encode("HAMLET. To be, or not").ids])
    with torch.no_grad():
        ours, _ = model(x)
    for qtype, tol in (("f32", 1e-4), ("f16", 5e-2), ("q8_0", 0.5), ("q4_0", 0.5), ("q4_1", 0.5)):
        path = export_gguf(run, tmp_path / f"m_{qtype}.gguf", qtype)
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
        with torch.no_grad():
            theirs = hf.eval()(x).logits
        assert (ours - theirs).abs().max() < tol, qtype
    # The 4-bit files hold 4-bit blocks: the gguf package reads them back within one quantisation step.
    import gguf

    for qtype in ("q4_0", "q4_1"):
        reader = gguf.GGUFReader(str(tmp_path / f"m_{qtype}.gguf"))
        t = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
        assert t.tensor_type.name == qtype.upper()
        back = gguf.quants.dequantize(t.data, t.tensor_type).reshape(model.layers[0].mlp.up_proj.weight.shape)
        orig = model.layers[0].mlp.up_proj.weight.detach().numpy()
        step = np.abs(orig).reshape(-1, 32).max(axis=1) / (8 if qtype == "q4_0" else 7.5)
        assert (np.abs(back - orig).reshape(-1, 32).max(axis=1) <= step * 1.01).all(), qtype
    with pytest.raises(SlmError, match="not supported; supported: f32, f16, q8_0, q4_0, q4_1"):
        export_gguf(run, tmp_path / "x.gguf", "q4_k")
    with pytest.raises(SlmError, match="exists"):
        export_gguf(run, tmp_path / "m_f32.gguf", "f32")


def test_gguf_qwen3_export_tensors_and_metadata(tiny_cfg, tmp_path: Path):
    # transformers' GGUF reader ignores qwen3's attention.key_length, so read the file with gguf itself.
    import gguf

    from slm.export.gguf import export_gguf

    run = trained(tiny_cfg, tmp_path / "run", qk_norm=True)
    loaded = load_model(run)
    model, cfg = loaded.model, loaded.config
    reader = gguf.GGUFReader(export_gguf(run, tmp_path / "q.gguf", "f32"))
    fields = {f.name: f for f in reader.fields.values()}
    arch = bytes(fields["general.architecture"].parts[-1]).decode()
    assert arch == "qwen3"
    assert int(fields["qwen3.attention.key_length"].parts[-1][0]) == cfg.model.head_dim
    tensors = {t.name: t for t in reader.tensors}
    expect = {
        "blk.1.attn_q.weight": model.layers[1].attn.q_proj.weight,  # no RoPE permutation for qwen3
        "blk.0.attn_k_norm.weight": model.layers[0].attn.k_norm.weight,
        "output.weight": model.lm_head.weight,
    }
    for name, w in expect.items():
        got = torch.from_numpy(tensors[name].data.copy()).reshape(w.shape)
        assert torch.equal(got, w.detach()), name


def test_gguf_with_an_unsupported_quantisation_type_fails_clearly(tiny_cfg, tmp_path: Path):
    import gguf

    from slm.export.gguf import export_gguf

    run = trained(tiny_cfg, tmp_path / "run", qk_norm=False)
    path = export_gguf(run, tmp_path / "m.gguf", "q8_0")
    # Relabel the first Q8_0 tensor as Q8_1, a type with no dequantiser; its data stays where it was.
    reader = gguf.GGUFReader(path, "r+")
    t = next(t for t in reader.tensors if t.tensor_type == gguf.GGMLQuantizationType.Q8_0)
    t.field.parts[t.field.data[-2]][0] = gguf.GGMLQuantizationType.Q8_1
    del reader
    with pytest.raises(SlmError, match=r"m\.gguf: cannot load this GGUF \(.*Q8_1.*llama-quantize"):
        import_model(path, tmp_path / "imported")
    assert not (tmp_path / "imported").exists()


def test_the_loader_names_what_it_reads(tiny_cfg, tmp_path: Path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(SlmError, match=r"notes\.txt is not a model slm can load; pass an slm run .*package:NAME"):
        load_model(tmp_path / "notes.txt")
    with pytest.raises(SlmError, match="package no_such_pkg is not installed"):
        load_model("package:no_such_pkg")
    run = trained(tiny_cfg, tmp_path / "run", qk_norm=False)
    ckpt = Run(run).latest_checkpoint()
    assert load_model(ckpt).checkpoint == ckpt and load_model(run).run == run  # a run or one of its checkpoints
    hf = export_hf(run, tmp_path / "hf")
    (hf / "config.json").write_text("{ not json")
    with pytest.raises(SlmError, match=r"config\.json is damaged \(not valid JSON"):
        load_model(hf)
