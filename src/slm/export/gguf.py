"""Export to GGUF (llama.cpp's format) with the `gguf` package: f32, f16, q8_0, q4_0 or q4_1 (quantised by
the `gguf` package's own block quantisers; 1-D tensors and rows not a multiple of 32 stay float).

Llama-shaped models are written as arch `llama`, QK-norm models as `qwen3`. llama.cpp's llama graph
applies RoPE to interleaved pairs while HF checkpoints (and slm) rotate halves, so q and k rows are
permuted on the way out, as llama.cpp's own converter does; qwen3 uses the half layout and needs none.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from slm.errors import SlmError
from slm.model.load import load_model
from slm.run import refuse_existing

TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1")


def _rope_permute(w: np.ndarray, heads: int) -> np.ndarray:
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer_fields(tok) -> tuple[list[str], list[int], list[str]]:
    spec = json.loads(tok.to_str())
    if spec.get("model", {}).get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise SlmError("GGUF export supports byte-level BPE tokenizers (as slm trains); this one is not")
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = [""] * (max(vocab.values()) + 1)
    for piece, i in vocab.items():
        tokens[i] = piece
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    types = [3 if i in special else 1 for i in range(len(tokens))]  # 1 normal, 3 control
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    return tokens, types, merges


def export_gguf(src: str | Path, out: str | Path, qtype: str = "f16", force: bool = False) -> Path:
    try:
        import gguf
    except ImportError:
        raise SlmError("GGUF export needs the gguf package: pip install 'slm[interop]'") from None

    out = Path(out)
    if qtype not in TYPES:
        raise SlmError(f"GGUF type {qtype!r} is not supported; supported: {', '.join(TYPES)}")
    refuse_existing(out, force)
    loaded = load_model(src)
    model, tok, cfg = loaded.model, loaded.tokenizer, loaded.config
    m = cfg.model
    arch = "qwen3" if m.qk_norm else "llama"
    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
        "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    }[qtype]
    quant = {
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
        "q4_0": gguf.GGMLQuantizationType.Q4_0,
        "q4_1": gguf.GGMLQuantizationType.Q4_1,
    }.get(qtype)
    tokens, types, merges = _tokenizer_fields(tok)
    eos = tok.token_to_id(cfg.tokenizer.eos_token)
    tmp = out.with_name(f".{out.name}.tmp")
    w = gguf.GGUFWriter(str(tmp), arch=arch)
    w.add_name(Path(src).name)
    w.add_context_length(m.max_seq_len)
    w.add_embedding_length(m.d_model)
    w.add_block_count(m.n_layer)
    w.add_feed_forward_length(m.ff_dim)
    w.add_head_count(m.n_head)
    w.add_head_count_kv(m.kv_heads)
    w.add_key_length(m.head_dim)
    w.add_value_length(m.head_dim)
    w.add_rope_dimension_count(m.head_dim)
    w.add_rope_freq_base(m.rope_theta)
    w.add_layer_norm_rms_eps(m.norm_eps)
    w.add_vocab_size(model.vocab_size)
    w.add_file_type(ftype)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if eos is not None:
        w.add_bos_token_id(eos)
        w.add_eos_token_id(eos)
    w.add_add_bos_token(False)
    if loaded.chat_template:
        w.add_chat_template(loaded.chat_template)

    def put(name: str, t: torch.Tensor | np.ndarray) -> None:
        a = t if isinstance(t, np.ndarray) else t.detach().float().cpu().numpy()
        if a.ndim == 1 or qtype == "f32":
            w.add_tensor(name, a.astype(np.float32))
        elif qtype == "f16" or a.shape[-1] % 32:
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(a, quant), raw_dtype=quant)

    put("token_embd.weight", model.embed_tokens.weight)
    for i, b in enumerate(model.layers):
        q, k = b.attn.q_proj.weight.detach().float().numpy(), b.attn.k_proj.weight.detach().float().numpy()
        if arch == "llama":
            q, k = _rope_permute(q, m.n_head), _rope_permute(k, m.kv_heads)
        put(f"blk.{i}.attn_norm.weight", b.attn_norm.weight)
        put(f"blk.{i}.attn_q.weight", q)
        put(f"blk.{i}.attn_k.weight", k)
        put(f"blk.{i}.attn_v.weight", b.attn.v_proj.weight)
        put(f"blk.{i}.attn_output.weight", b.attn.o_proj.weight)
        if b.attn.q_norm is not None and b.attn.k_norm is not None:
            put(f"blk.{i}.attn_q_norm.weight", b.attn.q_norm.weight)
            put(f"blk.{i}.attn_k_norm.weight", b.attn.k_norm.weight)
        put(f"blk.{i}.ffn_norm.weight", b.mlp_norm.weight)
        put(f"blk.{i}.ffn_gate.weight", b.mlp.gate_proj.weight)
        put(f"blk.{i}.ffn_up.weight", b.mlp.up_proj.weight)
        put(f"blk.{i}.ffn_down.weight", b.mlp.down_proj.weight)
    put("output_norm.weight", model.norm.weight)
    if not m.tie_embeddings:
        put("output.weight", model.lm_head.weight)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
