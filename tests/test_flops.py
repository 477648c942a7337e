from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from slm.config import Config, load_config, validate_config
from slm.errors import SlmError
from slm.model.lora import add_lora
from slm.model.transformer import Transformer
from slm.run import Run
from slm.train.flops import (
    attention_flops_per_token,
    flops_per_token,
    gpu_peak,
    mfu,
    peak_tflops,
    product_dtype,
    product_flops_per_token,
)
from slm.train.loop import train


def shape(tie: bool = True, n_kv_head: int | None = None) -> Config:
    return validate_config(
        {
            "model": {
                "n_layer": 3,
                "n_head": 4,
                "n_kv_head": n_kv_head,
                "d_model": 64,
                "max_seq_len": 128,
                "tie_embeddings": tie,
            }
        }
    )


@pytest.mark.parametrize("tie", [True, False])
def test_flops_per_token_counts_every_product_once_and_attention(tie: bool):
    cfg = shape(tie, n_kv_head=2)
    m = cfg.model
    model = Transformer(m, 500)
    d, ff, hd, kv = m.d_model, m.ff_dim, m.head_dim, m.kv_heads
    layer = d * m.n_head * hd + 2 * d * kv * hd + m.n_head * hd * d + 3 * d * ff
    # 6 per weight of every product (the head once, tied or not; the embedding lookup is no product),
    # and 12 L H Q T for attention's scores and weighted values
    products, attention = 6 * (m.n_layer * layer + d * 500), 12 * m.n_layer * m.n_head * hd * 100
    assert flops_per_token(model, m, 100) == products + attention
    assert product_flops_per_token(model) == products  # the part the products' GFLOP/s are reckoned from
    assert attention_flops_per_token(m, 100) == attention


def test_frozen_weights_take_no_weight_gradient():
    cfg = shape()
    model = Transformer(cfg.model, 500)
    before = flops_per_token(model, cfg.model, 64)
    add_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=["q_proj", "v_proj"])
    adapters = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    frozen_products = sum(
        m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".lora_" not in n
    )
    assert frozen_products > 0 and adapters > 0
    # every base product now costs 4 a weight instead of 6; the adapters' own products cost 6
    assert flops_per_token(model, cfg.model, 64) == before - 2 * frozen_products + 6 * adapters


@pytest.mark.parametrize(
    ("name", "precision", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4),
        ("NVIDIA H100 PCIe", "bfloat16", 756.5),
        ("NVIDIA H100 NVL", "tf32", 417.5),
        ("NVIDIA H200", "float32", 66.9),
        ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0),
        ("NVIDIA A100 80GB PCIe", "tf32", 156.0),
        ("NVIDIA L4", "bfloat16", 121.0),
        ("NVIDIA L40S", "bfloat16", 362.0),
        ("NVIDIA GH200 480GB", "bfloat16", 989.4),
        ("NVIDIA L40", "bfloat16", None),  # not an L4, and not in the table
        ("Tesla T4", "float32", None),
    ],
)
def test_gpu_peaks_match_whole_names(name: str, precision: str, peak: float | None):
    got, why = gpu_peak(name, precision)
    assert got == peak
    assert ("train.peak_tflops" in why) == (peak is None)


def test_a_cpu_has_no_peak_unless_one_is_given():
    cpu = torch.device("cpu")
    assert peak_tflops(cpu, "float32")[0] is None
    assert peak_tflops(cpu, "float32", override=2.5) == (2.5, "train.peak_tflops")
    assert mfu(1000.0, 1e9, None) is None
    assert mfu(1000.0, 1e9, 2.0, devices=2) == pytest.approx(1e12 / 4e12)


def test_training_logs_model_tflops_and_mfu_against_the_given_peak(tiny_cfg: Config, tmp_path: Path):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.train.peak_tflops = 0.5
    train(cfg, Run(tmp_path / "run"), console=Console(quiet=True), progress=False)
    rows = [m for m in Run(tmp_path / "run").metrics() if "loss" in m]
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    flops = summary["flops_per_token"]
    assert flops > 0
    for r in rows:
        assert r["tflops"] == pytest.approx(r["tokens_per_sec"] * flops / 1e12)
        assert r["mfu"] == pytest.approx(r["tflops"] / 0.5)
    assert min(r["tflops"] for r in rows) <= summary["tflops"] <= max(r["tflops"] for r in rows)
    assert summary["mfu"] == pytest.approx(summary["tflops"] / 0.5)


def test_no_mfu_where_the_peak_is_unknown(tiny_cfg: Config, tmp_path: Path):
    train(tiny_cfg.model_copy(deep=True), Run(tmp_path / "run"), console=Console(quiet=True), progress=False)
    rows = [m for m in Run(tmp_path / "run").metrics() if "loss" in m]
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert all("tflops" in r and "mfu" not in r for r in rows)
    assert "mfu" not in summary and summary["tflops"] > 0


def test_float32_products_on_a_gpu_count_against_tf32_only_where_pytorch_allows_it():
    gpu, was = torch.device("cuda"), torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert product_dtype("float32", gpu) == "float32"
        assert product_dtype("bfloat16", gpu) == "bfloat16"
        torch.backends.cuda.matmul.allow_tf32 = True
        assert product_dtype("float32", gpu) == "tf32"
        assert product_dtype("float32", torch.device("cpu")) == "float32"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = was


def test_a_peak_that_is_not_a_positive_number_is_refused_naming_the_field():
    for bad in ("0", "-5", "'fast'"):
        with pytest.raises(SlmError, match=r"train\.peak_tflops") as e:
            load_config(None, [f"train.peak_tflops={bad}"])
        assert "\n" not in str(e.value).strip()
