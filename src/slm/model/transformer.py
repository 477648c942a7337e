"""The decoder-only transformer, in one file.

RMSNorm, rotary position embeddings, SwiGLU, grouped-query attention, optional QK-norm, optional tied
embeddings. Every choice mirrors `transformers`' Llama (and Qwen3 when qk_norm is on) operation for
operation, so weights carry over to those classes without loss: same RoPE layout (rotate-half), same
norm placement, no biases.

Three ways to run it: training (whole sequences, causal), one KV cache shared by every row at one position
(prefill, scoring prompts), and decoding with every row at its own position (the generation engine, where
sequences of different lengths decode together).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slm.config import ModelConfig
from slm.model import matmul
from slm.model.loss import cross_entropy, linear_cross_entropy
from slm.model.matmul import linear, onednn_available, onednn_product
from slm.model.norm import rms_norm
from slm.model.rope import apply_rope, rope_tables


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 as Llama does; under bf16 autocast this keeps the statistics exact.
        return rms_norm(x, self.weight, self.eps)


class KVCache:
    """Preallocated keys and values for every layer; `pos` is how many positions are filled.

    Left uninitialised by default: attention reads positions below `pos` only, all written before they are
    read. When rows decode at positions of their own (`positions=` in Transformer.hidden), `pos` is unused,
    the caller keeps each row's length, and the cache must be zeroed: a row's masked positions past its
    length are still multiplied in (by zero weights), and uninitialised memory may hold NaN.
    """

    def __init__(
        self, cfg: ModelConfig, batch: int, length: int, dtype: torch.dtype, device: torch.device, zeroed: bool = False
    ):
        shape = (batch, cfg.kv_heads, length, cfg.head_dim)
        make = torch.zeros if zeroed else torch.empty
        self.k = [make(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]
        self.v = [make(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]
        self.length = length
        self.pos = 0

    @classmethod
    def of(cls, k: list[torch.Tensor], v: list[torch.Tensor], pos: int = 0) -> KVCache:
        out = cls.__new__(cls)
        out.k, out.v, out.length, out.pos = k, v, k[0].size(2), pos
        return out

    def rows(self, start: int, stop: int, pos: int = 0) -> KVCache:
        """Rows start..stop-1 as a cache of their own, sharing this one's memory."""
        return KVCache.of([k[start:stop] for k in self.k], [v[start:stop] for v in self.v], pos)


CACHE_ROUND = 64  # a growing cache's length goes up in steps of this many positions


