"""slm's model in `transformers`' terms (Llama, or Qwen3 when QK-norm is on), both ways.

slm's model is Llama operation for operation, so conversion is only renaming tensors and mapping config
fields: no weight is changed. The loader reads transformers folders and GGUF files through this; the
exporter writes them.
"""

from __future__ import annotations

from tokenizers import Tokenizer

from slm.config import ModelConfig
from slm.errors import SlmError

SUPPORTED = ("LlamaForCausalLM", "Qwen3ForCausalLM")

_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}
_TOP = {
    "embed_tokens.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_TOP_FROM_HF = {v: k for k, v in _TOP.items()}
_LAYER_FROM_HF = {v: k for k, v in _LAYER.items()}

# llama.cpp's tensor names (GGUF), per layer and at the top
GGUF_LAYER = {
    "attn_norm.weight": "attn_norm.weight",
    "attn.q_proj.weight": "attn_q.weight",
    "attn.k_proj.weight": "attn_k.weight",
    "attn.v_proj.weight": "attn_v.weight",
    "attn.o_proj.weight": "attn_output.weight",
    "attn.q_norm.weight": "attn_q_norm.weight",
    "attn.k_norm.weight": "attn_k_norm.weight",
    "mlp_norm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
GGUF_TOP = {
    "embed_tokens.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def slm_to_hf_name(name: str) -> str:
    if name in _TOP:
        return _TOP[name]
    _, i, rest = name.split(".", 2)
    return f"model.layers.{i}.{_LAYER[rest]}"


def hf_to_slm_name(name: str) -> str | None:
    if name in _TOP_FROM_HF:
        return _TOP_FROM_HF[name]
    if name.startswith("model.layers."):
        _, _, i, rest = name.split(".", 3)
        if rest in _LAYER_FROM_HF:
            return f"layers.{i}.{_LAYER_FROM_HF[rest]}"
    return None


def slm_to_gguf_name(name: str) -> str:
    if name in GGUF_TOP:
        return GGUF_TOP[name]
    _, i, rest = name.split(".", 2)
    return f"blk.{i}.{GGUF_LAYER[rest]}"


def hf_config(cfg: ModelConfig, vocab_size: int, eos: int) -> dict:
    arch, mtype = ("Qwen3ForCausalLM", "qwen3") if cfg.qk_norm else ("LlamaForCausalLM", "llama")
    return {
        "architectures": [arch],
        "model_type": mtype,
        "vocab_size": vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ff_dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "dtype": "float32",
        "use_cache": True,
    }


def model_config_from_hf(hf: dict, source: str) -> tuple[ModelConfig, int]:
    """slm's ModelConfig and the vocabulary size of a transformers config; unsupported models are refused."""
    arch = (hf.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED:
        raise SlmError(f"{source}: architecture {arch} is not supported; supported: {', '.join(SUPPORTED)}")
    try:
        heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
        if head_dim * heads != hf["hidden_size"]:
            raise SlmError(
                f"{source}: head_dim*heads != hidden_size ({head_dim}*{heads} != {hf['hidden_size']}); "
                "slm needs d_model = n_head * head_dim"
            )
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise SlmError(f"{source}: attention or MLP biases are not supported")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise SlmError(f"{source}: RoPE scaling {rope.get('rope_type') or rope.get('type')} is not supported")
        theta = rope.get("rope_theta") or hf.get("rope_theta") or 10000.0
        cfg = ModelConfig(
            n_layer=hf["num_hidden_layers"],
            n_head=heads,
            n_kv_head=hf.get("num_key_value_heads") or heads,
            d_model=hf["hidden_size"],
            d_ff=hf["intermediate_size"],
            max_seq_len=hf.get("max_position_embeddings", 2048),
            rope_theta=float(theta),
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            qk_norm=arch == "Qwen3ForCausalLM",
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )
        return cfg, int(hf["vocab_size"])
    except KeyError as e:
        raise SlmError(f"{source}: config.json lacks {e}; it is not a complete {arch} config") from None
    except (TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0]
        raise SlmError(f"{source}: config.json has a value slm cannot use ({first})") from None


def hf_tokenizer_json(hf_tok) -> Tokenizer:
    """The `tokenizers` tokenizer inside a transformers fast tokenizer."""
    backend = getattr(hf_tok, "backend_tokenizer", None) or getattr(hf_tok, "_tokenizer", None)
    if backend is None:
        raise SlmError("the tokenizer has no fast (tokenizers) backend; slm needs a tokenizer.json")
    return Tokenizer.from_str(backend.to_str())
