"""int8 inference on a CPU, two ways.

int8 (weight-only): every projection's weight rounded to int8 with one float scale per output channel (its
largest magnitude / 127), multiplied by PyTorch's own int8-weight kernel (`aten._weight_int8pack_mm`, the
one torchao's int8 weight-only mode calls on a CPU), activations staying float. Decoding a small model on a
CPU is bound by reading weights; int8 reads a quarter of float32's bytes.

w8a8 (weights and activations): activations are rounded to int8 too, one scale per token, and the product
runs in int32 (`torch._int_mm`, VNNI where the CPU has it). Activations of transformers carry outliers in a
few channels, which a per-token scale spreads over all the others; SmoothQuant (Xiao et al., 2023) moves
them into the weights before rounding: input channel j of the projections after a norm is divided by
s_j = max|x_j|^alpha / max|W_j|^(1 - alpha) (folded into the norm's weight) and their weight columns
multiplied by it, which leaves the float model's output unchanged. max|x_j| comes from calibration text,
so what that text is matters (benchmarks/quantize.py measures in-domain against out-of-domain). The
projections after attention and after the MLP's gate (no norm to fold into) are rounded without smoothing;
the output head (its weight is the tied embedding) stays in float.

The float weights stay in the model (tied embeddings share theirs with the output head, and export may
follow), so memory is not reduced; what each product reads is.
"""

from __future__ import annotations

from pathlib import Path

import torch

from slm.errors import SlmError
from slm.model.transformer import Linear, Transformer

QUANTIZE = ("int8", "w8a8")
ALPHA = 0.5  # SmoothQuant's migration strength: half of the outliers' range moves into the weights
CALIBRATION_TOKENS = 4096  # of calibration text, in windows of at most 512


def int8_weights(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weights, float32 scale per output row): w ~ q * scale[:, None]."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def quantize(model: Transformer, how: str = "int8", calibration: list[list[int]] | None = None) -> int:
    """Quantise the projections of an inference model in place; returns how many. int8 takes the output head
    too; w8a8 leaves it in float and needs calibration: token windows like the text the model will see."""
    if how not in QUANTIZE:
        raise SlmError(f"quantisation {how!r} is not supported; supported: {', '.join(QUANTIZE)}")
    if next(model.parameters()).device.type != "cpu" or not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        raise SlmError(f"{how} inference runs on a CPU with PyTorch's int8 kernels; load the model on the CPU")
    if how == "w8a8" and not calibration:
        raise SlmError("w8a8 quantisation needs calibration text (a few thousand tokens like the model will see)")
    model.unpack()  # the oneDNN copies are float: int8 replaces them
    if how == "w8a8":
        assert calibration is not None
        smooth(model, calibration)
    n = 0
    for name, m in model.named_modules():
        if not isinstance(m, Linear):
            continue
        if how == "int8":
            m.int8 = int8_weights(m.weight)
        elif name != "lm_head":  # w8a8 keeps the output head in float, as SmoothQuant does
            q, scale = int8_weights(m.weight)
            m.w8a8 = (q.t(), scale)  # (in, out): the layout _int_mm takes
        else:
            continue
        n += 1
    return n


@torch.no_grad()
def smooth(model: Transformer, calibration: list[list[int]], alpha: float = ALPHA) -> None:
    """Migrate activation outliers into the weights after each norm (see the module's docstring)."""
    seen: dict[torch.nn.Module, torch.Tensor] = {}

    def record(mod, args):
        x = args[0].detach().reshape(-1, args[0].size(-1)).abs().amax(dim=0).float()
        seen[mod] = torch.maximum(seen[mod], x) if mod in seen else x

    groups = []
    for block in model.layers:
        groups.append((block.attn_norm, [block.attn.q_proj, block.attn.k_proj, block.attn.v_proj]))
        groups.append((block.mlp_norm, [block.mlp.gate_proj, block.mlp.up_proj]))
    hooks = [g[1][0].register_forward_pre_hook(record) for g in groups]
    try:
        for window in calibration:
            model(torch.tensor([window[: model.cfg.max_seq_len]]))
    finally:
        for h in hooks:
            h.remove()
    for norm, linears in groups:
        x_max = seen[linears[0]].clamp(min=1e-5)
        w_max = torch.stack([m.weight.abs().amax(dim=0) for m in linears]).amax(dim=0).float().clamp(min=1e-5)
        s = (x_max.pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)
        norm.weight.div_(s.to(norm.weight.dtype))
        for m in linears:
            m.weight.mul_(s.to(m.weight.dtype))


def calibration_windows(tokenizer, text: str, tokens: int = CALIBRATION_TOKENS, window: int = 512) -> list[list[int]]:
    ids = tokenizer.encode(text, add_special_tokens=False).ids[:tokens]
    if len(ids) < 64:
        raise SlmError(f"calibration text holds {len(ids)} tokens; give at least a few hundred")
    return [ids[i : i + window] for i in range(0, len(ids), window) if len(ids[i : i + window]) >= 16]


def calibration_text(path: str | Path | None = None) -> str:
    """The text a file holds, or by default a little of every domain of the built-in corpus's training text
    (mixed: no domain's outliers left out)."""
    if path is not None:
        return calibration_file(path).read_text(encoding="utf-8", errors="replace")
    from slm.data.builtin import domain_files, domains

    return "\n\n".join(domain_files(d)[0][0].read_text()[:3000] for d in domains())


def calibration_file(path: str | Path) -> Path:
    """The calibration file, checked before any model loads."""
    p = Path(path)
    if not p.is_file():
        raise SlmError(f"calibration file {p} not found; give a text file like what the model will see")
    return p