def grow_cache(
    old: KVCache | None,
    cfg: ModelConfig,
    rows: int,
    length: int,
    dtype: torch.dtype,
    device: torch.device,
    limit: int,
    max_rows: int | None = None,
    keep: tuple[int, int] | None = None,
) -> KVCache:
    """`old` when it holds `rows` rows of `length` positions; else a zeroed cache that does (rows at least
    doubling, up to max_rows; length rounded up to CACHE_ROUND, at most limit), holding old's contents, or
    only its first keep = (rows, positions) of them."""
    # A request past the model's context is capped to it first: otherwise a cache already at the limit never
    # satisfies it, and every call would reallocate with doubled rows (found by a draft model whose context
    # is shorter than the target's prompt: memory grew until the process was killed).
    length = min(length, limit)
    if old is not None and old.k[0].size(0) >= rows and old.length >= length:
        return old
    have = old.k[0].size(0) if old is not None else 0
    new_rows = max(rows, 2 * have) if max_rows is None else min(max_rows, max(rows, 2 * have))
    new_len = min(limit, max(old.length if old is not None else 0, -(-length // CACHE_ROUND) * CACHE_ROUND))
    cache = KVCache(cfg, new_rows, new_len, dtype, device, zeroed=True)
    if old is not None:
        n, used = keep if keep is not None else (have, old.length)
        for dst, src in zip((*cache.k, *cache.v), (*old.k, *old.v), strict=True):
            dst[:n, :, :used] = src[:n, :, :used]
    return cache


# PyTorch's int8-weight CPU kernel slows down fast with rows: for a 576 x 1536 weight on a 2-core AMD EPYC
# with AVX-512, 0.36 ms at 1 row, 3.05 ms at 8, 428 ms at 1024 (oneDNN-packed float32: 0.043, 0.085, 8.9 ms;
# benchmarks/int8_kernels.py). Beyond this many rows the int8 weights are expanded to float for the one
# product instead (10.6 ms at 1024 rows).
INT8_KERNEL_ROWS = 1


class Linear(nn.Linear):
    """nn.Linear that can hold an inference copy of its weight prepacked for oneDNN (see Transformer.pack), or
    int8 weights with a scale per output channel (model/quant.py)."""

    packed: torch.Tensor | None = None
    fp16: torch.Tensor | None = None  # a float16 copy for one-row products (Transformer.pack(fp16=True))
    int8: tuple[torch.Tensor, torch.Tensor] | None = None
    w8a8: tuple[torch.Tensor, torch.Tensor] | None = None  # (int8 weight (in, out), scale per output channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w8a8 is not None:
            # Activations rounded to int8 with one scale per token (row), the product in int32 (model/quant.py).
            qw, w_scale = self.w8a8
            flat = x.reshape(-1, x.size(-1)).float()
            a_scale = flat.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0
            qx = torch.round(flat / a_scale).to(torch.int8)
            y = torch._int_mm(qx, qw).float() * a_scale * w_scale
            return y.to(x.dtype).reshape(*x.shape[:-1], qw.size(1))
        if self.int8 is not None:
            q, scale = self.int8
            flat = x.reshape(-1, x.size(-1)).contiguous()
            if flat.size(0) > INT8_KERNEL_ROWS:  # a prompt or a scoring window: the same product, in float
                return F.linear(x, q.to(x.dtype) * scale.to(x.dtype)[:, None])
            y = torch.ops.aten._weight_int8pack_mm(flat, q, scale.to(x.dtype))
            return y.reshape(*x.shape[:-1], q.size(0))
        if self.packed is not None:
            return decode_linear(x, self.packed, self.fp16)
        return linear(x, self.weight)


def packed_linear(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """x @ W.T for a weight W reordered by Transformer.pack."""
    return onednn_product(x, packed)


def decode_linear(x: torch.Tensor, packed: torch.Tensor, fp16: torch.Tensor | None) -> torch.Tensor:
    """x @ W.T from Transformer.pack's copies: the float16 one for a single row when there is one (decoding
    one sequence reads every weight once a token; float16 halves the bytes, and PyTorch's float16
    matrix-vector kernel accumulates in float32), else the packed float32 one (float16 products of several
    rows have no fast CPU kernel: for a 576 x 1536 weight, 3.9x float32's time at 8 rows and 6.8x at 64 on a
    2-core AVX2 EPYC, benchmarks/int8_kernels.py)."""
    if fp16 is not None and x.numel() == x.size(-1):
        return F.linear(x.to(torch.float16), fp16).to(x.dtype)
    return packed_linear(x, packed)


# Generation on a CPU multiplies a few rows by every weight, a shape where PyTorch's default kernel is slow.
# Weights reordered into oneDNN's blocked layout (what torch.compile's CPU inference path uses) run those
# products 1.5-2x faster at 1 to 32 rows and about 20% faster on long prompts (measured with 2 threads on
# an AMD EPYC). The reorder is tuned for this many rows.
PACK_ROWS = 32


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """Transformer.pack can keep oneDNN copies here: float32 on a CPU of a class where they were measured."""
    return (
        onednn_available(device, dtype)
        and matmul.ONEDNN_MEASURED
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class _Step:
    """What every layer of one forward shares: rotary tables, the mask, where new keys go, and for rows at
    their own positions, the blocks of rows whose attention runs separately (start, stop, keys, mask)."""

    def __init__(self, cos, sin, mask, causal: bool, cache: KVCache | None, write, keys: int, blocks=None):
        self.cos, self.sin, self.mask, self.causal = cos, sin, mask, causal
        self.cache, self.write, self.keys, self.blocks = cache, write, keys, blocks
        self.probe: list[float] | None = None  # Transformer.stability: each layer's largest attention logit


# Decoding rows of different lengths reads every row's keys up to the longest row: memory-bound work that
# is mostly padding when lengths differ a lot. Blocks of this many neighbouring rows read only up to their
# own longest (the engine keeps rows roughly ordered by length), when that saves a quarter of the reads.
BLOCK_ROWS = 4


def _blocks(positions: list[int], device: torch.device) -> list[tuple[int, int, int, torch.Tensor]] | None:
    spans = [(a, min(a + BLOCK_ROWS, len(positions))) for a in range(0, len(positions), BLOCK_ROWS)]
    ends = [max(positions[a:b]) + 1 for a, b in spans]
    if len(spans) < 2 or sum((b - a) * e for (a, b), e in zip(spans, ends, strict=True)) > 0.75 * len(positions) * max(
        ends
    ):
        return None
    out = []
    for (a, b), e in zip(spans, ends, strict=True):
        pos = torch.tensor(positions[a:b], device=device)
        out.append((a, b, e, (torch.arange(e, device=device)[None, :] <= pos[:, None])[:, None, None, :]))
    return out


class Attention(nn.Module):
    qkv: torch.Tensor | None = None  # q, k and v projections as one packed weight (Transformer.pack)
    qkv_fp16: torch.Tensor | None = None  # and as one float16 weight (Transformer.pack(fp16=True))

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.q_proj = Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=False)
        self.k_proj = Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, step: _Step, layer: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        if self.qkv is not None:
            q, k, v = decode_linear(x, self.qkv, self.qkv_fp16).split(
                (self.n_head * self.hd, self.n_kv * self.hd, self.n_kv * self.hd), dim=-1
            )
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.n_head, self.hd)
        k = k.view(B, T, self.n_kv, self.hd)
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), step.cos, step.sin)
        k = apply_rope(k.transpose(1, 2), step.cos, step.sin)
        gqa = self.n_kv != self.n_head
        if step.probe is not None:  # SDPA never shows its logits, so the probe computes them once more
            keys = k.repeat_interleave(self.n_head // self.n_kv, dim=1) if gqa else k
            logits = (q @ keys.transpose(-1, -2)).float() * self.hd**-0.5
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            step.probe.append(logits.masked_fill(~causal, float("-inf")).amax().item())
        if step.cache is None:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=step.mask,  # packed sequences: causal within each segment
                is_causal=step.mask is None,
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=gqa,
            )
        else:
            ck, cv = step.cache.k[layer], step.cache.v[layer]
            if isinstance(step.write, slice):
                ck[:, :, step.write] = k
                cv[:, :, step.write] = v
            else:  # each row writes its new keys at positions of its own: (B, 1) rows, (B, T) positions
                rows, positions = step.write
                ck[rows, :, positions] = k.transpose(1, 2)
                cv[rows, :, positions] = v.transpose(1, 2)
            if step.blocks is not None:
                y = torch.cat(
                    [
                        F.scaled_dot_product_attention(
                            q[a:b], ck[a:b, :, :e], cv[a:b, :, :e], attn_mask=m, enable_gqa=gqa
                        )
                        for a, b, e, m in step.blocks
                    ]
                )
            else:
                k, v = ck[:, :, : step.keys], cv[:, :, : step.keys]
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=step.mask, is_causal=step.causal, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))


