"""int8 weight-only inference on a CPU: every projection's weight rounded to int8 with one float scale per
output channel (its largest magnitude / 127), multiplied by PyTorch's own int8-weight kernel
(`aten._weight_int8pack_mm`, the one torchao's int8 weight-only mode calls on a CPU), activations staying
float. Decoding a small model on a CPU is bound by reading weights; int8 reads a quarter of float32's bytes.

The float weights stay in the model (tied embeddings share theirs with the output head, and export may
follow), so memory is not reduced; what each product reads is.
"""

from __future__ import annotations

import torch

from slm.errors import SlmError
from slm.model.transformer import Linear, Transformer

QUANTIZE = ("int8",)


def int8_weights(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weights, float32 scale per output row): w ~ q * scale[:, None]."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def quantize(model: Transformer, how: str = "int8") -> int:
    """Quantise every projection of an inference model in place (the output head too); returns how many."""
    if how not in QUANTIZE:
        raise SlmError(f"quantisation {how!r} is not supported; supported: {', '.join(QUANTIZE)}")
    if next(model.parameters()).device.type != "cpu" or not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        raise SlmError("int8 weight-only inference runs on a CPU with PyTorch's int8 kernel; load the model on the CPU")
    model.unpack()  # the oneDNN copies are float: int8 replaces them
    n = 0
    for m in model.modules():
        if isinstance(m, Linear):
            m.int8 = int8_weights(m.weight)
            n += 1
    return n
