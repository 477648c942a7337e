"""Model FLOPs utilisation (MFU): the arithmetic a training step needs, against what the device can do.

A token's training FLOPs are counted as PaLM's appendix B counts them (and nanoGPT's estimate_mfu): for each
weight multiplied, 2 in the forward product, 2 for the input's gradient and 2 for the weight's own gradient
(6 N when every weight trains), plus attention's scores and weighted values, 12 L H Q T (layers, query heads,
head dimension, sequence length), with the half that the causal mask skips counted as done. A frozen weight
(LoRA's base) takes no gradient of its own: 4 a weight. Embedding lookups, norms and other elementwise work
are not counted, nor what an objective adds outside the model (a teacher's forward, RL's rollouts). So the
figure is the model's useful arithmetic, comparable across tools that count the same way, and recomputing
activations would not raise it.

MFU divides the FLOPs achieved by the device's dense peak in the dtype the products run in: looked up for the
NVIDIA data-centre GPUs below, or `train.peak_tflops` for any other device (a CPU has no published figure).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from slm.config import ModelConfig

# Dense peak TFLOP/s from NVIDIA's data sheets (half the "with sparsity" figures): bf16 and tf32 tensor cores,
# and plain float32. The first name that matches the device's name as a whole word wins, so variants come first.
GPU_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bfloat16": 756.5, "tf32": 378.0, "float32": 51.2}),
    ("H100 NVL", {"bfloat16": 835.5, "tf32": 417.5, "float32": 60.0}),
    ("H200 NVL", {"bfloat16": 835.5, "tf32": 417.5, "float32": 60.0}),
    ("H100", {"bfloat16": 989.4, "tf32": 494.7, "float32": 66.9}),  # SXM
    ("H200", {"bfloat16": 989.4, "tf32": 494.7, "float32": 66.9}),  # SXM
    ("GH200", {"bfloat16": 989.4, "tf32": 494.7, "float32": 66.9}),
    ("A100", {"bfloat16": 312.0, "tf32": 156.0, "float32": 19.5}),
    ("L40S", {"bfloat16": 362.0, "tf32": 183.0, "float32": 91.6}),
    ("L4", {"bfloat16": 121.0, "tf32": 60.0, "float32": 30.3}),
]


def flops_per_token(model: nn.Module, cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs a token needs in this model, at sequences of seq_len tokens (see the module docstring)."""
    return product_flops_per_token(model) + attention_flops_per_token(cfg, seq_len)


def product_flops_per_token(model: nn.Module) -> float:
    """The part of flops_per_token in products by weights: 6 a trained weight, 4 a frozen one."""
    # modules() yields a tied head once: the one product its shared weight is in
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return float(sum(m.weight.numel() * (6 if m.weight.requires_grad else 4) for m in linears))


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """The part of flops_per_token in attention's scores and weighted values: 12 L H Q T."""
    return float(12 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len)


def product_dtype(dtype: str, device: torch.device) -> str:
    """The precision the products run in: bf16 under autocast; float32 products on a GPU run on tf32 tensor
    cores when PyTorch allows it (torch.backends.cuda.matmul.allow_tf32, or float32 matmul precision "high")."""
    if dtype == "bfloat16":
        return "bfloat16"
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "float32"


def peak_tflops(device: torch.device, dtype: str, override: float | None = None) -> tuple[float | None, str]:
    """(the device's dense peak TFLOP/s for products in this dtype, where it comes from); (None, why) where it
    is unknown. `override` (train.peak_tflops) wins."""
    if override is not None:
        return override, "train.peak_tflops"
    if device.type != "cuda":
        return None, "no published peak for a CPU: set train.peak_tflops to report MFU"
    return gpu_peak(torch.cuda.get_device_name(device), product_dtype(dtype, device))


def gpu_peak(name: str, precision: str) -> tuple[float | None, str]:
    """peak_tflops for a GPU of this name ("NVIDIA H100 80GB HBM3") and product precision (product_dtype).
    Table keys match whole words: "NVIDIA L40S" is not an L4, nor "NVIDIA GH200" an H200."""
    for key, peaks in GPU_PEAK_TFLOPS:
        if re.search(rf"(?<!\w){re.escape(key)}(?!\w)", name):
            return peaks[precision], f"{key} {precision} peak"
    return None, f"{name}'s peak is not known to slm: set train.peak_tflops to report MFU"


def mfu(tokens_per_sec: float, flops: float, peak: float | None, devices: int = 1) -> float | None:
    """The share of `devices` devices' peak (TFLOP/s each) that tokens_per_sec tokens of `flops` each use."""
    if peak is None or peak <= 0:
        return None
    return tokens_per_sec * flops / (peak * 1e12 * devices)