class MLP(nn.Module):
    gate_up: torch.Tensor | None = None  # gate and up projections as one packed weight (Transformer.pack)
    gate_up_fp16: torch.Tensor | None = None

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.d_model, cfg.ff_dim, bias=False)
        self.up_proj = Linear(cfg.d_model, cfg.ff_dim, bias=False)
        self.down_proj = Linear(cfg.ff_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None:
            gate, up = decode_linear(x, self.gate_up, self.gate_up_fp16).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, step: _Step, layer: int = 0) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), step, layer))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        if vocab_size <= 0:
            raise ValueError("the vocabulary size must be positive (it is tokenizer.vocab_size)")
        self.cfg, self.vocab_size = cfg, vocab_size
        self.embed_tokens = nn.Embedding(vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = Linear(cfg.d_model, vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                # Residual-stream writers shrink with depth so the stream's variance stays put (GPT-2).
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.cfg.n_layer))
            else:
                nn.init.normal_(p, 0.0, std)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed_tokens.weight.numel() if non_embedding else n

    @torch.no_grad()
    def pack(self, fuse: bool = True, fp16: bool = False) -> bool:
        """Keep inference copies of every projection prepacked for oneDNN (CPU, float32; see PACK_ROWS), with
        q/k/v and gate/up as one product each unless fuse is False; False where that is not possible. They
        are copies: after the weights change, pack again or unpack() (a packed model does not train).

        fp16: also keep float16 copies, used for products of one row (decode_linear): one sequence decodes
        faster, but its tokens then round differently alone than in a batch (off by default)."""
        p = next(self.parameters())
        if not can_pack(p.device, p.dtype):
            return False
        self.unpack()

        def plain(*ms: nn.Module) -> bool:  # int8 has its own kernels; a LoRA wrapper is not a Linear
            return all(isinstance(m, Linear) and m.int8 is None and m.w8a8 is None for m in ms)

        def reorder(*ms: Linear) -> torch.Tensor:
            return torch.ops.mkldnn._reorder_linear_weight(torch.cat([m.weight.detach() for m in ms]), PACK_ROWS)

        def halved(*ms: Linear) -> torch.Tensor | None:
            return torch.cat([m.weight.detach() for m in ms]).to(torch.float16) if fp16 else None

        fused: set[nn.Module] = set()
        # Projections that read the same input become one product: at one row (single-stream decoding, bound
        # by reading the weights) SmolLM2's products took 34.9 ms a token fused against 39.6 ms apart on a
        # 2-core AVX2 EPYC (benchmarks/decode_bandwidth.py).
        for block in self.layers if fuse else []:
            a, m = block.attn, block.mlp
            if plain(a.q_proj, a.k_proj, a.v_proj):
                a.qkv, a.qkv_fp16 = reorder(a.q_proj, a.k_proj, a.v_proj), halved(a.q_proj, a.k_proj, a.v_proj)
                fused |= {a.q_proj, a.k_proj, a.v_proj}
            if plain(m.gate_proj, m.up_proj):
                m.gate_up, m.gate_up_fp16 = reorder(m.gate_proj, m.up_proj), halved(m.gate_proj, m.up_proj)
                fused |= {m.gate_proj, m.up_proj}
        for m in self.modules():
            if plain(m) and m not in fused:
                m.packed, m.fp16 = reorder(m), halved(m)
        return True

    def unpack(self) -> None:
        for m in self.modules():
            if isinstance(m, Linear):
                m.packed = m.fp16 = None
            if isinstance(m, Attention):
                m.qkv = m.qkv_fp16 = None
            if isinstance(m, MLP):
                m.gate_up = m.gate_up_fp16 = None

    @torch.no_grad()
    def stability(self, idx: torch.Tensor) -> dict[str, float]:
        """The two early signs of instability in "Small-scale proxies for large-scale Transformer training
        instabilities" on a batch (B, T): attention-logit growth (the largest pre-softmax attention logit over
        layers and heads) and output-logit divergence (the mean log-partition log Z of the output softmax,
        which z-loss pulls to 0, and the largest output logit)."""
        T = idx.size(1)
        step = _Step(self.rope_cos[:T], self.rope_sin[:T], None, False, None, slice(0, T), T)
        step.probe = []
        was = self.training
        self.eval()
        try:
            x = self.embed_tokens(idx)
            for i, block in enumerate(self.layers):
                x = block(x, step, i)
            logits = self.logits(self.norm(x))
        finally:
            self.train(was)
        return {
            "attn_logit_max": max(step.probe),
            "logit_lse_mean": torch.logsumexp(logits, dim=-1).mean().item(),
            "logit_max": logits.abs().amax().item(),
        }

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """fp32 logits of final hidden states."""
        return self.lm_head(h).float()

    def head_loss(self, h: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0) -> torch.Tensor:
        """Mean cross-entropy (plus z-loss) of the logits of final hidden states h (..., d) against targets
        (...), over the positions whose target is not IGNORE. A plain head outside autocast goes through the
        chunked linear_cross_entropy, which never holds the whole logit matrix; otherwise (bf16 autocast, a
        LoRA adapter on lm_head, int8 or prepacked copies) the head's own forward and the fused loss."""
        head = self.lm_head
        plain = isinstance(head, Linear) and head.int8 is None and head.w8a8 is None and head.packed is None
        # Under bf16 autocast the chunked head's gradients differ from the whole-matrix path's by bf16 rounding
        # only, yet the quickstart ended 0.020 bpb worse on average over 5 seeds (worse in all 5): kept to fp32.
        if plain and not torch.is_autocast_enabled(h.device.type):
            return linear_cross_entropy(h, head.weight, targets, z_loss)
        return cross_entropy(self.logits(h.reshape(-1, h.size(-1))), targets.reshape(-1), z_loss)

    def hidden(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        positions: list[int] | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states (B, T, d).

        Without a cache: causal attention over idx. With segments (B, T), several sequences packed in a row:
        runs of equal ids are sequences of their own, each attending only within itself from position 0, so
        each one's hidden states are those it has alone. With a cache and no positions: every row continues at
        cache.pos (prefill, scoring). With positions (one per row): row i's T tokens sit at positions[i],
        positions[i] + 1, ... and each sees its own row's keys up to itself only, so rows of different lengths
        decode together (T = 1), or check several drafted tokens at once (speculative decoding, T > 1).
        """
        B, T = idx.shape
        if segments is not None:
            if cache is not None or positions is not None:
                raise ValueError("segments= is for training forwards, without a cache")
            if idx.size(1) > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {T} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
            at = torch.arange(T, device=idx.device).expand(B, T)
            starts = torch.ones_like(segments, dtype=torch.bool)
            starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
            pos = at - torch.where(starts, at, 0).cummax(dim=1).values  # position within its own segment
            cos, sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]
            same = segments[:, :, None] == segments[:, None, :]
            mask = (same & torch.ones(T, T, dtype=torch.bool, device=idx.device).tril())[:, None]
            step = _Step(cos, sin, mask, False, None, slice(0, T), T)
        elif positions is not None:
            if cache is None or len(positions) != B:
                raise ValueError("positions= needs a cache and one position per row")
            end = max(positions) + T
            if end > min(self.cfg.max_seq_len, cache.length):
                raise ValueError(f"position {end - 1} is beyond model.max_seq_len={self.cfg.max_seq_len}")
            pos = torch.tensor(positions, device=idx.device)[:, None] + torch.arange(T, device=idx.device)
            cos, sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]
            if T == 1 and min(positions) == end - 1:  # every row at the same place: a slice write, no mask
                step = _Step(cos, sin, None, False, cache, slice(end - 1, end), end)
            else:
                blocks = _blocks(positions, idx.device) if T == 1 else None
                mask = None if blocks else (torch.arange(end, device=idx.device) <= pos[:, :, None])[:, None]
                rows = torch.arange(B, device=idx.device)[:, None]
                step = _Step(cos, sin, mask, False, cache, (rows, pos), end, blocks)
        else:
            start = cache.pos if cache is not None else 0
            if start + T > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {start + T} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
            cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]
            mask = None
            if cache is not None and start and T > 1:
                # New query i sits at absolute position start+i and may see keys 0..start+i.
                mask = torch.ones(T, start + T, dtype=torch.bool, device=idx.device).tril(diagonal=start)
            # A single new query sees every key so far: no mask at all.
            causal = cache is not None and not start and T > 1
            step = _Step(cos, sin, mask, causal, cache, slice(start, start + T), start + T)
        x = self.embed_tokens(idx)
        for i, block in enumerate(self.layers):
            x = block(x, step, i)
        if cache is not None and positions is None:
            cache.pos += T
        return self.norm(x)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        z_loss: float = 0.0,
        cache: KVCache | None = None,
        hidden_only: bool = False,
        segments: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(logits (B, T, V), None) without targets; (None, mean cross-entropy + z-loss) with them, over the
        positions whose target is not IGNORE; (final hidden states (B, T, d), None) with hidden_only, for
        losses that apply lm_head in chunks. segments: see hidden().

        With targets the loss is head_loss's (in float32, without ever making the whole logit matrix).
        """
        h = self.hidden(idx, cache) if segments is None else self.hidden(idx, segments=segments)
        if hidden_only:
            return h, None
        if targets is None:
            return self.logits(h), None
        # z-loss (PaLM) keeps the softmax normaliser near 1, which steadies low-precision training.
        return None, self.head_loss(h, targets, z_loss)
